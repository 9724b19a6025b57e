//! Our SSH client (russh): connects as OpenSSH would for the same command line, checks the
//! host key against known_hosts, logs in with the account's keys, runs commands and streams
//! data into them. [`Remote`] is the blocking face used by the commands.

mod host_hash;
mod known_hosts;
mod target;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, client};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::lock;
use known_hosts::Verdict;

pub use known_hosts::KnownHostsError;
pub use target::{SshTarget, StrictHostKeyChecking};

/// Without `ConnectTimeout`, how long a TCP connect and handshake may take.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot use the ssh command {command:?}: {why}")]
    Command { command: String, why: String },
    #[error("cannot connect to {who}: {why}")]
    Connect { who: String, why: String },
    #[error(
        "the host key of {who} is not in the known hosts files ({files}): add it (ssh-keyscan) or connect once \
         with ssh"
    )]
    UnknownHost { who: String, files: String },
    #[error(
        "the host key of {who} differs from the one recorded in {file} line {line}: someone may be intercepting \
         the connection; check the host and fix known_hosts"
    )]
    ChangedKey { who: String, file: String, line: usize },
    #[error(
        "the host key of {who} is marked @revoked in {file}:{line}: it is refused; check the host and give it \
         a new key"
    )]
    RevokedKey { who: String, file: String, line: usize },
    #[error(
        "{who} is known only through the @cert-authority line {file}:{line}, and host certificates are not \
         supported: list the host key itself in known_hosts (ssh-keyscan)"
    )]
    HostCertificate { who: String, file: String, line: usize },
    #[error(
        "{who} is a new host but its key cannot be recorded (StrictHostKeyChecking accept-new): {source}; fix \
         that or add the key with ssh-keyscan"
    )]
    RecordHostKey {
        who: String,
        #[source]
        source: KnownHostsError,
    },
    #[error("{who} accepted none of the keys offered ({tried}): add one to that account's authorized_keys")]
    Auth { who: String, tried: String },
    #[error("ssh session with {who} failed: {why}")]
    Session { who: String, why: String },
    #[error("cannot start the SSH client runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What a remote command gave back.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// None when the command died without an exit status (a signal).
    pub code: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The first line of stderr (or the exit status), for one-line errors.
    pub fn why(&self) -> String {
        let err = String::from_utf8_lossy(&self.stderr);
        match err.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => line.to_string(),
            None => match self.code {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".into(),
            },
        }
    }
}

/// Why the host key was refused, kept for the error message.
#[derive(Debug)]
enum KeyVerdict {
    Unknown,
    Changed { file: String, line: usize },
    Revoked { file: String, line: usize },
    CertificateOnly { file: String, line: usize },
    NotRecorded(KnownHostsError),
}

impl KeyVerdict {
    fn into_error(self, target: &SshTarget) -> SshError {
        let who = target.display();
        match self {
            KeyVerdict::Unknown => SshError::UnknownHost {
                who,
                files: target.known_hosts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            },
            KeyVerdict::Changed { file, line } => SshError::ChangedKey { who, file, line },
            KeyVerdict::Revoked { file, line } => SshError::RevokedKey { who, file, line },
            KeyVerdict::CertificateOnly { file, line } => SshError::HostCertificate { who, file, line },
            KeyVerdict::NotRecorded(source) => SshError::RecordHostKey { who, source },
        }
    }
}

struct Verifier {
    target: SshTarget,
    verdict: Arc<Mutex<Option<KeyVerdict>>>,
}

impl Verifier {
    /// Accepts `key` or says why not; with `accept-new`, a new host's key is recorded
    /// first, so that the next connection holds the host to it.
    fn judge(&self, key: &PublicKey) -> Result<(), KeyVerdict> {
        let t = &self.target;
        let entries = known_hosts::entries_for(&t.known_hosts, &t.known_hosts_name);
        let at = |file: std::path::PathBuf| file.display().to_string();
        match known_hosts::judge(&entries, key) {
            Verdict::Known => Ok(()),
            Verdict::Revoked { file, line } => Err(KeyVerdict::Revoked { file: at(file), line }),
            Verdict::Changed { file, line } => Err(KeyVerdict::Changed { file: at(file), line }),
            Verdict::CertificateOnly { file, line } => Err(KeyVerdict::CertificateOnly { file: at(file), line }),
            Verdict::Unknown => match (t.strict, &t.user_known_hosts) {
                (StrictHostKeyChecking::Yes, _) => Err(KeyVerdict::Unknown),
                // `UserKnownHostsFile none`: nowhere to record, as the user asked.
                (StrictHostKeyChecking::AcceptNew, None) => Ok(()),
                (StrictHostKeyChecking::AcceptNew, Some(file)) => {
                    if known_hosts::record(file, &t.known_hosts_name, key).map_err(KeyVerdict::NotRecorded)? {
                        tracing::info!("recorded the host key of {} in {}", t.display(), file.display());
                    }
                    Ok(())
                }
            },
        }
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *lock(&self.verdict) = Some(KeyVerdict::Unknown);
            return Ok(false);
        };
        match self.judge(key) {
            Ok(()) => Ok(true),
            Err(v) => {
                *lock(&self.verdict) = Some(v);
                Ok(false)
            }
        }
    }
}

/// One authenticated SSH connection; channels are opened on it as needed.
#[derive(Clone)]
pub struct Session {
    handle: Arc<client::Handle<Verifier>>,
    who: String,
}

impl Session {
    pub async fn connect(target: &SshTarget, compress: bool) -> Result<Session, SshError> {
        let who = target.display();
        let compression = if compress || target.compression {
            std::borrow::Cow::Borrowed(
                &[russh::compression::ZLIB_LEGACY, russh::compression::ZLIB, russh::compression::NONE][..],
            )
        } else {
            std::borrow::Cow::Borrowed(&[russh::compression::NONE][..])
        };
        // AES-GCM first: with AES-NI several times faster than ChaCha20 (russh's first choice).
        let cipher = std::borrow::Cow::Borrowed(
            &[
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_128_CTR,
            ][..],
        );
        // The types of the host's recorded keys first, so a host that also has another type
        // presents the one we know (OpenSSH orders them the same way).
        let entries = known_hosts::entries_for(&target.known_hosts, &target.known_hosts_name);
        let key = std::borrow::Cow::Owned(known_hosts::known_types_first(&entries, &russh::Preferred::DEFAULT.key));
        let preferred = russh::Preferred { compression, cipher, key, ..Default::default() };
        let config = Arc::new(client::Config {
            preferred,
            nodelay: true,
            keepalive_interval: Some(Duration::from_secs(30)),
            window_size: 8 * 1024 * 1024,
            ..Default::default()
        });
        let verdict = Arc::new(Mutex::new(None));
        let handler = Verifier { target: target.clone(), verdict: verdict.clone() };
        let wait = target.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let addr = (target.hostname.clone(), target.port);
        let connected = tokio::time::timeout(wait, client::connect(config, addr, handler)).await;
        let mut handle = match connected {
            Err(_) => return Err(SshError::Connect { who, why: format!("no answer within {} s", wait.as_secs()) }),
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return Err(match lock(&verdict).take() {
                    Some(v) => v.into_error(target),
                    None => SshError::Connect { who, why: e.to_string() },
                });
            }
        };
        let mut tried = Vec::new();
        for path in &target.identity_files {
            if !path.exists() {
                continue;
            }
            let key = match russh::keys::load_secret_key(path, None) {
                Ok(k) => k,
                Err(e) => {
                    tried.push(format!("{} (unreadable: {e})", path.display()));
                    continue;
                }
            };
            let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
            let res = handle
                .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(|e| SshError::Session { who: who.clone(), why: e.to_string() })?;
            if res.success() {
                return Ok(Session { handle: Arc::new(handle), who });
            }
            tried.push(path.display().to_string());
        }
        if tried.is_empty() {
            tried.push("no key file found".into());
        }
        Err(SshError::Auth { who, tried: tried.join(", ") })
    }

    /// `user@host[:port]`.
    pub fn who(&self) -> &str {
        &self.who
    }

    fn failed(&self, e: impl std::fmt::Display) -> SshError {
        SshError::Session { who: self.who.clone(), why: e.to_string() }
    }

    /// Runs `command` (through the account's shell) with `stdin`, collecting its output.
    pub async fn exec(&self, command: &str, stdin: Option<Bytes>) -> Result<Output, SshError> {
        let (input, collector) = self.start(command).await?;
        if let Some(data) = stdin {
            input.send(data).await?;
        }
        input.finish().await?;
        collector.finish().await
    }

    /// An SFTP session on a new channel (OpenSSH's `sftp-server` on the host).
    pub async fn sftp(&self) -> Result<russh_sftp::client::SftpSession, SshError> {
        let channel = self.handle.channel_open_session().await.map_err(|e| self.failed(e))?;
        channel.request_subsystem(true, "sftp").await.map_err(|e| self.failed(e))?;
        // Many reads in flight: a link with latency stays full (16, the default, halves
        // loopback throughput against 64).
        let config = russh_sftp::client::Config { max_concurrent_reads: 64, ..Default::default() };
        russh_sftp::client::SftpSession::new_with_config(channel.into_stream(), config)
            .await
            .map_err(|e| SshError::Session { who: self.who.clone(), why: format!("starting SFTP: {e}") })
    }

    /// Runs `command` with its stdin and stdout as one byte stream (the agent's protocol).
    pub async fn stream(&self, command: &str) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let channel = self.handle.channel_open_session().await.map_err(|e| self.failed(e))?;
        channel.exec(true, command).await.map_err(|e| self.failed(e))?;
        Ok(channel.into_stream())
    }

    /// Starts `command`; its stdin is fed through the [`Input`], its output gathered by the
    /// [`Collector`] (read concurrently, so a chatty command never stalls the connection).
    pub async fn start(&self, command: &str) -> Result<(Input, Collector), SshError> {
        let channel = self.handle.channel_open_session().await.map_err(|e| self.failed(e))?;
        channel.exec(true, command).await.map_err(|e| self.failed(e))?;
        let (mut read, write) = channel.split();
        let task = tokio::spawn(async move {
            let mut out = Output::default();
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.code = Some(exit_status),
                    _ => {}
                }
            }
            out
        });
        Ok((Input { write, who: self.who.clone() }, Collector { task, who: self.who.clone() }))
    }
}

/// The stdin of a running remote command.
pub struct Input {
    write: russh::ChannelWriteHalf<client::Msg>,
    who: String,
}

impl Input {
    pub async fn send(&self, data: Bytes) -> Result<(), SshError> {
        self.write
            .data_bytes(data)
            .await
            .map_err(|e| SshError::Session { who: self.who.clone(), why: format!("sending data: {e}") })
    }

    /// End of input: the command sees EOF.
    pub async fn finish(self) -> Result<(), SshError> {
        self.write
            .eof()
            .await
            .map_err(|e| SshError::Session { who: self.who.clone(), why: format!("closing the input: {e}") })
    }
}

/// The output of a running remote command, gathered until it ends.
pub struct Collector {
    task: JoinHandle<Output>,
    who: String,
}

impl Collector {
    pub async fn finish(self) -> Result<Output, SshError> {
        self.task.await.map_err(|e| SshError::Session { who: self.who, why: format!("reading the output: {e}") })
    }
}

/// A remote host for blocking callers: its own runtime and one control connection.
pub struct Remote {
    rt: Runtime,
    target: SshTarget,
    compress: bool,
    control: Session,
}

impl Remote {
    /// Parses the ssh command line and connects; `compress` asks for zlib on the wire.
    pub fn connect(command: &str, compress: bool) -> Result<Remote, SshError> {
        let target = SshTarget::from_command(command)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ssh")
            .enable_all()
            .build()
            .map_err(SshError::Runtime)?;
        let control = rt.block_on(Session::connect(&target, compress))?;
        Ok(Remote { rt, target, compress, control })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Runs a shell command on the host, feeding it `stdin`.
    pub fn run(&self, command: &str, stdin: Option<Vec<u8>>) -> Result<Output, SshError> {
        self.rt.block_on(self.control.exec(command, stdin.map(Bytes::from)))
    }

    /// A further connection to the same account (parallel streams each get their own, so
    /// their encryption runs on different cores).
    pub async fn open(&self) -> Result<Session, SshError> {
        Session::connect(&self.target, self.compress).await
    }

    pub fn control(&self) -> &Session {
        &self.control
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
}

/// `s` quoted for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDno5U5ZzK2+kJC1p9PUOQXFqjCaTdYc2nsdSjOaFb7o";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBOo7F1XOSIpcBdgFfA4TPwwr97iD8ouwGmy+H8wO+IA";
    const KEY_C: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICxTlWkePNnskTaEmXLTLi22GqJUVh5ZCRJRd3Y57qgZ";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBO+RsOzFlAcA+b3h2sg0BEhuyvyUAB7fDhe353mbE76WQd9c19FnDG38QXQM+WCViNxxebYqQ8iFvt8QGedIefM=";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).expect("test key")
    }

    /// A verifier for `ssh ... <rest>` whose only known hosts file is `known`.
    fn verifier(strict: &str, known: &Path, rest: &str) -> Verifier {
        let cmd = format!(
            "ssh -F /dev/null -o StrictHostKeyChecking={strict} -o UserKnownHostsFile={} \
             -o GlobalKnownHostsFile=none {rest}",
            known.display()
        );
        Verifier { target: SshTarget::from_command(&cmd).expect(&cmd), verdict: Arc::new(Mutex::new(None)) }
    }

    /// The one-line error a refusal of `key` gives.
    fn refusal(v: &Verifier, key: &str) -> String {
        let msg = v.judge(&self::key(key)).expect_err("refused").into_error(&v.target).to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        msg
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn accept_new_records_the_key_and_then_holds_the_host_to_it() {
        let dir = tempdir();
        let ssh_dir = dir.path().join("home/.ssh");
        let known = ssh_dir.join("known_hosts");
        let v = verifier("accept-new", &known, "-p 2222 postgres@DB1");
        v.judge(&key(KEY_A)).expect("a new host is accepted");
        assert_eq!(std::fs::read_to_string(&known).expect("recorded"), format!("[db1]:2222 {KEY_A}\n"));
        assert_eq!((mode(&known), mode(&ssh_dir)), (0o600, 0o700));
        // The next connection finds it: same key accepted and not recorded twice...
        v.judge(&key(KEY_A)).expect("the recorded key");
        assert_eq!(std::fs::read_to_string(&known).expect("read").lines().count(), 1);
        // ...another key refused as changed.
        let msg = refusal(&v, KEY_B);
        assert!(msg.contains("postgres@DB1:2222") && msg.contains("differs from the one recorded"), "{msg}");
        assert!(msg.contains(&format!("{} line 1", known.display())), "{msg}");
    }

    #[test]
    fn accept_new_appends_port_22_hosts_by_name_to_an_existing_file() {
        let dir = tempdir();
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, format!("db2 {KEY_B}")).expect("write");
        std::fs::set_permissions(&known, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        // `no` accepts a new host as `accept-new` does, and records it the same way.
        verifier("no", &known, "db1").judge(&key(&format!("{KEY_A} comment"))).expect("accepted");
        let text = std::fs::read_to_string(&known).expect("read");
        assert_eq!(text, format!("db2 {KEY_B}\ndb1 {KEY_A}\n"));
        assert_eq!(mode(&known), 0o644, "an existing file keeps its mode");
        // The alias is the name when one is given, without the port.
        verifier("accept-new", &known, "-o HostKeyAlias=standby -p 2222 db3").judge(&key(KEY_C)).expect("accepted");
        assert!(std::fs::read_to_string(&known).expect("read").ends_with(&format!("\nstandby {KEY_C}\n")));
    }

    #[test]
    fn accept_new_never_writes_through_a_symlink() {
        let dir = tempdir();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "").expect("write");
        let known = dir.path().join("known_hosts");
        std::os::unix::fs::symlink(&elsewhere, &known).expect("symlink");
        let v = verifier("accept-new", &known, "db1");
        let msg = refusal(&v, KEY_A);
        assert!(msg.contains("its key cannot be recorded") && msg.contains("symbolic link"), "{msg}");
        assert_eq!(std::fs::read_to_string(&elsewhere).expect("read"), "");
    }

    #[test]
    fn strict_checking_records_nothing() {
        let dir = tempdir();
        let known = dir.path().join("known_hosts");
        let msg = refusal(&verifier("yes", &known, "db1"), KEY_A);
        assert!(msg.contains("not in the known hosts files"), "{msg}");
        assert!(!known.exists());
    }

    #[test]
    fn a_revoked_key_is_refused_even_when_another_line_lists_it() {
        let dir = tempdir();
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, format!("db1 {KEY_A}\n# rotated\n@revoked * {KEY_A}\n")).expect("write");
        for strict in ["yes", "accept-new"] {
            let msg = refusal(&verifier(strict, &known, "postgres@db1"), KEY_A);
            assert!(msg.contains("postgres@db1") && msg.contains("@revoked"), "{msg}");
            assert!(msg.contains(&format!("{}:3", known.display())), "{msg}");
        }
        // A revoked key of an unknown host is not recorded either.
        let msg = refusal(&verifier("accept-new", &known, "db2"), KEY_A);
        assert!(msg.contains("@revoked"), "{msg}");
        assert_eq!(std::fs::read_to_string(&known).expect("read").lines().count(), 3);
    }

    #[test]
    fn a_host_known_only_by_a_cert_authority_is_refused() {
        let dir = tempdir();
        let known = dir.path().join("known_hosts");
        let text = format!("@cert-authority *.example.com {KEY_B}\n");
        std::fs::write(&known, &text).expect("write");
        for strict in ["yes", "accept-new"] {
            let msg = refusal(&verifier(strict, &known, "postgres@db1.example.com"), KEY_A);
            assert!(msg.contains("postgres@db1.example.com"), "{msg}");
            assert!(msg.contains("host certificates are not supported"), "{msg}");
            assert!(msg.contains("list the host key itself"), "{msg}");
            assert!(msg.contains(&format!("{}:1", known.display())), "{msg}");
        }
        assert_eq!(std::fs::read_to_string(&known).expect("read"), text, "nothing recorded");
    }

    #[test]
    fn any_listed_key_of_the_host_is_accepted() {
        let dir = tempdir();
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, format!("db1 {KEY_B}\ndb1,db2 {KEY_A}\ndb1 {ECDSA}\n")).expect("write");
        let v = verifier("yes", &known, "db1");
        for k in [KEY_A, KEY_B, ECDSA] {
            v.judge(&key(k)).expect(k);
        }
        let msg = refusal(&v, KEY_C);
        assert!(msg.contains(&format!("{} line 1", known.display())), "{msg}");
        // Listed with a key of another type only: changed, not new, so accept-new does
        // not take it.
        let msg = refusal(&verifier("accept-new", &known, "db2"), ECDSA);
        assert!(msg.contains(&format!("differs from the one recorded in {} line 2", known.display())), "{msg}");
    }

    #[test]
    fn hashed_names_match() {
        let dir = tempdir();
        let known = dir.path().join("known_hosts");
        // `ssh-keygen -H` of `db1` and `[db1]:2222`, both with KEY_A.
        std::fs::write(
            &known,
            format!(
                "|1|al/dusf5ikE2e/SQCTGooGdd+g8=|Jmr1rmALYrMWecu/Ze50LUCSCKc= {KEY_A}\n\
                 |1|NX6D1+7zKuZhm3Sgo0pUY5cL8cw=|UAlWMJLqtSJVX6dgX/dQvISJULQ= {KEY_A}\n"
            ),
        )
        .expect("write");
        for rest in ["db1", "-p 2222 db1"] {
            let v = verifier("accept-new", &known, rest);
            v.judge(&key(KEY_A)).expect(rest);
            assert!(refusal(&v, KEY_B).contains("differs from the one recorded"), "{rest}");
        }
        assert_eq!(std::fs::read_to_string(&known).expect("read").lines().count(), 2, "nothing recorded");
    }
}
