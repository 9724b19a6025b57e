//! The archive room: put-wal, archive-wal, get-wal and receive-wal, and the wire format they
//! share with the `barman-wal-archive` / `barman-wal-restore` clients.

pub mod archive_wal;
pub mod client;
pub mod get_wal;
pub mod put_wal;
pub mod receive_mode;
pub mod receive_wal;
pub mod rpc;
pub mod server;
pub mod validate;
pub mod wire;
