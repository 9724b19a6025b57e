use super::types::*;
use super::*;
use crate::wal::compression::{Codec, Level};

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
