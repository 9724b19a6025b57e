//! The cluster: which node owns (streams, backs up) each PostgreSQL server, decided through
//! Raft. The decision logic is pure and lives here; the Raft plumbing around it comes next.

pub mod ownership;
