//! Command-line arguments as Barman's `barman` accepts them: global options
//! before the sub-command, Barman's sub-command names and aliases.

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Console,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Never,
    Always,
    Auto,
}

/// `replication-status --target`: which streaming clients to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplicationTarget {
    All,
    HotStandby,
    WalStreamer,
}

/// `list-files --target`: which files of a backup to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFilesTarget {
    /// The base backup files and the WAL files needed for consistency
    Standalone,
    /// The base backup files only
    Data,
    /// The WAL files from the backup's begin up to the next backup (history files included)
    Wal,
    /// data + wal
    Full,
}

/// `replication-status --source`: which conninfo reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplicationSource {
    BackupHost,
    WalHost,
}

#[derive(Debug, Parser)]
#[command(
    name = "barman",
    about = "Backup and recovery for PostgreSQL (Barman-compatible)",
    disable_version_flag = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Configuration file (default: $BARMAN_CONFIG_FILE, ~/.barman.conf, /etc/barman.conf, /etc/barman/barman.conf)
    #[arg(short = 'c', long = "config", global = false)]
    pub config: Option<PathBuf>,
    /// Print only warnings and errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Print debug messages
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Output format
    #[arg(short = 'f', long = "format", value_enum, default_value = "console")]
    pub format: Format,
    /// When to colour the output
    #[arg(long = "color", alias = "colour", value_enum, default_value = "auto")]
    pub color: Color,
    /// Log level (overrides log_level)
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::SetTrue)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct Servers {
    /// Server names, or 'all'
    #[arg(required = true)]
    pub servers: Vec<String>,
}

/// `restore` / `recover`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    pub server: String,
    pub backup_id: String,
    pub destination_directory: PathBuf,
    /// Recover up to this time (with a time zone, else the local one)
    #[arg(long = "target-time")]
    pub target_time: Option<String>,
    /// Recover up to this transaction id
    #[arg(long = "target-xid")]
    pub target_xid: Option<String>,
    /// Recover up to this LSN
    #[arg(long = "target-lsn")]
    pub target_lsn: Option<String>,
    /// Recover up to this restore point
    #[arg(long = "target-name")]
    pub target_name: Option<String>,
    /// End recovery as soon as the backup is consistent
    #[arg(long = "target-immediate")]
    pub target_immediate: bool,
    /// The timeline to recover (a number, current or latest)
    #[arg(long = "target-tli")]
    pub target_tli: Option<String>,
    /// What PostgreSQL does at the target: pause, shutdown or promote
    #[arg(long = "target-action")]
    pub target_action: Option<String>,
    /// Stop just before the target
    #[arg(long = "exclusive")]
    pub exclusive: bool,
    /// Start as a standby (standby.signal)
    #[arg(long = "standby-mode")]
    pub standby_mode: bool,
    /// Fetch WAL with barman get-wal during recovery
    #[arg(long = "get-wal", overrides_with = "no_get_wal")]
    pub get_wal: bool,
    /// Copy the WAL the targets need instead
    #[arg(long = "no-get-wal")]
    pub no_get_wal: bool,
    /// NAME:LOCATION of a tablespace's destination (repeatable)
    #[arg(long = "tablespace")]
    pub tablespace: Vec<String>,
    /// Recover to another host through this ssh command
    #[arg(long = "remote-ssh-command")]
    pub remote_ssh_command: Option<String>,
    /// Where the WAL for a PITR goes (default: DEST/barman_wal)
    #[arg(long = "staging-wal-directory")]
    pub staging_wal_directory: Option<String>,
    /// Total transfer rate of a remote copy, in kilobytes per second (0: no limit)
    #[arg(long = "bwlimit", value_name = "KBPS", value_parser = non_negative)]
    pub bwlimit: Option<u32>,
    /// Retries of a failed remote copy (default: basebackup_retry_times)
    #[arg(long = "retry-times", value_parser = non_negative)]
    pub retry_times: Option<u32>,
    /// Seconds between retries (default: basebackup_retry_sleep)
    #[arg(long = "retry-sleep", value_parser = non_negative)]
    pub retry_sleep: Option<u32>,
    /// No retry of a failed copy
    #[arg(long = "no-retry")]
    pub no_retry: bool,
    /// Parallel copy streams of a remote recovery (default: parallel_jobs)
    #[arg(short = 'j', long = "jobs", value_name = "NJOBS", value_parser = positive)]
    pub jobs: Option<u32>,
    /// Accepted as Barman does (streams start together)
    #[arg(long = "jobs-start-batch-period", value_parser = positive)]
    pub jobs_start_batch_period: Option<u32>,
    /// Accepted as Barman does (streams start together)
    #[arg(long = "jobs-start-batch-size", value_parser = positive)]
    pub jobs_start_batch_size: Option<u32>,
    /// Compress the remote copy on the wire
    #[arg(long = "network-compression", overrides_with = "no_network_compression")]
    pub network_compression: bool,
    /// Do not compress the remote copy on the wire
    #[arg(long = "no-network-compression")]
    pub no_network_compression: bool,
    /// Staging of compressed backups (not needed: archives are unpacked as they stream)
    #[arg(long = "recovery-staging-path")]
    pub recovery_staging_path: Option<String>,
    /// Staging of incremental backups (not needed here)
    #[arg(long = "local-staging-path")]
    pub local_staging_path: Option<String>,
    /// Staging directory (not needed: archives are unpacked as they stream)
    #[arg(long = "staging-path")]
    pub staging_path: Option<String>,
    /// Where --staging-path is: local or remote
    #[arg(long = "staging-location", value_parser = ["local", "remote"])]
    pub staging_location: Option<String>,
    /// The file the recovery settings are appended to (default: postgresql.auto.conf)
    #[arg(long = "recovery-conf-filename")]
    pub recovery_conf_filename: Option<String>,
    /// The port barman-wal-restore connects to (remote get-wal)
    #[arg(long = "recovery-option-port")]
    pub recovery_option_port: Option<u16>,
    /// Delta restore (not supported: the destination must be empty)
    #[arg(long = "delta-restore", overrides_with = "no_delta_restore")]
    pub delta_restore: bool,
    /// Full restore (the default)
    #[arg(long = "no-delta-restore")]
    pub no_delta_restore: bool,
}

impl RestoreArgs {
    /// `--network-compression` / `--no-network-compression`, or neither.
    pub fn network_compression_choice(&self) -> Option<bool> {
        if self.network_compression {
            Some(true)
        } else if self.no_network_compression {
            Some(false)
        } else {
            None
        }
    }

    /// `--get-wal` / `--no-get-wal`, or neither (then `recovery_options` decides).
    pub fn get_wal_choice(&self) -> Option<bool> {
        if self.get_wal {
            Some(true)
        } else if self.no_get_wal {
            Some(false)
        } else {
            None
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive the WAL files waiting in the incoming and streaming directories
    ArchiveWal { server: String },
    /// Take a base backup of servers
    Backup {
        #[command(flatten)]
        servers: Servers,
        /// Ask PostgreSQL for an immediate checkpoint (overrides immediate_checkpoint)
        #[arg(long = "immediate-checkpoint", overrides_with = "no_immediate_checkpoint")]
        immediate_checkpoint: bool,
        /// Let PostgreSQL spread the checkpoint (overrides immediate_checkpoint)
        #[arg(long = "no-immediate-checkpoint")]
        no_immediate_checkpoint: bool,
        /// Parent backup of an incremental backup (PostgreSQL 17+)
        #[arg(long = "incremental", value_name = "BACKUP_ID")]
        incremental: Option<String>,
        /// File-level reuse of the previous backup (rsync method only); bare = link
        #[arg(long = "reuse-backup", num_args = 0..=1, default_missing_value = "link", value_parser = ["off", "copy", "link"])]
        reuse_backup: Option<String>,
        /// Retries of a failed copy (overrides basebackup_retry_times)
        #[arg(long = "retry-times", value_parser = non_negative)]
        retry_times: Option<u32>,
        /// Seconds between retries (overrides basebackup_retry_sleep)
        #[arg(long = "retry-sleep", value_parser = non_negative)]
        retry_sleep: Option<u32>,
        /// No retry of a failed copy
        #[arg(long = "no-retry")]
        no_retry: bool,
        /// Parallel workers (rsync method; the postgres method copies in one stream)
        #[arg(short = 'j', long = "jobs", value_parser = positive)]
        jobs: Option<u32>,
        /// Seconds between batches of started workers (rsync method)
        #[arg(long = "jobs-start-batch-period", value_parser = positive)]
        jobs_start_batch_period: Option<u32>,
        /// Workers started per batch (rsync method)
        #[arg(long = "jobs-start-batch-size", value_parser = positive)]
        jobs_start_batch_size: Option<u32>,
        /// Bandwidth limit in KB/s, 0 for none (overrides bandwidth_limit)
        #[arg(long = "bwlimit", value_name = "KBPS", value_parser = non_negative)]
        bwlimit: Option<u32>,
        /// Wait for every WAL file the backup needs to be archived
        #[arg(short = 'w', long = "wait")]
        wait: bool,
        /// Seconds to wait with --wait (0: forever)
        #[arg(long = "wait-timeout", value_name = "TIMEOUT", value_parser = non_negative)]
        wait_timeout: Option<u32>,
        /// Keepalive interval of the rsync method's connection
        #[arg(long = "keepalive-interval", value_parser = non_negative)]
        keepalive_interval: Option<u32>,
        /// A friendly name for the backup, usable instead of its id
        #[arg(long = "name", value_parser = backup_name)]
        name: Option<String>,
        /// Generate a backup manifest (rsync method; the postgres method always has one)
        #[arg(long = "manifest", overrides_with = "no_manifest")]
        manifest: bool,
        /// Do not generate a backup manifest (rsync method)
        #[arg(long = "no-manifest")]
        no_manifest: bool,
        /// Seconds the checks before the backup may take (0: no limit)
        #[arg(long = "check-timeout", value_parser = non_negative)]
        check_timeout: Option<u32>,
    },
    /// Check the configuration and the connections of servers
    Check {
        #[command(flatten)]
        servers: Servers,
        /// Nagios plugin output
        #[arg(long)]
        nagios: bool,
        /// Seconds before giving up (0: never)
        #[arg(long = "check-timeout")]
        check_timeout: Option<u64>,
    },
    /// Check that every WAL file a backup needs is archived (WAITING_FOR_WALS -> DONE)
    CheckBackup { server: String, backup_id: String },
    /// Delete a backup (and the WAL only it needed)
    Delete { server: String, backup_id: String },
    /// Keep a backup beyond the retention policy, show or release the keep
    #[command(group(clap::ArgGroup::new("keep_action").args(["release", "status", "target"])))]
    Keep {
        server: String,
        backup_id: String,
        /// Release the keep annotation
        #[arg(short = 'r', long)]
        release: bool,
        /// Show the keep annotation
        #[arg(short = 's', long)]
        status: bool,
        /// Keep the backup with every WAL file (full) or only those it needs (standalone)
        #[arg(long, value_parser = ["full", "standalone"])]
        target: Option<String>,
    },
    /// List the backups of servers, newest first
    #[command(alias = "list-backup")]
    ListBackups {
        #[command(flatten)]
        servers: Servers,
        /// Backup ids only
        #[arg(long)]
        minimal: bool,
    },
    /// Check that the WAL archive is empty before a new server uses it
    CheckWalArchive {
        server: String,
        /// Only fail on WAL files of this timeline or later
        #[arg(long)]
        timeline: Option<u32>,
    },
    /// Periodic maintenance: archive WAL files, clean lock files
    Cron {
        /// Keep the standard streams of started processes
        #[arg(long = "keep-descriptors")]
        keep_descriptors: bool,
    },
    /// Print configuration and state of every server as JSON, for support
    Diagnose {
        /// Name the file each option's value comes from
        #[arg(long = "show-config-source")]
        show_config_source: bool,
    },
    /// Retrieve a WAL file from the archive (PostgreSQL's restore_command uses it)
    GetWal {
        server: String,
        wal_name: String,
        /// Write the file into this directory instead of standard output
        #[arg(short = 'o', long = "output-directory")]
        output_directory: Option<PathBuf>,
        /// Also look for .partial files
        #[arg(short = 'P', long = "partial")]
        partial: bool,
        /// Compress the output with gzip
        #[arg(short = 'z', short_alias = 'x', long = "gzip", conflicts_with = "bzip2")]
        gzip: bool,
        /// Compress the output with bzip2
        #[arg(short = 'j', long = "bzip2")]
        bzip2: bool,
        /// Send the file as stored, compressed or not
        #[arg(long = "keep-compression")]
        keep_compression: bool,
        /// List up to N available WAL files from WAL_NAME on
        #[arg(short = 'p', long = "peek", value_parser = positive)]
        peek: Option<u32>,
        /// Send WAL_NAME and up to N-1 following segments as one tar stream
        #[arg(long = "bundle", value_parser = positive, conflicts_with = "peek")]
        bundle: Option<u32>,
        /// Only check that WAL files can be retrieved
        #[arg(short = 't', long = "test")]
        test: bool,
    },
    /// Remove lock files nobody holds
    LockDirectoryCleanup,
    /// List the processes Barman runs for a server
    #[command(alias = "list-process")]
    ListProcesses { server: String },
    /// List the configured servers
    #[command(alias = "list-server")]
    ListServers {
        /// Names only
        #[arg(long)]
        minimal: bool,
    },
    /// Receive a WAL file from barman-wal-archive (a tar stream on standard input)
    PutWal {
        server: String,
        /// Only check that WAL files can be accepted
        #[arg(short = 't', long = "test")]
        test: bool,
    },
    /// Print what a passive node needs to follow the server (Barman's JSON): backups, the
    /// WAL archived after LAST_WAL, the configuration
    SyncInfo {
        /// Ask the primary of this passive server instead (through primary_ssh_command)
        #[arg(long)]
        primary: bool,
        server: String,
        /// The newest WAL the caller holds: only later ones are listed
        last_wal: Option<String>,
        /// Where LAST_WAL's line starts in the xlog.db, from an earlier answer
        #[arg(value_parser = positive, requires = "last_wal")]
        last_position: Option<u32>,
    },
    /// Copy a backup from the primary (passive servers)
    SyncBackup { server: String, backup_id: String },
    /// Copy the WAL files the primary archived since the last sync (passive servers)
    SyncWals { server: String },
    /// Receive WAL from PostgreSQL by streaming replication (in the foreground)
    ReceiveWal {
        server: String,
        /// Stop the receive-wal process of the server
        #[arg(long)]
        stop: bool,
        /// Reset the streaming position to PostgreSQL's (or the slot's)
        #[arg(long)]
        reset: bool,
        /// Create the replication slot (slot_name)
        #[arg(long = "create-slot")]
        create_slot: bool,
        /// With --create-slot: an existing slot is not an error
        #[arg(long = "if-not-exists", requires = "create_slot")]
        if_not_exists: bool,
        /// Drop the replication slot (slot_name)
        #[arg(long = "drop-slot")]
        drop_slot: bool,
    },
    /// Show the streaming clients of servers (hot standbys and WAL streamers)
    ReplicationStatus {
        #[command(flatten)]
        servers: Servers,
        /// Machine readable output
        #[arg(long)]
        minimal: bool,
        /// Clients to show
        #[arg(long, value_enum, default_value = "all")]
        target: ReplicationTarget,
        /// Reach the server through the backup conninfo or the WAL conninfo
        #[arg(long, value_enum, default_value = "backup-host")]
        source: ReplicationSource,
    },
    /// Restore a backup into a PostgreSQL data directory (point in time recovery)
    #[command(alias = "recover")]
    Restore(Box<RestoreArgs>),
    /// Recreate the WAL catalogue from the files in the archive
    RebuildXlogdb {
        #[command(flatten)]
        servers: Servers,
    },
    /// Show the configuration of servers
    #[command(alias = "show-server")]
    ShowServers {
        #[command(flatten)]
        servers: Servers,
    },
    /// Show everything known about one backup
    #[command(alias = "show-backups")]
    ShowBackup { server: String, backup_id: String },
    /// List the files of one backup
    ListFiles {
        server: String,
        backup_id: String,
        /// standalone (data + WAL needed), data, wal (WAL up to the next backup) or full (data + wal)
        #[arg(long, value_enum, default_value = "standalone")]
        target: ListFilesTarget,
        /// Also list empty directories
        #[arg(long = "list-empty-directories")]
        list_empty_directories: bool,
    },
    /// Show the state of servers
    Status {
        #[command(flatten)]
        servers: Servers,
    },
    /// Make PostgreSQL switch to a new WAL file
    #[command(alias = "switch-xlog")]
    SwitchWal {
        #[command(flatten)]
        servers: Servers,
        /// Force a checkpoint first, so there is something to switch
        #[arg(long)]
        force: bool,
        /// Wait for the closed WAL file to be archived
        #[arg(long)]
        archive: bool,
        /// Seconds to wait with --archive
        #[arg(long = "archive-timeout", default_value_t = 30)]
        archive_timeout: u64,
    },
    /// The cluster node daemon
    #[command(subcommand)]
    Node(NodeCommand),
    /// The cluster: status, membership, hand-overs, certificates
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run this node: gRPC (mutual TLS), Raft, maintenance, streaming of the servers it owns
    Run,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Bootstrap the cluster from cluster_peers (every peer's node must be running)
    Init,
    /// Add a running node to the cluster as a voter
    AddNode {
        /// The new node's node_name
        name: String,
        /// Its node_advertise (host:port)
        addr: String,
    },
    /// Remove a node from the cluster
    RemoveNode { name: String },
    /// Revoke a certificate on every node, by its SHA-256 fingerprint (as `openssl x509
    /// -fingerprint -sha256` prints it) or its serial number (`serial=HEX`)
    Revoke { certificate: String },
    /// Members, leader, and each server's owner, epoch, lease and stream
    Status,
    /// Hand SERVER over to NODE without a gap in the WAL
    Transfer {
        server: String,
        node: String,
        /// Seconds to wait for NODE to stream
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Certificates for the cluster's mutual TLS
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create the cluster CA (certificate and key) in DIR
    Ca {
        /// Directory to write ca.crt and ca.key into
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
    /// Create the certificate of node NAME, signed by the CA in --ca-dir
    Node {
        name: String,
        /// Host names and addresses the node is reached by (repeatable)
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Directory holding ca.crt and ca.key
        #[arg(long = "ca-dir", default_value = ".")]
        ca_dir: std::path::PathBuf,
        /// Directory to write NAME.crt and NAME.key into
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
    /// Create a WAL client certificate for the PostgreSQL host NAME (barman-wal-archive and
    /// barman-wal-restore over gRPC), signed by the CA in --ca-dir
    Client {
        name: String,
        /// A server whose WAL the certificate may put and get (repeatable; at least one)
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
        /// Directory holding ca.crt and ca.key
        #[arg(long = "ca-dir", default_value = ".")]
        ca_dir: std::path::PathBuf,
        /// Directory to write NAME.crt and NAME.key into
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
}

fn non_negative(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(n as u32),
        _ => Err(format!("'{s}' is not a valid non negative integer")),
    }
}

fn backup_name(s: &str) -> Result<String, String> {
    super::backup::check_backup_name(s)
}

fn positive(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(n as u32),
        Ok(n) => Err(format!("{n} is not a positive integer")),
        Err(_) => Err(format!("'{s}' is not an integer")),
    }
}
