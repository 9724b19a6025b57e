//! `status`: what a server is doing, as Barman prints it.

use super::check::pretty_size;
use super::context::{Ctx, Pick};
use super::output::Writer;
use super::remote;
use crate::catalog::ServerLayout;
use crate::catalog::backups;
use crate::config::ServerConfig;
use crate::config::types::Retention;
use serde_json::json;
use std::time::Duration;

pub use crate::catalog::backups::ctime;

fn py(v: bool) -> &'static str {
    if v { "True" } else { "False" }
}

struct Lines<'a> {
    ctx: &'a mut Ctx,
    server: String,
}

impl Lines<'_> {
    fn line(&mut self, key: &str, description: &str, message: impl Into<String>) {
        let message = message.into();
        if self.ctx.out.writer == Writer::Json {
            self.ctx
                .out
                .json_entry(&self.server)
                .insert(key.to_string(), json!({"description": description, "message": message}));
        } else {
            self.ctx.out.info(format!("\t{description}: {message}"));
        }
    }
}

pub fn status(ctx: &mut Ctx, names: &[String]) {
    for s in ctx.servers(names, Pick::ALL) {
        if ctx.out.writer == Writer::Json {
            ctx.out.json_entry(&s.name);
        } else {
            ctx.out.info(format!("Server {}:", s.name));
        }
        one(ctx, &s);
    }
}

fn one(ctx: &mut Ctx, s: &ServerConfig) {
    let l = ServerLayout::new(&ctx.cfg.global, s);
    let mut out = Lines { ctx, server: s.name.clone() };
    if let Some(d) = &s.opts.description {
        out.line("description", "Description", d.clone());
    }
    out.line("active", "Active", py(s.active()));
    out.line("disabled", "Disabled", py(s.disabled()));
    out.line("active_model", "Active configuration model", s.active_model.clone().unwrap_or_else(|| "None".into()));
    if !s.passive {
        let st = remote::status(s, Duration::from_secs(s.opts.check_timeout.max(0) as u64));
        match &st.server_txt_version {
            None => out.line("pg_version", "PostgreSQL version", "FAILED trying to get PostgreSQL version"),
            Some(v) => {
                out.line("pg_version", "PostgreSQL version", v.clone());
                let state = if st.is_in_recovery == Some(true) { "in archive recovery" } else { "in production" };
                out.line("is_in_recovery", "Cluster state", state);
                if let Some(sz) = st.current_size {
                    out.line("current_size", "Current data size", pretty_size(sz));
                }
                if let Some(d) = &st.data_directory {
                    out.line("data_directory", "PostgreSQL Data directory", d.clone());
                }
                if let Some(x) = &st.current_xlog {
                    out.line("current_xlog", "Current WAL segment", x.to_string());
                }
                if s.opts.archiver && st.archive_mode.is_some() {
                    out.line(
                        "archive_command",
                        "PostgreSQL 'archive_command' setting",
                        st.archive_command
                            .clone()
                            .unwrap_or_else(|| "FAILED (please set it accordingly to documentation)".into()),
                    );
                    let a = st.archiver.as_ref();
                    let last = match a.and_then(|a| a.last_archived_wal.as_ref().map(|w| (w, a.last_archived_time))) {
                        Some((w, Some(t))) => format!("{w}, at {}", ctime(&t)),
                        Some((w, None)) => w.to_string(),
                        None => "No WAL segment shipped yet".into(),
                    };
                    out.line("last_archived_wal", "Last archived WAL", last);
                    if let Some(a) = a {
                        let mut fail = a.failed_count.to_string();
                        if a.failed_count > 0
                            && let (Some(w), Some(t)) = (&a.last_failed_wal, &a.last_failed_time)
                        {
                            fail.push_str(&format!(" ({w} at {})", ctime(t)));
                        }
                        out.line("failed_count", "Failures of WAL archiver", fail);
                        if let Some(rate) = a.current_archived_wals_per_second.filter(|r| *r > 0.0) {
                            out.line(
                                "server_archived_wals_per_hour",
                                "Server WAL archiving rate",
                                format!("{:.2}/hour", 3600.0 * rate),
                            );
                        }
                    }
                }
            }
        }
    }
    out.line("passive_node", "Passive node", py(s.passive));
    match &s.opts.retention_policy {
        Some(Retention::Policy(p)) => out.line(
            "retention_policies",
            "Retention policies",
            format!("enforced (mode: auto, retention: {p}, WAL retention: MAIN)"),
        ),
        _ => out.line("retention_policies", "Retention policies", "not enforced"),
    }
    let catalogue = backups::list(&l);
    let done: Vec<_> = catalogue.iter().filter(|b| b.is_done()).collect();
    let copy_done: Vec<_> = catalogue.iter().filter(|b| b.status == "DONE" || b.status == "WAITING_FOR_WALS").collect();
    out.line("backups_number", "No. of available backups", done.len().to_string());
    out.line("first_backup", "First available backup", copy_done.first().map_or("None".to_string(), |b| b.id.clone()));
    out.line("last_backup", "Last available backup", copy_done.last().map_or("None".to_string(), |b| b.id.clone()));
    let full = done.iter().filter(|b| !b.is_incremental()).count();
    let min = s.opts.minimum_redundancy.0 as usize;
    let word = if full < min { "FAILED" } else { "satisfied" };
    out.line("minimum_redundancy", "Minimum redundancy requirements", format!("{word} ({full}/{min})"));
}
