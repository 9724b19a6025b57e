//! `backup_method = rsync` through our SSH client into a real sshd, and `local-rsync`:
//! backups of a pgbench database with a tablespace recover to the source's checksums; a
//! second backup with nothing changed sends and stores next to nothing (hard links, by
//! inode); after pgbench work only changed blocks cross the wire; a standby is backed up
//! while its primary takes writes; `bandwidth_limit` holds; bad SSH settings fail the
//! backup with one clear line.
#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{is_root, pg_os_user};
use common::{CHECKSUMS, Env, start_recovered};
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn info(env: &Env, id: &str) -> String {
    fs::read_to_string(env.server_dir("pg").join("meta").join(format!("{id}-backup.info"))).unwrap()
}

fn field<'a>(info: &'a str, key: &str) -> &'a str {
    info.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key} in\n{info}"))
}

/// A number of the copy_stats dict.
fn stat(info: &str, key: &str) -> f64 {
    let stats = field(info, "copy_stats");
    let at = stats.find(&format!("'{key}': ")).unwrap_or_else(|| panic!("no {key} in {stats}")) + key.len() + 4;
    stats[at..].split([',', '}']).next().unwrap().trim().parse().unwrap()
}

fn last_id(env: &Env) -> String {
    env.barman(&["list-backups", "--minimal", "pg"]).stdout.lines().next().unwrap().to_string()
}

/// The account the backups log in as: PostgreSQL's OS user when root, else ours.
fn account(sshd: &Sshd) -> String {
    if is_root() { pg_os_user().unwrap().name } else { sshd.login_user() }
}

/// Recovers `id` into a fresh directory with the tablespace relocated, starts it, and
/// returns its checksums.
fn recover_and_sum(env: &Env, id: &str, tag: &str, tablespace: bool) -> String {
    let dest = env.path().join(format!("rec_{tag}"));
    let ts = env.path().join(format!("rec_{tag}_ts"));
    let data = dest.join("data").display().to_string();
    let mapping = format!("ts:{}", ts.display());
    let mut args = vec!["recover", "pg", id, &data];
    if tablespace {
        args.extend(["--tablespace", &mapping]);
    }
    env.barman(&args).ok();
    let owned: Vec<&Path> = if tablespace { vec![&ts] } else { vec![] };
    let restored = start_recovered(&dest, &owned);
    let sums = restored.psql(CHECKSUMS).unwrap();
    drop(restored);
    sums
}

/// Files of backup `b` sharing an inode with a file of backup `a`.
fn shared_inodes(a: &Path, b: &Path) -> (usize, usize) {
    let inodes = |d: &Path| -> Vec<(u64, u64)> {
        common::files_under(d).iter().map(|p| fs::metadata(p).unwrap()).map(|m| (m.ino(), m.len())).collect()
    };
    let old: HashSet<u64> = inodes(a).into_iter().map(|(i, _)| i).collect();
    let new = inodes(b);
    (new.iter().filter(|(i, _)| old.contains(i)).count(), new.len())
}

fn primary_with_pgbench(env: &Env, scale: &str, tablespace: bool) -> PgCluster {
    let pg = env.archiving_primary(&[]);
    if tablespace {
        env.tablespace(&pg);
        pg.pgbench(&["-i", "-s", scale, "-q", "--index-tablespace=ts"]).unwrap();
    } else {
        pg.pgbench(&["-i", "-s", scale, "-q"]).unwrap();
    }
    pg.psql("CREATE TABLE marker (i int)").unwrap();
    pg
}

#[test]
fn rsync_backups_over_ssh_reuse_unchanged_files_and_send_only_changed_blocks() {
    let env = Env::new();
    let pg = primary_with_pgbench(&env, "10", true);
    let sshd = Sshd::start_with(env.path(), std::slice::from_ref(&env.bin), &[], is_root()).unwrap();
    let ssh = format!("ssh -F {} {}@127.0.0.1", sshd.ssh_config().display(), account(&sshd));
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = rsync\nssh_command = {ssh}\nreuse_backup = link\nparallel_jobs = 2\n\
         archiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    // 1. A full backup; the source is then final for it.
    let out = env.barman(&["backup", "pg"]);
    out.ok();
    for l in ["Starting backup using rsync-concurrent method", "Starting backup copy via rsync/SSH for ", "(2 jobs)"] {
        assert!(out.stdout.contains(l), "missing {l:?} in\n{}", out.stdout);
    }
    let first = last_id(&env);
    let text = info(&env, &first);
    assert_eq!(field(&text, "mode"), "rsync-concurrent");
    let size = field(&text, "size").parse::<f64>().unwrap();
    assert!(stat(&text, "transferred_bytes") > 0.9 * size, "{text}");
    assert!(!text.contains("blocks"), "block hashes stay out of backup.info");
    assert!(env.server_dir("pg").join("meta").join(format!("{first}-blocks")).is_file());
    let base = env.server_dir("pg").join("base");
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'").unwrap();
    assert!(
        fs::read_dir(base.join(&first).join(&oid))
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with("PG_15_") })
    );
    let want1 = pg.psql(CHECKSUMS).unwrap();

    // 2. Nothing changed: next to nothing sent or stored.
    env.barman(&["backup", "pg"]).ok();
    let second = last_id(&env);
    let text = info(&env, &second);
    let (sent, size2) = (stat(&text, "transferred_bytes"), field(&text, "size").parse::<f64>().unwrap());
    assert!(sent <= 0.01 * size2, "nothing changed but {sent} of {size2} bytes sent");
    let dedup = field(&text, "deduplicated_size").parse::<f64>().unwrap();
    assert!(dedup <= 0.01 * size2, "nothing changed but {dedup} of {size2} bytes stored anew");
    let (shared, all) = shared_inodes(&base.join(&first), &base.join(&second));
    assert!(shared * 100 >= all * 95, "only {shared} of {all} files hard-linked");

    // 3. After pgbench work (400 transactions on scale 10: the density of 4,000 on 100),
    // the changed blocks only.
    pg.pgbench(&["-n", "-t", "400"]).unwrap();
    pg.psql("INSERT INTO marker VALUES (3)").unwrap();
    env.barman(&["backup", "pg", "--jobs", "1"]).ok();
    let third = last_id(&env);
    let text = info(&env, &third);
    let (sent, size3) = (stat(&text, "transferred_bytes"), field(&text, "size").parse::<f64>().unwrap());
    assert!(sent <= 0.10 * size3, "after 400 transactions {sent} of {size3} bytes sent");
    assert!(stat(&text, "copied_bytes") > 0.0, "changed files are built from the previous copy's blocks");
    eprintln!("backup 3: {sent} of {size3} bytes sent, {} copied locally", stat(&text, "copied_bytes"));
    let want3 = pg.psql(CHECKSUMS).unwrap();
    assert_ne!(want1, want3);
    env.switch_and_archive(&pg);
    // Without a target a recovery replays every archived WAL: both reach the source's state.
    assert_eq!(recover_and_sum(&env, &third, "3", true), want3, "the block-delta backup");
    assert_eq!(recover_and_sum(&env, &first, "1", true), want3, "the full backup");

    // 4. bandwidth_limit = 10000 KB/s on a full copy.
    fs::write(
        &env.config,
        fs::read_to_string(&env.config).unwrap().replace("reuse_backup = link\n", "bandwidth_limit = 10000\n"),
    )
    .unwrap();
    env.barman(&["backup", "pg"]).ok();
    let text = info(&env, &last_id(&env));
    let rate = stat(&text, "transferred_bytes") / stat(&text, "copy_time");
    let want = 10000.0 * 1024.0;
    assert!((rate - want).abs() <= 0.15 * want, "{rate:.0} B/s under a limit of {want} B/s");
}

#[test]
fn without_the_agent_on_the_host_files_come_whole_over_sftp() {
    let env = Env::new();
    let pg = primary_with_pgbench(&env, "2", true);
    // Sessions without our binaries in PATH: no barman-agent there.
    let sshd = Sshd::start_with(env.path(), &[], &[], is_root()).unwrap();
    let ssh = format!("ssh -F {} {}@127.0.0.1", sshd.ssh_config().display(), account(&sshd));
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = rsync\nssh_command = {ssh}\nreuse_backup = link\nparallel_jobs = 2\n\
         archiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    // The loaded data on disk before the first backup starts: files written by its own
    // checkpoint would be younger than it, and over SFTP a younger file is sent whole.
    pg.psql("CHECKPOINT").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.barman(&["backup", "pg"]).ok();
    assert!(env.log().contains("barman-agent is not installed"), "the fallback is logged");
    // Nothing changed: unchanged files (by size and mtime, to the second over SFTP) are linked.
    env.barman(&["backup", "pg"]).ok();
    let second = last_id(&env);
    let text = info(&env, &second);
    assert!(stat(&text, "linked_bytes") > 0.9 * field(&text, "size").parse::<f64>().unwrap(), "{text}");
    pg.pgbench(&["-n", "-t", "200"]).unwrap();
    pg.psql("INSERT INTO marker VALUES (5)").unwrap();
    env.barman(&["backup", "pg"]).ok();
    let third = last_id(&env);
    let want = pg.psql(CHECKSUMS).unwrap();
    env.switch_and_archive(&pg);
    assert_eq!(recover_and_sum(&env, &third, "sftp", true), want);
}

#[test]
fn a_standby_backed_up_by_local_rsync_while_its_primary_writes_recovers_exactly() {
    let env = Env::new();
    let pg = primary_with_pgbench(&env, "2", false);
    let standby = pg.make_standby(env.path(), "false", true).unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nprimary_conninfo = {}\nbackup_method = local-rsync\nreuse_backup = copy\n\
         network_compression = true\narchiver = on\nimmediate_checkpoint = true\n",
        standby.conninfo(),
        pg.conninfo()
    ));
    let mut bench = std::process::Command::new(cluster_tests::util::pg_bin("pgbench"))
        .args(["-n", "-T", "600", "-c", "2", "-h", "127.0.0.1", "-U", "postgres", "-p", &pg.port().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = env.barman(&["backup", "pg"]);
    let _ = bench.kill();
    let _ = bench.wait();
    out.ok();
    assert!(out.stdout.contains("Starting backup copy via local rsync"), "{}", out.stdout);
    let id = last_id(&env);
    pg.psql("INSERT INTO marker VALUES (1)").unwrap();
    let want = pg.psql(CHECKSUMS).unwrap();
    env.switch_and_archive(&pg);
    env.barman(&["check-backup", "pg", &id]).ok();
    let shown = env.barman(&["show-backup", "pg", &id]);
    assert!(shown.ok().stdout.contains("Transfer size"), "{}", shown.stdout);
    // The real Barman reads the catalogue entry as its own.
    let barman = cluster_tests::reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    let theirs = std::process::Command::new(&barman)
        .arg("-c")
        .arg(&env.config)
        .args(["show-backup", "pg", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&theirs.stdout);
    assert!(theirs.status.success(), "{text}{}", String::from_utf8_lossy(&theirs.stderr));
    assert!(text.contains("rsync-concurrent") && text.contains("DONE"), "{text}");
    assert_eq!(recover_and_sum(&env, &id, "sb", false), want);
}

#[test]
fn bad_ssh_settings_fail_the_backup_with_one_clear_line() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    let sshd = Sshd::start_with(env.path(), std::slice::from_ref(&env.bin), &[], is_root()).unwrap();
    let user = account(&sshd);
    let cfg = sshd.ssh_config();
    let config_text = fs::read_to_string(&cfg).unwrap();
    // Another key for the host in a known_hosts file of its own.
    let other_known = env.path().join("known_hosts_other");
    let real_known: PathBuf = config_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("UserKnownHostsFile "))
        .map(|p| PathBuf::from(p.trim().trim_matches('"')))
        .unwrap();
    let line = fs::read_to_string(&real_known).unwrap();
    let fake_key = "AAAAC3NzaC1lZDI1NTE5AAAAIMnRrn1QmX0d8jU2zQDQd0jdyk0n8f6Gzv9pd6fJ0V6p";
    let host = line.split_whitespace().next().unwrap();
    fs::write(&other_known, format!("{host} ssh-ed25519 {fake_key}\n")).unwrap();
    // A key sshd does not know, in a config of its own.
    let stranger = env.path().join("stranger_key");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(keygen.success());
    let wrong_cfg = env.path().join("wrong_key_config");
    let identity =
        config_text.lines().find_map(|l| l.trim().strip_prefix("IdentityFile ")).unwrap().trim().trim_matches('"');
    fs::write(&wrong_cfg, config_text.replace(identity, &stranger.display().to_string())).unwrap();
    let unused = cluster_tests::util::free_port().unwrap();
    let cases = [
        (format!("ssh -F {} -p {unused} {user}@127.0.0.1", cfg.display()), "cannot connect"),
        (format!("ssh -F {} {user}@127.0.0.1", wrong_cfg.display()), "accepted none of the keys"),
        (
            format!("ssh -F {} -o UserKnownHostsFile={} {user}@127.0.0.1", cfg.display(), other_known.display()),
            "differs from the one recorded",
        ),
    ];
    for (i, (ssh, why)) in cases.iter().enumerate() {
        env.write_config(&format!(
            "[pg]\nconninfo = {}\nbackup_method = rsync\nssh_command = {ssh}\narchiver = on\nimmediate_checkpoint = true\n",
            pg.conninfo()
        ));
        let out = env.barman(&["backup", "pg"]);
        assert_ne!(out.code, 0, "{ssh}: {}", out.stdout);
        assert!(out.stderr.contains(why), "{ssh}: wanted {why:?} in\n{}", out.stderr);
        let ids = env.barman(&["list-backups", "--minimal", "pg"]).stdout;
        assert_eq!(ids.lines().count(), i + 1, "{ids}");
        assert_eq!(field(&info(&env, ids.lines().next().unwrap()), "status"), "FAILED");
    }
    // A flag our client cannot honour disables the server, naming it.
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = rsync\nssh_command = ssh -J jump {user}@127.0.0.1\narchiver = on\n",
        pg.conninfo()
    ));
    let out = env.barman(&["backup", "pg"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("jump hosts (-J)"), "{}", out.stderr);
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_relation_dropped_during_the_copy_is_skipped_and_a_full_disk_fails_the_backup() {
    let env = Env::new();
    let pg = primary_with_pgbench(&env, "2", false);
    pg.psql("CREATE TABLE doomed AS SELECT g AS i, repeat('x', 200) AS pad FROM generate_series(1, 20000) g").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = local-rsync\nbandwidth_limit = 4000\narchiver = on\n\
         immediate_checkpoint = true\n",
        pg.conninfo()
    ));
    // The table goes while the copy runs (limited to 4 MB/s, the largest files first):
    // DROP TABLE empties its file, the checkpoint unlinks it.
    let backup = env.barman_cmd(&["backup", "pg"]).output_in_background();
    let meta = env.server_dir("pg").join("meta");
    cluster_tests::util::wait_until(std::time::Duration::from_secs(60), "the backup to start copying", || {
        fs::read_dir(&meta).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().ends_with("-backup.info")
                    && fs::read_to_string(e.path()).is_ok_and(|t| t.contains("status=STARTED"))
            })
        })
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    pg.psql("DROP TABLE doomed").unwrap();
    pg.psql("CHECKPOINT").unwrap();
    let out = backup.join().unwrap().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("vanished during the copy"), "{stdout}");
    let id = last_id(&env);
    pg.psql("INSERT INTO marker VALUES (7)").unwrap();
    let want = pg.psql(CHECKSUMS).unwrap();
    env.switch_and_archive(&pg);
    assert_eq!(recover_and_sum(&env, &id, "vanished", false), want);

    // A disk that fills: the backup is FAILED, says why, and leaves the others as they were.
    if !is_root() {
        cluster_tests::util::skip("a full disk needs a small tmpfs, which only root can mount");
        return;
    }
    let base = env.server_dir("pg").join("base");
    let small = env.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let _mounted = Mount(small.clone());
    fs::rename(&base, env.path().join("base_kept")).unwrap();
    std::os::unix::fs::symlink(&small, &base).unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = local-rsync\narchiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    let out = env.barman(&["backup", "pg"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("No space left on device"), "{}", out.stderr);
    let failed = last_id(&env);
    assert_eq!(field(&info(&env, &failed), "status"), "FAILED");
    assert!(!meta.join(format!("{failed}-blocks")).exists() && !meta.join(format!("{failed}-blocks.part")).exists());
    fs::remove_file(&base).unwrap();
    fs::rename(env.path().join("base_kept"), &base).unwrap();
    env.barman(&["check-backup", "pg", &id]).ok();
    assert_eq!(field(&info(&env, &id), "status"), "DONE");
    pg.psql("INSERT INTO marker VALUES (8)").unwrap();
    env.switch_and_archive(&pg);
}

/// A command run on a thread, its output collected when joined.
trait Background {
    fn output_in_background(self) -> std::thread::JoinHandle<std::io::Result<std::process::Output>>;
}

impl Background for std::process::Command {
    fn output_in_background(mut self) -> std::thread::JoinHandle<std::io::Result<std::process::Output>> {
        std::thread::spawn(move || self.output())
    }
}
