//! `recover` (alias `restore`) SERVER BACKUP_ID DEST on this host, with
//! Barman's checks, steps, messages and written files: the base backup copied
//! (plain) or unpacked (tar, any compression), tablespaces where they were or
//! where `--tablespace` says, the WAL the targets need copied (or get-wal as
//! restore_command), the recovery settings and the configuration mangling.

use super::args::RestoreArgs as RecoverArgs;
use super::context::{Ctx, Pick};
use crate::archive::server::codecs_for;
use crate::catalog::ServerLayout;
use crate::catalog::backups::{self, Backup};
use crate::catalog::xlogdb::{XlogDb, XlogEntry};
use crate::config::ServerConfig;
use crate::config::types::human_duration;
use crate::hooks::{Event, Hooks, Phase};
use crate::recover::copy::BackupCopy;
use crate::recover::dest::{Dest, Local as LocalDest, RemoteDest};
use crate::recover::plan::Placement;
use crate::recover::remote::fqdn;
use crate::recover::settings::{Targets, WalSource, dangerous_settings, mangle, recovery_lines};
use crate::transport::copy::CopyOptions;
use crate::transport::ssh::Remote;
use crate::wal::{Lsn, SegmentId, SegmentSize, TimelineId, WalFileName};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Why a recovery stops: one error line.
struct Stop(String);

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop(e.to_string())
    }
}

pub fn recover(ctx: &mut Ctx, a: &RecoverArgs) {
    let pick = Pick { skip_inactive: false, skip_disabled: false, inactive_is_error: false, disabled_is_error: true };
    let Some(s) = ctx.server(&a.server, pick) else { return };
    if let Err(Stop(msg)) = run(ctx, &s, a) {
        ctx.out.error(msg);
    }
}

/// The target time as Barman reads it (`dateutil`): with an offset, or local time.
fn parse_target_time(ctx: &mut Ctx, raw: &str) -> Result<DateTime<FixedOffset>, Stop> {
    let t = raw.trim();
    for f in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%:z"] {
        if let Ok(d) = DateTime::parse_from_str(t, f) {
            return Ok(d);
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f)
            && let Some(d) = Local.from_local_datetime(&n).single()
        {
            ctx.out.warning(
                "No time zone has been specified through '--target-time' command-line option. Barman assumed the \
                 same time zone from the Barman host.",
            );
            return Ok(d.fixed_offset());
        }
    }
    Err(Stop(format!("Unable to parse the target time parameter '{raw}'")))
}

fn run(ctx: &mut Ctx, s: &ServerConfig, a: &RecoverArgs) -> Result<(), Stop> {
    let given = [
        a.target_time.is_some(),
        a.target_xid.is_some(),
        a.target_lsn.is_some(),
        a.target_name.is_some(),
        a.target_immediate,
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(Stop("You cannot specify multiple targets for the recovery operation".into()));
    }
    check_staging_options(a)?;
    let l = ServerLayout::new(&ctx.cfg.global, s);
    let all = backups::load(&l)?;
    let b = resolve(ctx, &l, &all, a, &s.name)?;
    if !b.is_copy_done() {
        return Err(Stop(format!(
            "Cannot restore from backup '{}' of server '{}': backup status is not DONE",
            a.backup_id, s.name
        )));
    }
    if a.destination_directory.to_string_lossy().contains(':') {
        return Err(Stop(format!(
            "The destination directory '{}' contains ':': for a remote recovery use --remote-ssh-command",
            a.destination_directory.display()
        )));
    }
    let compress = a.network_compression_choice().unwrap_or(s.opts.network_compression);
    if a.network_compression && a.remote_ssh_command.is_none() {
        return Err(Stop("Network compression is only available with --remote-ssh-command".into()));
    }
    let dest = match &a.remote_ssh_command {
        Some(_) if !a.destination_directory.is_absolute() => {
            return Err(Stop(format!(
                "The destination directory '{}' must be an absolute path on the remote host",
                a.destination_directory.display()
            )));
        }
        _ if a.destination_directory.is_absolute() => a.destination_directory.clone(),
        _ => std::env::current_dir()?.join(&a.destination_directory),
    };
    // --tablespace NAME:LOCATION, split at the first ':'.
    let spcs = b.info.tablespaces.clone().unwrap_or_default();
    let mut relocated: Vec<(String, String)> = Vec::new();
    for rule in &a.tablespace {
        let Some((name, loc)) = rule.split_once(':') else {
            return Err(Stop(format!("Invalid tablespace relocation rule '{rule}': expected NAME:LOCATION")));
        };
        if !spcs.iter().any(|t| t.name == name) {
            return Err(Stop(format!("Invalid tablespace name '{name}'")));
        }
        relocated.push((name.to_string(), loc.to_string()));
    }
    let location = |name: &str, original: &str| {
        relocated.iter().find(|(n, _)| n == name).map_or(original.to_string(), |(_, l)| l.clone())
    };
    let placements: Vec<Placement> = spcs
        .iter()
        .map(|t| Placement {
            oid: t.oid,
            name: t.name.clone(),
            location: PathBuf::from(location(&t.name, &t.location)),
        })
        .collect();

    // The destination: this host, or the remote one (its reachability is the first check).
    let remote = match &a.remote_ssh_command {
        Some(cmd) => Some(
            Remote::connect(cmd, compress)
                .map_err(|e| Stop(format!("Unable to connect to the target host using the command '{cmd}': {e}")))?,
        ),
        None => None,
    };
    let target: Box<dyn Dest + '_> = match &remote {
        Some(r) => Box::new(RemoteDest { remote: r }),
        None => Box::new(LocalDest),
    };
    if target.exists(&dest.join("postmaster.pid"))? {
        return Err(Stop(format!(
            "A PostgreSQL server may be running in '{}' (it holds postmaster.pid): stop it and choose an empty \
             destination",
            dest.display()
        )));
    }
    if !target.is_empty_dir(&dest)? {
        return Err(Stop(format!("Destination directory '{}' must be empty", dest.display())));
    }
    for p in &placements {
        if !target.is_empty_dir(&p.location)? {
            return Err(Stop(format!("Tablespace destination directory '{}' must be empty", p.location.display())));
        }
    }
    let segsize = SegmentSize::new(b.info.xlog_segment_size).map_err(|e| Stop(e.to_string()))?;
    // Room for the data directory at least (tar backups unpack to about their cluster size).
    let need = b.info.cluster_size.or(b.info.size).unwrap_or(0);
    if let Some(free) = target.free_bytes(&dest)?
        && free < need
    {
        return Err(Stop(format!(
            "Not enough free space in '{}' for backup {}: {} needed, {} available",
            dest.display(),
            b.id,
            super::check::pretty_size(need),
            super::check::pretty_size(free)
        )));
    }

    // Targets (Barman's _set_pitr_targets).
    let mut targets = Targets {
        xid: a.target_xid.clone(),
        lsn: a.target_lsn.clone(),
        name: a.target_name.clone(),
        immediate: a.target_immediate,
        exclusive: a.exclusive,
        tli: a.target_tli.clone(),
        ..Targets::default()
    };
    let target_tli = parse_tli(&l, &b, a.target_tli.as_deref())?;
    // Barman's PITR: any target, or only a timeline.
    let is_pitr = given.contains(&true) || a.target_tli.is_some();
    if let Some(raw) = &a.target_time {
        let t = parse_target_time(ctx, raw)?;
        if let Some(end) = b.info.end_time
            && end > t
        {
            return Err(Stop(format!(
                "The requested target time {} is before the backup end time {}",
                crate::catalog::backups::format_time(&t),
                crate::catalog::backups::format_time(&end)
            )));
        }
        targets.time = Some(crate::catalog::backups::format_time(&t));
    }
    if let Some(lsn) = &a.target_lsn {
        lsn.parse::<Lsn>().map_err(|_| Stop(format!("'{lsn}' is not a valid LSN")))?;
    }
    if is_pitr {
        if let Some(act) = &a.target_action {
            if !["pause", "shutdown", "promote"].contains(&act.as_str()) {
                return Err(Stop(format!("Illegal target action '{act}' for this version of PostgreSQL")));
            }
            targets.action = Some(act.clone());
        }
    } else if a.target_action.is_some() {
        return Err(Stop("Can't enable recovery target action when PITR is not required".into()));
    }
    let get_wal = a.get_wal_choice().unwrap_or_else(|| s.opts.recovery_options.0.contains("get-wal"));

    // Barman: archive what waits first, then the pre hooks.
    super::wal::run_archiver(ctx, s, false);
    let hooks = Hooks::new(s, &ctx.cfg.file);
    let env = hook_env(&l, &all, &b, &dest, &relocated, a);
    hooks.run(Event::Recovery, Phase::Pre, &env, None).map_err(|e| Stop(e.to_string()))?;
    let started = Local::now();
    let kind = if remote.is_some() { "remote" } else { "local" };
    ctx.out.info(format!("Starting {kind} restore for server {} using backup {}", s.name, b.id));
    ctx.out.info(format!("Destination directory: {}", dest.display()));
    if let Some(cmd) = &a.remote_ssh_command {
        ctx.out.info(format!("Remote command: {cmd}"));
    }
    if !get_wal && b.info.status == "WAITING_FOR_WALS" {
        ctx.out.warning(
            "IMPORTANT: You have requested a recovery operation for a backup that does not have yet all the WAL files \
             that are required for consistency.",
        );
    }
    if is_pitr {
        let mut shown = Vec::new();
        if let Some(v) = &targets.time {
            shown.push(format!("time: '{v}'"));
        }
        if let Some(v) = &targets.xid {
            shown.push(format!("xid: '{v}'"));
        }
        if let Some(v) = &targets.lsn {
            shown.push(format!("lsn: '{v}'"));
        }
        if a.target_tli.is_some() {
            shown.push(format!("timeline: '{}'", target_tli.0));
        }
        if let Some(v) = &targets.name {
            shown.push(format!("name: '{v}'"));
        }
        if targets.immediate {
            shown.push("immediate: True".into());
        }
        ctx.out.info(format!("Doing PITR. Recovery target {}", shown.join(", ")));
    }

    let wal_dest = match &a.staging_wal_directory {
        Some(dir) if is_pitr => PathBuf::from(dir),
        _ if is_pitr => dest.join("barman_wal"),
        _ => dest.join("pg_wal"),
    };
    let needed = if get_wal {
        Vec::new()
    } else {
        required_wals(&l, &b, target_tli, a.target_lsn.as_deref(), a.target_immediate, segsize)?
    };
    let mut append = Vec::new();
    if is_pitr || get_wal || a.standby_mode {
        let user = if ctx.user.is_empty() { "barman".into() } else { ctx.user.clone() };
        let source = match (&remote, get_wal) {
            (Some(_), true) => WalSource::WalRestore {
                user,
                port: a.recovery_option_port,
                host: fqdn(),
                server: s.name.clone(),
                parallel_jobs: s.opts.parallel_jobs.max(1) as u32,
            },
            (None, true) => WalSource::GetWal { user, server: s.name.clone() },
            (_, false) => WalSource::Copied { wal_dest: wal_dest.display().to_string() },
        };
        append = recovery_lines(&source, a.standby_mode, &targets);
    }
    let signal = (!append.is_empty()).then_some(if a.standby_mode { "standby.signal" } else { "recovery.signal" });

    ctx.out.info("Copying the base backup.");
    let copy = BackupCopy {
        l: &l,
        b: &b,
        dest: &dest,
        placements: &placements,
        wal_dest: &wal_dest,
        needed: &needed,
        codecs: codecs_for(s),
        custom_decompression: s.opts.custom_decompression_filter.is_some(),
        archive_status: !is_pitr,
        signal,
    };
    match &remote {
        Some(r) => copy_to_remote(ctx, s, a, &copy, r)?,
        None => copy.to_local().map_err(|e| Stop(e.to_string()))?,
    }
    for (t, p) in spcs.iter().zip(&placements) {
        ctx.out.info(format!("\t{}, {}, {}", t.oid, t.name, p.location.display()));
    }
    if !get_wal {
        ctx.out.info("Copying required WAL segments.");
        if !is_pitr {
            ctx.out.info("Generating archive status files");
        }
    }
    if signal.is_some() {
        ctx.out.info("Generating recovery configuration");
    }
    // Barman's mangling: postgresql.conf, then the recovery settings' file with the settings.
    let settings_file = a.recovery_conf_filename.clone().unwrap_or_else(|| "postgresql.auto.conf".into());
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    let mut missing = Vec::new();
    let none = Vec::new();
    let mut edits: Vec<(String, &Vec<String>)> = vec![("postgresql.conf".into(), &none)];
    if settings_file != "postgresql.auto.conf" {
        edits.push(("postgresql.auto.conf".into(), &none));
    }
    edits.push((settings_file.clone(), &append));
    for (name, lines) in &edits {
        let p = dest.join(name);
        let Some(content) = target.read(&p)? else {
            if lines.is_empty() {
                missing.push(name.clone());
            } else {
                // A settings file the backup lacks is created with just the settings.
                let (mangled, _) = mangle(b"", lines);
                target.write_new(&p, &mangled, 0o600)?;
            }
            continue;
        };
        let (mangled, changed) = mangle(&content, lines);
        target.replace_keeping_origin(&p, &mangled)?;
        changes.extend(changed.into_iter().map(|c| (name.clone(), c)));
        warnings.extend(dangerous_settings(&mangled).into_iter().map(|w| (name.clone(), w)));
    }
    for name in ["pg_hba.conf", "pg_ident.conf"] {
        if !target.exists(&dest.join(name))? {
            missing.push(name.to_string());
        }
    }
    // Everything written is on disk before we say the destination is ready.
    let mut synced: Vec<&Path> = vec![&dest];
    synced.extend(placements.iter().map(|p| p.location.as_path()));
    if !get_wal && !wal_dest.starts_with(&dest) {
        synced.push(&wal_dest);
    }
    target.sync(&synced)?;
    ctx.out.info("Identify dangerous settings in destination directory.");
    let env = hook_env(&l, &all, &b, &dest, &relocated, a);
    let _ = hooks.run(Event::Recovery, Phase::Post, &env, None);
    // Barman's result_recovery.
    if !changes.is_empty() {
        ctx.out.info("");
        ctx.out.info("IMPORTANT");
        ctx.out.info("These settings have been modified to prevent data losses");
        ctx.out.info("");
        for (file, c) in &changes {
            ctx.out.info(format!("{file} line {}: {} = {}", c.line, c.key, c.value.unwrap_or("None")));
        }
    }
    if !warnings.is_empty() {
        ctx.out.info("");
        ctx.out.info("WARNING");
        ctx.out.info("You are required to review the following options as potentially dangerous");
        ctx.out.info("");
        for (file, (line, key, value)) in &warnings {
            ctx.out.info(format!("{file} line {line}: {key} = {value}"));
        }
    }
    if !missing.is_empty() {
        ctx.out.info("");
        ctx.out.info("WARNING");
        ctx.out.info(
            "The following configuration files have not been saved during backup, hence they have not been restored.",
        );
        ctx.out.info("You need to manually restore them in order to start the restored PostgreSQL instance:");
        ctx.out.info("");
        for m in &missing {
            ctx.out.info(format!("    {m}"));
        }
    }
    if get_wal {
        ctx.out.info("");
        ctx.out.info("WARNING: 'get-wal' is in the specified 'recovery_options'.");
        ctx.out.info(format!("Before you start up the PostgreSQL server, please review the {settings_file} file"));
        ctx.out.info(
            "inside the target directory. Make sure that 'restore_command' can be executed by the PostgreSQL user.",
        );
    }
    ctx.out.info("");
    ctx.out.info(format!(
        "Restore operation completed (start time: {}, elapsed time: {})",
        crate::catalog::backups::format_time(&started.fixed_offset()),
        human_duration((Local::now() - started).num_seconds().max(0) as u64)
    ));
    ctx.out.info("Your PostgreSQL server has been successfully prepared for recovery!");
    Ok(())
}

/// The copy through SSH, retried as `--retry-times` / `basebackup_retry_times` say, with a
/// progress line on a terminal.
fn copy_to_remote(ctx: &mut Ctx, s: &ServerConfig, a: &RecoverArgs, copy: &BackupCopy, r: &Remote) -> Result<(), Stop> {
    let jobs = a.jobs.map_or(s.opts.parallel_jobs.max(1) as usize, |j| j as usize);
    let bandwidth = a.bwlimit.map(u64::from).or(s.opts.bandwidth_limit.map(|b| b.0)).filter(|kb| *kb > 0);
    let retries = if a.no_retry { 0 } else { a.retry_times.unwrap_or(s.opts.basebackup_retry_times.max(0) as u32) };
    let sleep = a.retry_sleep.map_or(s.opts.basebackup_retry_sleep.max(0) as u64, u64::from);
    let mut attempt = 0;
    loop {
        let sent = Arc::new(AtomicU64::new(0));
        let opts = CopyOptions { jobs, bandwidth: bandwidth.map(|kb| kb * 1024), progress: Some(sent.clone()) };
        let shown = progress(ctx, sent, copy.b.info.cluster_size.or(copy.b.info.size));
        let res = copy.to_remote(r, &opts);
        shown.stop();
        match res {
            Ok(()) => return Ok(()),
            Err(e) if attempt < retries => {
                attempt += 1;
                ctx.out.warning(format!(
                    "Failure copying base backup: {e} (attempt {attempt} of {retries}, retrying in {sleep} seconds)"
                ));
                std::thread::sleep(std::time::Duration::from_secs(sleep));
            }
            Err(e) => return Err(Stop(format!("Failure copying base backup: {e}"))),
        }
    }
}

/// Barman's checks of the staging options. We never stage: tar archives are unpacked as
/// they are read, so the paths are only validated.
fn check_staging_options(a: &RecoverArgs) -> Result<(), Stop> {
    for (what, value) in [
        ("staging path", &a.staging_path),
        ("recovery staging path", &a.recovery_staging_path),
        ("local staging path", &a.local_staging_path),
    ] {
        if let Some(v) = value
            && !Path::new(v).is_absolute()
        {
            return Err(Stop(format!("Cannot parse {what}: Invalid value : '{v}' (must be an absolute path)")));
        }
    }
    if a.staging_location.as_deref() == Some("remote") && a.remote_ssh_command.is_none() {
        return Err(Stop("--staging-location as remote requires --remote-ssh-command to be set".into()));
    }
    if a.delta_restore {
        return Err(Stop(
            "Delta restore is not supported: recover into an empty directory (--no-delta-restore)".into(),
        ));
    }
    Ok(())
}

/// The backup, by id, shortcut or name; `auto` as Barman's candidate search:
/// the newest copy-done backup that ended before the target time or LSN, on
/// the target timeline if one is given.
fn resolve(ctx: &mut Ctx, l: &ServerLayout, all: &[Backup], a: &RecoverArgs, server: &str) -> Result<Backup, Stop> {
    if a.backup_id != "auto" {
        return backups::resolve(all, &a.backup_id, server).cloned().map_err(Stop);
    }
    let which = [
        ("target_immediate", a.target_immediate),
        ("target_xid", a.target_xid.is_some()),
        ("target_name", a.target_name.is_some()),
    ];
    if let Some((opt, _)) = which.iter().find(|(_, set)| *set) {
        return Err(Stop(format!(
            "For PITR without a backup_id, the only possible recovery targets are target_time and target_lsn. \
             '{opt}' recovery target is not allowed without a backup_id."
        )));
    }
    let tli = match a.target_tli.as_deref() {
        None => None,
        Some("current") => {
            return Err(Stop("'current' is not a valid timeline keyword when recovering without a backup_id".into()));
        }
        // The newest timeline the archive has.
        Some("latest") => Some(newest_timeline(l)?.unwrap_or(1)),
        Some(raw) => Some(raw.parse::<u32>().map_err(|_| Stop(format!("'{raw}' is not a valid timeline")))?),
    };
    let time = a.target_time.as_deref().map(|t| parse_target_time(ctx, t)).transpose()?;
    let lsn = a
        .target_lsn
        .as_deref()
        .map(|v| v.parse::<Lsn>().map_err(|_| Stop(format!("'{v}' is not a valid LSN"))))
        .transpose()?;
    all.iter()
        .rev()
        .filter(|b| b.is_copy_done())
        .filter(|b| time.is_none_or(|t| b.info.end_time.is_some_and(|e| e <= t)))
        .filter(|b| lsn.is_none_or(|t| b.info.end_xlog.is_some_and(|e| e <= t)))
        .find(|b| tli.is_none_or(|t| b.info.timeline == Some(t)))
        .cloned()
        .ok_or_else(|| Stop("Cannot find any candidate backup for recovery.".into()))
}

/// `--target-tli`: a number, `current` (the backup's) or `latest` (the newest archived).
fn parse_tli(l: &ServerLayout, b: &Backup, raw: Option<&str>) -> Result<TimelineId, Stop> {
    let own = TimelineId(b.info.timeline.unwrap_or(1));
    match raw {
        None | Some("current") => Ok(own),
        Some("latest") => {
            let newest = newest_timeline(l)?.unwrap_or(own.0);
            Ok(TimelineId(newest.max(own.0)))
        }
        Some(n) => n
            .parse::<u32>()
            .map(TimelineId)
            .map_err(|_| Stop(format!("'{n}' is not a valid timeline (a number, 'current' or 'latest')"))),
    }
}

/// `--target-tli latest`: the newest timeline with an archived WAL file (as Barman, history
/// files do not count: a promotion archives its history before its first segment).
fn newest_timeline(l: &ServerLayout) -> Result<Option<u32>, Stop> {
    Ok(read_xlogdb(l)?.iter().filter(|e| !e.name.is_history()).map(|e| e.name.timeline().0).max())
}

fn read_xlogdb(l: &ServerLayout) -> Result<Vec<XlogEntry>, Stop> {
    Ok(XlogDb::new(l).read_locked()?)
}

/// Barman's `get_required_xlog_files`: history files, then from begin_wal on
/// the target timeline and before, up to the end WAL for an immediate target,
/// up to the target LSN's segment, else everything.
fn required_wals(
    l: &ServerLayout,
    b: &Backup,
    tli: TimelineId,
    target_lsn: Option<&str>,
    immediate: bool,
    segsize: SegmentSize,
) -> Result<Vec<XlogEntry>, Stop> {
    let begin = b.info.begin_wal.as_ref().map(WalFileName::to_string).unwrap_or_default();
    let mut end = b.info.end_wal.as_ref().map(WalFileName::to_string).unwrap_or_default();
    let target_wal = target_lsn
        .and_then(|s| s.parse::<Lsn>().ok())
        .map(|lsn| WalFileName::segment(SegmentId::containing(lsn, tli, segsize)).to_string());
    let mut out = Vec::new();
    // Past the target no segment is needed, but every history file still is: without them a
    // promotion would reuse a timeline the archive already has.
    let mut past_target = false;
    for e in read_xlogdb(l)? {
        let name = e.name.to_string();
        if e.name.is_history() {
            out.push(e);
            continue;
        }
        if past_target || name < begin || e.name.timeline().0 > tli.0 {
            continue;
        }
        if name > end {
            if immediate || target_wal.as_ref().is_some_and(|t| name > *t) {
                past_target = true;
                continue;
            }
            end = name;
        }
        out.push(e);
    }
    Ok(out)
}

/// The recovery hooks' environment (§9).
fn hook_env(
    l: &ServerLayout,
    all: &[Backup],
    b: &Backup,
    dest: &Path,
    relocated: &[(String, String)],
    a: &RecoverArgs,
) -> Vec<(&'static str, String)> {
    let tablespaces = if relocated.is_empty() {
        String::new()
    } else {
        let sorted: std::collections::BTreeMap<&str, &str> =
            relocated.iter().map(|(n, loc)| (n.as_str(), loc.as_str())).collect();
        crate::catalog::pyjson::dumps(&serde_json::json!(sorted), None, true)
    };
    let mut opts = std::collections::BTreeMap::new();
    for (k, v) in [
        ("target_time", a.target_time.clone()),
        ("target_xid", a.target_xid.clone()),
        ("target_lsn", a.target_lsn.clone()),
        ("target_name", a.target_name.clone()),
        ("target_tli", a.target_tli.clone()),
        ("target_action", a.target_action.clone()),
    ] {
        if let Some(v) = v {
            opts.insert(k, serde_json::json!(v));
        }
    }
    if a.target_immediate {
        opts.insert("target_immediate", serde_json::json!(true));
    }
    if a.exclusive {
        opts.insert("exclusive", serde_json::json!(true));
    }
    if a.standby_mode {
        opts.insert("standby_mode", serde_json::json!(true));
    }
    let recover_options = if opts.is_empty() {
        String::new()
    } else {
        crate::catalog::pyjson::dumps(&serde_json::json!(opts), None, true)
    };
    let mut env = super::backups::backup_hook_env(l, all, &b.id, &b.path, &b.info.status);
    env.extend([
        ("BARMAN_DESTINATION_DIRECTORY", dest.display().to_string()),
        ("BARMAN_TABLESPACES", tablespaces),
        ("BARMAN_REMOTE_COMMAND", a.remote_ssh_command.clone().unwrap_or_default()),
        ("BARMAN_RECOVER_OPTIONS", recover_options),
    ]);
    env
}

/// The progress line of a copy, on a terminal only; ends (with a newline) on `stop`.
struct ProgressLine {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    fn stop(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn progress(ctx: &Ctx, sent: Arc<AtomicU64>, total: Option<u64>) -> ProgressLine {
    use std::io::IsTerminal;
    if ctx.out.quiet || !std::io::stderr().is_terminal() {
        return ProgressLine { stop: None, thread: None };
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let draw = || {
            let done = sent.load(std::sync::atomic::Ordering::Relaxed);
            eprint!("\r{}", super::backup::progress_line(crate::backup::copy::CopyProgress { done, total }));
        };
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(std::time::Duration::from_millis(200))
        {
            draw();
        }
        draw();
        eprintln!();
    });
    ProgressLine { stop: Some(tx), thread: Some(thread) }
}
