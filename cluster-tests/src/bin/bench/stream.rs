//! WAL streaming: our `barman receive-wal` against PostgreSQL's `pg_receivewal`, on the same
//! server in the same run. (a) Catch-up: a backlog of real WAL held by one reserved slot per
//! run, streamed until its last segment stands complete under its final name: WAL bytes per
//! second, CPU seconds and peak RSS of the receiver. (b) Synchronous standby: pgbench TPS and
//! latency while each receiver is the synchronous standby (and with none, the ceiling).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::util::{current_os_user, pg_bin, unique_subdir, wait_until};

use crate::Ctx;
use crate::fixture::{SEGMENT_SIZE, current_segno};
use crate::measure::{median, sync_all};
use crate::report::{Table, fmt_rate, fmt_ratio, verdict};

/// The application name both receivers use, and `synchronous_standby_names`.
const SYNC_NAME: &str = "bench_sync";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receiver {
    Ours,
    PgReceivewal,
}

impl Receiver {
    fn label(self) -> &'static str {
        match self {
            Receiver::Ours => "ours: `barman receive-wal`",
            Receiver::PgReceivewal => "reference: `pg_receivewal`",
        }
    }
}

/// A receiver process and the directory its completed segments land in.
struct Running {
    child: Child,
    /// Everything of this run (configuration, home, logs): removed when it stops.
    base: PathBuf,
    dir: PathBuf,
    stderr: PathBuf,
}

/// CPU seconds (user + system) and peak RSS (MiB) of a live process, from /proc.
fn usage(pid: u32) -> Result<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("parsing /proc/PID/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Ok((ticks as f64 / hz, hwm_kib / 1024.0))
}

impl Running {
    fn start(ctx: &Ctx, pg: &PgCluster, which: Receiver, slot: Option<&str>, synchronous: bool) -> Result<Running> {
        let base = unique_subdir(&ctx.scratch, "stream")?;
        let stderr = base.join("stderr");
        let conninfo = format!("host=127.0.0.1 port={} user=postgres", pg.port());
        let (mut cmd, dir) = match which {
            Receiver::Ours => {
                let home = base.join("home");
                fs::create_dir_all(&home).context("creating the Barman home")?;
                let config = base.join("barman.conf");
                let mut text = format!(
                    "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}\n\n\
                     [pg]\nconninfo = {conninfo} dbname=postgres\nstreaming_conninfo = {conninfo}\n\
                     backup_method = postgres\narchiver = on\nstreaming_archiver = on\nstreaming_archiver_name = {SYNC_NAME}\n",
                    home.display(),
                    current_os_user()?.name,
                    base.join("barman.log").display(),
                );
                if let Some(s) = slot {
                    text.push_str(&format!("slot_name = {s}\n"));
                }
                fs::write(&config, text).context("writing barman.conf")?;
                let mut c = Command::new(&ctx.ours.barman);
                c.arg("-c").arg(&config).args(["receive-wal", "pg"]);
                (c, home.join("pg").join("streaming"))
            }
            Receiver::PgReceivewal => {
                let dir = base.join("wal");
                fs::create_dir_all(&dir).context("creating the pg_receivewal directory")?;
                let mut c = Command::new(pg_bin("pg_receivewal"));
                c.arg("-d").arg(format!("{conninfo} application_name={SYNC_NAME}")).args(["-n", "-D"]).arg(&dir);
                if let Some(s) = slot {
                    c.args(["-S", s]);
                }
                if synchronous {
                    c.arg("--synchronous");
                }
                (c, dir)
            }
        };
        let err = fs::File::create(&stderr).context("creating the receiver's stderr file")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", which.label()))?;
        Ok(Running { child, base, dir, stderr })
    }

    /// Fails with the receiver's stderr if it has exited.
    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling the receiver")? {
            let text = fs::read_to_string(&self.stderr).unwrap_or_default();
            bail!("the receiver exited early ({status}):\n{}", cluster_tests::util::tail(&text, 20));
        }
        Ok(())
    }

    /// Waits (polling every 2 ms) until `segment` stands complete under its final name.
    fn wait_complete(&mut self, segment: &str, timeout: Duration) -> Result<()> {
        let path = self.dir.join(segment);
        let until = Instant::now() + timeout;
        let mut polls = 0u32;
        while !path.exists() {
            if Instant::now() > until {
                bail!("{} did not appear within {} s", path.display(), timeout.as_secs());
            }
            polls += 1;
            if polls.is_multiple_of(256) {
                self.alive()?;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn usage(&self) -> Result<(f64, f64)> {
        usage(self.child.id())
    }

    /// SIGINT (both receivers stop cleanly on it), then the directory is removed.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill with a valid pid of our own child and a valid signal number.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let until = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().context("waiting for the receiver")?.is_none() {
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(&self.base);
        Ok(())
    }
}

fn parse_lsn(s: &str) -> Result<u64> {
    Ok(s.trim().parse::<barman::wal::Lsn>()?.0)
}

#[derive(Default)]
struct CatchUp {
    secs: Vec<f64>,
    cpu: Vec<f64>,
    rss: Vec<f64>,
}

/// Who is the synchronous standby in one run of the synchronous part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncCase {
    /// Nobody: local commits only, the ceiling.
    None,
    /// Ours, started with `synchronous_standby_names` already naming it.
    Ours,
    /// pg_receivewal --synchronous.
    Reference,
    /// Ours, started before the setting was made (it follows the setting while streaming).
    OursSetAfterStart,
}

impl SyncCase {
    const ALL: [SyncCase; 4] = [SyncCase::None, SyncCase::Ours, SyncCase::Reference, SyncCase::OursSetAfterStart];

    fn receiver(self) -> Option<Receiver> {
        match self {
            SyncCase::None => None,
            SyncCase::Ours | SyncCase::OursSetAfterStart => Some(Receiver::Ours),
            SyncCase::Reference => Some(Receiver::PgReceivewal),
        }
    }

    fn label(self) -> &'static str {
        match self {
            SyncCase::None => "none (local commit only: the ceiling)",
            SyncCase::Ours => Receiver::Ours.label(),
            SyncCase::Reference => "reference: `pg_receivewal --synchronous`",
            SyncCase::OursSetAfterStart => "ours, the name set after it started streaming",
        }
    }
}

#[derive(Default)]
struct SyncRun {
    tps: Vec<f64>,
    latency_ms: Vec<f64>,
    /// Receiver CPU seconds per GiB of WAL written during the run.
    cpu_per_gib: Vec<f64>,
    wal_mib_s: Vec<f64>,
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let c = &ctx.counts;
    let mut pg = PgCluster::start(
        &ctx.scratch,
        PgOptions {
            conf: vec![
                ("max_wal_senders".into(), "10".into()),
                ("max_replication_slots".into(), "20".into()),
                ("max_wal_size".into(), "'4GB'".into()),
                ("checkpoint_timeout".into(), "'30min'".into()),
                // Only to write the backlog sooner; the synchronous runs turn it on.
                ("synchronous_commit".into(), "off".into()),
            ],
            ..Default::default()
        },
    )?;
    let result = measure(ctx, &pg, c.stream_segments, c.stream_reps, c.sync_seconds, c.sync_reps);
    let _ = pg.stop();
    result
}

fn measure(
    ctx: &Ctx,
    pg: &PgCluster,
    segments: usize,
    reps: usize,
    sync_seconds: u64,
    sync_reps: usize,
) -> Result<Vec<Table>> {
    // One reserved slot per run, all created before the backlog: every run streams the same WAL.
    let slot = |r: Receiver, rep: usize| format!("{}_{rep}", if r == Receiver::Ours { "ours" } else { "ref" });
    // The first pass over a fresh backlog was up to twice as slow as the next ones, whoever made
    // it: an untimed warm-up pass (pg_receivewal) goes first.
    pg.psql("SELECT pg_create_physical_replication_slot('warm_up', true)")?;
    for rep in 0..reps {
        for r in [Receiver::Ours, Receiver::PgReceivewal] {
            pg.psql(&format!("SELECT pg_create_physical_replication_slot('{}', true)", slot(r, rep)))?;
        }
    }
    let start = parse_lsn(&pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'ours_0'")?)?;
    let start = start - start % SEGMENT_SIZE as u64;
    // `pgbench -i` writes about 8 segments per 10 of scale (COPY data, quick to write); transactions
    // add WAL of another kind, far more slowly, until the count is reached.
    let scale = (segments * 10).div_ceil(8).max(10) as u32;
    progress!("stream: writing a backlog of {segments} segments (pgbench -i -s {scale}, then transactions) ...");
    let first = current_segno(pg)?;
    pg.pgbench_init(scale)?;
    let mut rounds = 0;
    while rounds < 2 || current_segno(pg)? - first < segments as u64 {
        rounds += 1;
        if rounds > 100 {
            bail!("pgbench wrote fewer than {segments} segments after 100 rounds");
        }
        pg.pgbench(&["-n", "-c", "2", "-j", "2", "-t", "5000"])?;
    }
    let last = pg.switch_wal()?;
    let end = parse_lsn(&pg.current_lsn()?)?;
    let end = end - end % SEGMENT_SIZE as u64;
    let bytes = end - start;
    progress!("stream: backlog {} MiB, last segment {last}", bytes >> 20);

    progress!("stream: untimed warm-up pass ...");
    let mut rx = Running::start(ctx, pg, Receiver::PgReceivewal, Some("warm_up"), false)?;
    rx.wait_complete(&last, Duration::from_secs(600))?;
    rx.stop()?;
    pg.psql("SELECT pg_drop_replication_slot('warm_up')")?;
    let mut catch = [CatchUp::default(), CatchUp::default()];
    for rep in 0..reps {
        // Alternate who goes first: the second reads WAL the first already pulled into the cache.
        let order = if rep % 2 == 0 {
            [Receiver::Ours, Receiver::PgReceivewal]
        } else {
            [Receiver::PgReceivewal, Receiver::Ours]
        };
        for r in order {
            progress!("stream: catch-up, {} (run {}) ...", r.label(), rep + 1);
            sync_all();
            let t0 = Instant::now();
            let mut rx = Running::start(ctx, pg, r, Some(&slot(r, rep)), false)?;
            rx.wait_complete(&last, Duration::from_secs(600))?;
            let secs = t0.elapsed().as_secs_f64();
            let (cpu, rss) = rx.usage()?;
            rx.stop()?;
            let i = r as usize;
            catch[i].secs.push(secs);
            catch[i].cpu.push(cpu);
            catch[i].rss.push(rss);
            pg.psql(&format!("SELECT pg_drop_replication_slot('{}')", slot(r, rep)))?;
        }
    }

    // Synchronous standby: commits wait for the receiver's flush.
    pg.set_conf("synchronous_commit", "on")?;
    let mut sync: [SyncRun; 4] = Default::default();
    for rep in 0..sync_reps {
        let mut order = SyncCase::ALL;
        if rep % 2 == 1 {
            order.reverse();
        }
        for case in order {
            let before_start = matches!(case, SyncCase::Ours | SyncCase::Reference);
            pg.set_conf("synchronous_standby_names", &if before_start { conf_quote(SYNC_NAME) } else { "''".into() })?;
            let rx = match case.receiver() {
                Some(r) => {
                    let mut rx = Running::start(ctx, pg, r, None, true)?;
                    if case == SyncCase::OursSetAfterStart {
                        wait_until(Duration::from_secs(30), "the receiver to stream", || {
                            rx.alive().is_err()
                                || pg
                                    .psql(&format!(
                                        "SELECT state FROM pg_stat_replication WHERE application_name = '{SYNC_NAME}'"
                                    ))
                                    .is_ok_and(|v| v == "streaming")
                        })?;
                        pg.set_conf("synchronous_standby_names", &conf_quote(SYNC_NAME))?;
                    }
                    let mut exited = None;
                    let waited =
                        wait_until(Duration::from_secs(30), "the receiver to be the synchronous standby", || {
                            if let Err(e) = rx.alive() {
                                exited = Some(e);
                                return true;
                            }
                            pg.psql(&format!(
                                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{SYNC_NAME}' \
                             AND state = 'streaming'"
                            ))
                            .is_ok_and(|v| v == "sync")
                        });
                    if let Some(e) = exited {
                        return Err(e);
                    }
                    waited?;
                    Some(rx)
                }
                None => None,
            };
            progress!(
                "stream: pgbench -c 4 -T {sync_seconds}, synchronous standby {} (run {}) ...",
                case.label(),
                rep + 1
            );
            sync_all();
            let cpu0 = rx.as_ref().map(|x| x.usage()).transpose()?.map_or(0.0, |u| u.0);
            let lsn0 = parse_lsn(&pg.current_lsn()?)?;
            let t0 = Instant::now();
            let out = pg.pgbench(&["-n", "-c", "4", "-j", "2", "-T", &sync_seconds.to_string()])?;
            let secs = t0.elapsed().as_secs_f64();
            let wal = parse_lsn(&pg.current_lsn()?)? - lsn0;
            let cpu1 = rx.as_ref().map(|x| x.usage()).transpose()?.map_or(0.0, |u| u.0);
            if let Some(rx) = rx {
                rx.stop()?;
            }
            let field = |prefix: &str| -> Result<f64> {
                out.lines()
                    .find(|l| l.starts_with(prefix))
                    .and_then(|l| l.split('=').nth(1)?.split_whitespace().next()?.parse().ok())
                    .with_context(|| format!("no {prefix:?} in pgbench output:\n{out}"))
            };
            let i = case as usize;
            sync[i].tps.push(field("tps")?);
            sync[i].latency_ms.push(field("latency average")?);
            sync[i].wal_mib_s.push(wal as f64 / (1 << 20) as f64 / secs);
            if case != SyncCase::None {
                sync[i].cpu_per_gib.push((cpu1 - cpu0) / (wal as f64 / (1u64 << 30) as f64));
            }
        }
    }
    pg.set_conf("synchronous_standby_names", "''")?;
    Ok(vec![catch_up_table(&catch, bytes, reps), sync_table(&sync, sync_seconds, sync_reps)])
}

fn catch_up_table(catch: &[CatchUp; 2], bytes: u64, reps: usize) -> Table {
    let mib = bytes as f64 / (1 << 20) as f64;
    let mut t = Table::new(
        &format!("WAL streaming catch-up: {mib:.0} MiB of backlog from a reserved slot (median of {reps} runs)"),
        &[
            "receiver",
            "seconds (min–max)",
            "MiB/s",
            "× pg_receivewal",
            "CPU s (user+sys, min–max)",
            "CPU s per GiB",
            "peak RSS (MiB)",
        ],
    );
    let rate = |c: &CatchUp| mib / median(c.secs.clone());
    let reference = rate(&catch[1]);
    for r in [Receiver::PgReceivewal, Receiver::Ours] {
        let c = &catch[r as usize];
        let cpu = median(c.cpu.clone());
        t.row(vec![
            r.label().into(),
            format!(
                "{:.2} ({:.2}–{:.2})",
                median(c.secs.clone()),
                c.secs.iter().copied().fold(f64::INFINITY, f64::min),
                c.secs.iter().copied().fold(0.0, f64::max)
            ),
            fmt_rate(rate(c)),
            fmt_ratio(rate(c) / reference),
            format!(
                "{cpu:.2} ({:.2}–{:.2})",
                c.cpu.iter().copied().fold(f64::INFINITY, f64::min),
                c.cpu.iter().copied().fold(0.0, f64::max)
            ),
            format!("{:.2}", cpu / (mib / 1024.0)),
            format!("{:.1}", c.rss.iter().copied().fold(0.0, f64::max)),
        ]);
    }
    t.note(
        "Timed from spawning the receiver (its connection and, for ours, its configuration and preflight queries \
         included) until the backlog's last segment stands complete under its final name (fsynced, renamed). \
         Each run has its own slot reserved before the backlog was written, and an empty directory; the two \
         receivers alternate in going first, after one untimed pass. CPU and peak RSS are the receiver \
         process's own (/proc/PID/stat and VmHWM), read when the last segment appeared.",
    );
    let (ours, theirs) = (&catch[0], &catch[1]);
    t.note(format!(
        "Goal: throughput ≥ pg_receivewal — {} → {}; CPU ≤ pg_receivewal — {:.2} s against {:.2} s → {}.",
        fmt_ratio(rate(ours) / reference),
        verdict(rate(ours) >= reference),
        median(ours.cpu.clone()),
        median(theirs.cpu.clone()),
        verdict(median(ours.cpu.clone()) <= median(theirs.cpu.clone())),
    ));
    t
}

fn sync_table(sync: &[SyncRun; 4], seconds: u64, reps: usize) -> Table {
    let mut t = Table::new(
        &format!(
            "Synchronous standby: pgbench -c 4 -j 2 -T {seconds} (TPC-B-like), synchronous_commit = on \
             (median of {reps} runs)"
        ),
        &[
            "synchronous standby",
            "TPS",
            "× pg_receivewal",
            "latency avg (ms)",
            "WAL MiB/s",
            "receiver CPU s per GiB of WAL",
        ],
    );
    let reference = median(sync[SyncCase::Reference as usize].tps.clone());
    for case in [SyncCase::None, SyncCase::Reference, SyncCase::Ours, SyncCase::OursSetAfterStart] {
        let (i, s) = (case as usize, &sync[case as usize]);
        t.row(vec![
            case.label().into(),
            format!("{:.0}", median(s.tps.clone())),
            fmt_ratio(median(s.tps.clone()) / reference),
            format!("{:.3}", median(s.latency_ms.clone())),
            fmt_rate(median(s.wal_mib_s.clone())),
            if i == 0 { "—".into() } else { format!("{:.1}", median(s.cpu_per_gib.clone())) },
        ]);
    }
    t.note(
        "`synchronous_standby_names` names the receiver's application name; a commit returns once the receiver \
         has reported the commit record flushed (fsynced on its side). Ours is started with the name already \
         in place, so it runs in synchronous mode (every received burst written, fsynced once and reported at \
         once); pg_receivewal runs with --synchronous. No slot: both start at the server's current position. \
         The last row starts ours with no name set, then sets it once it streams: ours follows the setting \
         (re-read every 0.5 s) and switches to synchronous reporting. The four cases run in turn, the order \
         reversed every other run.",
    );
    let ours = median(sync[SyncCase::Ours as usize].tps.clone());
    let after = median(sync[SyncCase::OursSetAfterStart as usize].tps.clone());
    t.note(format!(
        "Goal: TPS ≥ pg_receivewal's — {} → {}; set after the start ≥ 80% of set before — {} → {}.",
        fmt_ratio(ours / reference),
        verdict(ours >= reference),
        fmt_ratio(after / ours),
        verdict(after >= 0.8 * ours)
    ));
    t
}
