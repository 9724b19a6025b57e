//! The catalog room: Barman's on-disk layout, durable writes, lock files,
//! `xlog.db`, `identity.json` and the errors directory.

pub mod backup_info;
pub mod backups;
pub mod confine;
pub mod deletions;
pub mod durable;
pub mod identity;
pub mod layout;
pub mod lock;
pub mod pyjson;
pub mod pyliteral;
pub mod rejects;
pub mod wal_removal;
pub mod xlogdb;

pub use layout::ServerLayout;
