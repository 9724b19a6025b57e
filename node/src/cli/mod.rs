//! The `barman` command line: global options, configuration, user switching,
//! output, and one module per command family.

pub mod args;
mod backup;
mod backups;
mod check;
mod cluster;
mod context;
mod cron;
mod delete;
pub mod output;
mod receive_wal;
mod recover;
mod remote;
mod replication_status;
mod retention;
mod servers;
mod show_backup;
mod status;
mod switch_wal;
mod sync;
mod sync_peer;
mod wal;

use args::{Cli, Color, Command, Format};
use clap::Parser;
use context::{Ctx, drop_privileges, init_logging};
use output::{Output, Writer};
use std::io::IsTerminal;

/// Runs `barman` with `argv`; returns the exit code.
pub fn run(argv: Vec<std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    if cli.version {
        println!("{} Barman-compatible (barman-rs {})", crate::hooks::BARMAN_COMPAT_VERSION, env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let Some(command) = cli.command else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return 0;
    };
    // Certificates are made before any configuration exists.
    if let Command::Cluster(args::ClusterCommand::Cert(c)) = &command {
        return cluster::cert(c);
    }
    let main = match crate::config::MainConfig::read(cli.config.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ERROR: {e}");
            return 1;
        }
    };
    let user = match main.barman_user() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("ERROR: {e}");
            return 1;
        }
    };
    if let Err(msg) = drop_privileges(&user) {
        eprintln!("{msg}");
        return 1;
    }
    let cfg = match main.finish() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ERROR: {e}");
            return 1;
        }
    };
    let level = cli.log_level.clone().unwrap_or_else(|| cfg.global.log_level.clone());
    if matches!(command, Command::Node(_)) {
        context::init_node_logging(cfg.global.log_file.as_deref(), if cli.debug { "DEBUG" } else { &level });
    } else {
        init_logging(cfg.global.log_file.as_deref(), &level, cli.debug);
    }
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
    };
    let writer = match cli.format {
        Format::Console => Writer::Console,
        Format::Json => Writer::Json,
    };
    let mut ctx = Ctx { out: Output::new(writer, cli.quiet, cli.debug, color), cfg, user };
    for w in ctx.cfg.warnings.clone() {
        ctx.out.warning(w.to_string());
    }
    dispatch(&mut ctx, command);
    ctx.out.close()
}

fn dispatch(ctx: &mut Ctx, command: Command) {
    use crate::wal::compression::Codec;
    match command {
        Command::ArchiveWal { server } => wal::archive_wal(ctx, &server),
        Command::Backup {
            servers,
            immediate_checkpoint,
            no_immediate_checkpoint,
            incremental,
            reuse_backup,
            retry_times,
            retry_sleep,
            no_retry,
            bwlimit,
            wait,
            wait_timeout,
            name,
            check_timeout,
            jobs,
            ..
        } => {
            use crate::config::types::ReuseBackup;
            let args = backup::BackupArgs {
                servers: servers.servers,
                immediate_checkpoint: if immediate_checkpoint {
                    Some(true)
                } else if no_immediate_checkpoint {
                    Some(false)
                } else {
                    None
                },
                incremental,
                reuse_backup: reuse_backup.as_deref().map(|r| match r {
                    "copy" => ReuseBackup::Copy,
                    "link" => ReuseBackup::Link,
                    _ => ReuseBackup::Off,
                }),
                retry_times: if no_retry { Some(0) } else { retry_times },
                retry_sleep,
                bwlimit: bwlimit.map(u64::from),
                wait,
                wait_timeout: wait_timeout.map(u64::from),
                name,
                check_timeout: check_timeout.map(u64::from),
                jobs: jobs.map(|j| j as usize),
            };
            backup::backup(ctx, &args)
        }
        Command::Check { servers, nagios, check_timeout } => check::check(ctx, &servers.servers, nagios, check_timeout),
        Command::CheckBackup { server, backup_id } => backups::check_backup(ctx, &server, &backup_id),
        Command::Delete { server, backup_id } => delete::delete(ctx, &server, &backup_id),
        Command::Keep { server, backup_id, release, status, target } => {
            delete::keep(ctx, &server, &backup_id, target.as_deref(), status, release)
        }
        Command::ListBackups { servers, minimal } => backups::list_backups(ctx, &servers.servers, minimal),
        Command::CheckWalArchive { server, timeline } => wal::check_wal_archive(ctx, &server, timeline),
        Command::Cron { keep_descriptors } => cron::cron(ctx, keep_descriptors),
        Command::Diagnose { show_config_source } => servers::diagnose(ctx, show_config_source),
        Command::GetWal {
            server,
            wal_name,
            output_directory,
            partial,
            gzip,
            bzip2,
            keep_compression,
            peek,
            bundle,
            test,
        } => {
            let compression = if gzip {
                Some(Codec::Gzip)
            } else if bzip2 {
                Some(Codec::Bzip2)
            } else {
                None
            };
            wal::get_wal(
                ctx,
                wal::GetWalArgs {
                    server: &server,
                    wal_name: &wal_name,
                    output_directory: output_directory.as_deref(),
                    partial,
                    compression,
                    keep_compression,
                    peek,
                    bundle,
                    test,
                },
            )
        }
        Command::LockDirectoryCleanup => cron::lock_directory_cleanup(ctx),
        Command::ListProcesses { server } => cron::list_processes(ctx, &server),
        Command::ListServers { minimal } => servers::list_servers(ctx, minimal),
        Command::PutWal { server, test } => wal::put_wal(ctx, &server, test),
        Command::SyncInfo { primary: true, server, last_wal, last_position } => {
            sync::sync_info_primary(ctx, &server, last_wal, last_position.map(u64::from))
        }
        Command::SyncInfo { primary: false, server, last_wal, last_position } => {
            sync::sync_info(ctx, &server, last_wal, last_position.map(u64::from))
        }
        Command::SyncBackup { server, backup_id } => sync::sync_backup(ctx, &server, &backup_id),
        Command::SyncWals { server } => sync::sync_wals(ctx, &server),
        Command::ReceiveWal { server, stop, reset, create_slot, drop_slot, if_not_exists } => receive_wal::receive_wal(
            ctx,
            &server,
            receive_wal::Flags { stop, reset, create_slot, drop_slot, if_not_exists },
        ),
        Command::ReplicationStatus { servers, minimal, target, source } => {
            replication_status::replication_status(ctx, &servers.servers, minimal, target, source)
        }
        Command::Restore(args) => recover::recover(ctx, &args),
        Command::RebuildXlogdb { servers } => wal::rebuild_xlogdb(ctx, &servers.servers),
        Command::ShowServers { servers } => servers::show_servers(ctx, &servers.servers),
        Command::ShowBackup { server, backup_id } => show_backup::show_backup(ctx, &server, &backup_id),
        Command::ListFiles { server, backup_id, target, list_empty_directories } => {
            show_backup::list_files(ctx, &server, &backup_id, target, list_empty_directories)
        }
        Command::Status { servers } => status::status(ctx, &servers.servers),
        Command::SwitchWal { servers, force, archive, archive_timeout } => {
            switch_wal::switch_wal(ctx, &servers.servers, force, archive, archive_timeout)
        }
        Command::Node(args::NodeCommand::Run) => cluster::node_run(ctx),
        Command::Cluster(c) => cluster::cluster(ctx, &c),
    }
}
