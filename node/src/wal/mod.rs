//! The WAL room: names, positions, segment sizes, page headers, history files
//! and the compression codecs of the archive. Pure code, no I/O beyond streams.

pub mod compression;
pub mod header;
pub mod history;
pub mod lsn;
pub mod name;
pub mod segment;

pub use header::SystemId;
pub use lsn::Lsn;
pub use name::{TimelineId, WalFileName, WalKind};
pub use segment::{SegmentId, SegmentSize};
