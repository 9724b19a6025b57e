//! Where a server's files live (Barman's layout; every directory configurable).

use crate::config::{GlobalConfig, ServerConfig};
use crate::wal::WalFileName;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ServerLayout {
    pub server: String,
    pub backup_dir: PathBuf,
    pub base_dir: PathBuf,
    pub wals_dir: PathBuf,
    pub incoming_dir: PathBuf,
    pub streaming_dir: PathBuf,
    pub errors_dir: PathBuf,
    pub xlogdb_dir: PathBuf,
    pub lock_dir: PathBuf,
}

impl ServerLayout {
    pub fn new(global: &GlobalConfig, s: &ServerConfig) -> Self {
        ServerLayout {
            server: s.name.clone(),
            backup_dir: s.backup_directory(),
            base_dir: s.basebackups_directory(),
            wals_dir: s.wals_directory(),
            incoming_dir: s.incoming_wals_directory(),
            streaming_dir: s.streaming_wals_directory(),
            errors_dir: s.errors_directory(),
            xlogdb_dir: s.xlogdb_directory(),
            lock_dir: global.lock_directory.clone(),
        }
    }

    /// A layout with Barman's defaults under `backup_dir` (tests, tools).
    pub fn under(server: &str, backup_dir: &Path, lock_dir: &Path) -> Self {
        ServerLayout {
            server: server.to_string(),
            backup_dir: backup_dir.to_path_buf(),
            base_dir: backup_dir.join("base"),
            wals_dir: backup_dir.join("wals"),
            incoming_dir: backup_dir.join("incoming"),
            streaming_dir: backup_dir.join("streaming"),
            errors_dir: backup_dir.join("errors"),
            xlogdb_dir: backup_dir.join("wals"),
            lock_dir: lock_dir.to_path_buf(),
        }
    }

    /// `wals/<TTTTTTTTLLLLLLLL>/<name>`, or `wals/<name>` for history files.
    pub fn wal_path(&self, name: &WalFileName) -> PathBuf {
        match name.hash_dir() {
            Some(h) => self.wals_dir.join(h).join(name.as_str()),
            None => self.wals_dir.join(name.as_str()),
        }
    }

    pub fn xlogdb_path(&self) -> PathBuf {
        self.xlogdb_dir.join(format!("{}-xlog.db", self.server))
    }

    /// The pre-3.13 location, read for migration only.
    pub fn legacy_xlogdb_path(&self) -> PathBuf {
        self.wals_dir.join("xlog.db")
    }

    pub fn identity_path(&self) -> PathBuf {
        self.backup_dir.join("identity.json")
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.backup_dir.join("meta")
    }

    /// The directories `check` creates when missing.
    pub fn directories(&self) -> [(&'static str, &Path); 7] {
        [
            ("backup_directory", &self.backup_dir),
            ("basebackups_directory", &self.base_dir),
            ("errors_directory", &self.errors_dir),
            ("incoming_wals_directory", &self.incoming_dir),
            ("streaming_wals_directory", &self.streaming_dir),
            ("wals_directory", &self.wals_dir),
            ("xlogdb_directory", &self.xlogdb_dir),
        ]
    }
}
