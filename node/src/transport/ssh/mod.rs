//! Our SSH client (russh): connects as OpenSSH would for the same command line, checks the
//! host key against known_hosts, logs in with the account's keys, runs commands and streams
//! data into them. [`Remote`] is the blocking face used by the commands.

mod target;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, client};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::lock;

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

/// How the host key check went, kept for the error message.
#[derive(Debug, Clone)]
enum KeyVerdict {
    Unknown,
    Changed { file: String, line: usize },
}

struct Verifier {
    target: SshTarget,
    verdict: Arc<Mutex<Option<KeyVerdict>>>,
}

impl Verifier {
    fn judge(&self, key: &PublicKey) -> Result<(), KeyVerdict> {
        for file in &self.target.known_hosts {
            let Ok(recorded) =
                russh::keys::known_hosts::known_host_keys_path(&self.target.host_key_alias, self.target.port, file)
            else {
                continue;
            };
            for (line, known) in recorded {
                if known.key_data() == key.key_data() {
                    return Ok(());
                }
                if known.algorithm() == key.algorithm() {
                    return Err(KeyVerdict::Changed { file: file.display().to_string(), line });
                }
            }
        }
        match self.target.strict {
            StrictHostKeyChecking::AcceptNew => Ok(()),
            StrictHostKeyChecking::Yes => Err(KeyVerdict::Unknown),
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
        let preferred = russh::Preferred { compression, cipher, ..Default::default() };
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
                return Err(match lock(&verdict).clone() {
                    Some(KeyVerdict::Unknown) => SshError::UnknownHost {
                        who,
                        files: target
                            .known_hosts
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    },
                    Some(KeyVerdict::Changed { file, line }) => SshError::ChangedKey { who, file, line },
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
