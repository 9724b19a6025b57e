//! `replication-status`: the streaming clients of a server (hot standbys and WAL
//! streamers such as our receive-wal), read from `pg_stat_replication` and printed
//! as Barman 3.17 prints them, full or `--minimal`, console or JSON.

use super::args::{ReplicationSource, ReplicationTarget};
use super::check::pretty_size;
use super::context::{Ctx, Pick};
use super::output::Writer;
use super::remote;
use crate::archive::receive_mode::{self, ModeState, mode_name};
use crate::catalog::ServerLayout;
use crate::catalog::backups::format_time;
use crate::postgres::{ClientKind, PgError, StatReplication};
use crate::wal::Lsn;
use serde_json::{Map, Value, json};
use std::fmt::Display;

pub fn replication_status(
    ctx: &mut Ctx,
    names: &[String],
    minimal: bool,
    target: ReplicationTarget,
    source: ReplicationSource,
) {
    for s in ctx.servers(names, Pick::DEFAULT) {
        if s.passive {
            ctx.out.info(format!("Skipping passive server '{}'", s.name));
            continue;
        }
        let raw = match source {
            ReplicationSource::BackupHost => s.opts.conninfo.clone(),
            ReplicationSource::WalHost => {
                let (_, sql, overrides) = super::receive_wal::wal_conninfos(&s);
                super::receive_wal::announce_overrides(ctx, &overrides);
                sql
            }
        };
        if ctx.out.writer == Writer::Json {
            ctx.out.json_entry(&s.name);
        }
        match fetch(raw, target) {
            Ok((server_lsn, clients)) => {
                let receiver = receive_mode::read_state(&ServerLayout::new(&ctx.cfg.global, &s));
                let report = Report { server: &s.name, title: title(target), server_lsn, clients: &clients, receiver };
                if ctx.out.writer == Writer::Json {
                    report.json(ctx, minimal);
                } else {
                    for line in report.lines(minimal) {
                        ctx.out.info(line);
                    }
                }
            }
            Err(Failure::Privileges(e)) => ctx.out.error(e.to_string()),
            Err(Failure::Unreachable(e)) => {
                tracing::debug!("replication status of {}: {e}", s.name);
                ctx.out.error(format!("Unable to connect to server {}", s.name));
            }
        }
    }
}

enum Failure {
    /// Barman stops the command on this one; we report it and go on.
    Privileges(PgError),
    /// Connection or query failure: Barman's "Unable to connect".
    Unreachable(String),
}

/// The clients and the server's own position (`None` when it cannot be read).
fn fetch(raw: Option<String>, target: ReplicationTarget) -> Result<(Option<Lsn>, Vec<StatReplication>), Failure> {
    let raw = raw.ok_or_else(|| Failure::Unreachable("no conninfo".into()))?;
    let kind = match target {
        ReplicationTarget::All => ClientKind::Any,
        ReplicationTarget::HotStandby => ClientKind::Standby,
        ReplicationTarget::WalStreamer => ClientKind::WalStreamer,
    };
    // Missing privileges are kept apart from every other failure.
    remote::with_connection(&raw, async |c| match c.replication_stats(kind).await {
        Ok(clients) => Ok(Ok((c.current_lsn().await.ok(), clients))),
        Err(e @ PgError::MissingMonitoringPrivileges { .. }) => Ok(Err(Failure::Privileges(e))),
        Err(e) => Err(e),
    })
    .map_err(Failure::Unreachable)?
}

fn title(target: ReplicationTarget) -> &'static str {
    match target {
        ReplicationTarget::HotStandby => "hot standby servers",
        ReplicationTarget::WalStreamer => "WAL streamers",
        ReplicationTarget::All => "streaming clients",
    }
}

/// Python's `str.capitalize()`: first character upper case, the rest lower.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// Python's `%s` of an optional value: `None` when absent.
fn py<T: Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "None".to_string(), ToString::to_string)
}

/// A value Python would find truthy (present and not empty).
fn truthy(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

struct Report<'a> {
    server: &'a str,
    title: &'static str,
    server_lsn: Option<Lsn>,
    clients: &'a [StatReplication],
    /// Our own receiver's reporting mode (receive-wal, or this host's node), if it streams.
    receiver: Option<ModeState>,
}

/// Bytes between a client's position and the server's (Barman's `diff_lsn`).
fn diff(at: Option<Lsn>, current: Option<Lsn>) -> Option<i64> {
    Some(at?.0 as i64 - current?.0 as i64)
}

fn diff_text(d: Option<i64>) -> String {
    d.map_or_else(|| "None".to_string(), pretty_size)
}

struct Diffs {
    sent: Option<i64>,
    write: Option<i64>,
    flush: Option<i64>,
    replay: Option<i64>,
}

impl Diffs {
    fn of(c: &StatReplication) -> Diffs {
        Diffs {
            sent: diff(c.sent_lsn, c.current_lsn),
            write: diff(c.write_lsn, c.current_lsn),
            flush: diff(c.flush_lsn, c.current_lsn),
            replay: diff(c.replay_lsn, c.current_lsn),
        }
    }
}

/// A client that replays WAL is a standby; one that never does is a WAL streamer.
fn client_type(c: &StatReplication) -> &'static str {
    if c.replay_lsn.is_none() { "WAL streamer" } else { "standby" }
}

/// Barman's "sync stage": how far the client is behind the server.
fn sync_stage(c: &StatReplication, d: &Diffs) -> String {
    let max = if c.replay_lsn.is_none() { 3 } else { 5 };
    if c.replay_lsn.is_some() {
        if d.replay == Some(0) {
            return "5/5 Hot standby (max)".into();
        }
        if d.flush == Some(0) {
            return "4/5 2-safe".into();
        }
    }
    if d.write == Some(0) {
        format!("3/{max} Remote write")
    } else if d.sent == Some(0) {
        format!("2/{max} WAL Sent (min)")
    } else {
        format!("1/{max} 1-safe")
    }
}

/// "#1 Sync WAL streamer" for a synchronous candidate, "Async standby" otherwise.
fn name(c: &StatReplication) -> String {
    let state = capitalize(c.sync_state.as_deref().unwrap_or(""));
    match c.sync_priority {
        Some(p) if p > 0 => format!("#{p} {state} {}", client_type(c)),
        _ => format!("{state} {}", client_type(c)),
    }
}

fn sync_letter(c: &StatReplication) -> String {
    c.sync_state.as_deref().and_then(|s| s.chars().next()).map_or_else(String::new, |ch| ch.to_uppercase().collect())
}

/// What the full report adds to Barman's for our own receiver's walsender.
fn receiver_mode(report: &Report, c: &StatReplication) -> Option<&'static str> {
    report.receiver.as_ref().filter(|m| m.walsender_pid == Some(c.pid)).map(|m| mode_name(m.synchronous))
}

impl Report<'_> {
    fn lines(&self, minimal: bool) -> Vec<String> {
        let mut out = Vec::new();
        let title = self.title;
        if minimal {
            match self.server_lsn {
                Some(lsn) => out.push(format!("{} for master '{}' (LSN @ {lsn}):", capitalize(title), self.server)),
                None => out.push(format!("{} for slave '{}':", capitalize(title), self.server)),
            }
        } else {
            out.push(format!("Status of {title} for server '{}':", self.server));
            if let Some(lsn) = self.server_lsn {
                out.push(format!("  Current LSN on master: {lsn}"));
            }
        }
        if self.clients.is_empty() {
            out.push(format!("  No {title} attached"));
            return out;
        }
        if minimal {
            for (i, c) in self.clients.iter().enumerate() {
                let who = format!("{}@{}", py(&c.usename), truthy(&c.client_addr).unwrap_or("socket"));
                let (prio, app) = (py(&c.sync_priority), py(&c.application_name));
                out.push(if c.replay_lsn.is_none() {
                    format!("  {}. W) {who} S:{} W:{} P:{prio} AN:{app}", i + 1, py(&c.sent_lsn), py(&c.write_lsn))
                } else {
                    format!(
                        "  {}. {}) {who} S:{} F:{} R:{} P:{prio} AN:{app}",
                        i + 1,
                        sync_letter(c),
                        py(&c.sent_lsn),
                        py(&c.flush_lsn),
                        py(&c.replay_lsn)
                    )
                });
            }
            return out;
        }
        out.push(format!("  Number of {title}: {}", self.clients.len()));
        for (i, c) in self.clients.iter().enumerate() {
            let d = Diffs::of(c);
            out.push(String::new());
            out.push(format!("  {}. {}", i + 1, name(c)));
            out.push(format!("     Application name: {}", py(&c.application_name)));
            out.push(format!("     Sync stage      : {}", sync_stage(c, &d)));
            match truthy(&c.client_addr) {
                Some(addr) => {
                    out.push("     Communication   : TCP/IP".into());
                    out.push(format!(
                        "     IP Address      : {addr} / Port: {} / Host: {}",
                        py(&c.client_port),
                        truthy(&c.client_hostname).unwrap_or("-")
                    ));
                }
                None => out.push("     Communication   : Unix domain socket".into()),
            }
            out.push(format!("     User name       : {}", py(&c.usename)));
            out.push(format!("     Current state   : {} ({})", py(&c.state), py(&c.sync_state)));
            if let Some(mode) = receiver_mode(self, c) {
                out.push(format!("     Receiver mode   : {mode}"));
            }
            if let Some(slot) = truthy(&c.slot_name) {
                out.push(format!("     Replication slot: {slot}"));
            }
            out.push(format!("     WAL sender PID  : {}", c.pid));
            out.push(format!("     Started at      : {}", c.backend_start.as_ref().map_or("None".into(), format_time)));
            if let Some(xmin) = truthy(&c.backend_xmin) {
                out.push(format!("     Standby's xmin  : {xmin}"));
            }
            for (label, at, d) in [
                ("Sent LSN  ", c.sent_lsn, d.sent),
                ("Write LSN ", c.write_lsn, d.write),
                ("Flush LSN ", c.flush_lsn, d.flush),
                ("Replay LSN", c.replay_lsn, d.replay),
            ] {
                if let Some(at) = at {
                    out.push(format!("     {label} : {at} (diff: {})", diff_text(d)));
                }
            }
        }
        out
    }

    fn json(&self, ctx: &mut Ctx, minimal: bool) {
        let key = self.title.to_lowercase().replace([' ', '-'], "_");
        let entry = ctx.out.json_entry(self.server);
        entry.insert("server_lsn".into(), self.server_lsn.map_or(Value::Null, |l| json!(l.to_string())));
        if self.clients.is_empty() {
            entry.entry(key).or_insert_with(|| json!([]));
            entry.insert("standby_info".into(), json!(format!("No {} attached", self.title)));
            return;
        }
        let lsn = |l: Option<Lsn>| l.map_or(Value::Null, |l| json!(l.to_string()));
        let addr = |c: &StatReplication| json!(truthy(&c.client_addr).unwrap_or("socket"));
        let list = self
            .clients
            .iter()
            .map(|c| {
                if minimal {
                    let mut m = json!({
                        "user_name": c.usename,
                        "client_addr": addr(c),
                        "sent_lsn": lsn(c.sent_lsn),
                        "sync_priority": c.sync_priority,
                        "application_name": c.application_name,
                    });
                    if c.replay_lsn.is_none() {
                        m["write_lsn"] = lsn(c.write_lsn);
                    } else {
                        m["sync_state"] = json!(sync_letter(c));
                        m["flush_lsn"] = lsn(c.flush_lsn);
                        m["replay_lsn"] = lsn(c.replay_lsn);
                    }
                    return m;
                }
                let d = Diffs::of(c);
                let mut m = Map::new();
                m.insert("name".into(), json!(name(c)));
                m.insert("application_name".into(), json!(c.application_name));
                m.insert("sync_stage".into(), json!(sync_stage(c, &d)));
                match truthy(&c.client_addr) {
                    Some(a) => {
                        m.insert("communication".into(), json!("TCP/IP"));
                        m.insert("ip_address".into(), json!(a));
                        m.insert("port".into(), json!(c.client_port));
                        m.insert("host".into(), json!(truthy(&c.client_hostname)));
                    }
                    None => {
                        m.insert("communication".into(), json!("Unix domain socket"));
                    }
                }
                m.insert("user_name".into(), json!(c.usename));
                m.insert("current_state".into(), json!(c.state));
                m.insert("current_sync_state".into(), json!(c.sync_state));
                if let Some(mode) = receiver_mode(self, c) {
                    m.insert("receiver_mode".into(), json!(mode));
                }
                if let Some(slot) = truthy(&c.slot_name) {
                    m.insert("replication_slot".into(), json!(slot));
                }
                m.insert("wal_sender_pid".into(), json!(c.pid));
                m.insert("started_at".into(), json!(c.backend_start.as_ref().map(format_time)));
                if let Some(xmin) = truthy(&c.backend_xmin) {
                    m.insert("standbys_xmin".into(), json!(xmin));
                }
                for (k, at, d) in [
                    ("sent", c.sent_lsn, d.sent),
                    ("write", c.write_lsn, d.write),
                    ("flush", c.flush_lsn, d.flush),
                    ("replay", c.replay_lsn, d.replay),
                ] {
                    if let Some(at) = at {
                        m.insert(format!("{k}_lsn"), json!(at.to_string()));
                        m.insert(format!("{k}_lsn_diff"), json!(diff_text(d)));
                        m.insert(format!("{k}_lsn_diff_bytes"), json!(d));
                    }
                }
                Value::Object(m)
            })
            .collect();
        entry.insert(key, Value::Array(list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_capitalize() {
        assert_eq!(capitalize("WAL streamers"), "Wal streamers");
        assert_eq!(capitalize("hot standby servers"), "Hot standby servers");
        assert_eq!(capitalize(""), "");
    }

    #[test]
    fn sync_stages() {
        let mut c = StatReplication {
            pid: 1,
            usename: None,
            application_name: None,
            client_addr: None,
            client_hostname: None,
            client_port: None,
            backend_start: None,
            backend_xmin: None,
            state: None,
            sent_lsn: Some(Lsn(100)),
            write_lsn: Some(Lsn(100)),
            flush_lsn: Some(Lsn(90)),
            replay_lsn: None,
            sync_priority: Some(1),
            sync_state: Some("sync".into()),
            slot_name: None,
            current_lsn: Some(Lsn(100)),
        };
        assert_eq!(sync_stage(&c, &Diffs::of(&c)), "3/3 Remote write");
        assert_eq!(name(&c), "#1 Sync WAL streamer");
        c.replay_lsn = Some(Lsn(80));
        c.flush_lsn = Some(Lsn(100));
        assert_eq!(sync_stage(&c, &Diffs::of(&c)), "4/5 2-safe");
        c.write_lsn = Some(Lsn(50));
        c.flush_lsn = Some(Lsn(50));
        assert_eq!(sync_stage(&c, &Diffs::of(&c)), "2/5 WAL Sent (min)");
        c.sent_lsn = Some(Lsn(60));
        c.sync_priority = Some(0);
        c.sync_state = Some("async".into());
        assert_eq!(sync_stage(&c, &Diffs::of(&c)), "1/5 1-safe");
        assert_eq!(name(&c), "Async standby");
        assert_eq!(diff_text(Diffs::of(&c).sent), "-40 B");
    }
}
