//! WAL commands: put-wal, archive-wal, get-wal, rebuild-xlogdb, check-wal-archive.

use super::context::{Ctx, Pick};
use crate::archive::archive_wal::{ArchiveError, ArchiveEvent, Archiver};
use crate::archive::get_wal::{Delivery, GetWalError, WalSource};
use crate::archive::put_wal::{PutWal, Stored};
use crate::archive::server::{codecs_for, expected_identity};
use crate::catalog::ServerLayout;
use crate::catalog::durable;
use crate::catalog::xlogdb::XlogDb;
use crate::config::ServerConfig;
use crate::hooks::Hooks;
use crate::wal::compression::Codec;
use crate::wal::{TimelineId, WalFileName};
use std::io::{self, BufReader};
use std::path::Path;

/// ` (SSH host: <ip>)` when run through SSH, as Barman adds to its messages.
pub fn ssh_suffix() -> String {
    std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|v| v.split_whitespace().next().map(|ip| format!(" (SSH host: {ip})")))
        .unwrap_or_default()
}

fn layout(ctx: &Ctx, s: &ServerConfig) -> ServerLayout {
    ServerLayout::new(&ctx.cfg.global, s)
}

pub fn put_wal(ctx: &mut Ctx, server: &str, test: bool) {
    let pick = Pick { inactive_is_error: true, ..Pick::DEFAULT };
    let Some(s) = ctx.server(server, pick) else { return };
    if test {
        ctx.out.info(format!("Ready to accept WAL files for the server {}", s.name));
        return;
    }
    let l = layout(ctx, &s);
    let codecs = codecs_for(&s);
    let suffix = ssh_suffix();
    let receiver = match PutWal::for_server(&s.name, &l, &codecs) {
        Ok(r) => r,
        Err(e) => {
            ctx.out.error(format!("{e}{suffix}"));
            return;
        }
    };
    let stdin = io::stdin();
    let mut input = BufReader::with_capacity(1 << 20, stdin.lock());
    match receiver.receive(&mut input) {
        Ok(stored) => {
            for st in stored {
                match st {
                    Stored::New(n) => tracing::info!(server = %s.name, "Received file '{n}' by put-wal for server '{}'{suffix}", s.name),
                    Stored::SameAsIncoming(n) => ctx.out.debug(format!(
                        "Duplicate Files with Identical Checksums. File {n} already exists on server {}, and the checksums are identical. Skipping the file.",
                        s.name
                    )),
                    Stored::Duplicate { name, incoming_sum, new_sum, .. } => {
                        tracing::error!(server = %s.name, "put-wal received a different copy of {name}; kept in the errors directory");
                        ctx.out.info(format!(
                            "\tError: Duplicate Files Detected with Mismatched Checksums. File {name} already exists on server {} with checksum {incoming_sum}, but the checksum of the incoming file is{new_sum}. The file has been moved to the errors directory.",
                            s.name
                        ));
                    }
                }
            }
        }
        Err(e) => ctx.out.error(format!("{e}{suffix}")),
    }
}

pub fn archive_wal(ctx: &mut Ctx, server: &str) {
    let Some(s) = ctx.server(server, Pick::DEFAULT) else { return };
    run_archiver(ctx, &s, true);
}

/// One archive-wal pass for `s`, printing as Barman does.
pub fn run_archiver(ctx: &mut Ctx, s: &ServerConfig, verbose: bool) {
    let l = layout(ctx, s);
    let codecs = codecs_for(s);
    let hooks = Hooks::new(s, &ctx.cfg.file);
    let archiver = Archiver::for_server(s, &l, &codecs, &hooks);
    let name = s.name.clone();
    let out = &mut ctx.out;
    let mut exp = || expected_identity(s, &l);
    let mut emit = |ev: ArchiveEvent| match ev {
        ArchiveEvent::Header { source, batch } => {
            let mut h = format!("Processing xlog segments from {} for {name}", source.label());
            if let Some(b) = batch {
                h.push_str(&format!(" (batch size: {b})"));
            }
            out.info(h);
        }
        ArchiveEvent::Processing { name } => out.info(format!("\t{name}")),
        ArchiveEvent::Archived { .. } | ArchiveEvent::AlreadyArchived { .. } => {}
        ArchiveEvent::Duplicate { name: wal, kept, offset } => {
            out.info(format!("\t{wal}"));
            let at = offset
                .map(|o| format!(" (first difference at byte {o}; kept as {})", kept.display()))
                .unwrap_or_default();
            out.info(format!(
                "\tError: {wal} is already present in server {name}. File moved to errors directory.{at}"
            ));
        }
        ArchiveEvent::Invalid { name: wal, kept, why } => {
            out.info(format!("\t{wal}"));
            out.error(format!("{wal} of server {name} is not a valid WAL file: {why}; moved to {}", kept.display()));
        }
        ArchiveEvent::Waiting { name: wal, why } => {
            out.warning(format!("{wal} of server {name} stays in place: {why}"))
        }
        ArchiveEvent::Unknown { names } => {
            out.info(format!(
                "Some unknown objects have been found while processing xlog segments for {name}. Objects moved to errors directory:"
            ));
            for n in names {
                out.info(format!("\t{n}"));
            }
        }
        ArchiveEvent::NoFile => out.info("\tno file found"),
        ArchiveEvent::Stopped { name: wal, why } => {
            out.warning(format!("Archiving of {name}/{wal} aborted by pre_archive_retry_script: {why}"))
        }
    };
    match archiver.run(&mut exp, &mut emit, verbose) {
        Ok(()) => {}
        Err(ArchiveError::Busy(_)) => ctx.out.info(format!(
            "Another archive-wal process is already running on server {}. Skipping to the next server",
            s.name
        )),
        Err(e) => ctx.out.error(e.to_string()),
    }
}

pub struct GetWalArgs<'a> {
    pub server: &'a str,
    pub wal_name: &'a str,
    pub output_directory: Option<&'a Path>,
    pub partial: bool,
    pub compression: Option<Codec>,
    pub keep_compression: bool,
    pub peek: Option<u32>,
    pub bundle: Option<u32>,
    pub test: bool,
}

pub fn get_wal(ctx: &mut Ctx, a: GetWalArgs<'_>) {
    let pick = Pick { skip_inactive: false, skip_disabled: false, inactive_is_error: false, disabled_is_error: true };
    let Some(s) = ctx.server(a.server, pick) else { return };
    if a.test {
        ctx.out.info(format!("Ready to retrieve WAL files from the server {}", s.name));
        return;
    }
    if let (Some(c), true) = (a.compression, a.keep_compression) {
        ctx.out.error(format!("argument `{}` not allowed with argument `keep-compression`", c.name()));
        return;
    }
    let suffix = ssh_suffix();
    let Ok(name) = a.wal_name.parse::<WalFileName>() else {
        ctx.out.error_code(format!("'{}' is not a valid wal file name{suffix}", a.wal_name), 3);
        return;
    };
    let l = layout(ctx, &s);
    let codecs = codecs_for(&s);
    let src =
        WalSource { layout: &l, codecs: &codecs, custom_decompression: s.opts.custom_decompression_filter.is_some() };
    if let Some(n) = a.peek {
        for w in src.peek(&name, n) {
            ctx.out.info(w);
        }
        return;
    }
    let how = Delivery { compress: a.compression, keep_compression: a.keep_compression, partial: a.partial };
    let result = match (a.bundle, a.output_directory) {
        (Some(n), _) => {
            let stdout = io::stdout();
            let mut lock = stdout.lock();
            src.send_bundle(&name, n, how, &mut lock).map(|sent| {
                tracing::info!(server = %s.name, "Sent {} WAL files from '{name}' for server '{}' to standard output{suffix}", sent.len(), s.name);
            })
        }
        (None, Some(dir)) => get_wal_to_dir(&src, &name, how, dir, &s.name, &mut ctx.out),
        (None, None) => {
            // Straight to the stdout descriptor: the kernel copies untransformed files.
            let stdout = io::stdout();
            let mut lock = stdout.lock();
            src.send(&name, how, &mut lock).map(|p| {
                let sent = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                tracing::info!(server = %s.name, "Sending WAL '{sent}' for server '{}' to standard output{suffix}", s.name);
            })
        }
    };
    if let Err(e) = result {
        let code = e.exit_code();
        ctx.out.error_code(format!("{e}{suffix}"), code);
    }
}

fn get_wal_to_dir(
    src: &WalSource<'_>,
    name: &WalFileName,
    how: Delivery,
    dir: &Path,
    server: &str,
    out: &mut super::output::Output,
) -> Result<(), GetWalError> {
    let dst = dir.join(name.as_str());
    let output_err = |source: io::Error| GetWalError::Output { path: dst.display().to_string(), source };
    let mut file = durable::DurableFile::create(&dst).map_err(output_err)?;
    let sent = src.send(name, how, file.file()?)?;
    let sent_name = sent.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    out.info(format!("Sending WAL '{sent_name}' for server '{server}' into '{}' file", dst.display()));
    // A copy for a restore in progress, which asks again after a crash: renamed
    // into place (never seen half-written) without fsync, as Barman writes it.
    file.publish_unsynced().map_err(|e| GetWalError::Output { path: dst.display().to_string(), source: e })
}

pub fn rebuild_xlogdb(ctx: &mut Ctx, names: &[String]) {
    let pick = Pick::DEFAULT;
    for s in ctx.servers(names, pick) {
        let l = layout(ctx, &s);
        let codecs = codecs_for(&s);
        ctx.out.info(format!("Rebuilding xlogdb for server {}", s.name));
        let db = XlogDb::new(&l);
        let r = db.lock().and_then(|held| db.rebuild(&held, &codecs));
        match r {
            Ok(rep) => {
                for p in rep.skipped {
                    ctx.out.warning(format!("skipped {} (not a segment, backup label or history file)", p.display()));
                }
                ctx.out.info(format!(
                    "Done rebuilding xlogdb for server {} (history: {}, backup_labels: {}, wal_file: {})",
                    s.name, rep.stats.history, rep.stats.backup_labels, rep.stats.wal_files
                ));
            }
            Err(e) => ctx.out.error(format!("rebuilding xlogdb for server {}: {e}", s.name)),
        }
    }
}

pub fn check_wal_archive(ctx: &mut Ctx, server: &str, timeline: Option<u32>) {
    let Some(s) = ctx.server(server, Pick::DEFAULT) else { return };
    let l = layout(ctx, &s);
    let entries = match XlogDb::new(&l).read_locked() {
        Ok(e) => e,
        Err(e) => {
            ctx.out.error(e.to_string());
            return;
        }
    };
    if ctx.out.writer != super::output::Writer::Json {
        ctx.out.info(format!("Server {}:", s.name));
    }
    let problem = match timeline {
        None if !entries.is_empty() => Some("Expected empty archive".to_string()),
        None => None,
        Some(0) => Some("Bad timeline".to_string()),
        Some(t) => {
            let n = entries.iter().filter(|e| e.name.timeline() >= TimelineId(t)).count();
            (n > 0).then(|| {
                format!(
                    "Found {n} file{} in WAL archive equal to or newer than timeline {t}",
                    if n > 1 { "s" } else { "" }
                )
            })
        }
    };
    match problem {
        Some(p) => ctx.out.error(format!("WAL archive check failed for server {}: {p}", s.name)),
        None => {
            let msg = format!("WAL archive check for server {} passed", s.name);
            ctx.out.json_set(&s.name, serde_json::Value::String(msg.clone()));
            ctx.out.info(format!(" - {msg}"));
        }
    }
}
