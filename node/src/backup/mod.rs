//! Base backups: writing what `BASE_BACKUP` sends into Barman's layout.

pub mod check;
pub mod copy;
pub mod extract;
pub mod label;
pub mod retention;
pub mod store;
