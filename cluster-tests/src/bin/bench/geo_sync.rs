//! Backup sync between nodes: our Sync service over gRPC with mutual TLS (server and
//! client in this process, each file checked by SHA-256 and fsynced) against `rsync -a -e
//! ssh` over loopback and `cp -a` of the same tree, in the same run; then ours again
//! through the harness's delaying proxy (50 ms round trip).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use barman::catalog::ServerLayout;
use barman::catalog::backup_info::BackupInfo;
use barman::catalog::backups::meta_path;
use barman::config::Config;
use barman::sync::backups::{sync_backup, wanted};
use barman::sync::rpc::SyncService;
use barman::sync::wals::WalSyncOptions;
use barman::transport::grpc;
use barman::transport::tls::{self, ClientTls};
use barman_proto::v1::sync_client::SyncClient;
use cluster_tests::proxy::Proxy;
use cluster_tests::ssh::Sshd;
use cluster_tests::util::unique_subdir;
use tonic::service::Routes;

use crate::Ctx;
use crate::measure::{Sample, Series, sync_all};
use crate::report::{Table, fmt_ms, fmt_rate, fmt_ratio, verdict};

const BACKUP: &str = "20260101T000000";
/// The same large files alone: the 50 ms goal is about them.
const LARGE_ONLY: &str = "20260102T000000";

/// A Barman home with server `pg`.
struct Home {
    dir: PathBuf,
    cfg: Arc<Config>,
    layout: ServerLayout,
}

impl Home {
    fn create(base: &Path, label: &str) -> Result<Home> {
        let dir = unique_subdir(base, label)?;
        let file = dir.join("barman.conf");
        let text = format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\n\n[pg]\nconninfo = host=127.0.0.1 port=1\n\
             backup_method = postgres\narchiver = on\n",
            dir.join("home").display(),
            cluster_tests::util::current_os_user()?.name,
        );
        fs::write(&file, &text)?;
        let cfg = Config::from_text(&text, &file).map_err(|e| anyhow!("{e}"))?;
        let layout = ServerLayout::new(&cfg.global, &cfg.servers["pg"]);
        Ok(Home { dir, cfg: Arc::new(cfg), layout })
    }

    fn backup_dir(&self, id: &str) -> PathBuf {
        self.layout.base_dir.join(id)
    }
}

/// Incompressible bytes (xorshift), different per file.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The backup: `big` files of `big_mib` MiB and `small` files of 8 KiB, as a data
/// directory holds them; returns the bytes.
fn write_backup(h: &Home, id: &str, big: usize, big_mib: usize, small: usize) -> Result<u64> {
    let base = h.backup_dir(id);
    let mut total = 0u64;
    for i in 0..big {
        let p = base.join(format!("data/base/5/{}", 16384 + i));
        fs::create_dir_all(p.parent().context("parent")?)?;
        let bytes = noise(i as u64 + 1, big_mib << 20);
        total += bytes.len() as u64;
        fs::write(&p, bytes)?;
    }
    for i in 0..small {
        let p = base.join(format!("data/base/1/{}", 20000 + i));
        fs::create_dir_all(p.parent().context("parent")?)?;
        let bytes = noise(1000 + i as u64, 8192);
        total += bytes.len() as u64;
        fs::write(&p, bytes)?;
    }
    let info = BackupInfo {
        status: "DONE".into(),
        server_name: Some("pg".into()),
        mode: Some("postgres".into()),
        version: Some(150000),
        begin_wal: Some("000000010000000000000002".parse().map_err(|e| anyhow!("{e:?}"))?),
        end_wal: Some("000000010000000000000002".parse().map_err(|e| anyhow!("{e:?}"))?),
        size: Some(total),
        timeline: Some(1),
        ..Default::default()
    };
    info.save(&meta_path(&h.layout, id)).map_err(|e| anyhow!("{e}"))?;
    Ok(total)
}

/// One copy of backup `id` by our client from `addr`, into a fresh home; the wall time.
fn ours_once(
    rt: &tokio::runtime::Runtime,
    scratch: &Path,
    (addr, id): (SocketAddr, &str),
    tls: &ClientTls,
    jobs: usize,
) -> Result<Duration> {
    let passive = Home::create(scratch, "sync-passive")?;
    let t0 = Instant::now();
    let r = rt.block_on(async {
        let channel = grpc::channel(&addr.to_string(), "a", tls).map_err(|e| anyhow!("{e}"))?;
        let mut client = SyncClient::new(channel)
            .max_decoding_message_size(grpc::MAX_MESSAGE)
            .max_encoding_message_size(grpc::MAX_MESSAGE);
        let want = wanted(&mut client, "a", &passive.layout).await.map_err(|e| anyhow!("{e}"))?;
        let meta = want.iter().find(|m| m.id == id).context("the backup is not listed")?;
        let opts = WalSyncOptions { jobs, bandwidth: None, cursor: None };
        sync_backup(&mut client, "a", &passive.layout, meta, &opts).await.map_err(|e| anyhow!("{e}"))
    })?;
    let wall = t0.elapsed();
    if r.files == 0 {
        bail!("the sync copied nothing");
    }
    fs::remove_dir_all(&passive.dir)?;
    Ok(wall)
}

fn sample(wall: Duration) -> Sample {
    Sample { wall, maxrss_kib: 0, cpu: Duration::ZERO }
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let c = &ctx.counts;
    let work = unique_subdir(&ctx.scratch, "geo-sync")?;
    let primary = Home::create(&work, "sync-primary")?;
    let (big, small) = (c.geo_sync_big_files, 1000);
    progress!("geo sync: writing a {} MiB backup ...", big * 128 + small * 8 / 1024);
    let total = write_backup(&primary, BACKUP, big, 128, small)?;
    let large_total = write_backup(&primary, LARGE_ONLY, big, 128, 0)?;
    sync_all();

    let pki_dir = work.join("tls");
    let ca = tls::new_ca("bench").map_err(|e| anyhow!("{e}"))?;
    let pem = |name: &str| -> Result<tls::TlsFiles> {
        let node = tls::new_node_cert(&ca, name, &["127.0.0.1".into()]).map_err(|e| anyhow!("{e}"))?;
        let (cert, key) = (pki_dir.join(format!("{name}.crt")), pki_dir.join(format!("{name}.key")));
        tls::write_pem_files(&node, &cert, &key).map_err(|e| anyhow!("{e}"))?;
        Ok(tls::TlsFiles { ca: pki_dir.join("ca.crt"), cert, key })
    };
    fs::create_dir_all(&pki_dir)?;
    fs::write(pki_dir.join("ca.crt"), &ca.cert)?;
    let (server_files, client_files) = (pem("a")?, pem("b")?);
    let client_tls = ClientTls::load(&client_files).map_err(|e| anyhow!("{e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server_tls = tls::server_config(&server_files).map_err(|e| anyhow!("{e}"))?;
        let admit: barman::sync::rpc::Admit = Arc::new(|_: &str| true);
        let routes = Routes::new(SyncService::new(primary.cfg.clone(), admit).server());
        tokio::spawn(grpc::serve(listener, server_tls, routes, std::future::pending()));
        anyhow::Ok(addr)
    })?;
    let proxy = Proxy::start("127.0.0.1:0".parse()?, addr)?;
    proxy.set_delay(Duration::from_millis(25));
    // The same latency with 64 MiB in flight per direction, as TCP buffers tuned for it.
    let wide = Proxy::start_with_queue("127.0.0.1:0".parse()?, addr, 64 << 20)?;
    wide.set_delay(Duration::from_millis(25));
    let sshd = Sshd::start(&work, &[], &[])?;
    let ssh = format!("ssh -F {}", sshd.ssh_config().display());

    let src = primary.backup_dir(BACKUP);
    let dst = work.join("copy");
    let r = &ctx.runner;
    let fresh = || -> Result<()> {
        if dst.exists() {
            fs::remove_dir_all(&dst)?;
        }
        sync_all();
        Ok(())
    };
    let jobs = 4;
    let mut series: Vec<(String, Series)> = [
        "`cp -a`",
        "`cp -a` + `sync`",
        "`rsync -a -e ssh` over loopback",
        "`rsync -a -e ssh` over loopback + `sync`",
        "ours: gRPC, mutual TLS, SHA-256 checked, fsynced (4 streams)",
        "ours through the proxy, 50 ms round trip (4 streams)",
        "ours through the proxy, 50 ms round trip (1 stream)",
        "ours, the 128 MiB files alone (4 streams)",
        "ours through the proxy, the 128 MiB files alone (4 streams)",
        "ours through the proxy without its delay, the 128 MiB files alone (4 streams)",
        "ours through the proxy, 50 ms, 64 MiB TCP-like buffers, the 128 MiB files alone (4 streams)",
    ]
    .iter()
    .map(|l| (l.to_string(), Series::default()))
    .collect();
    for rep in 0..c.geo_sync_reps {
        progress!("geo sync: run {} of {} ...", rep + 1, c.geo_sync_reps);
        for with_sync in [false, true] {
            fresh()?;
            let t0 = Instant::now();
            r.timed_quiet(Command::new("cp").arg("-a").arg(&src).arg(&dst), "cp -a")?;
            if with_sync {
                sync_all();
            }
            series[usize::from(with_sync)].1.push(sample(t0.elapsed()));
        }
        for with_sync in [false, true] {
            fresh()?;
            let t0 = Instant::now();
            let mut rsync = Command::new("rsync");
            rsync
                .args(["-a", "-e", &ssh])
                .arg(format!("127.0.0.1:{}/", src.display()))
                .arg(format!("{}/", dst.display()));
            r.timed_quiet(&mut rsync, "rsync -a -e ssh")?;
            if with_sync {
                sync_all();
            }
            series[2 + usize::from(with_sync)].1.push(sample(t0.elapsed()));
        }
        fresh()?;
        series[4].1.push(sample(ours_once(&rt, &work, (addr, BACKUP), &client_tls, jobs)?));
        fresh()?;
        series[5].1.push(sample(ours_once(&rt, &work, (proxy.addr(), BACKUP), &client_tls, jobs)?));
        fresh()?;
        series[6].1.push(sample(ours_once(&rt, &work, (proxy.addr(), BACKUP), &client_tls, 1)?));
        fresh()?;
        series[7].1.push(sample(ours_once(&rt, &work, (addr, LARGE_ONLY), &client_tls, jobs)?));
        fresh()?;
        series[8].1.push(sample(ours_once(&rt, &work, (proxy.addr(), LARGE_ONLY), &client_tls, jobs)?));
        // The relay's own cost (user-space copies on the same two cores), without the latency.
        proxy.set_delay(Duration::ZERO);
        fresh()?;
        series[9].1.push(sample(ours_once(&rt, &work, (proxy.addr(), LARGE_ONLY), &client_tls, jobs)?));
        proxy.set_delay(Duration::from_millis(25));
        fresh()?;
        series[10].1.push(sample(ours_once(&rt, &work, (wide.addr(), LARGE_ONLY), &client_tls, jobs)?));
    }
    fresh()?;
    let mib = total as f64 / f64::from(1 << 20);
    let mut t = Table::new(
        &format!(
            "Backup sync between nodes: {mib:.0} MiB ({big} files of 128 MiB, {small} of 8 KiB, incompressible), warm cache (median of {} runs)",
            c.geo_sync_reps
        ),
        &["copy", "median ms", "MiB/s", "× `cp -a` MiB/s", "× rsync MiB/s"],
    );
    let rate = |s: &Series| mib / (s.median_ms() / 1000.0);
    let large_mib = large_total as f64 / f64::from(1 << 20);
    let large_rate = |s: &Series| large_mib / (s.median_ms() / 1000.0);
    let (cp_rate, rsync_rate) = (rate(&series[0].1), rate(&series[2].1));
    for (i, (label, s)) in series.iter().enumerate() {
        // The last two copy the large files alone: their own rate, no ratio to the tree's.
        let (r, ratios) = if i >= 7 { (large_rate(s), false) } else { (rate(s), true) };
        t.row(vec![
            label.clone(),
            fmt_ms(s.median_ms()),
            fmt_rate(r),
            if ratios { fmt_ratio(r / cp_rate) } else { "–".into() },
            if ratios { fmt_ratio(r / rsync_rate) } else { "–".into() },
        ]);
    }
    let ours = rate(&series[4].1);
    let far = rate(&series[5].1);
    let (near_large, far_large, relay_large, wide_large) =
        (large_rate(&series[7].1), large_rate(&series[8].1), large_rate(&series[9].1), large_rate(&series[10].1));
    t.note(format!("Goal ≥ rsync: {} → {}.", fmt_ratio(ours / rsync_rate), verdict(ours >= rsync_rate)));
    t.note(format!("Goal ≥ 0.7× `cp -a`: {} → {}.", fmt_ratio(ours / cp_rate), verdict(ours >= 0.7 * cp_rate)));
    t.note(format!(
        "Goal through 50 ms ≥ 80% of the no-latency figure, large files ({large_mib:.0} MiB of 128 MiB \
         files), with 64 MiB in flight per direction: {} of loopback → {}. With the relay's default \
         4 MiB (as Linux's default TCP buffers; one TCP connection per peer): {} of loopback, {} of \
         the same relay without its delay. The whole tree (1000 small files too, 4 MiB): {} of loopback.",
        fmt_ratio(wide_large / near_large),
        verdict(wide_large >= 0.8 * near_large),
        fmt_ratio(far_large / near_large),
        fmt_ratio(far_large / relay_large),
        fmt_ratio(far / ours),
    ));
    t.note(
        "The proxy is the harness's user-space relay (cluster-tests/src/proxy.rs): it delays every \
         byte 25 ms each way and holds at most its queue per direction (4 MiB by default), which \
         bounds what is in flight on the connection as TCP's buffers would.",
    );
    drop(proxy);
    drop(wide);
    drop(rt);
    let _ = fs::remove_dir_all(&work);
    Ok(vec![t])
}
