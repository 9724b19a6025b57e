//! `BASE_BACKUP` in PostgreSQL 15's syntax and its single COPY stream: the
//! archives (`base.tar[.ext]`, `<oid>.tar[.ext]`), the backup manifest, progress
//! reports, then the end position.

use super::{CopyMsg, Frame, ReplicationConnection, Row, column, server_error, text};
use crate::postgres::error::PgError;
use crate::wal::{Lsn, TimelineId};
use bytes::{Buf, Bytes};
use postgres_protocol::message::{backend, frontend};

const W: &str = "BASE_BACKUP";

/// The options of one `BASE_BACKUP` (PostgreSQL 15+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    pub label: String,
    /// `CHECKPOINT 'fast'` instead of a spread checkpoint.
    pub fast_checkpoint: bool,
    /// A backup manifest with CRC32C checksums, sent after the archives.
    pub manifest: bool,
    /// `MAX_RATE` in kB/s (PostgreSQL accepts 32..=1048576).
    pub max_rate_kb: Option<u32>,
    /// Server-side compression (`gzip`, `lz4`, `zstd`) and its detail (`level=3,workers=2`).
    pub compression: Option<String>,
    pub compression_detail: Option<String>,
    /// Progress reports (`PROGRESS`): the server first sizes the data directory.
    pub progress: bool,
    /// `TABLESPACE_MAP`: a `tablespace_map` file in base.tar instead of the
    /// links in pg_tblspc (pg_basebackup asks it for tar output).
    pub tablespace_map: bool,
}

/// One tablespace as the server announces it; the data directory has no oid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTablespace {
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Estimated size in kB (only with `PROGRESS`).
    pub size_kb: Option<i64>,
}

/// Where the backup starts, and what it will send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStart {
    pub start: Lsn,
    pub timeline: TimelineId,
    pub tablespaces: Vec<BackupTablespace>,
}

/// What the backup stream carries, in order.
#[derive(Debug)]
pub enum BackupEvent {
    /// A new archive begins: its file name, and the tablespace it holds (`None`: the data directory).
    Archive { name: String, tablespace: Option<String> },
    /// Bytes of the current archive, or of the manifest after [`BackupEvent::Manifest`].
    Data(Bytes),
    /// Bytes sent so far: at the end of every archive, and during it with `PROGRESS`.
    Progress(u64),
    /// The manifest follows.
    Manifest,
    /// The backup is complete: its end position.
    End { end: Lsn, timeline: TimelineId },
}

/// A string literal of the replication grammar.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl BaseBackupOptions {
    fn command(&self) -> String {
        let mut o = vec![format!("LABEL {}", quote(&self.label))];
        if self.progress {
            o.push("PROGRESS".into());
        }
        o.push(format!("CHECKPOINT {}", quote(if self.fast_checkpoint { "fast" } else { "spread" })));
        // The WAL is the archive's business (receive-wal / archive_command), as Barman asks.
        o.push("WAIT false".into());
        if self.tablespace_map {
            o.push("TABLESPACE_MAP".into());
        }
        if self.manifest {
            o.push("MANIFEST 'yes'".into());
            o.push("MANIFEST_CHECKSUMS 'CRC32C'".into());
        } else {
            o.push("MANIFEST 'no'".into());
        }
        if let Some(r) = self.max_rate_kb {
            o.push(format!("MAX_RATE {r}"));
        }
        if let Some(c) = &self.compression {
            o.push(format!("COMPRESSION {}", quote(c)));
            if let Some(d) = &self.compression_detail {
                o.push(format!("COMPRESSION_DETAIL {}", quote(d)));
            }
        }
        format!("BASE_BACKUP ({})", o.join(", "))
    }
}

/// The `(LSN, timeline)` row that starts and ends a backup.
fn position(row: Option<&Row>, missing: &'static str) -> Result<(Lsn, TimelineId), PgError> {
    let row = row.ok_or_else(|| PgError::bad_value(W, missing))?;
    let lsn = column::<Lsn>(row, 0, W)?.ok_or_else(|| PgError::bad_value(W, missing))?;
    let tli = column::<u32>(row, 1, W)?.ok_or_else(|| PgError::bad_value(W, "no timeline"))?;
    Ok((lsn, TimelineId(tli)))
}

impl ReplicationConnection {
    /// Starts `BASE_BACKUP`: the start position and the tablespaces; the archives
    /// then come from [`Self::base_backup_next`] until [`BackupEvent::End`]. The
    /// connection takes no other command meanwhile.
    pub async fn base_backup(&mut self, opts: &BaseBackupOptions) -> Result<BackupStart, PgError> {
        if self.streaming {
            return Err(PgError::BadValue { what: W, value: "the connection is streaming".into() });
        }
        let sql = opts.command();
        self.send_msg(|b| frontend::query(&sql, b)).await?;
        let mut sets: Vec<Vec<Row>> = vec![Vec::new()];
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::DataRow(row)) => {
                    let row = super::split_row(&row).map_err(|e| self.lost(e))?;
                    if let Some(set) = sets.last_mut() {
                        set.push(row);
                    }
                }
                Frame::Other(backend::Message::CommandComplete(_)) => sets.push(Vec::new()),
                Frame::Other(backend::Message::CopyOutResponse(_)) => break,
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    let (reason, sqlstate) = server_error(&body);
                    // The server sends ReadyForQuery after the error: consume it.
                    let _ = self.read_result(W).await;
                    return Err(PgError::Query { what: W, reason, sqlstate });
                }
                Frame::Other(backend::Message::ReadyForQuery(_)) => {
                    return Err(PgError::bad_value(W, "the server ended the command without sending a backup"));
                }
                _ => {}
            }
        }
        let (start, timeline) = position(sets.first().and_then(|s| s.first()), "no start position")?;
        let tablespaces = sets
            .get(1)
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        Ok(BackupTablespace {
                            oid: column(r, 0, W)?,
                            location: r.get(1).and_then(text),
                            size_kb: column(r, 2, W)?,
                        })
                    })
                    .collect::<Result<Vec<_>, PgError>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(BackupStart { start, timeline, tablespaces })
    }

    /// The next piece of the backup started by [`Self::base_backup`].
    pub async fn base_backup_next(&mut self) -> Result<BackupEvent, PgError> {
        let (tag, mut d) = match self.next_copy(W).await {
            Ok(CopyMsg::Data(tag, d)) => (tag, d),
            Ok(CopyMsg::Done) => {
                let rows = self.read_result(W).await?;
                let (end, timeline) = position(rows.first(), "no end position")?;
                return Ok(BackupEvent::End { end, timeline });
            }
            Err(e) => {
                if matches!(e, PgError::Query { .. }) {
                    // The server sends ReadyForQuery after the error: consume it.
                    let _ = self.read_result(W).await;
                }
                return Err(e);
            }
        };
        match tag {
            b'd' => Ok(BackupEvent::Data(d)),
            b'n' => {
                let mut fields = d.split(|b| *b == 0);
                let name = fields.next().map(|f| String::from_utf8_lossy(f).into_owned());
                let location = fields.next().map(|f| String::from_utf8_lossy(f).into_owned());
                let name = name.filter(|n| !n.is_empty()).ok_or_else(|| self.lost("an archive without a name"))?;
                Ok(BackupEvent::Archive { name, tablespace: location.filter(|l| !l.is_empty()) })
            }
            b'p' if d.len() >= 8 => Ok(BackupEvent::Progress(d.get_u64())),
            b'm' => Ok(BackupEvent::Manifest),
            other => Err(self.lost(format!("unexpected backup message type {:?}", other as char))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_text() {
        let o = BaseBackupOptions {
            label: "Barman's backup".into(),
            fast_checkpoint: true,
            manifest: true,
            max_rate_kb: Some(1024),
            compression: Some("lz4".into()),
            compression_detail: Some("level=3".into()),
            progress: false,
            tablespace_map: true,
        };
        assert_eq!(
            o.command(),
            "BASE_BACKUP (LABEL 'Barman''s backup', CHECKPOINT 'fast', WAIT false, TABLESPACE_MAP, \
             MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', MAX_RATE 1024, COMPRESSION 'lz4', COMPRESSION_DETAIL 'level=3')"
        );
    }
}
