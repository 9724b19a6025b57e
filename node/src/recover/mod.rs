//! Recovery of a backup into a PostgreSQL data directory (`barman recover`), on this host
//! or another one reached through SSH.

pub mod dest;
pub mod plan;
pub mod remote;
pub mod settings;
