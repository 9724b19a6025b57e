//! The cluster: which node owns (streams, backs up) each PostgreSQL server, decided through
//! Raft. The decision logic is pure ([`ownership`]); the replicated types are in [`types`].

pub mod network;
pub mod ownership;
pub mod rpc;
pub mod store;
pub mod types;
