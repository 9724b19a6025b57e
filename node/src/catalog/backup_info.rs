//! `backup.info` exactly as Barman 3.17 writes and reads it: one `key=value`
//! line per field in alphabetical order, only Barman's 35 keys, Python-literal
//! values (`None` for null), `backup_name` and `snapshots_info` left out when
//! null. Written durably (temporary file, fsync, rename, directory fsync).

use super::backups::{format_time, parse_time};
use super::durable::DurableFile;
use super::pyliteral::{PyValue, repr_str};
use crate::wal::{Lsn, WalFileName};
use chrono::{DateTime, FixedOffset};
use std::io::Write;
use std::path::Path;

/// Barman's default `xlog_segment_size`.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// One tablespace of a backup: `(name, oid, location)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub name: String,
    pub oid: u32,
    pub location: String,
}

/// Every field Barman 3.17 keeps in `backup.info`; `None` is Python's None.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupInfo {
    pub backup_label: Option<String>,
    pub backup_name: Option<String>,
    pub begin_offset: Option<u64>,
    pub begin_time: Option<DateTime<FixedOffset>>,
    pub begin_wal: Option<WalFileName>,
    pub begin_xlog: Option<Lsn>,
    pub children_backup_ids: Option<Vec<String>>,
    pub cluster_size: Option<u64>,
    pub compression: Option<String>,
    pub config_file: Option<String>,
    /// A dict such as `{'copy_time': 1.2, 'total_time': 1.3}`.
    pub copy_stats: Option<PyValue>,
    pub data_checksums: Option<String>,
    pub deduplicated_size: Option<u64>,
    pub encryption: Option<String>,
    pub end_offset: Option<u64>,
    pub end_time: Option<DateTime<FixedOffset>>,
    pub end_wal: Option<WalFileName>,
    pub end_xlog: Option<Lsn>,
    pub error: Option<String>,
    pub hba_file: Option<String>,
    pub ident_file: Option<String>,
    pub included_files: Option<Vec<String>>,
    pub mode: Option<String>,
    pub parent_backup_id: Option<String>,
    pub pgdata: Option<String>,
    pub server_name: Option<String>,
    pub size: Option<u64>,
    /// Kept as read (cloud snapshot providers' dict); we never create one.
    pub snapshots_info: Option<PyValue>,
    pub status: String,
    pub summarize_wal: Option<String>,
    pub systemid: Option<String>,
    pub tablespaces: Option<Vec<Tablespace>>,
    pub timeline: Option<u32>,
    pub version: Option<u32>,
    pub xlog_segment_size: u64,
}

impl Default for BackupInfo {
    fn default() -> Self {
        BackupInfo {
            backup_label: None,
            backup_name: None,
            begin_offset: None,
            begin_time: None,
            begin_wal: None,
            begin_xlog: None,
            children_backup_ids: None,
            cluster_size: None,
            compression: None,
            config_file: None,
            copy_stats: None,
            data_checksums: None,
            deduplicated_size: None,
            encryption: None,
            end_offset: None,
            end_time: None,
            end_wal: None,
            end_xlog: None,
            error: None,
            hba_file: None,
            ident_file: None,
            included_files: None,
            mode: None,
            parent_backup_id: None,
            pgdata: None,
            server_name: None,
            size: None,
            snapshots_info: None,
            status: "EMPTY".into(),
            summarize_wal: None,
            systemid: None,
            tablespaces: None,
            timeline: None,
            version: None,
            xlog_segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupInfoError {
    #[error("{path}: line {line}: '{text}' is not key=value")]
    BadLine { path: String, line: usize, text: String },
    #[error("{path}: unsupported field '{key}' (the backup was created by a newer Barman; upgrade to read it)")]
    UnknownKey { path: String, key: String },
    #[error("{path}: field '{key}': cannot read {value:?}: {why}")]
    BadValue { path: String, key: String, value: String, why: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Python's `%s` of a plain text field. A line break would end the line early
/// (Barman writes it raw and then cannot read its own file): it becomes a space.
fn plain(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "None".into(), |s| s.replace(['\n', '\r'], " "))
}

fn shown<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "None".into(), ToString::to_string)
}

/// Barman's `null_repr`: `repr()` of a non-empty value, else None.
fn null_repr(v: Option<PyValue>) -> String {
    match v {
        Some(PyValue::Str(s)) if s.is_empty() => "None".into(),
        Some(PyValue::List(l)) if l.is_empty() => "None".into(),
        Some(PyValue::Dict(d)) if d.is_empty() => "None".into(),
        Some(PyValue::None) | None => "None".into(),
        Some(v) => v.repr(),
    }
}

impl BackupInfo {
    /// The file's text, lines in Barman's (alphabetical) order.
    pub fn to_text(&self) -> String {
        self.fields().into_iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    /// The file's fields as written, in its order: the null `backup_name` and
    /// `snapshots_info` left out, as Barman leaves them out.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut lines: Vec<(&'static str, String)> = vec![
            (
                "backup_label",
                self.backup_label.as_ref().filter(|s| !s.is_empty()).map_or("None".into(), |s| repr_str(s)),
            ),
            ("begin_offset", shown(&self.begin_offset)),
            ("begin_time", self.begin_time.as_ref().map_or("None".into(), format_time)),
            ("begin_wal", shown(&self.begin_wal)),
            ("begin_xlog", shown(&self.begin_xlog)),
            (
                "children_backup_ids",
                self.children_backup_ids.as_ref().filter(|v| !v.is_empty()).map_or("None".into(), |v| v.join(",")),
            ),
            ("cluster_size", shown(&self.cluster_size)),
            ("compression", plain(&self.compression)),
            ("config_file", plain(&self.config_file)),
            ("copy_stats", null_repr(self.copy_stats.clone())),
            ("data_checksums", plain(&self.data_checksums)),
            ("deduplicated_size", shown(&self.deduplicated_size)),
            ("encryption", plain(&self.encryption)),
            ("end_offset", shown(&self.end_offset)),
            ("end_time", self.end_time.as_ref().map_or("None".into(), format_time)),
            ("end_wal", shown(&self.end_wal)),
            ("end_xlog", shown(&self.end_xlog)),
            ("error", plain(&self.error)),
            ("hba_file", plain(&self.hba_file)),
            ("ident_file", plain(&self.ident_file)),
            (
                "included_files",
                null_repr(
                    self.included_files.as_ref().map(|v| PyValue::List(v.iter().cloned().map(PyValue::Str).collect())),
                ),
            ),
            ("mode", plain(&self.mode)),
            ("parent_backup_id", plain(&self.parent_backup_id)),
            ("pgdata", plain(&self.pgdata)),
            ("server_name", plain(&self.server_name)),
            ("size", shown(&self.size)),
            ("status", self.status.clone()),
            ("summarize_wal", plain(&self.summarize_wal)),
            ("systemid", plain(&self.systemid)),
            (
                "tablespaces",
                match &self.tablespaces {
                    Some(t) if !t.is_empty() => PyValue::List(
                        t.iter()
                            .map(|t| {
                                PyValue::Tuple(vec![
                                    PyValue::Str(t.name.clone()),
                                    PyValue::Int(i64::from(t.oid)),
                                    PyValue::Str(t.location.clone()),
                                ])
                            })
                            .collect(),
                    )
                    .repr(),
                    _ => "None".into(),
                },
            ),
            ("timeline", shown(&self.timeline)),
            ("version", shown(&self.version)),
            ("xlog_segment_size", self.xlog_segment_size.to_string()),
        ];
        // Left out when null, as Barman's `_hide_if_null`.
        if let Some(name) = &self.backup_name {
            lines.push(("backup_name", name.replace(['\n', '\r'], " ")));
        }
        if let Some(s) = &self.snapshots_info {
            lines.push(("snapshots_info", null_repr(Some(s.clone()))));
        }
        lines.sort_by(|a, b| a.0.cmp(b.0));
        lines
    }

    /// Reads the text of a backup.info; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<BackupInfo, BackupInfoError> {
        let mut b = BackupInfo::default();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(BackupInfoError::BadLine { path: path.into(), line: n + 1, text: t.into() });
            };
            let (k, v) = (k.trim(), v.trim());
            b.set(k, v).map_err(|e| match e {
                SetError::Unknown => BackupInfoError::UnknownKey { path: path.into(), key: k.into() },
                SetError::Bad(why) => {
                    BackupInfoError::BadValue { path: path.into(), key: k.into(), value: v.into(), why }
                }
            })?;
        }
        Ok(b)
    }

    pub fn read(path: &Path) -> Result<BackupInfo, BackupInfoError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| BackupInfoError::Io { path: path.display().to_string(), source })?;
        BackupInfo::parse(&text, &path.display().to_string())
    }

    /// Writes the file durably: temporary name, fsync, rename, directory fsync.
    pub fn save(&self, path: &Path) -> Result<(), BackupInfoError> {
        let io = |source| BackupInfoError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent() {
            super::durable::create_dir_all(dir).map_err(io)?;
        }
        let mut f = DurableFile::create(path).map_err(io)?;
        f.write_all(self.to_text().as_bytes()).map_err(io)?;
        f.commit_with(0o644, None).map_err(io)
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), SetError> {
        let none = v == "None";
        let text = || (!none).then(|| v.to_string());
        let int = || -> Result<Option<u64>, SetError> {
            if none { Ok(None) } else { v.parse().map(Some).map_err(|_| SetError::Bad("not an integer".into())) }
        };
        let time = || -> Result<Option<DateTime<FixedOffset>>, SetError> {
            if none {
                Ok(None)
            } else {
                parse_time(v).map(Some).ok_or_else(|| SetError::Bad("not a date and time".into()))
            }
        };
        let literal = || -> Result<Option<PyValue>, SetError> {
            if none { Ok(None) } else { PyValue::parse(v).map(Some).map_err(|e| SetError::Bad(e.to_string())) }
        };
        let small = |x: Option<u64>| x.map(u32::try_from).transpose().map_err(|_| SetError::Bad("out of range".into()));
        match key {
            "backup_label" => {
                self.backup_label = match literal()? {
                    None | Some(PyValue::None) => None,
                    Some(PyValue::Str(s)) => Some(s),
                    Some(_) => return Err(SetError::Bad("not a string".into())),
                }
            }
            "backup_name" => self.backup_name = text(),
            "begin_offset" => self.begin_offset = int()?,
            "begin_time" => self.begin_time = time()?,
            "begin_wal" => self.begin_wal = wal(text())?,
            "begin_xlog" => self.begin_xlog = lsn(text())?,
            "children_backup_ids" => {
                self.children_backup_ids =
                    text().filter(|s| !s.is_empty()).map(|s| s.split(',').map(String::from).collect())
            }
            "cluster_size" => self.cluster_size = int()?,
            "compression" => self.compression = text(),
            "config_file" => self.config_file = text(),
            "copy_stats" => self.copy_stats = literal()?,
            "data_checksums" => self.data_checksums = text(),
            "deduplicated_size" => self.deduplicated_size = int()?,
            "encryption" => self.encryption = text(),
            "end_offset" => self.end_offset = int()?,
            "end_time" => self.end_time = time()?,
            "end_wal" => self.end_wal = wal(text())?,
            "end_xlog" => self.end_xlog = lsn(text())?,
            "error" => self.error = text(),
            "hba_file" => self.hba_file = text(),
            "ident_file" => self.ident_file = text(),
            "included_files" => {
                self.included_files = match literal()? {
                    None | Some(PyValue::None) => None,
                    Some(v) => Some(
                        v.items()
                            .ok_or_else(|| SetError::Bad("not a list".into()))?
                            .iter()
                            .map(|x| x.as_str().map(String::from).ok_or_else(|| SetError::Bad("not a string".into())))
                            .collect::<Result<_, _>>()?,
                    ),
                }
            }
            "mode" => self.mode = text(),
            "parent_backup_id" => self.parent_backup_id = text(),
            "pgdata" => self.pgdata = text(),
            "server_name" => self.server_name = text(),
            "size" => self.size = int()?,
            "snapshots_info" => self.snapshots_info = literal()?,
            "status" => self.status = v.to_string(),
            "summarize_wal" => self.summarize_wal = text(),
            "systemid" => self.systemid = text(),
            "tablespaces" => self.tablespaces = tablespaces(literal()?)?,
            "timeline" => self.timeline = small(int()?)?,
            "version" => self.version = small(int()?)?,
            "xlog_segment_size" => self.xlog_segment_size = int()?.unwrap_or(DEFAULT_SEGMENT_SIZE),
            _ => return Err(SetError::Unknown),
        }
        Ok(())
    }
}

enum SetError {
    Unknown,
    Bad(String),
}

fn wal(v: Option<String>) -> Result<Option<WalFileName>, SetError> {
    v.map(|s| s.parse().map_err(|_| SetError::Bad("not a WAL file name".into()))).transpose()
}

fn lsn(v: Option<String>) -> Result<Option<Lsn>, SetError> {
    v.map(|s| s.parse().map_err(|_| SetError::Bad("not an LSN".into()))).transpose()
}

fn tablespaces(v: Option<PyValue>) -> Result<Option<Vec<Tablespace>>, SetError> {
    let Some(v) = v else { return Ok(None) };
    let items = match &v {
        PyValue::None => return Ok(None),
        v => v.items().ok_or_else(|| SetError::Bad("not a list".into()))?,
    };
    if items.is_empty() {
        return Ok(None);
    }
    items
        .iter()
        .map(|t| match t.items() {
            Some([PyValue::Str(name), PyValue::Int(oid), PyValue::Str(location)]) => Ok(Tablespace {
                name: name.clone(),
                oid: u32::try_from(*oid).map_err(|_| SetError::Bad(format!("oid {oid}")))?,
                location: location.clone(),
            }),
            _ => Err(SetError::Bad("a tablespace is not (name, oid, location)".into())),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_hidden_fields() {
        let text = BackupInfo::default().to_text();
        assert_eq!(text.lines().count(), 33, "{text}");
        assert!(text.contains("status=EMPTY\n") && text.contains("xlog_segment_size=16777216\n"));
        assert!(!text.contains("backup_name") && !text.contains("snapshots_info"));
        let keys: Vec<&str> = text.lines().map(|l| l.split('=').next().unwrap_or("")).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = BackupInfo::parse("status=DONE\nfuture_key=1\n", "x/backup.info").unwrap_err().to_string();
        assert!(e.contains("x/backup.info") && e.contains("future_key"), "{e}");
        let e = BackupInfo::parse("size=big\n", "f").unwrap_err().to_string();
        assert!(e.contains("'size'") && e.contains("big"), "{e}");
        let e = BackupInfo::parse("no equals sign\n", "f").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn a_line_break_in_an_error_stays_one_line() {
        let b = BackupInfo { error: Some("failure\nsecond line".into()), ..Default::default() };
        let back = BackupInfo::parse(&b.to_text(), "f").unwrap();
        assert_eq!(back.error.as_deref(), Some("failure second line"));
    }
}
