//! Recovery of a backup into a PostgreSQL data directory (`barman recover`), on this host
//! or another one reached through SSH.

pub mod copy;
pub mod dest;
pub mod local;
pub mod plan;
pub mod remote;
pub mod settings;
