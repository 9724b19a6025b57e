//! The one table of configuration options. Parsing, `show-servers`, `diagnose`,
//! validation and the option reference in docs/ all read it.

use super::types::*;
use crate::wal::compression::{Codec, Level};

/// Where an option may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only in `[barman]`.
    Global,
    /// In a server section, or in `[barman]` as a default for every server.
    Inherited,
    /// Only in a server section.
    Server,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Inherited => "global, server",
            Scope::Server => "server",
        }
    }
}

/// One row of the option table.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    pub scope: Scope,
    /// Allowed in a model section.
    pub model: bool,
    /// Default as Barman writes it (`%(name)s` refers to other values).
    pub default: Option<&'static str>,
    pub kind: &'static str,
    pub doc: &'static str,
}

/// The global options of `[barman]` (server options may also be set there).
pub const GLOBAL_OPTIONS: &[OptionSpec] = &[
    g("barman_home", None, "path", "Directory holding every server's catalog (required)."),
    g("barman_user", Some("barman"), "string", "System user commands run as; root switches to it."),
    g("barman_lock_directory", Some("%(barman_home)s"), "path", "Directory of the lock files."),
    g("lock_directory_cleanup", Some("true"), "bool", "Let cron remove lock files nobody holds."),
    g("config_changes_queue", Some("%(barman_home)s/cfg_changes.queue"), "path", "Queue file of config-update."),
    g("configuration_files_directory", None, "path", "Directory whose *.conf files are read after this file."),
    g("log_file", None, "path", "Log file; unset logs to standard error."),
    g("log_level", Some("INFO"), "DEBUG|INFO|WARNING|ERROR|CRITICAL", "Log level."),
    g(
        "log_format",
        Some("%(asctime)s [%(process)s] %(name)s %(levelname)s: %(message)s"),
        "string",
        "Accepted for compatibility; the log format is fixed.",
    ),
    // The cluster's own options (Barman does not know them; docs/cluster.md). Read into
    // typed fields by `Config::build`, checked by `validate::check_cluster`.
    g(
        "node_name",
        None,
        "name",
        "Cluster: this node's name, a DNS-style name of letters, digits, -, _ and . (node and cluster commands require it).",
    ),
    g("node_site", None, "string", "Cluster: the data centre of this node; unset shows as `default`."),
    g(
        "node_listen",
        None,
        "host:port",
        "Cluster: address the node's gRPC server binds (IPv4, [IPv6]:port or host name).",
    ),
    g("node_advertise", Some("%(node_listen)s"), "host:port", "Cluster: address other nodes dial to reach this node."),
    g(
        "cluster_peers",
        None,
        "name=host:port, ...",
        "Cluster: nodes to bootstrap (cluster init) and to find the cluster through.",
    ),
    g(
        "cluster_ca_file",
        Some("%(barman_home)s/.node/tls/ca.crt"),
        "path (PEM)",
        "Cluster: CA certificate every node's certificate is signed by.",
    ),
    g("node_cert_file", Some("%(barman_home)s/.node/tls/node.crt"), "path (PEM)", "Cluster: this node's certificate."),
    g("node_key_file", Some("%(barman_home)s/.node/tls/node.key"), "path (PEM)", "Cluster: this node's private key."),
    g(
        "ownership_lease",
        Some("3"),
        "seconds (0.5 to 600)",
        "Cluster: lease of a server's owner; past it without renewal the owner stops streaming.",
    ),
    g(
        "wal_client_unbound",
        Some("refuse"),
        "allow | refuse",
        "Cluster: whether WAL client certificates that name no server (made before certificates named their servers) may put and get the WAL of every server.",
    ),
    g(
        "node_metrics_listen",
        None,
        "host:port",
        "Cluster: address of the Prometheus metrics endpoint (plain HTTP; bind loopback); unset: none.",
    ),
];

const fn g(name: &'static str, default: Option<&'static str>, kind: &'static str, doc: &'static str) -> OptionSpec {
    OptionSpec { name, scope: Scope::Global, model: false, default, kind, doc }
}

macro_rules! server_options {
    (
        barman { $( $name:ident : $ty:ty = $default:expr, $scope:ident, $model:literal, $kind:literal, $doc:literal; )* }
        cluster { $( $cname:ident : $cty:ty = $cdefault:expr, $cscope:ident, $cmodel:literal, $ckind:literal, $cdoc:literal; )* }
    ) => {
        /// Every server option, typed, after inheritance and defaults.
        #[derive(Debug, Clone)]
        pub struct ServerOptions {
            $( pub $name: $ty, )*
            $( pub $cname: $cty, )*
        }

        /// Options a model overrides (only the ones it sets).
        #[derive(Debug, Clone, Default)]
        pub struct ModelOverrides {
            $( pub $name: Option<$ty>, )*
            $( pub $cname: Option<$cty>, )*
        }

        /// The server option rows, in the order Barman resolves them (defaults may
        /// refer only to options above them).
        pub const SERVER_OPTIONS: &[OptionSpec] = &[
            $( OptionSpec {
                name: stringify!($name),
                scope: Scope::$scope,
                model: $model,
                default: $default,
                kind: $kind,
                doc: $doc,
            }, )*
        ];

        /// The cluster's own server options. Kept apart from [`SERVER_OPTIONS`], which
        /// `show-servers` and `diagnose` print and tests compare with Barman's output key
        /// for key: a Barman configuration must show exactly Barman's keys.
        pub const CLUSTER_SERVER_OPTIONS: &[OptionSpec] = &[
            $( OptionSpec {
                name: stringify!($cname),
                scope: Scope::$cscope,
                model: $cmodel,
                default: $cdefault,
                kind: $ckind,
                doc: $cdoc,
            }, )*
        ];

        impl ServerOptions {
            pub(super) fn resolve(r: &mut super::resolve::Resolver<'_>) -> Self {
                ServerOptions {
                    $( $name: r.resolve::<$ty>(stringify!($name)), )*
                    $( $cname: r.resolve::<$cty>(stringify!($cname)), )*
                }
            }
            /// Python's `str()` of an option's value, by name.
            pub fn show(&self, name: &str) -> Option<String> {
                match name {
                    $( stringify!($name) => Some(self.$name.show()), )*
                    $( stringify!($cname) => Some(self.$cname.show()), )*
                    _ => None,
                }
            }
            /// JSON encoding of an option's value, by name.
            pub fn json(&self, name: &str) -> Option<serde_json::Value> {
                match name {
                    $( stringify!($name) => Some(self.$name.json()), )*
                    $( stringify!($cname) => Some(self.$cname.json()), )*
                    _ => None,
                }
            }
            /// Applies what a model sets.
            pub fn apply(&mut self, m: &ModelOverrides) {
                $( if let Some(v) = &m.$name {
                    self.$name = v.clone();
                } )*
                $( if let Some(v) = &m.$cname {
                    self.$cname = v.clone();
                } )*
            }
        }

        impl ModelOverrides {
            pub(super) fn resolve(r: &mut super::resolve::Resolver<'_>) -> Self {
                ModelOverrides {
                    $( $name: if $model { r.resolve_only_set::<$ty>(stringify!($name)) } else { None }, )*
                    $( $cname: if $cmodel { r.resolve_only_set::<$cty>(stringify!($cname)) } else { None }, )*
                }
            }
        }
    };
}

server_options! {
barman {
    active: bool = Some("true"), Server, true, "bool", "Whether the server takes part in operations (false: inactive).";
    archiver: bool = Some("off"), Inherited, true, "bool", "Archive WAL files arriving in the incoming directory (archive_command).";
    archiver_batch_size: i64 = Some("0"), Inherited, true, "int", "Most files one archive-wal run takes from incoming (0: all).";
    autogenerate_manifest: bool = Some("false"), Inherited, true, "bool", "Write a backup_manifest after rsync backups.";
    aws_await_snapshots_timeout: i64 = Some("3600"), Inherited, true, "int", "Seconds to wait for AWS snapshots (snapshot backups).";
    aws_snapshot_lock_mode: Option<String> = None, Inherited, true, "string", "AWS snapshot lock mode (snapshot backups).";
    aws_snapshot_lock_duration: Option<i64> = None, Inherited, true, "int", "AWS snapshot lock duration in days (snapshot backups).";
    aws_snapshot_lock_cool_off_period: Option<i64> = None, Inherited, true, "int", "AWS snapshot lock cool-off hours (snapshot backups).";
    aws_snapshot_lock_expiration_date: Option<String> = None, Inherited, true, "string", "AWS snapshot lock expiry date (snapshot backups).";
    aws_profile: Option<String> = None, Inherited, true, "string", "AWS profile (snapshot backups).";
    aws_region: Option<String> = None, Inherited, true, "string", "AWS region (snapshot backups).";
    azure_credential: Option<String> = None, Inherited, true, "string", "Azure credential type (snapshot backups).";
    azure_resource_group: Option<String> = None, Inherited, true, "string", "Azure resource group (snapshot backups).";
    azure_subscription_id: Option<String> = None, Inherited, true, "string", "Azure subscription (snapshot backups).";
    backup_compression: Option<BackupCompression> = None, Inherited, true, "gzip|lz4|zstd|none", "Compression of base backups taken with backup_method = postgres.";
    backup_compression_format: Option<BackupCompressionFormat> = None, Inherited, true, "plain|tar", "Layout of compressed base backups (default tar).";
    backup_compression_level: Option<i64> = None, Inherited, true, "int", "Level of backup_compression.";
    backup_compression_location: Option<BackupCompressionLocation> = None, Inherited, true, "client|server", "Where base backups are compressed.";
    backup_compression_workers: Option<i64> = None, Inherited, true, "int", "Threads of zstd backup compression.";
    backup_directory: Option<String> = Some("%(barman_home)s/%(name)s"), Server, false, "path", "Root directory of the server's catalog.";
    backup_method: BackupMethod = Some("rsync"), Inherited, true, "rsync|postgres|local-rsync|snapshot", "How base backups are taken.";
    backup_options: BackupOptions = Some(""), Inherited, true, "exclusive_backup,concurrent_backup,external_configuration", "Base backup options (comma-separated).";
    bandwidth_limit: Option<Bandwidth> = None, Inherited, true, "int (KB/s)", "Bandwidth limit of backups and recoveries (0: none).";
    basebackup_retry_sleep: i64 = Some("30"), Inherited, true, "int (s)", "Seconds between retries of a failed base backup copy.";
    basebackup_retry_times: i64 = Some("0"), Inherited, true, "int", "Retries of a failed base backup copy.";
    basebackups_directory: Option<String> = Some("%(backup_directory)s/base"), Server, false, "path", "Directory of base backups.";
    check_timeout: i64 = Some("30"), Inherited, true, "int (s)", "Seconds before check gives up (0: never).";
    cluster: Option<String> = Some("%(name)s"), Server, true, "string", "Cluster name shared by a server and its models.";
    compression: Option<Codec> = None, Inherited, true, "gzip|bzip2|pigz|pygzip|pybzip2|xz|zstd|lz4|snappy|custom", "Compression of archived WAL files.";
    compression_level: Option<Level> = Some("medium"), Inherited, true, "low|medium|high|int", "Level of WAL compression.";
    conninfo: Option<String> = None, Server, true, "libpq conninfo", "Connection to PostgreSQL for SQL.";
    custom_compression_filter: Option<String> = None, Inherited, true, "shell command", "Filter compressing stdin to stdout for compression = custom (deprecated).";
    custom_decompression_filter: Option<String> = None, Inherited, true, "shell command", "Filter decompressing stdin to stdout for compression = custom (deprecated).";
    custom_compression_magic: Option<Magic> = None, Inherited, true, "0x hex", "Magic bytes of custom-compressed files (deprecated).";
    description: Option<String> = None, Server, true, "string", "Free text shown by list-servers.";
    disabled: bool = Some("false"), Server, false, "bool", "Set by configuration errors, not by users.";
    encryption: Option<Gpg> = Some("none"), Inherited, true, "none|gpg", "Encryption of backups and WAL files.";
    encryption_key_id: Option<String> = None, Inherited, true, "string", "GPG key id used to encrypt.";
    encryption_passphrase_command: Option<String> = None, Inherited, true, "shell command", "Command printing the GPG passphrase to decrypt.";
    errors_directory: Option<String> = Some("%(backup_directory)s/errors"), Server, false, "path", "Directory of rejected WAL files.";
    forward_config_path: bool = Some("false"), Inherited, true, "bool", "Pass our configuration path to the primary's barman (passive nodes).";
    gcp_project: Option<String> = None, Inherited, true, "string", "Google Cloud project (snapshot backups).";
    gcp_zone: Option<String> = None, Server, true, "string", "Google Cloud zone (snapshot backups).";
    immediate_checkpoint: bool = Some("false"), Inherited, true, "bool", "Ask PostgreSQL for an immediate checkpoint at backup start.";
    incoming_wals_directory: Option<String> = Some("%(backup_directory)s/incoming"), Server, false, "path", "Directory WAL files are shipped to by archive_command.";
    keepalive_interval: i64 = Some("60"), Server, true, "int (s)", "Seconds between keep-alive queries during backups.";
    last_backup_maximum_age: Option<Interval> = None, Inherited, true, "N day[s]|week[s]|month[s]|hour[s]", "Age beyond which check fails for lack of a newer backup.";
    last_backup_minimum_size: Option<SiSize> = None, Inherited, true, "N[k|Ki|M|Mi|G|Gi|T|Ti]", "Smallest acceptable size of the latest backup.";
    last_wal_maximum_age: Option<Interval> = None, Inherited, true, "N day[s]|week[s]|month[s]|hour[s]", "Age beyond which check fails for lack of a newer WAL file.";
    combine_mode: CombineMode = Some("copy"), Inherited, true, "copy|link|clone|copy-file-range", "pg_combinebackup mode for incremental backups.";
    local_staging_path: Option<AbsPath> = None, Inherited, true, "absolute path", "Deprecated: staging directory (use staging_path).";
    max_incoming_wals_queue: Option<i64> = None, Inherited, true, "int", "Files in incoming/ or streaming/ beyond which check fails.";
    minimum_redundancy: MinRedundancy = Some("0"), Inherited, true, "int", "Backups that retention and delete always keep.";
    network_compression: bool = Some("false"), Inherited, true, "bool", "Compress rsync traffic.";
    parallel_jobs: i64 = Some("1"), Inherited, true, "int", "Parallel workers of copies.";
    parallel_jobs_start_batch_period: i64 = Some("1"), Inherited, true, "int (s)", "Seconds between batches of starting workers.";
    parallel_jobs_start_batch_size: i64 = Some("10"), Inherited, true, "int", "Workers started per batch.";
    path_prefix: Option<String> = None, Inherited, true, "path list", "Directories put first in PATH for every external program we run.";
    post_archive_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook after a WAL file is archived, retried until 0, 62 or 63.";
    post_archive_script: Option<String> = None, Inherited, false, "shell command", "Hook after a WAL file is archived.";
    post_backup_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook after a backup, retried until 0, 62 or 63.";
    post_backup_script: Option<String> = None, Inherited, false, "shell command", "Hook after a backup.";
    post_delete_script: Option<String> = None, Inherited, false, "shell command", "Hook after a backup is deleted.";
    post_delete_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook after a backup is deleted, retried until 0, 62 or 63.";
    post_recovery_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook after a recovery, retried until 0, 62 or 63.";
    post_recovery_script: Option<String> = None, Inherited, false, "shell command", "Hook after a recovery.";
    post_wal_delete_script: Option<String> = None, Inherited, false, "shell command", "Hook after a WAL file is deleted.";
    post_wal_delete_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook after a WAL file is deleted, retried until 0, 62 or 63.";
    pre_archive_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook before a WAL file is archived, retried until 0, 62 or 63 (63 stops the run).";
    pre_archive_script: Option<String> = None, Inherited, false, "shell command", "Hook before a WAL file is archived.";
    pre_backup_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook before a backup, retried until 0, 62 or 63.";
    pre_backup_script: Option<String> = None, Inherited, false, "shell command", "Hook before a backup.";
    pre_delete_script: Option<String> = None, Inherited, false, "shell command", "Hook before a backup is deleted.";
    pre_delete_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook before a backup is deleted, retried until 0, 62 or 63.";
    pre_recovery_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook before a recovery, retried until 0, 62 or 63.";
    pre_recovery_script: Option<String> = None, Inherited, false, "shell command", "Hook before a recovery.";
    pre_wal_delete_script: Option<String> = None, Inherited, false, "shell command", "Hook before a WAL file is deleted.";
    pre_wal_delete_retry_script: Option<String> = None, Inherited, false, "shell command", "Hook before a WAL file is deleted, retried until 0, 62 or 63.";
    primary_checkpoint_timeout: i64 = Some("0"), Server, true, "int (s)", "Seconds to wait for a checkpoint on the primary after a standby backup.";
    primary_conninfo: Option<String> = None, Server, true, "libpq conninfo", "The primary, when conninfo points to a standby.";
    primary_ssh_command: Option<String> = None, Inherited, true, "ssh command", "Makes the server a passive node fed by this Barman primary.";
    recovery_options: RecoveryOptions = Some(""), Inherited, true, "get-wal,delta-restore", "Recovery options (comma-separated).";
    recovery_staging_path: Option<AbsPath> = None, Inherited, true, "absolute path", "Deprecated: staging directory for recovery (use staging_path).";
    create_slot: CreateSlot = Some("manual"), Inherited, true, "manual|auto", "Whether receive-wal creates the replication slot.";
    retention_policy: Option<Retention> = None, Inherited, true, "REDUNDANCY n | RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS", "Which backups to keep.";
    retention_policy_mode: OnlyWord<WORD_AUTO> = Some("auto"), Inherited, true, "auto", "Retention is applied automatically by cron.";
    reuse_backup: Option<ReuseBackup> = None, Inherited, true, "off|copy|link", "File-level incremental backups (rsync).";
    slot_name: Option<SlotName> = None, Inherited, true, "[0-9a-z_]+", "Replication slot used for WAL streaming.";
    snapshot_disks: Option<Vec<String>> = None, Server, true, "comma list", "Disks to snapshot (snapshot backups).";
    snapshot_gcp_project: Option<String> = None, Inherited, true, "string", "Deprecated alias of gcp_project.";
    snapshot_instance: Option<String> = None, Server, true, "string", "Instance whose disks are snapshotted (snapshot backups).";
    snapshot_provider: Option<SnapshotProvider> = None, Inherited, true, "aws|azure|gcp", "Cloud of snapshot backups.";
    snapshot_zone: Option<String> = None, Server, true, "string", "Deprecated alias of gcp_zone.";
    ssh_command: Option<String> = None, Server, true, "ssh command", "How to reach the PostgreSQL host for rsync backups.";
    staging_path: Option<AbsPath> = None, Inherited, true, "absolute path", "Where compressed backups are unpacked during recovery.";
    staging_location: StagingLocation = Some("local"), Inherited, true, "local|remote", "Whether staging_path is on this host or the target.";
    streaming_archiver: bool = Some("off"), Inherited, true, "bool", "Archive WAL received by streaming (streaming directory).";
    streaming_archiver_batch_size: i64 = Some("0"), Inherited, true, "int", "Most files one archive-wal run takes from streaming (0: all).";
    streaming_archiver_name: Option<String> = Some("barman_receive_wal"), Inherited, true, "string", "application_name of WAL streaming.";
    streaming_backup_name: Option<String> = Some("barman_streaming_backup"), Inherited, true, "string", "application_name of streaming base backups.";
    streaming_conninfo: Option<String> = Some("%(conninfo)s"), Server, true, "libpq conninfo", "Replication connection to PostgreSQL (default: conninfo).";
    streaming_wals_directory: Option<String> = Some("%(backup_directory)s/streaming"), Server, false, "path", "Directory WAL streaming writes to.";
    tablespace_bandwidth_limit: Option<TablespaceLimits> = None, Inherited, true, "name:kbps ...", "Per-tablespace bandwidth limits (rsync).";
    wal_conninfo: Option<String> = None, Server, true, "libpq conninfo", "Connection for WAL checks when WAL comes from another host.";
    wal_retention_policy: OnlyWord<WORD_MAIN> = Some("main"), Inherited, true, "main", "WAL retention follows the backups.";
    wal_streaming_conninfo: Option<String> = None, Server, true, "libpq conninfo", "Replication connection for WAL streaming only.";
    wals_directory: Option<String> = Some("%(backup_directory)s/wals"), Server, false, "path", "The WAL archive.";
    worm_mode: bool = Some("off"), Inherited, true, "bool", "Storage is write-once: never purge WAL at the first backup.";
    xlogdb_directory: Option<String> = Some("%(wals_directory)s"), Inherited, false, "path", "Directory of <server>-xlog.db.";
}
cluster {
    owner_candidates: Vec<NodeName> = Some(""), Server, false, "node names, comma-separated", "Cluster: nodes that may own (stream, back up) the server, most preferred first; empty: every member, in name order.";
    sync_delete_delay: Option<Interval> = Some("7 days"), Inherited, false, "N day[s]|week[s]|month[s]|hour[s]", "Cluster: how long a backup the owner deleted stays in this node's trash (`<backup_directory>/.trash`) before it is purged.";
}
}

/// The row of a server option, Barman's or the cluster's.
pub fn server_spec(name: &str) -> Option<&'static OptionSpec> {
    SERVER_OPTIONS.iter().chain(CLUSTER_SERVER_OPTIONS).find(|s| s.name == name)
}

/// The row of an option, server or global.
pub fn spec(name: &str) -> Option<&'static OptionSpec> {
    server_spec(name).or_else(|| GLOBAL_OPTIONS.iter().find(|s| s.name == name))
}

/// The option reference (Markdown), generated from the table.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration options\n\nGenerated from the option table (`node/src/config/options.rs`); \
         `barman` reads the same table. Scope: `global` options go in `[barman]` only; \
         `global, server` options may be set in `[barman]` as a default for every server; \
         `server` options only in a server section. Model sections accept the options marked `yes`. \
         Options whose description starts with “Cluster:” are this project's own, read by the node and the cluster \
         commands ([cluster.md](cluster.md)); Barman does not know them.\n\n",
    );
    let server_rows: Vec<OptionSpec> = SERVER_OPTIONS.iter().chain(CLUSTER_SERVER_OPTIONS).copied().collect();
    for (title, rows) in [("Global options", GLOBAL_OPTIONS), ("Server options", server_rows.as_slice())] {
        out.push_str(&format!(
            "## {title}\n\n| option | scope | values | default | model | description |\n|---|---|---|---|---|---|\n"
        ));
        for s in rows {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} |\n",
                s.name,
                s.scope.label(),
                s.kind.replace('|', "\\|"),
                s.default.map_or("–".to_string(), |d| if d.is_empty() { "(empty)".into() } else { format!("`{d}`") }),
                if s.model { "yes" } else { "no" },
                s.doc
            ));
        }
        out.push('\n');
    }
    out
}
