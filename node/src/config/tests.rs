use super::types::*;
use super::*;
use crate::wal::compression::{Codec, Level};
use std::time::Duration;

const BASE: &str = "[barman]\nbarman_home = /srv/barman\nbarman_user = barman\n";

fn cfg(text: &str) -> Config {
    Config::from_text(&format!("{BASE}{text}"), Path::new("/etc/barman.conf")).unwrap()
}

fn pg(text: &str) -> (ServerConfig, Vec<String>) {
    let c = cfg(&format!("[pg]\nconninfo = host=pg\nbackup_method = postgres\n{text}"));
    let w = c.warnings.iter().map(|w| w.to_string()).collect();
    (c.servers["pg"].clone(), w)
}

#[test]
fn defaults_follow_barman_home_and_name() {
    let (s, _) = pg("");
    assert_eq!(s.opts.backup_directory.as_deref(), Some("/srv/barman/pg"));
    assert_eq!(s.wals_directory(), PathBuf::from("/srv/barman/pg/wals"));
    assert_eq!(s.xlogdb_directory(), PathBuf::from("/srv/barman/pg/wals"));
    assert_eq!(s.opts.streaming_conninfo.as_deref(), Some("host=pg"));
    assert_eq!(s.opts.cluster.as_deref(), Some("pg"));
    assert_eq!(s.opts.compression_level, Some(Level::Medium));
    assert!(s.opts.archiver, "archiver is forced on when both archivers are off");
    assert!(!s.disabled(), "{:?}", s.msg_list);
}

#[test]
fn server_values_override_barman_and_empty_blocks_inheritance() {
    let c = cfg("compression = gzip\nretention_policy = REDUNDANCY 3\n\
                 [a]\nconninfo = host=a\nbackup_method = postgres\n\
                 [b]\nconninfo = host=b\nbackup_method = postgres\ncompression = zstd\nretention_policy =\n");
    assert_eq!(c.servers["a"].opts.compression, Some(Codec::Gzip));
    assert_eq!(c.servers["b"].opts.compression, Some(Codec::Zstd));
    assert!(matches!(c.servers["a"].opts.retention_policy, Some(Retention::Policy(RetentionPolicy::Redundancy(3)))));
    assert_eq!(c.servers["b"].opts.retention_policy, None);
}

#[test]
fn invalid_values_warn_with_file_line_and_fall_back() {
    let c = cfg(
        "archiver = on\n[pg]\nconninfo = host=pg\nbackup_method = postgres\narchiver = maybe\ncompression = gzip # fast\n",
    );
    let s = &c.servers["pg"];
    assert!(s.opts.archiver, "falls back to [barman]");
    assert_eq!(s.opts.compression, None);
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter()
            .any(|m| m.starts_with("/etc/barman.conf:8: ignoring invalid value 'maybe' for option 'archiver' in [pg]")
                && m.contains("true|t|yes|1|on")
                && m.ends_with("using the value from [barman] 'True'")),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|m| m.contains(":9: ignoring invalid value 'gzip # fast' for option 'compression'")),
        "{w:#?}"
    );
}

#[test]
fn quotes_and_literal_none() {
    let (s, _) = pg("description = \"my server\"\nslot_name = 'Barman'\nstreaming_archiver_name = None\n");
    assert_eq!(s.opts.description.as_deref(), Some("my server"));
    assert_eq!(s.opts.slot_name, Some(SlotName("barman".into())));
    assert_eq!(s.opts.streaming_archiver_name, None);
}

#[test]
fn interpolation_within_section_and_builtins() {
    let (s, _) = pg("path_prefix = /opt/%(name)s/bin\ndescription = %(conninfo)s 100%%\n");
    assert_eq!(s.opts.path_prefix.as_deref(), Some("/opt/pg/bin"));
    assert_eq!(s.opts.description.as_deref(), Some("host=pg 100%"));
    let (s, w) = pg("description = 50% off\n");
    assert_eq!(s.opts.description, None);
    assert!(w.iter().any(|m| m.contains("literal percent")), "{w:#?}");
}

#[test]
fn unknown_and_misplaced_options_warn() {
    let c = cfg(
        "conninfo = host=x\nfoo = 1\n[pg]\nconninfo = host=pg\nbackup_method = postgres\nbarman_home = /x\nbogus = 2\n",
    );
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|m| m.contains(":4: option 'conninfo' in [barman] applies only to server sections")),
        "{w:#?}"
    );
    assert!(w.iter().any(|m| m.contains(":5: unknown option 'foo' in [barman]")), "{w:#?}");
    assert!(w.iter().any(|m| m.contains(":9: option 'barman_home' in [pg] belongs to [barman]")), "{w:#?}");
    assert!(w.iter().any(|m| m.contains(":10: unknown option 'bogus' in [pg]")), "{w:#?}");
}

#[test]
fn servers_are_disabled_with_barmans_reasons() {
    let c = cfg(
        "[noconn]\nbackup_method = postgres\n[rsync]\nconninfo = host=x\n[badci]\nconninfo = host = x\nbackup_method = postgres\n",
    );
    assert_eq!(
        c.servers["noconn"].msg_list,
        [
            "PostgreSQL connection: Missing 'conninfo' parameter for server 'noconn'",
            "Streaming connection: Missing 'streaming_conninfo' parameter for server 'noconn'"
        ]
    );
    assert_eq!(
        c.servers["rsync"].msg_list,
        ["Missing or invalid ssh_command in barman configuration for server rsync"]
    );
    assert!(c.servers["badci"].msg_list[0].contains("is not a valid connection string"));
    assert!(c.servers.values().all(|s| s.disabled()));
}

#[test]
fn unsupported_features_disable_instead_of_being_ignored() {
    let (s, _) = pg("encryption = gpg\n");
    assert!(s.disabled());
    assert!(s.msg_list[0].contains("encryption = gpg is not supported"), "{:?}", s.msg_list);
    let (s, _) = pg("snapshot_provider = gcp\n");
    assert!(s.disabled());
    let (s, _) = pg("encryption = none\n");
    assert!(!s.disabled());
}

#[test]
fn conflicting_paths() {
    let c = cfg("[a]\nconninfo = host=a\nbackup_method = postgres\nwals_directory = /srv/barman/a/incoming\n\
                 [b]\nconninfo = host=b\nbackup_method = postgres\nbackup_directory = /srv/barman/a\n");
    assert!(c.servers["a"].disabled());
    assert!(
        c.servers["a"].msg_list[0].starts_with(
            "Conflicting path: wals_directory=/srv/barman/a/incoming conflicts with 'incoming_wals_directory'"
        ),
        "{:?}",
        c.servers["a"].msg_list
    );
    assert!(!c.global_errors.is_empty());
    assert!(c.global_errors[0].contains("for server 'b' conflicts with"), "{:?}", c.global_errors);
}

#[test]
fn fatal_errors() {
    let e = Config::from_text("[barman]\nbarman_user = x\n", Path::new("/etc/b.conf")).unwrap_err();
    assert!(matches!(e, ConfigError::MissingHome { .. }));
    let e = Config::from_text(&format!("{BASE}[all]\nconninfo = x\n"), Path::new("/etc/b.conf")).unwrap_err();
    assert!(e.to_string().contains("/etc/b.conf:4: the reserved word 'all'"), "{e}");
    let e = Config::from_text(&format!("{BASE}[pg]\nbroken line\n"), Path::new("/etc/b.conf")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/b.conf:5: cannot parse 'broken line': expected 'option = value', a [section] header or a comment (# or ;)"
    );
}

#[test]
fn global_values_interpolate_like_barman() {
    // Values checked against Barman 3.17's Config on the same text.
    let text = "[DEFAULT]\nlog_level = DEBUG\n[barman]\nbarman_home = /srv/barman\n\
                barman_lock_directory = %(barman_home)s/locks\nconfig_changes_queue = None\n\
                log_file = \"%(barman_home)s/x.log\"\n";
    let c = Config::from_text(text, Path::new("/etc/b.conf")).unwrap();
    assert_eq!(c.global.lock_directory, Path::new("/srv/barman/locks"));
    assert_eq!(c.global.config_changes_queue, Path::new("/srv/barman/cfg_changes.queue"));
    assert_eq!(c.global.log_file.as_deref(), Some(Path::new("/srv/barman/x.log")));
    assert_eq!(c.global.log_level, "DEBUG");
    let e =
        Config::from_text("[barman]\nbarman_home = /srv\nlog_file = %(nope)s\n", Path::new("/etc/b.conf")).unwrap_err();
    assert!(e.to_string().starts_with("/etc/b.conf:3: [barman] 'log_file' refers to %(nope)s"), "{e}");
}

#[test]
fn includes_and_auto_conf() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    std::fs::create_dir_all(home.join("x")).unwrap();
    let inc = d.path().join("conf.d");
    std::fs::create_dir(&inc).unwrap();
    std::fs::write(inc.join("b.conf"), "[b]\nconninfo = host=b\nbackup_method = postgres\n").unwrap();
    std::fs::write(inc.join("a.conf"), "[a]\nconninfo = host=a\nbackup_method = postgres\n").unwrap();
    std::fs::write(inc.join("ignored.txt"), "[c]\n").unwrap();
    std::fs::write(home.join(".barman.auto.conf"), "[a]\ndescription = auto\n").unwrap();
    let main = d.path().join("barman.conf");
    std::fs::write(
        &main,
        format!("[barman]\nbarman_home = {}\nconfiguration_files_directory = {}\n", home.display(), inc.display()),
    )
    .unwrap();
    let c = MainConfig::read(Some(&main)).unwrap().finish().unwrap();
    assert_eq!(c.servers.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(c.servers["a"].opts.description.as_deref(), Some("auto"));
    std::fs::write(inc.join("c.conf"), "[barman]\ncompression = gzip\n").unwrap();
    let e = MainConfig::read(Some(&main)).unwrap().finish().unwrap_err();
    assert!(matches!(e, ConfigError::IncludeChangesGlobal { .. }), "{e}");
}

#[test]
fn models_apply_when_active() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    std::fs::create_dir_all(home.join("pg")).unwrap();
    std::fs::write(home.join("pg/.active-model.auto"), "fast").unwrap();
    let text = format!(
        "[barman]\nbarman_home = {}\n[pg]\nconninfo = host=pg\nbackup_method = postgres\ncluster = c1\n\
         [fast]\nmodel = true\ncluster = c1\ncompression = lz4\n",
        home.display()
    );
    let c = Config::from_text(&text, Path::new("/etc/b.conf")).unwrap();
    assert!(c.models.contains_key("fast"));
    assert!(!c.servers.contains_key("fast"));
    assert_eq!(c.servers["pg"].opts.compression, Some(Codec::Lz4));
    assert_eq!(c.servers["pg"].active_model.as_deref(), Some("fast"));
}

#[test]
fn every_default_parses() {
    // A default that does not parse would silently fall back to the type's zero value.
    let c = Config::from_text("[barman]\nbarman_home = /h\n[pg]\nconninfo = host=pg\n", Path::new("/b")).unwrap();
    let s = &c.servers["pg"];
    for spec in options::SERVER_OPTIONS {
        if let Some(d) = spec.default.filter(|d| !d.contains("%(")) {
            let shown = s.opts.show(spec.name).unwrap();
            assert!(!d.is_empty() || shown.ends_with("()") || shown == "None", "{}", spec.name);
            if !d.is_empty() && spec.name != "encryption" {
                assert!(
                    shown.eq_ignore_ascii_case(d)
                        || (d == "off" && shown == "False")
                        || (d == "false" && shown == "False")
                        || (d == "true" && shown == "True")
                        || spec.name == "archiver"
                        || spec.name == "disabled",
                    "{} = {shown}, default {d}",
                    spec.name
                );
            }
        }
    }
}

#[test]
fn option_reference_in_docs_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration-options.md");
    let want = options::reference_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration-options.md is stale: run UPDATE_DOCS=1 cargo test -p barman option_reference"
    );
}

// The cluster's options.

/// The cluster errors of `[barman]` followed by `text` (its first line is line 4).
fn cluster_errors(text: &str) -> Vec<String> {
    cfg(text).cluster_errors
}

fn one_cluster_error(text: &str) -> String {
    let e = cluster_errors(text);
    assert_eq!(e.len(), 1, "{text}: {e:#?}");
    e[0].clone()
}

#[test]
fn cluster_options_are_unset_by_default() {
    let c = cfg("[pg]\nconninfo = host=pg\nbackup_method = postgres\n");
    let g = &c.global;
    assert_eq!(g.node_name, None);
    assert_eq!(g.node_site, None);
    assert_eq!(g.site(), "default");
    assert_eq!(g.node_listen, None);
    assert_eq!(g.node_advertise, None);
    assert!(g.cluster_peers.is_empty());
    assert_eq!(g.cluster_ca_file, Path::new("/srv/barman/.node/tls/ca.crt"));
    assert_eq!(g.node_cert_file, Path::new("/srv/barman/.node/tls/node.crt"));
    assert_eq!(g.node_key_file, Path::new("/srv/barman/.node/tls/node.key"));
    assert_eq!(g.ownership_lease, Duration::from_secs(3));
    assert_eq!(g.node_metrics_listen, None);
    assert!(c.servers["pg"].opts.owner_candidates.is_empty());
    assert!(c.cluster_errors.is_empty(), "{:?}", c.cluster_errors);
    assert!(
        c.warnings.iter().all(|w| !w.message.contains("node_") && !w.message.contains("cluster")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn cluster_options_parse_into_types() {
    let c = cfg("node_name = site-a.n1\nnode_site = eu-west\nnode_listen = 10.0.0.1:7000\n\
                 cluster_peers = n1=10.0.0.1:7000 ,\n  n2 = node2.example:7000,\n  n3=[fd00::3]:7000\n\
                 cluster_ca_file = %(barman_home)s/tls/ca.pem\nownership_lease = 2.5\n\
                 node_metrics_listen = 127.0.0.1:9187\n\
                 [pg]\nconninfo = host=pg\nbackup_method = postgres\nowner_candidates = n1, n2,n3\n");
    assert!(c.cluster_errors.is_empty(), "{:?}", c.cluster_errors);
    let g = &c.global;
    assert_eq!(g.node_name.as_ref().map(NodeName::as_str), Some("site-a.n1"));
    assert_eq!(g.site(), "eu-west");
    let listen = HostPort { host: Host::Ip("10.0.0.1".parse().unwrap()), port: 7000 };
    assert_eq!(g.node_listen.as_ref(), Some(&listen));
    assert_eq!(g.node_advertise.as_ref(), Some(&listen), "node_advertise defaults to node_listen");
    let peers: Vec<String> = g.cluster_peers.iter().map(Peer::to_string).collect();
    assert_eq!(peers, ["n1=10.0.0.1:7000", "n2=node2.example:7000", "n3=[fd00::3]:7000"]);
    assert_eq!(g.cluster_peers[1].addr.host, Host::Name("node2.example".into()));
    assert_eq!(g.cluster_ca_file, Path::new("/srv/barman/tls/ca.pem"));
    assert_eq!(g.node_cert_file, Path::new("/srv/barman/.node/tls/node.crt"));
    assert_eq!(g.ownership_lease, Duration::from_millis(2500));
    assert_eq!(g.node_metrics_listen.as_ref().map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9187"));
    let s = &c.servers["pg"];
    assert_eq!(s.opts.owner_candidates.iter().map(NodeName::as_str).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    assert_eq!(s.show("owner_candidates").as_deref(), Some("n1, n2, n3"));
    assert_eq!(s.opts.json("owner_candidates"), Some(serde_json::json!(["n1", "n2", "n3"])));
    assert!(!s.disabled(), "{:?}", s.msg_list);
}

#[test]
fn cluster_addresses_in_ipv6() {
    let c = cfg("node_listen = [::]:7000\nnode_advertise = [FD00:0::1]:7000\nnode_metrics_listen = [::1]:9187\n");
    assert!(c.cluster_errors.is_empty(), "{:?}", c.cluster_errors);
    let g = &c.global;
    assert!(g.node_listen.as_ref().is_some_and(HostPort::is_unspecified));
    let adv = g.node_advertise.as_ref().unwrap();
    assert_eq!(adv.host, Host::Ip("fd00::1".parse().unwrap()));
    assert_eq!(adv.to_string(), "[fd00::1]:7000");
    assert_eq!(g.node_metrics_listen.as_ref().unwrap().to_string(), "[::1]:9187");
    // Display gives back what FromStr reads, for every form.
    for text in ["10.0.0.1:7000", "[fd00::1]:7000", "[::ffff:10.0.0.1]:1", "node-1.example:65535", "db_1:7000"] {
        let a: HostPort = text.parse().unwrap();
        assert_eq!(a.to_string(), text);
        assert_eq!(a.to_string().parse::<HostPort>().unwrap(), a);
    }
    let a: HostPort = "[::1]:7000".parse().unwrap();
    assert_eq!(a.socket_addrs().unwrap(), vec!["[::1]:7000".parse::<std::net::SocketAddr>().unwrap()]);
    assert_eq!(HostPort::from(a.socket_addrs().unwrap()[0]), a);
}

#[test]
fn bad_cluster_values_are_one_line_errors() {
    const NAME: &str =
        "expected a DNS-style name of up to 63 letters, digits, '-', '_' and '.', starting with a letter or digit";
    const ADDR: &str = "expected host:port or [ipv6]:port";
    let long = "n".repeat(64);
    let cases: Vec<(String, String)> = vec![
        ("node_name = n 1".into(), format!("option 'node_name' in [barman]: the name 'n 1' contains ' '; {NAME}")),
        (
            "node_name = -n1".into(),
            format!("option 'node_name' in [barman]: the name '-n1' does not start with a letter or digit; {NAME}"),
        ),
        (
            format!("node_name = {long}"),
            format!("option 'node_name' in [barman]: the name '{long}' is longer than 63 characters; {NAME}"),
        ),
        (
            "node_name = n1..dc1".into(),
            format!(
                "option 'node_name' in [barman]: the name 'n1..dc1' has an empty part between dots, or a part starting or ending with '-'; {NAME}"
            ),
        ),
        (
            "node_name = dc1.-n1".into(),
            format!(
                "option 'node_name' in [barman]: the name 'dc1.-n1' has an empty part between dots, or a part starting or ending with '-'; {NAME}"
            ),
        ),
        (
            "node_name = 1".into(),
            format!("option 'node_name' in [barman]: the name '1' ends with a part of digits only, like an address; {NAME}"),
        ),
        ("node_listen = 10.0.0.1".into(), format!("option 'node_listen' in [barman]: '10.0.0.1' has no port; {ADDR}")),
        (
            "node_listen = 10.0.0.1:70000".into(),
            format!("option 'node_listen' in [barman]: the port of '10.0.0.1:70000' is not a number from 1 to 65535; {ADDR}"),
        ),
        (
            "node_listen = 10.0.0.1:0".into(),
            format!("option 'node_listen' in [barman]: the port of '10.0.0.1:0' is not a number from 1 to 65535; {ADDR}"),
        ),
        (
            "node_listen = fd00::1:7000".into(),
            format!("option 'node_listen' in [barman]: 'fd00::1:7000' has an IPv6 address without brackets; {ADDR}"),
        ),
        (
            "node_listen = [fd00::1:7000".into(),
            format!("option 'node_listen' in [barman]: '[fd00::1:7000' has '[' without ']'; {ADDR}"),
        ),
        (
            "node_listen = [node1]:7000".into(),
            format!("option 'node_listen' in [barman]: '[node1]:7000' has no IPv6 address between its brackets; {ADDR}"),
        ),
        (
            "node_listen = 10.0.0.256:7000".into(),
            format!("option 'node_listen' in [barman]: '10.0.0.256:7000' has an invalid IPv4 address; {ADDR}"),
        ),
        (
            "node_listen = :7000".into(),
            format!("option 'node_listen' in [barman]: ':7000' has no host before the port; {ADDR}"),
        ),
        (
            "node_listen = node 1:7000".into(),
            format!("option 'node_listen' in [barman]: 'node 1:7000' has an invalid host name; {ADDR}"),
        ),
        (
            "node_advertise = [fd00::1]".into(),
            format!("option 'node_advertise' in [barman]: '[fd00::1]' has no port; {ADDR}"),
        ),
        (
            "node_metrics_listen = localhost".into(),
            format!("option 'node_metrics_listen' in [barman]: 'localhost' has no port; {ADDR}"),
        ),
        (
            "cluster_peers = n1=10.0.0.1:7000, n2".into(),
            "option 'cluster_peers' in [barman]: item 'n2': no '=' between name and address; expected name=host:port"
                .into(),
        ),
        (
            "cluster_peers = n1=10.0.0.1".into(),
            "option 'cluster_peers' in [barman]: item 'n1=10.0.0.1': '10.0.0.1' has no port; expected name=host:port"
                .into(),
        ),
        (
            "cluster_peers = n 1=10.0.0.1:7000".into(),
            "option 'cluster_peers' in [barman]: item 'n 1=10.0.0.1:7000': the name 'n 1' contains ' '; expected name=host:port"
                .into(),
        ),
        (
            "cluster_peers = n1=10.0.0.1:7000,,n2=10.0.0.2:7000".into(),
            "option 'cluster_peers' in [barman]: an item is empty (a comma too many); expected name=host:port items separated by commas"
                .into(),
        ),
        (
            "ownership_lease = 3s".into(),
            "option 'ownership_lease' in [barman]: '3s' is not a number of seconds; expected seconds such as 3 or 2.5"
                .into(),
        ),
        (
            "ownership_lease = -1".into(),
            "option 'ownership_lease' in [barman]: '-1' is not a number of seconds; expected seconds such as 3 or 2.5"
                .into(),
        ),
        (
            "ownership_lease = 0.4".into(),
            "option 'ownership_lease' in [barman]: '0.4' is out of range; expected seconds from 0.5 to 600".into(),
        ),
        (
            "ownership_lease = 600.001".into(),
            "option 'ownership_lease' in [barman]: '600.001' is out of range; expected seconds from 0.5 to 600".into(),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(one_cluster_error(&line), format!("/etc/barman.conf:4: {want}"), "{line}");
    }
    for ok in ["ownership_lease = 0.5", "ownership_lease = 600", "ownership_lease = 600.000"] {
        assert!(cluster_errors(ok).is_empty(), "{ok}");
    }
}

#[test]
fn cluster_peers_names_and_addresses_are_unique() {
    assert_eq!(
        one_cluster_error("cluster_peers = n1=10.0.0.1:7000, n2=10.0.0.2:7000, n1=10.0.0.3:7000"),
        "/etc/barman.conf:4: option 'cluster_peers' in [barman]: item 'n1=10.0.0.3:7000': the name 'n1' is already \
         given to 'n1=10.0.0.1:7000'; expected name=host:port, each name once"
    );
    assert_eq!(
        one_cluster_error("cluster_peers = n1=10.0.0.1:7000, n2=10.0.0.1:7000"),
        "/etc/barman.conf:4: option 'cluster_peers' in [barman]: item 'n2=10.0.0.1:7000': the address '10.0.0.1:7000' \
         is already given to 'n1=10.0.0.1:7000'; expected name=host:port, each address once"
    );
}

#[test]
fn cluster_options_that_cannot_work_together() {
    assert_eq!(
        one_cluster_error("node_listen = 0.0.0.0:7000\n"),
        "/etc/barman.conf:4: option 'node_listen' in [barman]: '0.0.0.0:7000' is a wildcard address and \
         node_advertise is unset; expected node_advertise = this node's address as host:port"
    );
    assert!(cluster_errors("node_listen = 0.0.0.0:7000\nnode_advertise = 10.0.0.1:7000\n").is_empty());
    assert_eq!(
        one_cluster_error("node_listen = 10.0.0.1:7000\nnode_advertise = [::]:7000\n"),
        "/etc/barman.conf:5: option 'node_advertise' in [barman]: '[::]:7000' is a wildcard address no other node \
         can dial; expected this node's address as host:port"
    );
    assert_eq!(
        one_cluster_error("node_listen = [::]:7000\nnode_advertise = n1:7000\nnode_metrics_listen = [::1]:7000\n"),
        "/etc/barman.conf:6: option 'node_metrics_listen' in [barman]: '[::1]:7000' is also node_listen \
         ('[::]:7000'); expected another host:port"
    );
}

#[test]
fn bad_cluster_values_warn_and_leave_barman_commands_working() {
    let c = cfg("node_listen = 10.0.0.1\nownership_lease = 0.1\n[pg]\nconninfo = host=pg\nbackup_method = postgres\n");
    assert_eq!(c.global.node_listen, None);
    assert_eq!(c.global.ownership_lease, Duration::from_millis(100), "kept: the cluster commands refuse it");
    assert_eq!(c.cluster_errors.len(), 2, "{:?}", c.cluster_errors);
    assert!(!c.servers["pg"].disabled());
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.contains(
            &"/etc/barman.conf:4: ignoring invalid value '10.0.0.1' for option 'node_listen' in [barman] \
              ('10.0.0.1' has no port; expected host:port or [ipv6]:port); leaving it unset"
                .to_string()
        ),
        "{w:#?}"
    );
    assert!(w.contains(&c.cluster_errors[1]), "a check that is not a parse error is also a warning: {w:#?}");
}

#[test]
fn owner_candidates_are_trimmed_names_each_once() {
    let (s, _) = pg("owner_candidates =  n2 ,\n    n1\t,n3  \n");
    assert_eq!(s.opts.owner_candidates.iter().map(NodeName::as_str).collect::<Vec<_>>(), ["n2", "n1", "n3"]);
    let (s, _) = pg("owner_candidates =\n");
    assert!(s.opts.owner_candidates.is_empty());
    let server =
        |v: &str| cfg(&format!("[pg]\nconninfo = host=pg\nbackup_method = postgres\nowner_candidates = {v}\n"));
    let one = |v: &str| {
        let c = server(v);
        assert!(c.servers["pg"].opts.owner_candidates.is_empty(), "a bad list is not used: {v}");
        assert_eq!(c.cluster_errors.len(), 1, "{v}: {:?}", c.cluster_errors);
        c.cluster_errors[0].clone()
    };
    let at = "/etc/barman.conf:7: option 'owner_candidates' in [pg]:";
    assert_eq!(
        one("n1, n2, n1"),
        format!("{at} the name 'n1' is given twice; expected node names separated by commas, each once")
    );
    assert_eq!(
        one("n1,,n2"),
        format!("{at} an item is empty (a comma too many); expected node names separated by commas")
    );
    assert_eq!(
        one("n1; n2"),
        format!(
            "{at} the name 'n1; n2' contains ';'; expected node names separated by commas, each a DNS-style name of \
             up to 63 letters, digits, '-', '_' and '.', starting with a letter or digit"
        )
    );
}

#[test]
fn cluster_options_in_the_wrong_section_warn() {
    let c = cfg("owner_candidates = n1\n[pg]\nconninfo = host=pg\nbackup_method = postgres\nnode_name = n1\n");
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|m| m == "/etc/barman.conf:4: option 'owner_candidates' in [barman] applies only to server sections; it is ignored"),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|m| m == "/etc/barman.conf:8: option 'node_name' in [pg] belongs to [barman]; it is ignored"),
        "{w:#?}"
    );
    assert_eq!(c.global.node_name, None);
    assert!(c.servers["pg"].opts.owner_candidates.is_empty());
}

#[test]
fn barman_configurations_with_cluster_options_read_as_before() {
    // What show-servers and diagnose print (SERVER_OPTIONS) stays Barman's key set.
    for s in options::CLUSTER_SERVER_OPTIONS {
        assert!(options::SERVER_OPTIONS.iter().all(|b| b.name != s.name), "{}", s.name);
    }
    let text = "node_name = n1\nnode_site = s1\nnode_listen = 10.0.0.1:7000\ncluster_peers = n1=10.0.0.1:7000\n\
                [pg]\nconninfo = host=pg\nbackup_method = postgres\nowner_candidates = n1\n";
    let with = cfg(text);
    let without = cfg("[pg]\nconninfo = host=pg\nbackup_method = postgres\n");
    let w = |c: &Config| c.warnings.iter().map(|w| w.message.clone()).collect::<Vec<_>>();
    assert_eq!(w(&with), w(&without), "the cluster's options add no warning");
    for spec in options::SERVER_OPTIONS {
        assert_eq!(with.servers["pg"].show(spec.name), without.servers["pg"].show(spec.name), "{}", spec.name);
    }
    assert!(!with.servers["pg"].disabled());
}

#[test]
fn seconds_read_exactly() {
    assert_eq!(parse_seconds("2.5"), Some(Duration::from_millis(2500)));
    assert_eq!(parse_seconds("0.1"), Some(Duration::from_millis(100)));
    assert_eq!(parse_seconds(".5"), Some(Duration::from_millis(500)));
    assert_eq!(parse_seconds("3."), Some(Duration::from_secs(3)));
    assert_eq!(parse_seconds("0.000000001"), Some(Duration::from_nanos(1)));
    for bad in ["", ".", "1e3", "+1", "-1", "1.2.3", "0.0000000001", "inf", "1 s"] {
        assert_eq!(parse_seconds(bad), None, "{bad}");
    }
    assert_eq!(show_seconds(Duration::from_millis(2500)), "2.5");
    assert_eq!(show_seconds(Duration::from_secs(3)), "3");
}

#[test]
fn cluster_example_in_docs_reads_cleanly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cluster.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let start = doc.find("```ini\n").expect("an ini example in docs/cluster.md") + "```ini\n".len();
    let text = &doc[start..start + doc[start..].find("```").unwrap()];
    let c = Config::from_text(text, Path::new("/etc/barman.conf")).unwrap();
    assert!(c.cluster_errors.is_empty(), "{:?}", c.cluster_errors);
    assert_eq!(c.global.node_name.as_ref().map(NodeName::as_str), Some("n1"));
    assert_eq!(c.global.cluster_peers.len(), 3);
    assert_eq!(c.global.node_advertise.as_ref().map(|a| a.to_string()).as_deref(), Some("10.1.0.11:7000"));
    assert_eq!(c.servers["pg"].opts.owner_candidates, ["n1", "n2", "n3"]);
    assert!(!c.servers["pg"].disabled(), "{:?}", c.servers["pg"].msg_list);
}
