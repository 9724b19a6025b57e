//! The clients that run on the PostgreSQL host, wire-compatible with Barman's:
//! `barman-wal-archive` (archive_command) and `barman-wal-restore`
//! (restore_command). Like Barman's, they run the system `ssh`, so the user's
//! ssh configuration (keys, ports, ControlMaster) applies.

pub mod wal_archive;
pub mod wal_restore;

use std::path::PathBuf;
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
    /// CA certificate of the cluster, for grpcs://HOST:PORT hosts
    #[arg(long = "tls-ca-file", value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This host's WAL client certificate (barman cluster cert client), for grpcs:// hosts
    #[arg(long = "tls-cert-file", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file
    #[arg(long = "tls-key-file", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
}

/// One of the comma-separated hosts of BARMAN_HOST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Through `ssh HOST barman ...`, as Barman's clients.
    Ssh(String),
    /// `grpcs://HOST:PORT`: a node's gRPC endpoint, over mutual TLS.
    Grpc { host: String, addr: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ssh(h) => f.write_str(h),
            Target::Grpc { addr, .. } => write!(f, "grpcs://{addr}"),
        }
    }
}

/// Splits BARMAN_HOST (`HOST[,HOST...]`, each an ssh host or `grpcs://HOST:PORT`).
pub fn targets(spec: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("BARMAN_HOST '{spec}' has an empty host; expected HOST[,HOST...]"));
        }
        let Some(addr) = item.strip_prefix("grpcs://") else {
            if item.contains("://") {
                return Err(format!("host '{item}': only grpcs://HOST:PORT or a plain ssh host are understood"));
            }
            out.push(Target::Ssh(item.to_string()));
            continue;
        };
        let addr = addr.trim_end_matches('/');
        let (host, port) =
            addr.rsplit_once(':').ok_or_else(|| format!("host '{item}' has no port; expected grpcs://HOST:PORT"))?;
        if port.parse::<u16>().is_err() || host.is_empty() {
            return Err(format!("host '{item}' is not grpcs://HOST:PORT"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        out.push(Target::Grpc { host, addr: addr.to_string() });
    }
    Ok(out)
}

impl Remote {
    /// The TLS files for grpcs:// hosts, read; an error names the missing option.
    pub fn client_tls(&self) -> Result<crate::transport::tls::ClientTls, String> {
        let read = |opt: &str, p: &Option<PathBuf>| -> Result<String, String> {
            let p = p.as_ref().ok_or_else(|| format!("a grpcs:// host needs {opt}"))?;
            std::fs::read_to_string(p).map_err(|e| format!("{opt} {}: {e}", p.display()))
        };
        let ca = read("--tls-ca-file", &self.tls_ca_file)?;
        let cert = read("--tls-cert-file", &self.tls_cert_file)?;
        let key = read("--tls-key-file", &self.tls_key_file)?;
        Ok(crate::transport::tls::ClientTls::from_pem(&ca, &crate::transport::tls::Pem { cert, key }))
    }
}

/// A runtime for one gRPC call of a client (one worker: the main thread reads what it
/// receives while the worker drives the connection).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the gRPC client: {e}"))
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

/// `--test` through ssh: runs `cmd`, prints what the remote side said (stdout, then
/// stderr) and returns its exit code.
pub fn ssh_test(cmd: &mut Command, what: &str) -> i32 {
    match cmd.stdin(std::process::Stdio::null()).output() {
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            println!("{text}");
            code_of(o.status)
        }
        Err(e) => fail(&format!("Impossible to invoke remote {what}: {e}"), 2, 0),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barman_host_is_a_list_of_ssh_and_grpcs_hosts() {
        let t = targets("barman1, grpcs://n1.example:7000,grpcs://[::1]:7001/").unwrap();
        assert_eq!(
            t,
            [
                Target::Ssh("barman1".into()),
                Target::Grpc { host: "n1.example".into(), addr: "n1.example:7000".into() },
                Target::Grpc { host: "::1".into(), addr: "[::1]:7001".into() },
            ]
        );
        assert_eq!(t[1].to_string(), "grpcs://n1.example:7000");
        for bad in ["a,,b", "grpcs://n1", "grpcs://n1:port", "grpcs://:7000", "https://n1:7000", ""] {
            let e = targets(bad).unwrap_err();
            assert!(e.contains("host") || e.contains("BARMAN_HOST"), "{bad}: {e}");
        }
    }
}
