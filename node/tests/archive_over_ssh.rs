//! PostgreSQL archives through `barman-wal-archive` over a real sshd into our
//! `put-wal`; every segment it archived is filed under `wals/` and comes back
//! byte-identical through `get-wal`, with every codec; real Barman 3.17 reads
//! the same archive back byte-identical.

#![allow(clippy::unwrap_used)]

mod common;

use barman::wal::WalFileName;
use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::reference;
use cluster_tests::ssh::Sshd;
use cluster_tests::util::chown_to_pg_user;
use common::{Env, names_in, run};
use std::collections::BTreeMap;
use std::process::Command;

const CODECS: [&str; 10] = ["gzip", "bzip2", "pigz", "pygzip", "pybzip2", "xz", "zstd", "lz4", "snappy", "custom"];

fn server_config(pg: &PgCluster, compression: &str) -> String {
    let mut s = format!(
        "[pg]\ndescription = archive over ssh\nconninfo = {}\nbackup_method = postgres\narchiver = on\n",
        pg.conninfo()
    );
    match compression {
        "" => {}
        // A filter whose output has no magic bytes: identified as custom.
        "custom" => s.push_str(
            "compression = custom\ncustom_compression_filter = base64\ncustom_decompression_filter = base64 -d\n",
        ),
        c => s.push_str(&format!("compression = {c}\n")),
    }
    s
}

#[test]
fn every_archived_segment_comes_back_identical_with_every_codec() {
    let env = Env::new();
    let reference_copies = env.path().join("reference");
    std::fs::create_dir_all(&reference_copies).unwrap();
    chown_to_pg_user(&reference_copies).unwrap();
    let pg = PgCluster::start(
        env.path(),
        PgOptions { conf: vec![("archive_mode".into(), "on".into())], ..Default::default() },
    )
    .unwrap();
    let sshd = Sshd::start(env.path(), std::slice::from_ref(&env.bin), &[]).unwrap();
    env.write_config(&server_config(&pg, ""));
    env.barman(&["check", "pg"]); // creates the directories
    let archive_command = |client_flags: &str| {
        format!(
            "cp %p {}/%f && PATH={}:$PATH {}/barman-wal-archive {client_flags} -c {} -U {} 127.0.0.1 pg %p",
            reference_copies.display(),
            sshd.wrapper_dir().display(),
            env.bin.display(),
            env.config.display(),
            sshd.login_user()
        )
    };
    pg.set_conf("archive_command", &conf_quote(&archive_command(""))).unwrap();
    pg.pgbench_init(1).unwrap();

    // Which codec each segment was archived with.
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut round = |codec: &str, client: &str, pg: &PgCluster| {
        env.write_config(&server_config(pg, codec));
        if !client.is_empty() {
            pg.set_conf("archive_command", &conf_quote(&archive_command(client))).unwrap();
        }
        pg.pgbench(&["-n", "-t", "200", "-c", "2"]).unwrap();
        let out = env.barman(&["switch-wal", "--force", "--archive", "--archive-timeout", "60", "pg"]);
        assert_eq!(out.code, 0, "{codec}: {}\n{}\n{}", out.stdout, out.stderr, pg.log());
        env.barman(&["archive-wal", "pg"]).ok();
        let label = if client.is_empty() { codec.to_string() } else { client.trim_start_matches('-').to_string() };
        for n in names_in(&reference_copies) {
            expected.entry(n).or_insert_with(|| label.clone());
        }
    };
    for codec in CODECS {
        round(codec, "", &pg);
    }
    // Client-side compression: kept as sent, whatever the server's setting.
    round("", "--zstd", &pg);
    round("", "-z", &pg);

    let db = std::fs::read_to_string(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    let lines: BTreeMap<String, Vec<String>> = db
        .lines()
        .map(|l| {
            let cols: Vec<String> = l.split('\t').map(str::to_string).collect();
            (cols[0].clone(), cols)
        })
        .collect();
    // Everything PostgreSQL archived is what we hold (its statistics are updated
    // once archive_command has returned, a moment after the file is ours).
    let stats_query = "SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver";
    cluster_tests::util::wait_until(std::time::Duration::from_secs(30), "pg_stat_archiver to catch up", || {
        pg.psql(stats_query).ok().and_then(|s| s.split('|').next().and_then(|n| n.parse::<usize>().ok()))
            == Some(expected.len())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", pg.psql(stats_query).unwrap_or_default()));
    let stats = pg.psql(stats_query).unwrap();
    let archived_count: usize = stats.split('|').next().unwrap().parse().unwrap();
    assert_eq!(expected.len(), archived_count, "{stats}");
    let last = stats.split('|').nth(1).unwrap().to_string();
    assert!(expected.contains_key(&last));

    // Custom-compressed files need their filter to be read back.
    env.write_config(&server_config(&pg, "custom"));
    let out_dir = env.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut seen_codecs = std::collections::BTreeSet::new();
    for (name, codec) in &expected {
        let cols = lines.get(name).unwrap_or_else(|| panic!("{name} missing from xlog.db:\n{db}"));
        assert_eq!(cols.len(), 5, "{cols:?}");
        let stored = match codec.as_str() {
            "zstd" => "zstd",
            "z" => "gzip",
            // gzip-format codecs are recorded under the configured name.
            c => c,
        };
        assert_eq!(cols[3], stored, "{name}");
        seen_codecs.insert(cols[3].clone());
        let w: WalFileName = name.parse().unwrap();
        let in_archive = match w.hash_dir() {
            Some(h) => env.server_dir("pg").join("wals").join(h).join(name),
            None => env.server_dir("pg").join("wals").join(name),
        };
        assert_eq!(cols[1], std::fs::metadata(&in_archive).unwrap().len().to_string());
        let original = std::fs::read(reference_copies.join(name)).unwrap();
        let got = Command::new(env.bin.join("barman"))
            .args(["-c", env.config.to_str().unwrap(), "-q", "get-wal", "pg", name])
            .output()
            .unwrap();
        assert!(got.status.success(), "{name}: {}", String::from_utf8_lossy(&got.stderr));
        assert!(got.stdout == original, "{name} ({codec}) differs through get-wal to stdout");
        env.barman(&["get-wal", "-o", out_dir.to_str().unwrap(), "pg", name]).ok();
        assert!(std::fs::read(out_dir.join(name)).unwrap() == original, "{name} differs through get-wal -o");
    }
    assert!(seen_codecs.len() >= CODECS.len(), "{seen_codecs:?}");

    // Real Barman reads the archive we wrote, byte for byte.
    let barman = reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    for (name, codec) in &expected {
        let mut c = Command::new(&barman);
        c.args(["-c", env.config.to_str().unwrap(), "-q", "get-wal", "pg", name]);
        let got = c.output().unwrap();
        assert!(got.status.success(), "Barman get-wal {name} ({codec}): {}", String::from_utf8_lossy(&got.stderr));
        assert!(
            got.stdout == std::fs::read(reference_copies.join(name)).unwrap(),
            "Barman reads {name} ({codec}) differently"
        );
    }
    let check = run(Command::new(&barman).args(["-c", env.config.to_str().unwrap(), "check-wal-archive", "pg"]), None);
    assert_ne!(check.code, 0, "Barman sees our catalogue as non-empty: {}", check.stdout);
    assert!(
        format!("{}{}", check.stdout, check.stderr)
            .contains("WAL archive check failed for server pg: Expected empty archive"),
        "Barman did not read our catalogue as a non-empty archive: {}{}",
        check.stdout,
        check.stderr
    );
}
