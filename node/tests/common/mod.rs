//! What the integration tests share: our binaries installed where PostgreSQL's
//! OS user can run them, a Barman home and configuration, and running commands.
#![allow(dead_code)]

use cluster_tests::util::{TestDir, current_os_user, install_binaries};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pgbench accounts and history tables and a `marker (i int)` table, as one comparable
/// string: what a recovery must give back.
pub const CHECKSUMS: &str = "SELECT string_agg(x, ' ' ORDER BY x) FROM ( \
    SELECT 'a:' || md5(string_agg(t::text, ',' ORDER BY aid)) AS x FROM pgbench_accounts t \
    UNION ALL SELECT 'h:' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM pgbench_history t \
    UNION ALL SELECT 'm:' || coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM marker) s";

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

pub struct Env {
    pub dir: TestDir,
    /// Our binaries, runnable by every OS user.
    pub bin: PathBuf,
    pub home: PathBuf,
    pub config: PathBuf,
}

/// The user Barman runs as in tests: whoever runs them (root in CI).
pub fn barman_user() -> String {
    current_os_user().map(|u| u.name).unwrap_or_else(|_| "root".into())
}

impl Env {
    pub fn new() -> Env {
        let dir = TestDir::new().expect("test dir");
        let bin = install_binaries(
            &dir.path().join("install"),
            &[
                ("barman", Path::new(env!("CARGO_BIN_EXE_barman"))),
                ("barman-wal-archive", Path::new(env!("CARGO_BIN_EXE_barman-wal-archive"))),
                ("barman-wal-restore", Path::new(env!("CARGO_BIN_EXE_barman-wal-restore"))),
                ("barman-agent", Path::new(env!("CARGO_BIN_EXE_barman-agent"))),
            ],
        )
        .expect("install binaries");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let config = dir.path().join("barman.conf");
        Env { dir, bin, home, config }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `barman.conf`: `[barman]` with our home and user, then `servers`.
    pub fn write_config(&self, servers: &str) {
        let text = format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}/barman.log\nlog_level = DEBUG\n\n{servers}",
            self.home.display(),
            barman_user(),
            self.dir.path().display()
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn barman_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("barman"));
        c.arg("-c").arg(&self.config).args(args);
        c
    }

    pub fn barman(&self, args: &[&str]) -> Out {
        run(&mut self.barman_cmd(args), None)
    }

    pub fn barman_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        run(&mut self.barman_cmd(args), Some(input))
    }

    pub fn server_dir(&self, server: &str) -> PathBuf {
        self.home.join(server)
    }

    /// A PostgreSQL primary whose `archive_command` copies into server `pg`'s
    /// incoming directory (made for the PostgreSQL OS user); `conf` is added.
    pub fn archiving_primary(&self, conf: &[(&str, &str)]) -> cluster_tests::pg::PgCluster {
        let mut c = vec![("archive_mode".to_string(), "on".to_string())];
        c.extend(conf.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let pg = cluster_tests::pg::PgCluster::start(
            self.path(),
            cluster_tests::pg::PgOptions { conf: c, ..Default::default() },
        )
        .expect("postgres");
        let incoming = self.server_dir("pg").join("incoming");
        std::fs::create_dir_all(&incoming).expect("incoming");
        cluster_tests::util::chown_to_pg_user(&incoming).expect("chown incoming");
        pg.set_conf("archive_command", &cluster_tests::pg::conf_quote(&format!("cp %p {}/%f", incoming.display())))
            .expect("archive_command");
        pg
    }

    /// Closes PostgreSQL's current WAL segment and runs archive-wal until that
    /// segment is in server `pg`'s archive (archive_command delivers it when it can).
    pub fn switch_and_archive(&self, pg: &cluster_tests::pg::PgCluster) {
        let name = pg.switch_wal().expect("pg_switch_wal");
        let path = self.server_dir("pg").join("wals").join(&name[..16]).join(&name);
        cluster_tests::util::wait_until(std::time::Duration::from_secs(60), &format!("{name} in the archive"), || {
            self.barman(&["archive-wal", "pg"]);
            path.exists()
        })
        .expect("the switched segment archived");
    }

    /// Creates tablespace `ts` in `<test dir>/tblspc`; its directory.
    pub fn tablespace(&self, pg: &cluster_tests::pg::PgCluster) -> PathBuf {
        let ts = self.path().join("tblspc");
        std::fs::create_dir_all(&ts).expect("tablespace dir");
        cluster_tests::util::chown_to_pg_user(&ts).expect("chown tablespace dir");
        pg.psql(&format!("CREATE TABLESPACE ts LOCATION {}", cluster_tests::pg::sql_quote(&ts.display().to_string())))
            .expect("CREATE TABLESPACE");
        ts
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("barman.log")).unwrap_or_default()
    }
}

pub fn run(c: &mut Command, input: Option<&[u8]>) -> Out {
    c.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let o = child.wait_with_output().expect("wait");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Every file of a directory tree, relative names sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Sorted names of a directory's entries.
/// PostgreSQL started on the recovered `<dir>/data` (`owned`: tablespace directories to hand
/// to its OS user too), once its recovery has ended.
pub fn start_recovered(dir: &Path, owned: &[&Path]) -> cluster_tests::pg::PgCluster {
    let pg = cluster_tests::pg::PgCluster::adopt(dir, owned, "").expect("starting the recovered cluster");
    cluster_tests::util::wait_until(std::time::Duration::from_secs(60), "end of recovery", || {
        pg.psql("SELECT pg_is_in_recovery()").is_ok_and(|v| v == "f")
    })
    .expect("end of recovery");
    pg
}

/// A file of a recovered destination with the destination's path written DEST, so that two
/// destinations compare; None when missing.
pub fn dest_text(dest: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dest.join(file)).ok().map(|s| s.replace(&dest.display().to_string(), "DEST"))
}

/// recover's output lines, but for its timings and the destination's path.
pub fn recover_output(stdout: &str, dest: &Path) -> Vec<String> {
    stdout
        .replace(&dest.display().to_string(), "DEST")
        .lines()
        .filter(|l| !l.starts_with("Restore operation completed") && !l.starts_with("Processing xlog segments"))
        .map(str::to_string)
        .collect()
}

/// The sorted names in `dir` (none when it is missing).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A PostgreSQL whose archive_command copies segments into `<env>/segments`,
/// after `n` WAL switches with some writes: real segments to play with.
pub fn real_segments(env: &Env, n: usize) -> (cluster_tests::pg::PgCluster, Vec<(String, Vec<u8>)>) {
    use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
    let dir = env.path().join("segments");
    std::fs::create_dir_all(&dir).expect("segments dir");
    cluster_tests::util::chown_to_pg_user(&dir).expect("chown");
    let pg = PgCluster::start(
        env.path(),
        PgOptions {
            conf: vec![
                ("archive_mode".into(), "on".into()),
                ("archive_command".into(), conf_quote(&format!("cp %p {}/%f", dir.display()))),
            ],
            ..Default::default()
        },
    )
    .expect("postgres");
    pg.psql("CREATE TABLE filler (i int, t text)").expect("create");
    for i in 0..n {
        pg.psql(&format!("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, {}) g", 1000 * (i + 1)))
            .expect("insert");
        pg.switch_wal().expect("switch");
    }
    cluster_tests::util::wait_until(std::time::Duration::from_secs(30), "segments to be archived", || {
        names_in(&dir).iter().filter(|n| n.len() == 24).count() >= n
    })
    .expect("archived");
    let segs = names_in(&dir)
        .into_iter()
        .filter(|n| n.len() == 24)
        .take(n)
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).expect("read segment");
            (n, bytes)
        })
        .collect();
    (pg, segs)
}

/// The system identifier of the synthetic segments.
pub const SYS: u64 = 7301234567890123456;

/// A 16 MiB PostgreSQL 15 segment with a valid first page: number `seg` (timeline
/// 1, log 0), claiming `pageaddr_seg` in its header and `sysid`; `fill` adds
/// 2 MiB of varied data after the first page, so it compresses but not to nothing.
pub fn segment(seg: u32, sysid: u64, pageaddr_seg: u32, fill: bool) -> Vec<u8> {
    let mut v = vec![0u8; 16 << 20];
    v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    v[2..4].copy_from_slice(&2u16.to_le_bytes());
    v[4..8].copy_from_slice(&1u32.to_le_bytes());
    v[8..16].copy_from_slice(&(u64::from(pageaddr_seg) * (16 << 20)).to_le_bytes());
    v[24..32].copy_from_slice(&sysid.to_le_bytes());
    v[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
    v[36..40].copy_from_slice(&8192u32.to_le_bytes());
    v[100] = seg as u8;
    if fill {
        for (i, b) in v.iter_mut().enumerate().skip(8192).take(2 << 20) {
            *b = (i as u32).wrapping_mul(2654435761).wrapping_add(seg) as u8;
        }
    }
    v
}

/// The name of synthetic segment `seg`.
pub fn seg_name(seg: u32) -> String {
    format!("0000000100000000{seg:08X}")
}

/// Writes the identity.json of the synthetic cluster for `server`.
pub fn write_identity(env: &Env, server: &str) {
    let dir = env.server_dir(server);
    std::fs::create_dir_all(&dir).expect("server dir");
    let id = barman::catalog::identity::Identity { systemid: barman::wal::SystemId(SYS), version: "15".into() };
    std::fs::write(dir.join("identity.json"), id.to_json_text()).expect("identity.json");
}

/// A put-wal stream (what barman-wal-archive sends) holding `files`.
pub fn put_wal_stream(files: &[(&str, &[u8])]) -> Vec<u8> {
    use barman::archive::wire::{MemberInfo, SumAlgo, TarWriter};
    let mut w = TarWriter::new(Vec::new(), SumAlgo::Sha256);
    for (n, d) in files {
        let info = MemberInfo::anonymous(*n, d.len() as u64, 1.7e9);
        w.append(&info, &mut &d[..]).expect("tar member");
    }
    w.finish().expect("tar end")
}
