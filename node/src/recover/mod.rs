//! Recovery of a backup into a PostgreSQL data directory (`barman recover`).

pub mod settings;
