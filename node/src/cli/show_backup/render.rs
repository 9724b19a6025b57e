//! Barman's two renderings of show-backup: the console's
//! (`ConsoleOutputWriter.render_show_backup`) and JSON's
//! (`JsonOutputWriter.result_show_backup`), with Python's number formatting.

use super::{Done, ExtInfo, dict_get, num, truthy_dict};
use crate::catalog::backups::format_time;
use crate::catalog::pyliteral::PyValue;
use crate::cli::check::{pretty_size, pretty_size_f64};
use serde_json::{Map, Value, json};
use std::fmt::Display;

/// The copy figures a renderer shows: copy time, analysis time, throughput, workers.
struct CopyShown {
    copy_time: PyValue,
    analysis_time: PyValue,
    throughput: Option<f64>,
    workers: PyValue,
}

/// A Python value as `json.dumps` writes it.
fn py_json(v: &PyValue) -> Value {
    v.to_json()
}

/// Python's `str()`.
fn py_str(v: &PyValue) -> String {
    v.to_py_str()
}

/// `"%s" % value` of an optional field: `None` when null.
fn opt<T: Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "None".into(), ToString::to_string)
}

/// Python's `"{:.2%}".format(x)`.
fn percent(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// Barman's `human_readable_timedelta(timedelta(seconds=s))`.
fn human_readable_timedelta(seconds: f64) -> String {
    let micros = (seconds * 1e6).round_ties_even() as i64;
    let human = crate::config::types::human_duration(micros.unsigned_abs() / 1_000_000);
    if micros < 0 { format!("{human} ago") } else { human }
}

impl ExtInfo<'_> {
    /// The copy figures as both of Barman's renderers pick them: those of
    /// `get_backup_ext_info`, else straight from `copy_stats`.
    fn copy_shown(&self, d: &Done) -> Option<CopyShown> {
        let mut copy_time = d.copy_time.clone().unwrap_or(PyValue::Int(0));
        let mut analysis_time = d.analysis_time.clone().unwrap_or(PyValue::Int(0));
        let mut workers = d.number_of_workers.clone().unwrap_or(PyValue::Int(1));
        if let Some(cs) = truthy_dict(self.b.info.copy_stats.as_ref())
            && num(&copy_time) == 0.0
        {
            copy_time = dict_get(cs, "copy_time").cloned().unwrap_or(PyValue::Int(0));
            analysis_time = dict_get(cs, "analysis_time").cloned().unwrap_or(PyValue::Int(0));
            workers = dict_get(cs, "number_of_workers").cloned().unwrap_or(PyValue::Int(1));
        }
        let shown = num(&copy_time) != 0.0;
        shown.then_some(CopyShown { copy_time, analysis_time, throughput: d.estimated_throughput, workers })
    }

    /// `ConsoleOutputWriter.render_show_backup`.
    pub(super) fn console(&self) -> Vec<String> {
        let info = &self.b.info;
        let row = |k: &str, v: &dyn Display| format!("  {k:<23}: {v}");
        let header = |k: &str| format!("  {k}:");
        let nested = |k: &str, v: &dyn Display| format!("    {k:<21}: {v}");
        let mut out = vec![format!("Backup {}:", self.b.id)];
        if let Some(n) = info.backup_name.as_ref().filter(|n| !n.is_empty()) {
            out.push(row("Backup Name", n));
        }
        out.push(row("Server Name", &self.server_name));
        if let Some(sys) = info.systemid.as_ref().filter(|s| !s.is_empty()) {
            out.push(row("System Id", sys));
        }
        out.push(row("Status", &info.status));
        if self.b.is_copy_done() {
            out.push(row("PostgreSQL Version", &opt(&info.version)));
            out.push(row("PGDATA directory", &opt(&info.pgdata)));
            if let Some(c) = info.cluster_size.filter(|c| *c != 0) {
                out.push(row("Estimated Cluster Size", &pretty_size(c)));
            }
        }
        out.push(String::new());
        let checksums = info.data_checksums.as_ref().filter(|s| !s.is_empty());
        let summarize = info.summarize_wal.as_ref().filter(|s| !s.is_empty());
        if checksums.is_some() || summarize.is_some() {
            out.push(header("Server information"));
            if let Some(c) = checksums {
                out.push(nested("Checksums", c));
            }
            if let Some(s) = summarize {
                out.push(nested("WAL summarizer", s));
            }
            out.push(String::new());
        }
        let Some(d) = &self.done else {
            if let Some(e) = info.error.as_ref().filter(|e| !e.is_empty()) {
                out.push(row("Error", e));
            }
            return out;
        };
        self.console_snapshots(&mut out);
        if let Some(ts) = info.tablespaces.as_ref().filter(|t| !t.is_empty()) {
            out.push(header("Tablespaces"));
            for t in ts {
                out.push(nested(&t.name, &format!("{} (oid: {})", t.location, t.oid)));
            }
            out.push(String::new());
        }
        // Base backup information.
        out.push(header("Base backup information"));
        let mode = info.mode.as_deref().filter(|m| !m.is_empty());
        if let Some(m) = mode {
            out.push(nested("Backup Method", &m));
        }
        if let Some(e) = info.encryption.as_ref().filter(|e| !e.is_empty()) {
            out.push(nested("Encryption", e));
        }
        if mode == Some("postgres") {
            out.push(nested("Backup Type", &d.backup_type));
        }
        let wal_size = d.wal.size;
        if let Some(size) = info.deduplicated_size.filter(|s| *s != 0) {
            let mut text = pretty_size(size);
            if wal_size != 0 {
                text.push_str(&format!(" ({} with WALs)", pretty_size(size + wal_size)));
            }
            out.push(nested("Backup Size", &text));
        }
        if let Some(c) = info.compression.as_ref().filter(|c| !c.is_empty() && *c != "none") {
            out.push(nested("Backup Compression", c));
        }
        if wal_size != 0 {
            out.push(nested("WAL Size", &pretty_size(wal_size)));
        }
        if matches!(d.backup_type, "rsync" | "incremental") {
            let saved = format!("{} ({})", pretty_size_f64(d.est_dedup_size), percent(d.deduplication_ratio));
            out.push(nested("Resources saved", &saved));
        }
        // Ours, for rsync backups: what crossed the wire and what the previous backup gave.
        if let Some(sent) = copy_stat(info, "transferred_bytes") {
            let linked = copy_stat(info, "linked_bytes").unwrap_or(0);
            let copied = copy_stat(info, "copied_bytes").unwrap_or(0);
            out.push(nested(
                "Transfer size",
                &format!(
                    "{} (reused: {} linked, {} copied)",
                    pretty_size(sent),
                    pretty_size(linked),
                    pretty_size(copied)
                ),
            ));
        }
        out.push(nested("Timeline", &opt(&info.timeline)));
        out.push(nested("Begin WAL", &opt(&info.begin_wal)));
        out.push(nested("End WAL", &opt(&info.end_wal)));
        if d.wal.num != 0 {
            out.push(nested("Number of WALs", &d.wal.num));
        }
        if d.wal.compression_ratio > 0.0 {
            out.push(nested("WAL compression ratio", &percent(d.wal.compression_ratio)));
        }
        out.push(nested("Begin time", &info.begin_time.as_ref().map_or_else(|| "None".into(), format_time)));
        out.push(nested("End time", &info.end_time.as_ref().map_or_else(|| "None".into(), format_time)));
        if let Some(c) = self.copy_shown(d) {
            let mut text = human_readable_timedelta(num(&c.copy_time));
            if num(&c.analysis_time) >= 1.0 {
                text.push_str(&format!(" + {} startup", human_readable_timedelta(num(&c.analysis_time))));
            }
            out.push(nested("Copy time", &text));
            if let Some(t) = c.throughput.filter(|t| *t != 0.0) {
                let mut text = format!("{}/s", pretty_size_f64(t));
                if num(&c.workers) > 1.0 {
                    text.push_str(&format!(" ({} jobs)", py_str(&c.workers)));
                }
                out.push(nested("Estimated throughput", &text));
            }
        }
        out.push(nested("Begin Offset", &opt(&info.begin_offset)));
        out.push(nested("End Offset", &opt(&info.end_offset)));
        out.push(nested("Begin LSN", &opt(&info.begin_xlog)));
        out.push(nested("End LSN", &opt(&info.end_xlog)));
        out.push(String::new());
        // WAL information.
        out.push(header("WAL information"));
        out.push(nested("Number of files", &d.wal.until_next_num));
        out.push(nested("Disk usage", &pretty_size(d.wal.until_next_size)));
        if d.wal.per_second > 0.0 {
            out.push(nested("WAL rate", &format!("{:.2}/hour", d.wal.per_second * 3600.0)));
        }
        if d.wal.until_next_compression_ratio > 0.0 {
            out.push(nested("Compression ratio", &percent(d.wal.until_next_compression_ratio)));
        }
        out.push(nested("Last available", &opt(&d.wal.last)));
        if !d.children_timelines.is_empty() {
            let tlis: Vec<String> = d.children_timelines.iter().map(u32::to_string).collect();
            out.push(nested("Reachable timelines", &tlis.join(", ")));
        }
        out.push(String::new());
        // Catalog information.
        out.push(header("Catalog information"));
        out.push(nested("Retention Policy", &d.retention.as_deref().unwrap_or("not enforced")));
        out.push(nested("Previous Backup", &d.previous.as_deref().unwrap_or("- (this is the oldest base backup)")));
        out.push(nested("Next Backup", &d.next.as_deref().unwrap_or("- (this is the latest base backup)")));
        if !d.children_timelines.is_empty() {
            out.push(String::new());
            out.push(
                "WARNING: WAL information is inaccurate due to multiple timelines interacting with this backup".into(),
            );
        }
        if d.backup_type == "incremental" {
            out.push(nested("Root Backup", &d.root_backup_id));
            out.push(nested("Parent Backup", &opt(&info.parent_backup_id)));
            out.push(nested("Backup chain size", &d.chain_size));
        }
        if mode == Some("postgres")
            && let Some(children) = &info.children_backup_ids
        {
            out.push(nested("Children Backup(s)", &children.join(",")));
        }
        out
    }

    /// `render_show_backup_snapshots` (backups of cloud snapshots, read from Barman's catalogue).
    fn console_snapshots(&self, out: &mut Vec<String>) {
        let Some(si @ PyValue::Dict(items)) = &self.b.info.snapshots_info else { return };
        let nested = |k: &str, v: &str| format!("    {k:<21}: {v}");
        out.push("  Snapshot information:".into());
        for (k, v) in items {
            let k = py_str(k);
            if k != "snapshots" && k != "provider_info" {
                out.push(nested(&k, &py_str(v)));
            }
        }
        if let Some(PyValue::Dict(p)) = dict_get(si, "provider_info") {
            for (k, v) in p {
                out.push(nested(&py_str(k), &py_str(v)));
            }
        }
        out.push(String::new());
        for snap in dict_get(si, "snapshots").and_then(PyValue::items).unwrap_or_default() {
            if let Some(PyValue::Dict(p)) = dict_get(snap, "provider") {
                let mut p: Vec<(String, String)> = p.iter().map(|(k, v)| (py_str(k), py_str(v))).collect();
                p.sort();
                for (k, v) in p {
                    out.push(nested(&k, &v));
                }
            }
            let mount = dict_get(snap, "mount");
            let field = |f: &str| mount.and_then(|m| dict_get(m, f)).map_or_else(|| "None".into(), py_str);
            out.push(nested("Mount point", &field("mount_point")));
            out.push(nested("Mount options", &field("mount_options")));
            out.push(String::new());
        }
    }

    /// `JsonOutputWriter.result_show_backup`.
    pub(super) fn json(&self) -> Value {
        let info = &self.b.info;
        let mut o = Map::new();
        o.insert("backup_id".into(), json!(self.b.id));
        o.insert("status".into(), json!(info.status));
        if let Some(n) = info.backup_name.as_ref().filter(|n| !n.is_empty()) {
            o.insert("backup_name".into(), json!(n));
        }
        if let Some(sys) = info.systemid.as_ref().filter(|s| !s.is_empty()) {
            o.insert("system_id".into(), json!(sys));
        }
        o.insert(
            "server_information".into(),
            json!({"data_checksums": info.data_checksums, "summarize_wal": info.summarize_wal}),
        );
        let Some(d) = &self.done else {
            if let Some(e) = info.error.as_ref().filter(|e| !e.is_empty()) {
                o.insert("error".into(), json!(e));
            }
            return Value::Object(o);
        };
        o.insert("backup_type".into(), json!(d.backup_type));
        if let Some(c) = info.cluster_size.filter(|c| *c != 0) {
            o.insert("cluster_size".into(), json!(pretty_size(c)));
            o.insert("cluster_size_bytes".into(), json!(c));
        }
        o.insert("postgresql_version".into(), json!(info.version));
        o.insert("pgdata_directory".into(), json!(info.pgdata));
        let tablespaces: Vec<Value> = info
            .tablespaces
            .iter()
            .flatten()
            .map(|t| json!({"name": t.name, "location": t.location, "oid": t.oid}))
            .collect();
        o.insert("tablespaces".into(), Value::Array(tablespaces));
        let dedup = info.deduplicated_size.unwrap_or(0);
        let wal_size = d.wal.size;
        let time = |t: &Option<chrono::DateTime<chrono::FixedOffset>>| {
            (t.map(|t| json!(t.timestamp().to_string())), t.as_ref().map(|t| json!(format_time(t))))
        };
        let (begin_ts, begin_time) = time(&info.begin_time);
        let (end_ts, end_time) = time(&info.end_time);
        let text = |v: &Option<String>| json!(v);
        let mut base = json!({
            "backup_method": text(&info.mode),
            "encryption": text(&info.encryption),
            "compression": text(&info.compression),
            "backup_size": pretty_size(dedup),
            "backup_size_bytes": dedup,
            "backup_size_with_wals": pretty_size(dedup + wal_size),
            "backup_size_with_wals_bytes": dedup + wal_size,
            "wal_size": pretty_size(wal_size),
            "wal_size_bytes": wal_size,
            "timeline": info.timeline,
            "begin_wal": info.begin_wal.as_ref().map(ToString::to_string),
            "end_wal": info.end_wal.as_ref().map(ToString::to_string),
            "wal_num": d.wal.num,
            "begin_time_timestamp": begin_ts,
            "begin_time": begin_time,
            "end_time_timestamp": end_ts,
            "end_time": end_time,
            "begin_offset": info.begin_offset,
            "end_offset": info.end_offset,
            "begin_lsn": info.begin_xlog.map(|l| l.to_string()),
            "end_lsn": info.end_xlog.map(|l| l.to_string()),
        });
        if matches!(d.backup_type, "rsync" | "incremental") {
            base["resources_saved"] = json!(pretty_size_f64(d.est_dedup_size));
            base["resources_saved_bytes"] = json!(d.est_dedup_size.trunc() as i64);
            base["resources_saved_percentage"] = json!(percent(d.deduplication_ratio));
        }
        if d.wal.compression_ratio > 0.0 {
            base["wal_compression_ratio"] = json!(percent(d.wal.compression_ratio));
        }
        if let Some(c) = self.copy_shown(d) {
            let copy = num(&c.copy_time);
            base["copy_time"] = json!(human_readable_timedelta(copy));
            base["copy_time_seconds"] = py_json(&c.copy_time);
            if num(&c.analysis_time) >= 1.0 {
                base["analysis_time"] = json!(human_readable_timedelta(num(&c.analysis_time)));
                base["analysis_time_seconds"] = py_json(&c.analysis_time);
            }
            let throughput = c.throughput.unwrap_or(dedup as f64 / copy);
            base["throughput"] = json!(format!("{}/s", pretty_size_f64(throughput)));
            base["throughput_bytes"] = json!(throughput.trunc() as i64);
            if num(&c.workers) != 0.0 {
                base["number_of_workers"] = py_json(&c.workers);
            }
        }
        o.insert("base_backup_information".into(), base);
        let mut catalog = json!({
            "retention_policy": d.retention.as_deref().unwrap_or("not enforced"),
            "previous_backup": d.previous.as_deref().unwrap_or("- (this is the oldest base backup)"),
            "next_backup": d.next.as_deref().unwrap_or("- (this is the latest base backup)"),
        });
        if d.backup_type == "incremental" {
            catalog["root_backup_id"] = json!(d.root_backup_id);
            catalog["parent_backup_id"] = json!(info.parent_backup_id);
            catalog["chain_size"] = json!(d.chain_size);
        }
        if info.mode.as_deref() == Some("postgres") {
            catalog["children_backup_ids"] = json!(info.children_backup_ids.as_ref().filter(|c| !c.is_empty()));
        }
        o.insert("catalog_information".into(), catalog);
        let mut wal = json!({
            "no_of_files": d.wal.until_next_num,
            "disk_usage": pretty_size(d.wal.until_next_size),
            "disk_usage_bytes": d.wal.until_next_size,
            "wal_rate": 0,
            "wal_rate_per_second": 0,
            "compression_ratio": 0,
            "last_available": d.wal.last,
            "timelines": d.children_timelines.iter().map(u32::to_string).collect::<Vec<_>>(),
        });
        if d.wal.per_second > 0.0 {
            wal["wal_rate"] = json!(format!("{:.2}/hour", d.wal.per_second * 3600.0));
            wal["wal_rate_per_second"] = json!(d.wal.per_second);
        }
        if d.wal.until_next_compression_ratio > 0.0 {
            wal["compression_ratio"] = json!(percent(d.wal.until_next_compression_ratio));
        }
        if !d.children_timelines.is_empty() {
            // Barman's text, with the indentation its line continuations keep.
            let pad = " ".repeat(20);
            wal["_WARNING"] = json!(format!(
                "WAL information is inaccurate {pad}due to multiple timelines interacting with {pad}this backup"
            ));
        }
        o.insert("wal_information".into(), wal);
        if let Some(si) = info.snapshots_info.as_ref().filter(|si| !matches!(si, PyValue::None)) {
            o.insert("snapshots_info".into(), py_json(si));
        }
        Value::Object(o)
    }
}

/// An integer of `copy_stats`.
fn copy_stat(info: &crate::catalog::backup_info::BackupInfo, key: &str) -> Option<u64> {
    let Some(crate::catalog::pyliteral::PyValue::Dict(items)) = &info.copy_stats else { return None };
    items.iter().find_map(|(k, v)| match (k, v) {
        (crate::catalog::pyliteral::PyValue::Str(k), crate::catalog::pyliteral::PyValue::Int(n)) if k == key => {
            u64::try_from(*n).ok()
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timedeltas_read_as_barman_writes_them() {
        assert_eq!(human_readable_timedelta(0.4), "less than one second");
        assert_eq!(human_readable_timedelta(1.0), "1 second");
        assert_eq!(human_readable_timedelta(61.5), "1 minute, 1 second");
        assert_eq!(human_readable_timedelta(7322.0), "2 hours, 2 minutes, 2 seconds");
        assert_eq!(human_readable_timedelta(90000.0), "1 day, 1 hour");
        assert_eq!(human_readable_timedelta(-3.0), "3 seconds ago");
    }

    #[test]
    fn sizes_and_percentages_as_python_formats_them() {
        assert_eq!(pretty_size_f64(1023.9), "1023 B");
        assert_eq!(pretty_size_f64(1536.0), "1.5 KiB");
        assert_eq!(pretty_size_f64(3.5 * 1024.0 * 1024.0), "3.5 MiB");
        assert_eq!(percent(0.0), "0.00%");
        assert_eq!(percent(0.123456), "12.35%");
    }
}
