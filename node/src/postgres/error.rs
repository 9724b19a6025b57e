//! What can go wrong talking SQL to PostgreSQL. Every message is one line and never
//! carries a password: the conninfo only ever appears masked, and server messages
//! do not echo passwords.

use super::conninfo::ConninfoError;
use super::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    BadConninfo(#[from] ConninfoError),
    /// Worded as libpq does (`connection to server at "h", port 5432 failed: ...`),
    /// which is what Barman shows as the hint of a failed check.
    #[error("connection to server {target} failed: {reason}")]
    Connect { target: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] TlsError),
    /// `what` names the query (the function or view it reads), not its full text.
    #[error("query {what} failed: {reason}")]
    Query { what: &'static str, reason: String, sqlstate: Option<String> },
    #[error("{operation} cannot run while PostgreSQL is in recovery")]
    InRecovery { operation: &'static str },
    /// Barman's `BackupFunctionsAccessRequired` wording.
    #[error(
        "Postgres user '{user}' is missing required privileges for {operation} (see \"Preliminary steps\" in the Barman manual)"
    )]
    MissingPrivileges { user: String, operation: &'static str },
    /// Barman's wording when monitoring roles are missing.
    #[error("Postgres user '{user}' is missing required privileges (see \"Preliminary steps\" in the Barman manual)")]
    MissingMonitoringPrivileges { user: String },
    #[error("unexpected result from {what}: {value}")]
    BadValue { what: &'static str, value: String },
    /// A replication session broke (I/O or a message we cannot read).
    #[error("lost the replication connection to server {target}: {reason}")]
    Lost { target: String, reason: String },
    #[error("PostgreSQL connections must be opened inside a tokio runtime")]
    NoRuntime,
}

impl PgError {
    /// The SQLSTATE of a failed query, for callers that branch on it.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Query { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// The server's own words for a failed command, else the whole message.
    pub fn reason(&self) -> String {
        match self {
            PgError::Query { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn query(what: &'static str, e: &tokio_postgres::Error) -> PgError {
        PgError::Query { what, reason: one_line(&error_text(e)), sqlstate: e.code().map(|c| c.code().to_string()) }
    }

    pub(crate) fn bad_value(what: &'static str, value: impl std::fmt::Display) -> PgError {
        PgError::BadValue { what, value: one_line(&value.to_string()) }
    }
}

/// A tokio-postgres error as one line: a server message as `SEVERITY: message`
/// (as psql shows it), anything else as tokio-postgres words it.
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => with_causes(e),
    }
}

/// tokio-postgres prints only the kind of an error ("error connecting to
/// server"); the useful part is in its chain of causes.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The reason part of a failed connection, in libpq's words where they differ.
pub(crate) fn connect_reason(e: &tokio_postgres::Error) -> String {
    if e.as_db_error().is_some() {
        return one_line(&error_text(e));
    }
    let text = with_causes(e);
    let text = text.strip_prefix("error connecting to server: ").unwrap_or(&text);
    let reason = if text.contains("server does not support TLS") {
        "server does not support SSL, but SSL was required".to_string()
    } else if text.contains("password missing") {
        "fe_sendauth: no password supplied".to_string()
    } else if text.contains("connection timed out") || text.starts_with("timeout waiting for server") {
        "timeout expired".to_string()
    } else {
        strip_os_error(text)
    };
    one_line(&reason)
}

/// `Connection refused (os error 111)` → `Connection refused`, as libpq prints it.
pub(crate) fn strip_os_error(s: &str) -> String {
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s.to_string(),
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\n\tb  c\n"), "a b c");
        assert_eq!(strip_os_error("Connection refused (os error 111)"), "Connection refused");
        assert_eq!(strip_os_error("odd (thing)"), "odd (thing)");
        let e = PgError::Connect { target: "at \"h\", port 1".into(), reason: "Connection refused".into() };
        assert_eq!(e.to_string(), "connection to server at \"h\", port 1 failed: Connection refused");
        let e = PgError::MissingPrivileges { user: "u".into(), operation: "pg_switch_wal()" };
        assert!(e.to_string().starts_with("Postgres user 'u' is missing required privileges"));
    }
}
