//! Backup and recovery for PostgreSQL, compatible with Barman's commands, options
//! and on-disk formats. The folders are the rooms of DESIGN.md; a room calls only
//! the rooms below it.

pub mod archive;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod hooks;
pub mod node;
pub mod postgres;
pub mod recover;
pub mod sync;
pub mod transport;
pub mod wal;
