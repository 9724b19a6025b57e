//! `list-servers`, `show-servers` and `diagnose`.

use super::context::{Ctx, Pick};
use super::output::Writer;
use super::remote;
use super::status::ctime;
use crate::catalog::ServerLayout;
use crate::catalog::backups;
use crate::catalog::pyjson;
use crate::config::ServerConfig;
use crate::config::options::SERVER_OPTIONS;
use crate::hooks::BARMAN_COMPAT_VERSION;
use crate::postgres::PostgresStatus;
use serde_json::{Map, Value, json};
use std::time::Duration;

pub fn list_servers(ctx: &mut Ctx, minimal: bool) {
    let servers: Vec<ServerConfig> = ctx.cfg.servers.values().cloned().collect();
    for s in servers {
        let mut description = s.opts.description.clone().unwrap_or_default();
        if !s.active() {
            description.push_str(" (inactive)");
        } else if s.disabled() {
            description.push_str(" (WARNING: disabled)");
        }
        if s.passive {
            description.push_str(" (Passive)");
        }
        if ctx.out.writer == Writer::Json {
            let d = if description.is_empty() { Value::Null } else { json!(description) };
            ctx.out.json_set(&s.name, json!({"description": d}));
        } else if minimal || description.is_empty() {
            ctx.out.info(&s.name);
        } else {
            ctx.out.info(format!("{} - {description}", s.name));
        }
    }
}

/// Remote status fields under Barman's key names: (key, shown, json).
fn remote_fields(st: &PostgresStatus) -> Vec<(&'static str, String, Value)> {
    let opt = |v: Option<String>| -> (String, Value) {
        match v {
            Some(s) => (s.clone(), json!(s)),
            None => ("None".into(), Value::Null),
        }
    };
    let b = |v: Option<bool>| -> (String, Value) {
        match v {
            Some(x) => ((if x { "True" } else { "False" }).into(), json!(x)),
            None => ("None".into(), Value::Null),
        }
    };
    let mut f: Vec<(&'static str, (String, Value))> = vec![
        ("archive_command", opt(st.archive_command.clone())),
        ("archive_mode", opt(st.archive_mode.clone())),
        ("current_size", opt(st.current_size.map(|n| n.to_string()))),
        ("current_xlog", opt(st.current_xlog.as_ref().map(|w| w.to_string()))),
        ("data_checksums", opt(st.data_checksums.clone())),
        ("data_directory", opt(st.data_directory.clone())),
        ("has_backup_privileges", b(st.has_backup_privileges)),
        ("is_in_recovery", b(st.is_in_recovery)),
        ("is_superuser", b(st.is_superuser)),
        ("max_replication_slots", opt(st.max_replication_slots.clone())),
        ("max_wal_senders", opt(st.max_wal_senders.clone())),
        ("postgres_systemid", opt(st.system_identifier.map(|s| s.to_string()))),
        ("server_txt_version", opt(st.server_txt_version.clone())),
        ("version_supported", b(st.version_supported)),
        ("wal_level", opt(st.wal_level.clone())),
        ("xlog_segment_size", opt(st.wal_segment_size.map(|s| s.to_string()))),
        ("xlogpos", opt(st.current_lsn.map(|l| l.to_string()))),
    ];
    if let Some(a) = &st.archiver {
        f.push(("archived_count", (a.archived_count.to_string(), json!(a.archived_count))));
        f.push(("failed_count", (a.failed_count.to_string(), json!(a.failed_count))));
        f.push(("is_archiving", b(Some(a.is_archiving))));
        f.push(("last_archived_wal", opt(a.last_archived_wal.as_ref().map(|w| w.to_string()))));
        f.push(("last_archived_time", opt(a.last_archived_time.map(|t| t.to_string()))));
        f.push(("last_failed_wal", opt(a.last_failed_wal.as_ref().map(|w| w.to_string()))));
        f.push(("last_failed_time", opt(a.last_failed_time.map(|t| t.to_string()))));
    }
    if let Some(e) = &st.connection_error {
        f.push(("connection_error", opt(Some(e.clone()))));
    }
    f.into_iter().map(|(k, (s, j))| (k, s, j)).collect()
}

pub fn show_servers(ctx: &mut Ctx, names: &[String]) {
    for s in ctx.servers(names, Pick::ALL) {
        let suffix = if !s.active() {
            Some("(inactive)")
        } else if s.disabled() {
            Some("(WARNING: disabled)")
        } else {
            None
        };
        let mut rows: Vec<(String, String, Value)> = Vec::new();
        for spec in SERVER_OPTIONS {
            let shown = s.show(spec.name).unwrap_or_default();
            let j = s.opts.json(spec.name).unwrap_or(Value::Null);
            rows.push((spec.name.to_string(), shown, j));
        }
        rows.push(("name".into(), s.name.clone(), json!(s.name)));
        rows.push(("passive_node".into(), if s.passive { "True".into() } else { "False".into() }, json!(s.passive)));
        rows.push((
            "active_model".into(),
            s.active_model.clone().unwrap_or_else(|| "None".into()),
            json!(s.active_model),
        ));
        if !s.msg_list.is_empty() {
            let m = s.msg_list.join("; ");
            rows.push(("configuration_errors".into(), m.clone(), json!(s.msg_list)));
        }
        if !s.passive {
            let st = remote::status(&s, Duration::from_secs(s.opts.check_timeout.max(0) as u64));
            for (k, shown, j) in remote_fields(&st) {
                rows.push((k.to_string(), shown, j));
            }
        }
        if let Some(max) = s.opts.last_backup_maximum_age {
            let l = ServerLayout::new(&ctx.cfg.global, &s);
            let last =
                backups::list(&l).into_iter().rev().find(|b| b.status == "DONE" || b.status == "WAITING_FOR_WALS");
            let msg = match last.and_then(|b| b.end_time) {
                Some(t) => {
                    let age = (chrono::Local::now().fixed_offset() - t).num_seconds().max(0) as u64;
                    let a = crate::config::types::human_duration(age);
                    if age <= max.seconds {
                        format!("{} (latest backup: {a} )", max.human())
                    } else {
                        format!("{} (WARNING! latest backup is {a} old)", max.human())
                    }
                }
                None => format!("{} (WARNING! latest backup is No available backups old)", max.human()),
            };
            rows.retain(|r| r.0 != "last_backup_maximum_age");
            rows.push(("last_backup_maximum_age".into(), msg.clone(), json!(msg)));
        } else {
            rows.retain(|r| r.0 != "last_backup_maximum_age");
            rows.push(("last_backup_maximum_age".into(), "None".into(), json!("None")));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        if ctx.out.writer == Writer::Json {
            let m = ctx.out.json_entry(&s.name);
            m.insert("description".into(), json!(suffix));
            for (k, _, j) in rows {
                // Barman keeps an earlier value over a null.
                if j.is_null() && m.contains_key(&k) {
                    continue;
                }
                m.insert(k, j);
            }
        } else {
            ctx.out.server_header(&s.name, suffix);
            for (k, shown, _) in rows {
                ctx.out.info(format!("\t{k}: {shown}"));
            }
        }
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().next().unwrap_or("").trim_end().to_string()
        })
        .unwrap_or_default()
}

fn system_info() -> Value {
    let release = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_default();
    json!({
        "release": release,
        "kernel_ver": command_line("uname", &["-a"]),
        "rsync_ver": command_line("rsync", &["--version"]),
        "ssh_ver": command_line("ssh", &["-V"]),
        "barman_ver": BARMAN_COMPAT_VERSION,
        "barman_rs_ver": env!("CARGO_PKG_VERSION"),
        "timestamp": chrono::Local::now().to_rfc3339(),
    })
}

pub fn diagnose(ctx: &mut Ctx, show_source: bool) {
    let mut global = Map::new();
    for (k, v) in ctx.cfg.global_raw() {
        global.insert(k, json!(crate::config::ini::strip_quotes(&v)));
    }
    global.insert("barman_lock_directory".into(), json!(ctx.cfg.global.lock_directory.display().to_string()));
    global.insert("lock_directory_cleanup".into(), json!(ctx.cfg.global.lock_directory_cleanup));
    global.insert("config_changes_queue".into(), json!(ctx.cfg.global.config_changes_queue.display().to_string()));
    if show_source {
        let file = ctx.cfg.file.display().to_string();
        let raw: Vec<String> = ctx.cfg.global_raw().into_iter().map(|(k, _)| k).collect();
        for (k, v) in global.iter_mut() {
            let src = if raw.contains(k) { json!(file) } else { json!("default") };
            *v = json!({"value": v.clone(), "source": src});
        }
    }
    global.insert("errors_list".into(), json!(ctx.cfg.global_errors));
    let mut servers = Map::new();
    let all: Vec<ServerConfig> = ctx.cfg.servers.values().cloned().collect();
    for s in all {
        let mut config = Map::new();
        for spec in SERVER_OPTIONS {
            let v = s.json(spec.name).unwrap_or(Value::Null);
            let v = if show_source { json!({"value": v, "source": s.source_of(spec.name)}) } else { v };
            config.insert(spec.name.to_string(), v);
        }
        config.insert("name".into(), json!(s.name));
        let mut status = Map::new();
        if !s.passive {
            let st = remote::status(&s, Duration::from_secs(s.opts.check_timeout.max(0) as u64));
            for (k, _, j) in remote_fields(&st) {
                status.insert(k.to_string(), j);
            }
        }
        let l = ServerLayout::new(&ctx.cfg.global, &s);
        let mut backups_json = Map::new();
        for b in backups::list(&l) {
            backups_json.insert(
                b.id.clone(),
                json!({
                    "backup_id": b.id, "status": b.status, "mode": b.mode, "begin_wal": b.begin_wal, "end_wal": b.end_wal,
                    "end_time": b.end_time.map(|t| ctime(&t)), "size": b.size, "timeline": b.timeline,
                    "parent_backup_id": b.parent_backup_id,
                }),
            );
        }
        servers.insert(
            s.name.clone(),
            json!({
                "config": Value::Object(config),
                "msg_list": s.msg_list,
                "active_model": s.active_model,
                "status": Value::Object(status),
                "backups": Value::Object(backups_json),
                "wals": {"last_archived_wal_per_timeline": last_archived_per_timeline(&l)},
            }),
        );
    }
    let mut models = Map::new();
    for (name, m) in &ctx.cfg.models {
        models.insert(name.clone(), json!({"config": {"cluster": m.cluster, "model": true}}));
    }
    let doc = json!({
        "global": {"config": Value::Object(global), "system_info": system_info()},
        "servers": Value::Object(servers),
        "models": Value::Object(models),
    });
    ctx.out.info(pyjson::dumps(&doc, Some(4), true));
}

fn last_archived_per_timeline(l: &ServerLayout) -> Value {
    let entries = crate::catalog::xlogdb::XlogDb::new(l).read_locked().unwrap_or_default();
    let mut per: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| e.name.is_segment()) {
        let key = format!("{:08X}", e.name.timeline().0);
        let newer =
            per.get(&key).and_then(|v| v.get("name")).and_then(|n| n.as_str()).is_none_or(|n| e.name.as_str() > n);
        if newer {
            per.insert(
                key,
                json!({"name": e.name.to_string(), "size": e.size, "time": e.time, "compression": e.compression, "encryption": e.encryption}),
            );
        }
    }
    json!(per)
}
