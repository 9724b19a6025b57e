//! What a recovery copies, whichever host it lands on.

use std::path::Path;

use crate::catalog::ServerLayout;
use crate::catalog::backups::Backup;
use crate::catalog::xlogdb::XlogEntry;
use crate::wal::compression::Codecs;

use super::plan::Placement;

/// What a recovery writes at its destination, beside the settings: the backup, its
/// tablespaces, `.barman-recover.info`, the WAL to copy with its status files, the signal
/// file. [`BackupCopy::to_local`] writes it here, [`BackupCopy::to_remote`] through SSH.
pub struct BackupCopy<'a> {
    pub l: &'a ServerLayout,
    pub b: &'a Backup,
    pub dest: &'a Path,
    pub placements: &'a [Placement],
    /// Where the copied WAL goes (`pg_wal`, or `barman_wal` for a PITR).
    pub wal_dest: &'a Path,
    /// The WAL to copy (none with get-wal).
    pub needed: &'a [XlogEntry],
    pub codecs: Codecs,
    pub custom_decompression: bool,
    /// `archive_status/<name>.done` for every copied segment (not for a PITR).
    pub archive_status: bool,
    /// `recovery.signal` or `standby.signal`, when settings are written.
    pub signal: Option<&'static str>,
}
