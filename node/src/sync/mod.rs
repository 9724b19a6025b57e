//! Geo-redundancy: what a server holds (`sync-info`), and passive nodes that copy it.

pub mod info;
