//! Test harness for the Rust Barman: real PostgreSQL clusters, a throwaway sshd, the reference
//! Barman; everything a test starts is torn down on drop, even when the test panics.
//!
//! Works as root (PostgreSQL then runs as the `postgres` OS user, sshd logs in as root) and as an
//! ordinary user (everything runs as that user). Declare the [`util::TestDir`] first so that it
//! is dropped last:
//!
//! ```no_run
//! use cluster_tests::{pg::{PgCluster, PgOptions}, ssh::Sshd, util::TestDir};
//! # fn main() -> anyhow::Result<()> {
//! let dir = TestDir::new()?;
//! let pg = PgCluster::start(dir.path(), PgOptions::default())?;
//! let sshd = Sshd::start(dir.path(), &[], &[])?;
//! assert_eq!(pg.psql("SELECT 1")?, "1");
//! let _plain_ssh_uses_our_config = format!("PATH={}:$PATH", sshd.wrapper_dir().display());
//! # Ok(()) }
//! ```

pub mod fixture;
pub mod invariants;
pub mod netns;
pub mod nodes;
pub mod pg;
pub mod proxy;
pub mod reference;
pub mod ssh;
pub mod util;
