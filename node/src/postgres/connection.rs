//! Opening an async SQL session to PostgreSQL the way libpq would for the same
//! conninfo (hosts, sockets, timeouts, TLS, application name). The questions
//! asked over it are in `queries.rs`.

use super::conninfo::{Conninfo, ConninfoError};
use super::error::{PgError, connect_reason};
use super::params::{ConnParams, Host, LibpqEnv};
use super::tls;
use tokio_postgres::Client;

/// Barman's `PostgreSQL.MINIMAL_VERSION`.
pub const MINIMAL_VERSION: u32 = 90600;

/// An open SQL connection. Dropping it closes the session.
pub struct PgConnection {
    client: Client,
    version: u32,
    user: String,
    target: String,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("server_version_num", &self.version)
            .finish()
    }
}

/// Barman's `int_version_to_string_version`: 150018 → "15.18", 90624 → "9.6.24".
pub fn int_version_to_string_version(v: u32) -> String {
    let (major, minor, patch) = (v / 10000, v / 100 % 100, v % 100);
    if major < 10 { format!("{major}.{minor}.{patch}") } else { format!("{major}.{patch}") }
}

/// The major version as Barman writes it ("15", "9.6") from `server_version_num`.
pub fn major_version(v: u32) -> String {
    simplify_version(&int_version_to_string_version(v))
}

/// Barman's `simplify_version`: drops the last component ("15.18" → "15",
/// "9.6.24" → "9.6", "16beta1" → "16").
pub fn simplify_version(version: &str) -> String {
    let mut parts: Vec<&str> = version.split('.').collect();
    // A development version ("16beta1"): the number before the suffix is kept.
    if let Some(last) = parts.pop()
        && let Some(i) = last.find(|c: char| !c.is_ascii_digit())
    {
        parts.push(&last[..i]);
    }
    parts.join(".")
}

impl PgConnection {
    /// Connects as libpq would with `ci` and the process environment. The session's
    /// application_name is `application_name` unless the conninfo sets one, as
    /// Barman's `SET application_name TO barman`.
    pub async fn connect(ci: &Conninfo, application_name: Option<&str>) -> Result<PgConnection, PgError> {
        PgConnection::connect_with_env(ci, application_name, &LibpqEnv::from_process()).await
    }

    /// [`PgConnection::connect`] with an explicit environment.
    pub async fn connect_with_env(
        ci: &Conninfo,
        application_name: Option<&str>,
        env: &LibpqEnv,
    ) -> Result<PgConnection, PgError> {
        let params = ConnParams::resolve(ci, env)?;
        PgConnection::connect_params(&params, application_name).await
    }

    /// Connects with already resolved parameters.
    pub async fn connect_params(params: &ConnParams, application_name: Option<&str>) -> Result<PgConnection, PgError> {
        // tokio::spawn and tokio::time would panic outside a runtime; say so instead.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| PgError::NoRuntime)?;
        if params.wants_replication() {
            return Err(PgError::BadConninfo(ConninfoError::Unsupported {
                key: "replication".into(),
                why: "a SQL connection cannot be a replication connection",
            }));
        }
        let target = params.target_description();
        let plan = tls::plan(params)?;
        let mut cfg = tokio_config(params, application_name);
        cfg.ssl_mode(plan.mode);
        let fail = |reason: String| PgError::Connect { target: target.clone(), reason };

        // libpq's connect_timeout bounds each host's whole attempt (TCP, TLS,
        // authentication); tokio-postgres bounds only the TCP connect, so the
        // total is bounded here as well.
        let attempt = async {
            match plan.config {
                Some(config) => {
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
                    let (client, conn) = cfg.connect(tls).await?;
                    runtime.spawn(drive("tls", conn));
                    Ok::<_, tokio_postgres::Error>(client)
                }
                None => {
                    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                    runtime.spawn(drive("plain", conn));
                    Ok(client)
                }
            }
        };
        let result = match params.connect_timeout {
            Some(t) => {
                let hosts = u32::try_from(params.hosts.len()).unwrap_or(u32::MAX).max(1);
                match tokio::time::timeout(t.saturating_mul(hosts), attempt).await {
                    Ok(r) => r,
                    Err(_) => return Err(fail("timeout expired".into())),
                }
            }
            None => attempt.await,
        };
        let client = result.map_err(|e| {
            let mut reason = connect_reason(&e);
            if let (Some(file), Some(code)) = (&params.password_file, e.code())
                && code.code() == "28P01"
            {
                reason.push_str(&format!(" (password retrieved from file \"{}\")", file.display()));
            }
            fail(reason)
        })?;

        let row = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| PgError::query("server_version_num", &e))?;
        let v: i32 = row.try_get(0).map_err(|e| PgError::query("server_version_num", &e))?;
        let version = u32::try_from(v).map_err(|_| PgError::bad_value("server_version_num", v))?;
        tracing::debug!(target = %target, version, "connected to PostgreSQL");
        Ok(PgConnection { client, version, user: params.user.clone(), target })
    }

    /// The underlying client, for callers that need their own SQL in this session
    /// (a concurrent backup must start and stop in the same session).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// `server_version_num`, read once at connection time (e.g. 150018).
    pub fn server_version_num(&self) -> u32 {
        self.version
    }

    /// The version as Barman derives it from the number ("15.18", "9.6.24").
    pub fn server_version_text(&self) -> String {
        int_version_to_string_version(self.version)
    }

    /// "15", or "9.6" before version 10.
    pub fn server_major_version(&self) -> String {
        major_version(self.version)
    }

    pub fn is_minimal_postgres_version(&self) -> bool {
        self.version >= MINIMAL_VERSION
    }
}

fn tokio_config(p: &ConnParams, application_name: Option<&str>) -> tokio_postgres::Config {
    use tokio_postgres::config::{ChannelBinding as Cb, LoadBalanceHosts, SslNegotiation, TargetSessionAttrs};
    let mut cfg = tokio_postgres::Config::new();
    for h in &p.hosts {
        match h {
            Host::Tcp(name) => cfg.host(name),
            Host::Socket(dir) => cfg.host_path(dir),
        };
    }
    for a in &p.hostaddrs {
        cfg.hostaddr(*a);
    }
    for port in &p.ports {
        cfg.port(*port);
    }
    cfg.user(&p.user).dbname(&p.dbname);
    if let Some(pw) = p.password() {
        cfg.password(pw.expose());
    }
    if let Some(app) = p.session_application_name(application_name) {
        cfg.application_name(app);
    }
    if let Some(o) = &p.options {
        cfg.options(o);
    }
    if let Some(t) = p.connect_timeout {
        cfg.connect_timeout(t);
    }
    cfg.keepalives(p.keepalives);
    if let Some(d) = p.keepalives_idle {
        cfg.keepalives_idle(d);
    }
    if let Some(d) = p.keepalives_interval {
        cfg.keepalives_interval(d);
    }
    if let Some(n) = p.keepalives_count {
        cfg.keepalives_retries(n);
    }
    if let Some(d) = p.tcp_user_timeout {
        cfg.tcp_user_timeout(d);
    }
    cfg.channel_binding(match p.channel_binding {
        super::params::ChannelBinding::Disable => Cb::Disable,
        super::params::ChannelBinding::Prefer => Cb::Prefer,
        super::params::ChannelBinding::Require => Cb::Require,
    });
    if p.target_read_write {
        cfg.target_session_attrs(TargetSessionAttrs::ReadWrite);
    }
    if p.load_balance_random {
        cfg.load_balance_hosts(LoadBalanceHosts::Random);
    }
    if p.ssl_direct {
        cfg.ssl_negotiation(SslNegotiation::Direct);
    }
    cfg
}

/// Runs the connection's I/O until the client is dropped or the server goes away.
async fn drive<S, T>(kind: &'static str, conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        // The next query on the client reports the failure to its caller.
        tracing::debug!(kind, error = %e, "PostgreSQL connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn versions_as_barman() {
        assert_eq!(int_version_to_string_version(150018), "15.18");
        assert_eq!(int_version_to_string_version(170000), "17.0");
        assert_eq!(int_version_to_string_version(90624), "9.6.24");
        assert_eq!(simplify_version("15.18"), "15");
        assert_eq!(simplify_version("9.6.24"), "9.6");
        assert_eq!(simplify_version("16beta1"), "16");
        assert_eq!(simplify_version("9.6beta1"), "9.6");
    }

    #[tokio::test]
    async fn closed_port_fails_fast_with_one_line() {
        // A port nobody listens on: bind, read the number, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ci =
            Conninfo::parse(&format!("host=127.0.0.1 port={port} user=u password=topsecret sslmode=disable")).unwrap();
        let started = std::time::Instant::now();
        let e = PgConnection::connect_with_env(&ci, Some("barman"), &LibpqEnv::isolated()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let msg = e.to_string();
        assert_eq!(msg, format!("connection to server at \"127.0.0.1\", port {port} failed: Connection refused"));
        assert!(!format!("{e:?}").contains("topsecret"));
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts TCP but never answers: only the overall timeout can end this.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let ci =
            Conninfo::parse(&format!("host=127.0.0.1 port={port} user=u connect_timeout=2 sslmode=disable")).unwrap();
        let started = std::time::Instant::now();
        let e = PgConnection::connect_with_env(&ci, None, &LibpqEnv::isolated()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(
            e.to_string(),
            format!("connection to server at \"127.0.0.1\", port {port} failed: timeout expired")
        );
        hold.abort();
    }

    #[tokio::test]
    async fn replication_sessions_are_refused() {
        let ci = Conninfo::parse("host=127.0.0.1 port=1 user=u replication=true").unwrap();
        let e = PgConnection::connect_with_env(&ci, None, &LibpqEnv::isolated()).await.unwrap_err();
        assert!(matches!(e, PgError::BadConninfo(ConninfoError::Unsupported { .. })), "{e}");
    }

    #[test]
    fn no_runtime_is_an_error_not_a_panic() {
        let ci = Conninfo::parse("host=127.0.0.1 user=u").unwrap();
        let env = LibpqEnv::isolated();
        let fut = PgConnection::connect_with_env(&ci, None, &env);
        // Polled by a runtime-less executor.
        let e = futures_lite_block_on(fut).unwrap_err();
        assert!(matches!(e, PgError::NoRuntime));
    }

    /// A minimal executor without tokio, enough for a future that returns at once.
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}
