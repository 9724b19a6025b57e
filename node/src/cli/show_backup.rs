//! `show-backup` and `list-files`: one backup of the catalogue as Barman 3.17
//! shows it (its `get_backup_ext_info`, gathered here and rendered for the
//! console or as JSON in `render`), and the files it is made of.

mod render;

use super::args::ListFilesTarget;
use super::context::{Ctx, Pick};
use super::output::Writer;
use crate::catalog::ServerLayout;
use crate::catalog::backups::{self, Backup};
use crate::catalog::pyliteral::PyValue;
use crate::catalog::xlogdb::{XlogDb, XlogEntry};
use crate::config::ServerConfig;
use crate::wal::history::parse_history;
use crate::wal::{Lsn, TimelineId, WalFileName};
use std::path::Path;

/// Barman's figures on the WAL of a backup (`Server.get_wal_info`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct WalInfo {
    num: u64,
    pub(super) size: u64,
    until_next_num: u64,
    pub(super) until_next_size: u64,
    /// Name of the newest WAL counted.
    last: Option<String>,
    per_second: f64,
    compression_ratio: f64,
    until_next_compression_ratio: f64,
}

/// What `get_backup_ext_info` adds to a backup that is copied (WAITING_FOR_WALS or DONE).
struct Done {
    previous: Option<String>,
    next: Option<String>,
    wal: WalInfo,
    /// The retention label, or none when no policy is enforced.
    retention: Option<String>,
    children_timelines: Vec<u32>,
    root_backup_id: String,
    chain_size: usize,
    backup_type: &'static str,
    deduplication_ratio: f64,
    est_dedup_size: f64,
    /// `copy_stats` figures, as `get_backup_ext_info` keeps them.
    copy_time: Option<PyValue>,
    analysis_time: Option<PyValue>,
    estimated_throughput: Option<f64>,
    number_of_workers: Option<PyValue>,
}

/// One backup with everything show-backup prints about it.
struct ExtInfo<'a> {
    b: &'a Backup,
    server_name: String,
    done: Option<Done>,
}

/// Python's float() of a number; anything else counts as zero.
fn num(v: &PyValue) -> f64 {
    match v {
        PyValue::Int(i) => *i as f64,
        PyValue::Float(f) => *f,
        PyValue::Bool(b) => f64::from(u8::from(*b)),
        _ => 0.0,
    }
}

fn dict_get<'v>(d: &'v PyValue, key: &str) -> Option<&'v PyValue> {
    match d {
        PyValue::Dict(items) => items.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
        _ => None,
    }
}

/// A Python dict that is not empty (what `if copy_stats:` accepts).
fn truthy_dict(v: Option<&PyValue>) -> Option<&PyValue> {
    v.filter(|d| matches!(d, PyValue::Dict(items) if !items.is_empty()))
}

/// `get_wal_until_next_backup`: the xlog.db entries from the backup's first WAL
/// on its timeline (and older ones), up to the next backup's end WAL.
pub(super) fn wal_until_next<'e>(
    entries: &'e [XlogEntry],
    begin: &WalFileName,
    next_end: Option<&WalFileName>,
    include_history: bool,
) -> Vec<&'e XlogEntry> {
    let mut out = Vec::new();
    for e in entries {
        if e.name.is_history() {
            if include_history {
                out.push(e);
            }
            continue;
        }
        // Names compare as text, as Barman compares them.
        if e.name.as_str() < begin.as_str() || e.name.timeline() > begin.timeline() || !e.name.is_segment() {
            continue;
        }
        if next_end.is_some_and(|n| e.name.as_str() > n.as_str()) {
            break;
        }
        out.push(e);
    }
    out
}

/// `Server.get_wal_info` over the entries `wal_until_next` gave.
pub(super) fn wal_info(b: &Backup, items: &[&XlogEntry]) -> WalInfo {
    let (Some(begin), Some(end)) = (&b.info.begin_wal, &b.info.end_wal) else { return WalInfo::default() };
    let mut w = WalInfo::default();
    let mut first_time = None;
    let mut last_time = 0.0;
    for e in items {
        if e.name.as_str() == begin.as_str() {
            first_time = Some(e.time);
        }
        if e.name.as_str() <= end.as_str() {
            w.num += 1;
            w.size += e.size;
        } else {
            w.until_next_num += 1;
            w.until_next_size += e.size;
        }
        last_time = e.time;
    }
    w.last = items.last().map(|e| e.name.to_string());
    let Some(first_time) = first_time else { return w };
    let total = last_time - first_time;
    if total > 0.0 {
        w.per_second = (w.num + w.until_next_num) as f64 / total;
    }
    let seg = b.info.xlog_segment_size as f64;
    let ratio = |size: u64, n: u64| if n == 0 || seg == 0.0 { 0.0 } else { 1.0 - size as f64 / (n as f64 * seg) };
    w.compression_ratio = ratio(w.size, w.num);
    w.until_next_compression_ratio = ratio(w.until_next_size, w.until_next_num);
    w
}

/// The catalogue's WAL entries, rebuilt first when xlog.db is missing (as Barman).
fn read_xlogdb(s: &ServerConfig, l: &ServerLayout) -> Result<Vec<XlogEntry>, String> {
    let db = XlogDb::new(l);
    let lock = db.lock().map_err(|e| e.to_string())?;
    db.ensure(&lock, &crate::archive::server::codecs_for(s)).map_err(|e| e.to_string())?;
    db.read(&lock).map_err(|e| e.to_string())
}

/// `get_children_timelines`: timelines forked from `tli` at or after `forked_after`,
/// read from the history files at the top of `wals/`.
fn children_timelines(
    s: &ServerConfig,
    l: &ServerLayout,
    tli: u32,
    forked_after: Option<Lsn>,
) -> Result<Vec<u32>, String> {
    let codecs = crate::archive::server::codecs_for(s);
    let mut out = Vec::new();
    let mut child = tli;
    loop {
        child += 1;
        let path = l.wals_dir.join(format!("{child:08X}.history"));
        if !path.exists() {
            break;
        }
        let raw = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes = match codecs.identify(&raw) {
            Some(codec) => {
                let mut plain = Vec::new();
                codecs.decompress(codec, &mut &raw[..], &mut plain).map_err(|e| format!("{}: {e}", path.display()))?;
                plain
            }
            None => raw,
        };
        let history = parse_history(TimelineId(child), &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        for h in history {
            if h.parent.0 == tli && forked_after.is_none_or(|f| h.switchpoint >= f) {
                out.push(child);
            }
        }
    }
    Ok(out)
}

impl<'a> ExtInfo<'a> {
    /// `Server.get_backup_ext_info`.
    fn gather(s: &ServerConfig, l: &ServerLayout, all: &'a [Backup], b: &'a Backup) -> Result<Self, String> {
        let server_name = b.info.server_name.clone().unwrap_or_else(|| s.name.clone());
        if !b.is_copy_done() {
            return Ok(ExtInfo { b, server_name, done: None });
        }
        let info = &b.info;
        let previous = all.iter().rfind(|x| x.id < b.id && x.is_copy_done()).map(|x| x.id.clone());
        let next = all.iter().find(|x| x.id > b.id && x.is_copy_done());
        let wal = match &info.begin_wal {
            Some(begin) => {
                let entries = read_xlogdb(s, l)?;
                wal_info(b, &wal_until_next(&entries, begin, next.and_then(|n| n.info.end_wal.as_ref()), false))
            }
            None => WalInfo::default(),
        };
        let retention = super::retention::labels(s, l, all)
            .map(|labels| labels.get(&b.id).map_or_else(|| "-".to_string(), ToString::to_string));
        let children_timelines = match info.timeline {
            Some(tli) => children_timelines(s, l, tli, info.end_xlog)?,
            None => Vec::new(),
        };
        let (mut copy_time, mut analysis_time, mut estimated_throughput, mut number_of_workers) =
            (None, None, None, None);
        if let Some(cs) = truthy_dict(info.copy_stats.as_ref()) {
            let analysis = dict_get(cs, "analysis_time").cloned().unwrap_or(PyValue::Int(0));
            if num(&analysis) >= 1.0 {
                analysis_time = Some(analysis);
            }
            let copy = dict_get(cs, "copy_time").cloned().unwrap_or(PyValue::Int(0));
            if num(&copy) > 0.0 {
                let dedup = info.deduplicated_size.unwrap_or(0);
                if dedup > 0 {
                    estimated_throughput = Some(dedup as f64 / num(&copy));
                    let workers = dict_get(cs, "number_of_workers").cloned().unwrap_or(PyValue::Int(1));
                    if num(&workers) > 1.0 {
                        number_of_workers = Some(workers);
                    }
                }
                copy_time = Some(copy);
            }
        }
        // walk_to_root: parents that exist and are not EMPTY.
        let (mut root, mut chain_size) = (b, 1);
        while let Some(parent) = root.info.parent_backup_id.as_deref()
            && let Some(p) = all.iter().find(|x| x.id == parent && x.info.status != "EMPTY")
            && chain_size <= all.len()
        {
            root = p;
            chain_size += 1;
        }
        let backup_type = b.backup_type();
        let size = if backup_type == "rsync" { info.size } else { info.cluster_size };
        let deduplication_ratio = match (size, info.deduplicated_size) {
            (Some(size), Some(dedup)) if size != 0 && dedup != 0 => 1.0 - dedup as f64 / size as f64,
            _ => 0.0,
        };
        let est_dedup_size =
            info.cluster_size.filter(|c| *c != 0).or(info.size).unwrap_or(0) as f64 * deduplication_ratio;
        Ok(ExtInfo {
            b,
            server_name,
            done: Some(Done {
                previous,
                next: next.map(|n| n.id.clone()),
                wal,
                retention,
                children_timelines,
                root_backup_id: root.id.clone(),
                chain_size,
                backup_type,
                deduplication_ratio,
                est_dedup_size,
                copy_time,
                analysis_time,
                estimated_throughput,
                number_of_workers,
            }),
        })
    }
}

/// The server (inactive and disabled ones too), its layout, its catalogue and
/// the backup `backup_id` names, or an error already reported.
fn locate(ctx: &mut Ctx, server: &str, backup_id: &str) -> Option<(ServerConfig, ServerLayout, Vec<Backup>, usize)> {
    let s = ctx.server(server, Pick::ALL)?;
    let l = ServerLayout::new(&ctx.cfg.global, &s);
    let all = super::backups::load(ctx, &l)?;
    let at = match backups::resolve(&all, backup_id, &s.name) {
        Ok(b) => all.iter().position(|x| x.id == b.id)?,
        Err(e) => {
            ctx.out.error(e);
            return None;
        }
    };
    Some((s, l, all, at))
}

pub fn show_backup(ctx: &mut Ctx, server: &str, backup_id: &str) {
    let Some((s, l, all, at)) = locate(ctx, server, backup_id) else { return };
    let ext = match ExtInfo::gather(&s, &l, &all, &all[at]) {
        Ok(x) => x,
        Err(e) => return ctx.out.error(e),
    };
    if ctx.out.writer == Writer::Json {
        ctx.out.json_set(&ext.server_name, ext.json());
    } else {
        for line in ext.console() {
            ctx.out.info(line);
        }
    }
}

/// Python's `os.walk` (top-down, directories in directory order, symbolic links
/// to directories listed as directories but not entered), files sorted.
fn walk(dir: &Path, empty_dirs: bool, emit: &mut dyn FnMut(String)) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for e in rd.flatten() {
        let p = e.path();
        // DirEntry.is_dir() follows symbolic links.
        if std::fs::metadata(&p).is_ok_and(|m| m.is_dir()) {
            dirs.push(p);
        } else {
            files.push(e.file_name());
        }
    }
    files.sort();
    if empty_dirs && dirs.is_empty() && files.is_empty() {
        emit(dir.display().to_string());
    }
    for f in files {
        emit(dir.join(f).display().to_string());
    }
    for d in dirs {
        if !d.is_symlink() {
            walk(&d, empty_dirs, emit);
        }
    }
}

/// `BackupInfo.get_required_wal_segments`: every segment name from begin to end.
fn required_segments(b: &Backup) -> Result<Vec<WalFileName>, String> {
    let missing = || format!("backup {} has no begin and end WAL: its WAL files cannot be listed", b.id);
    let (Some(begin), Some(end)) = (&b.info.begin_wal, &b.info.end_wal) else { return Err(missing()) };
    let (Some(begin), Some(end)) = (begin.segment_id(), end.segment_id()) else { return Err(missing()) };
    if begin.tli != end.tli {
        return Err(format!("Begin segment ({begin}) and end segment ({end}) must have the same timeline part"));
    }
    let per_file = 0xFFFF_FFFF_u64.checked_div(b.info.xlog_segment_size).unwrap_or(0x7FFFF);
    // Before 9.3 the last segment of each log file was skipped.
    let skip_last = b.info.version.is_some_and(|v| v < 90300);
    let (mut log, mut seg) = (u64::from(begin.log), u64::from(begin.seg));
    let mut out = Vec::new();
    while (log, seg) <= (u64::from(end.log), u64::from(end.seg)) {
        out.push(format!("{:08X}{log:08X}{seg:08X}", begin.tli.0).parse().map_err(|e| format!("{e}"))?);
        seg += 1;
        if seg > per_file || (skip_last && seg == per_file) {
            seg = 0;
            log += 1;
        }
    }
    Ok(out)
}

pub fn list_files(ctx: &mut Ctx, server: &str, backup_id: &str, target: ListFilesTarget, empty_dirs: bool) {
    let Some((s, l, all, at)) = locate(ctx, server, backup_id) else { return };
    let b = &all[at];
    if matches!(target, ListFilesTarget::Standalone | ListFilesTarget::Data | ListFilesTarget::Full) {
        walk(&l.base_dir.join(&b.id), empty_dirs, &mut |p| ctx.out.info(p));
    }
    if target == ListFilesTarget::Standalone {
        match required_segments(b) {
            Ok(names) => names.iter().for_each(|n| ctx.out.info(l.wal_path(n).display().to_string())),
            Err(e) => ctx.out.error(e),
        }
    }
    if matches!(target, ListFilesTarget::Wal | ListFilesTarget::Full) {
        let Some(begin) = &b.info.begin_wal else {
            return ctx.out.error(format!("backup {} has no begin WAL: its WAL files cannot be listed", b.id));
        };
        let entries = match read_xlogdb(&s, &l) {
            Ok(e) => e,
            Err(e) => return ctx.out.error(e),
        };
        let next_end = all[at + 1..].iter().find(|x| x.is_copy_done()).and_then(|x| x.info.end_wal.as_ref());
        for e in wal_until_next(&entries, begin, next_end, true) {
            ctx.out.info(l.wal_path(&e.name).display().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup_info::BackupInfo;

    fn backup(begin: &str, end: &str, version: u32) -> Backup {
        let info = BackupInfo {
            begin_wal: Some(begin.parse().unwrap()),
            end_wal: Some(end.parse().unwrap()),
            version: Some(version),
            status: "DONE".into(),
            ..Default::default()
        };
        Backup { id: "20240101T000000".into(), path: "x".into(), info }
    }

    fn names(b: &Backup) -> Vec<String> {
        required_segments(b).unwrap().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn required_segments_cross_log_files_as_barman_counts_them() {
        let b = backup("0000000100000001000000FE", "000000010000000200000000", 150000);
        assert_eq!(names(&b), ["0000000100000001000000FE", "0000000100000001000000FF", "000000010000000200000000"]);
        // Before 9.3 the last segment of a log file did not exist.
        let old = backup("0000000100000001000000FE", "000000010000000200000000", 90200);
        assert_eq!(names(&old), ["0000000100000001000000FE", "000000010000000200000000"]);
        assert!(required_segments(&backup("000000010000000000000002", "000000020000000000000003", 150000)).is_err());
    }

    #[test]
    fn wal_until_next_stops_at_the_next_backup_and_skips_later_timelines() {
        let e = |n: &str, size: u64, time: f64| XlogEntry {
            name: n.parse().unwrap(),
            size,
            time,
            compression: None,
            encryption: None,
        };
        let entries = vec![
            e("000000010000000000000001", 10, 1.0),
            e("000000010000000000000002", 10, 2.0),
            e("000000010000000000000002.00000028.backup", 1, 2.0),
            e("000000020000000000000003", 10, 3.0),
            e("00000002.history", 1, 3.0),
            e("000000010000000000000003", 10, 4.0),
            e("000000010000000000000004", 10, 6.0),
            e("000000010000000000000005", 10, 7.0),
        ];
        let b = backup("000000010000000000000002", "000000010000000000000003", 150000);
        let next_end: WalFileName = "000000010000000000000004".parse().unwrap();
        let got = wal_until_next(&entries, b.info.begin_wal.as_ref().unwrap(), Some(&next_end), true);
        let got_names: Vec<&str> = got.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            got_names,
            ["000000010000000000000002", "00000002.history", "000000010000000000000003", "000000010000000000000004"]
        );
        let w = wal_info(&b, &wal_until_next(&entries, b.info.begin_wal.as_ref().unwrap(), Some(&next_end), false));
        assert_eq!((w.num, w.size, w.until_next_num, w.until_next_size), (2, 20, 1, 10));
        assert_eq!(w.last.as_deref(), Some("000000010000000000000004"));
        assert!((w.per_second - 3.0 / 4.0).abs() < 1e-12);
    }
}
