//! The clients that run on the PostgreSQL host, wire-compatible with Barman's:
//! `barman-wal-archive` (archive_command) and `barman-wal-restore`
//! (restore_command). Like Barman's, they run the system `ssh`, so the user's
//! ssh configuration (keys, ports, ControlMaster) applies.

pub mod wal_archive;
pub mod wal_restore;

use std::process::Command;

/// The options both clients share: how to reach the Barman server.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// User of the ssh connection to the Barman server
    #[arg(short = 'U', long = "user", default_value = "barman")]
    pub user: String,
    /// Port of the ssh connection to the Barman server
    #[arg(long = "port")]
    pub port: Option<String>,
    /// Configuration file on the Barman server
    #[arg(short = 'c', long = "config")]
    pub config: Option<String>,
    /// Test the connection and the server's configuration only
    #[arg(short = 't', long = "test")]
    pub test: bool,
}

/// `ssh [-p PORT] -q -T USER@HOST barman [<config>] <rest...>`.
pub fn ssh_command(port: Option<&str>, user: &str, host: &str) -> Command {
    let mut c = Command::new("ssh");
    if let Some(p) = port {
        c.arg("-p").arg(p);
    }
    c.arg("-q").arg("-T").arg(format!("{user}@{host}")).arg("barman");
    c
}

/// `ERROR: <msg>` on stderr, then the exit code (after `sleep` seconds, if any).
pub fn fail(msg: &str, code: i32, sleep: u64) -> i32 {
    eprintln!("ERROR: {msg}");
    if sleep > 0 {
        eprintln!("Sleeping for {sleep} seconds.");
        std::thread::sleep(std::time::Duration::from_secs(sleep));
    }
    code
}

/// The exit code of a finished process; a signal counts as failure.
pub fn code_of(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(255)
}
