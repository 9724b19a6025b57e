//! WAL sync between two Barman homes over our Sync gRPC service, under mutual TLS on
//! 127.0.0.1: a passive converges to byte-identical files and the peer's xlog.db lines,
//! resumes a transfer cut at any byte without asking again for what it holds, fills a gap
//! by set difference, keeps its own file when the peer's differs, and refuses a lying peer
//! (wrong checksum, truncated file, a name outside the archive) without keeping anything.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use barman::catalog::ServerLayout;
use barman::catalog::backup_info::BackupInfo;
use barman::catalog::backups::meta_path;
use barman::catalog::xlogdb::{XlogDb, XlogEntry};
use barman::config::Config;
use barman::sync::SyncError;
use barman::sync::backups::{part_path, sync_backup, wanted};
use barman::sync::rpc::{Admit, SyncService};
use barman::sync::wals::{WalSyncOptions, staging_dir, sync_wals};
use barman::transport::grpc;
use barman::transport::tls::{self, ClientTls, Pem, TlsFiles};
use barman_proto::v1::file_meta::Kind;
use barman_proto::v1::sync_client::SyncClient;
use barman_proto::v1::sync_server::{Sync, SyncServer};
use barman_proto::v1::{
    BackupList, BackupMeta, BackupRequest, FetchRequest, FileChunk, FileList, FileMeta, ServerRequest, SyncInfoReply,
    SyncInfoRequest, WalEntry, WalList, WalListRequest,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

struct Pki {
    ca: Pem,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls::new_ca("test-ca").unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.cert).unwrap();
        Pki { ca, dir }
    }
    fn files(&self, name: &str) -> TlsFiles {
        let d = self.dir.path();
        let (cert, key) = (d.join(format!("{name}.crt")), d.join(format!("{name}.key")));
        if !cert.exists() {
            let pem = tls::new_node_cert(&self.ca, name, &["127.0.0.1".into()]).unwrap();
            tls::write_pem_files(&pem, &cert, &key).unwrap();
        }
        TlsFiles { ca: d.join("ca.crt"), cert, key }
    }
}

/// A Barman home with server `pg` and its configuration.
struct Home {
    _dir: tempfile::TempDir,
    cfg: Arc<Config>,
    layout: ServerLayout,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("barman.conf");
        let text = format!(
            "[barman]\nbarman_home = {}\nbarman_user = root\n\n[pg]\nconninfo = host=127.0.0.1 port=1\n\
             backup_method = postgres\narchiver = on\n",
            dir.path().join("home").display()
        );
        std::fs::write(&file, &text).unwrap();
        let cfg = Config::from_text(&text, &file).unwrap();
        let layout = ServerLayout::new(&cfg.global, &cfg.servers["pg"]);
        Home { _dir: dir, cfg: Arc::new(cfg), layout }
    }

    /// Archives `name` with `content`, as archive-wal would leave it.
    fn archive(&self, name: &str, content: &[u8], compression: Option<&str>) {
        let wal = name.parse().unwrap();
        let path = self.layout.wal_path(&wal);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let db = XlogDb::new(&self.layout);
        let held = db.lock().unwrap();
        let entry = XlogEntry {
            name: wal,
            size: content.len() as u64,
            time: 1_767_222_000.5,
            compression: compression.map(str::to_string),
            encryption: None,
        };
        db.append(&held, &[entry]).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.layout.wal_path(&name.parse().unwrap())
    }

    fn xlogdb(&self) -> Vec<String> {
        let mut v: Vec<String> = XlogDb::new(&self.layout).read_locked().unwrap().iter().map(|e| e.to_line()).collect();
        v.sort();
        v
    }
}

/// Deterministic bytes that differ per file.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

const SEG: usize = 3 << 20;

/// Serves `routes` under mutual TLS on 127.0.0.1 as node `name`.
async fn serve(pki: &Pki, name: &str, routes: Routes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_tls = tls::server_config(&pki.files(name)).unwrap();
    tokio::spawn(grpc::serve(listener, server_tls, routes, std::future::pending()));
    addr
}

fn client(pki: &Pki, me: &str, peer: &str, addr: SocketAddr) -> SyncClient<tonic::transport::Channel> {
    let tls = ClientTls::load(&pki.files(me)).unwrap();
    SyncClient::new(grpc::channel(&addr.to_string(), peer, &tls).unwrap())
}

fn everyone() -> Admit {
    Arc::new(|_: &str| true)
}

fn opts() -> WalSyncOptions {
    WalSyncOptions { jobs: 2, bandwidth: None, cursor: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_converges_resumes_and_fills_gaps() {
    let pki = Pki::new();
    let (primary, passive) = (Home::new(), Home::new());
    let names = [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000002.00000028.backup",
        "00000002.history",
        "000000020000000000000003",
    ];
    for (i, n) in names.iter().enumerate() {
        let len = if n.len() == 24 { SEG } else { 300 };
        primary.archive(n, &content(i as u8, len), (i == 1).then_some("gzip"));
    }
    let addr = serve(&pki, "a", Routes::new(SyncService::new(primary.cfg.clone(), everyone()).server())).await;
    let mut c = client(&pki, "b", "a", addr);

    // A transfer cut after some bytes: they wait in the staging directory.
    let cut = 1_234_567;
    let staging = staging_dir(&passive.layout);
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join(format!("{}.part", names[4])), &content(4, SEG)[..cut]).unwrap();

    let r = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap();
    assert_eq!(r.fetched, names.iter().map(|s| s.to_string()).collect::<Vec<_>>().tap_sort());
    let total: usize = names.iter().map(|n| if n.len() == 24 { SEG } else { 300 }).sum();
    assert_eq!(r.bytes, (total - cut) as u64, "the cut file's first {cut} bytes were sent again");
    for n in names {
        assert_eq!(std::fs::read(passive.path(n)).unwrap(), std::fs::read(primary.path(n)).unwrap(), "{n}");
    }
    assert_eq!(passive.xlogdb(), primary.xlogdb());
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "staging left behind");

    // Nothing new: nothing sent.
    let r = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap();
    assert_eq!((r.fetched.len(), r.bytes), (0, 0));

    // A gap (a file the passive missed while another came after it) is filled.
    primary.archive("000000020000000000000005", &content(9, SEG), None);
    primary.archive("000000020000000000000004", &content(8, SEG), None);
    let r = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap();
    assert_eq!(r.fetched, ["000000020000000000000004", "000000020000000000000005"]);
    assert_eq!(passive.xlogdb(), primary.xlogdb());

    // Cut at 20 random points of one file: each resumed transfer sends only the rest.
    let n = "000000020000000000000006";
    let data = content(6, SEG);
    primary.archive(n, &data, None);
    let mut seed = 0x5EED_u64;
    for _ in 0..20 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let at = (seed >> 33) as usize % SEG;
        let _ = std::fs::remove_file(passive.path(n));
        rewrite_xlogdb_without(&passive, n);
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join(format!("{n}.part")), &data[..at]).unwrap();
        let r = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap();
        assert_eq!(r.bytes, (SEG - at) as u64, "cut at {at}");
        assert_eq!(std::fs::read(passive.path(n)).unwrap(), data, "cut at {at}");
    }
    assert_eq!(passive.xlogdb(), primary.xlogdb());

    // Polls from a cursor: only what the peer appended since, whatever its name.
    let r0 = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap();
    assert_eq!(r0.cursor.last_name, n);
    primary.archive("000000020000000000000007", &content(17, SEG), None);
    primary.archive("000000020000000000000006.00000028.backup", &content(16, 300), None);
    let polled = WalSyncOptions { cursor: Some(r0.cursor.clone()), ..opts() };
    let r = sync_wals(&mut c, "a", &passive.layout, &polled).await.unwrap();
    assert_eq!(r.fetched, ["000000020000000000000006.00000028.backup", "000000020000000000000007"]);
    assert_eq!(r.cursor.last_name, "000000020000000000000006.00000028.backup");
    let again = WalSyncOptions { cursor: Some(r.cursor.clone()), ..opts() };
    let r = sync_wals(&mut c, "a", &passive.layout, &again).await.unwrap();
    assert_eq!((r.fetched.len(), r.recorded.len(), r.bytes), (0, 0, 0));
    assert_eq!(passive.xlogdb(), primary.xlogdb());
    // A cursor that no longer matches the peer's file (rewritten by retention) reads it
    // from the top.
    let stale = WalSyncOptions {
        cursor: Some(barman::sync::wals::WalCursor { last_name: "000000020000000000000005".into(), last_position: 3 }),
        ..opts()
    };
    let r = sync_wals(&mut c, "a", &passive.layout, &stale).await.unwrap();
    assert_eq!(r.cursor.last_name, "000000020000000000000006.00000028.backup");
    assert_eq!(passive.xlogdb(), primary.xlogdb(), "a stale cursor recorded a file twice");
}

trait TapSort {
    fn tap_sort(self) -> Self;
}
impl TapSort for Vec<String> {
    fn tap_sort(mut self) -> Self {
        self.sort();
        self
    }
}

fn rewrite_xlogdb_without(h: &Home, name: &str) {
    let db = XlogDb::new(&h.layout);
    let held = db.lock().unwrap();
    db.retain(&held, &|e| e.name.as_str() != name).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_file_here_is_kept_and_named() {
    let pki = Pki::new();
    let (primary, passive) = (Home::new(), Home::new());
    let n = "000000010000000000000001";
    primary.archive(n, &content(1, SEG), None);
    // Same name, other content, not in the passive's xlog.db (a sync cut after the rename
    // would leave the right file there; this one is not).
    let mine = content(2, SEG);
    std::fs::create_dir_all(passive.path(n).parent().unwrap()).unwrap();
    std::fs::write(passive.path(n), &mine).unwrap();
    let addr = serve(&pki, "a", Routes::new(SyncService::new(primary.cfg.clone(), everyone()).server())).await;
    let mut c = client(&pki, "b", "a", addr);
    let e = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap_err();
    assert!(matches!(e, SyncError::Conflict { .. }), "{e}");
    assert_eq!(std::fs::read(passive.path(n)).unwrap(), mine);
    assert!(passive.xlogdb().is_empty());
    // The right file under the final name (cut after the rename): only recorded.
    std::fs::write(passive.path(n), content(1, SEG)).unwrap();
    let r = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap();
    assert_eq!((r.recorded.as_slice(), r.bytes), ([n.to_string()].as_slice(), 0));
    assert_eq!(passive.xlogdb(), primary.xlogdb());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_denied() {
    let pki = Pki::new();
    let primary = Home::new();
    let admit: Admit = Arc::new(|name: &str| name == "b");
    let addr = serve(&pki, "a", Routes::new(SyncService::new(primary.cfg.clone(), admit).server())).await;
    let mut stranger = client(&pki, "c", "a", addr);
    let s = stranger.list_wals(WalListRequest { server: "pg".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}");
    let mut member = client(&pki, "b", "a", addr);
    let s = member.list_wals(WalListRequest { server: "nope".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound, "{s}");
    assert!(member.list_wals(WalListRequest { server: "pg".into(), ..Default::default() }).await.is_ok());
    // sync-info over gRPC: the text `barman sync-info` prints, and Barman's refusals.
    primary.archive("000000010000000000000001", &content(1, 100), None);
    let json =
        member.info(SyncInfoRequest { server: "pg".into(), ..Default::default() }).await.unwrap().into_inner().json;
    let local =
        barman::sync::info::sync_info(&primary.cfg.global, &primary.cfg.servers["pg"], &Default::default()).unwrap();
    assert_eq!(json, barman::catalog::pyjson::dumps(&local, Some(4), false));
    let far = SyncInfoRequest { server: "pg".into(), last_wal: "0000000900000000000000FF".into(), last_position: 0 };
    let s = member.info(far).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{s}");
    assert!(s.message().contains("is newer than the last available wal"), "{s}");
    let s = member
        .fetch(FetchRequest { server: "pg".into(), wal: "../../etc/passwd".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s}");
}

/// A peer that lies in one way.
#[derive(Clone, Copy, Debug)]
enum Lie {
    WrongChecksum,
    Truncated,
    LongerThanListed,
    NameOutsideTheArchive,
    NoChecksum,
    /// A compression that forges an xlog.db line.
    ForgedCompression,
    UnknownEncryption,
    InfiniteTime,
}

struct Liar {
    lie: Lie,
    data: Vec<u8>,
}

const LIED: &str = "000000010000000000000007";

#[tonic::async_trait]
impl Sync for Liar {
    async fn info(&self, _: Request<SyncInfoRequest>) -> Result<Response<SyncInfoReply>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn list_wals(&self, _: Request<WalListRequest>) -> Result<Response<WalList>, Status> {
        let name = match self.lie {
            Lie::NameOutsideTheArchive => "../../../../etc/cron.d/x".to_string(),
            _ => LIED.to_string(),
        };
        let mut entry = WalEntry { name, size: self.data.len() as u64, time: 1.0, ..Default::default() };
        match self.lie {
            Lie::ForgedCompression => entry.compression = "gzip\n000000010000000000000099\t1\t1\tNone".into(),
            Lie::UnknownEncryption => entry.encryption = "rot13".into(),
            Lie::InfiniteTime => entry.time = f64::INFINITY,
            _ => {}
        }
        Ok(Response::new(WalList { wals: vec![entry], ..Default::default() }))
    }
    async fn list_backups(&self, _: Request<ServerRequest>) -> Result<Response<BackupList>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn list_backup_files(&self, _: Request<BackupRequest>) -> Result<Response<FileList>, Status> {
        Err(Status::unimplemented("no"))
    }
    type FetchStream = ReceiverStream<Result<FileChunk, Status>>;
    async fn fetch(&self, r: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let from = r.into_inner().offset as usize;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = self.data[from..].to_vec();
        let mut sha = Sha256::digest(&self.data).to_vec();
        let mut size = self.data.len() as u64;
        match self.lie {
            Lie::WrongChecksum => sha[0] ^= 1,
            Lie::Truncated => {
                body.truncate(body.len() / 2);
                size = (from + body.len()) as u64;
                sha = Sha256::digest(&self.data[..size as usize]).to_vec();
            }
            Lie::LongerThanListed => body.extend_from_slice(b"more"),
            _ => {}
        }
        let lie = self.lie;
        tokio::spawn(async move {
            let _ = tx.send(Ok(FileChunk { data: body, ..Default::default() })).await;
            if !matches!(lie, Lie::NoChecksum) {
                let _ = tx.send(Ok(FileChunk { data: Vec::new(), last: true, size, sha256: sha })).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_is_refused_and_nothing_is_kept() {
    let pki = Pki::new();
    for lie in [
        Lie::WrongChecksum,
        Lie::Truncated,
        Lie::LongerThanListed,
        Lie::NameOutsideTheArchive,
        Lie::NoChecksum,
        Lie::ForgedCompression,
        Lie::UnknownEncryption,
        Lie::InfiniteTime,
    ] {
        let passive = Home::new();
        let liar = Liar { lie, data: content(7, 100_000) };
        let addr = serve(&pki, "a", Routes::new(SyncServer::new(liar))).await;
        let mut c = client(&pki, "b", "a", addr);
        let e = sync_wals(&mut c, "a", &passive.layout, &opts()).await.unwrap_err();
        match lie {
            Lie::NameOutsideTheArchive | Lie::ForgedCompression | Lie::UnknownEncryption | Lie::InfiniteTime => {
                assert!(matches!(e, SyncError::Refused { .. }), "{lie:?}: {e}")
            }
            _ => assert!(matches!(e, SyncError::Corrupt { .. }), "{lie:?}: {e}"),
        }
        assert!(!passive.path(LIED).exists(), "{lie:?}: a lied file stands under its name");
        assert!(passive.xlogdb().is_empty(), "{lie:?}: recorded");
        assert!(!file_exists_under(&staging_dir(&passive.layout)), "{lie:?}: a part file was kept");
    }
}

fn file_exists_under(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|rd| rd.count() > 0).unwrap_or(false)
}

const BACKUP: &str = "20261121T120000";

/// A DONE backup of `pg` in `h`: a plain data directory with a tablespace linked in.
fn write_backup(h: &Home) -> Vec<(String, Vec<u8>)> {
    let base = h.layout.base_dir.join(BACKUP);
    let files = vec![
        ("data/PG_VERSION".to_string(), b"15\n".to_vec()),
        ("data/global/pg_control".to_string(), content(3, 8192)),
        ("data/base/1/1259".to_string(), content(4, 5 << 20)),
        ("data/backup_manifest".to_string(), content(5, 70_000)),
        ("16385/PG_15_202209061/5/16386".to_string(), content(6, 300_000)),
    ];
    for (p, bytes) in &files {
        let path = base.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    std::fs::create_dir_all(base.join("data/pg_tblspc")).unwrap();
    std::os::unix::fs::symlink("../../16385", base.join("data/pg_tblspc/16385")).unwrap();
    std::fs::create_dir_all(base.join("data/pg_wal")).unwrap();
    let info = BackupInfo {
        status: "DONE".into(),
        server_name: Some("pg".into()),
        mode: Some("postgres".into()),
        version: Some(150000),
        begin_wal: Some("000000010000000000000002".parse().unwrap()),
        end_wal: Some("000000010000000000000002".parse().unwrap()),
        size: Some(5_700_000),
        timeline: Some(1),
        ..Default::default()
    };
    info.save(&meta_path(&h.layout, BACKUP)).unwrap();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_copies_a_backup_resumes_it_and_marks_it_done() {
    let pki = Pki::new();
    let (primary, passive) = (Home::new(), Home::new());
    let files = write_backup(&primary);
    let addr = serve(&pki, "a", Routes::new(SyncService::new(primary.cfg.clone(), everyone()).server())).await;
    let mut c = client(&pki, "b", "a", addr);
    let want = wanted(&mut c, "a", &passive.layout).await.unwrap();
    assert_eq!(want.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [BACKUP]);
    // An earlier try was cut inside the big file.
    let part = part_path(&passive.layout, BACKUP, "data/base/1/1259");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let cut = 1_000_001;
    std::fs::write(&part, &content(4, 5 << 20)[..cut]).unwrap();
    let r = sync_backup(&mut c, "a", &passive.layout, &want[0], &opts()).await.unwrap();
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!((r.files, r.bytes), (files.len(), (total - cut) as u64));
    let base = passive.layout.base_dir.join(BACKUP);
    for (p, bytes) in &files {
        assert_eq!(&std::fs::read(base.join(p)).unwrap(), bytes, "{p}");
    }
    assert_eq!(std::fs::read_link(base.join("data/pg_tblspc/16385")).unwrap(), Path::new("../../16385"));
    assert!(base.join("data/pg_wal").is_dir(), "empty directories are kept");
    assert!(!part.exists());
    assert!(!part.parent().unwrap().exists(), "the backup's staging directory is left behind");
    let mine = BackupInfo::read(&meta_path(&passive.layout, BACKUP)).unwrap();
    let theirs = BackupInfo::read(&meta_path(&primary.layout, BACKUP)).unwrap();
    assert_eq!(mine, theirs, "the passive's backup.info is the owner's, DONE");
    // Done here: not wanted again.
    assert!(wanted(&mut c, "a", &passive.layout).await.unwrap().is_empty());
}

/// A peer whose backup listing lies.
struct ListingLiar {
    files: Vec<FileMeta>,
}

#[tonic::async_trait]
impl Sync for ListingLiar {
    async fn info(&self, _: Request<SyncInfoRequest>) -> Result<Response<SyncInfoReply>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn list_wals(&self, _: Request<WalListRequest>) -> Result<Response<WalList>, Status> {
        Ok(Response::new(WalList::default()))
    }
    async fn list_backups(&self, _: Request<ServerRequest>) -> Result<Response<BackupList>, Status> {
        let info = "status=DONE\nserver_name=pg\n".to_string();
        Ok(Response::new(BackupList { backups: vec![BackupMeta { id: BACKUP.into(), info }] }))
    }
    async fn list_backup_files(&self, _: Request<BackupRequest>) -> Result<Response<FileList>, Status> {
        Ok(Response::new(FileList { files: self.files.clone() }))
    }
    type FetchStream = ReceiverStream<Result<FileChunk, Status>>;
    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let data = b"owned".to_vec();
            let sha = Sha256::digest(&data).to_vec();
            let _ = tx.send(Ok(FileChunk { data, ..Default::default() })).await;
            let _ = tx.send(Ok(FileChunk { data: vec![], last: true, size: 5, sha256: sha })).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_listing_that_leaves_the_backup_is_refused() {
    let pki = Pki::new();
    let outside = tempfile::tempdir().unwrap();
    let file = |path: &str| FileMeta {
        path: path.into(),
        kind: Kind::File.into(),
        size: 5,
        mode: 0o600,
        ..Default::default()
    };
    let link = FileMeta {
        path: "data/l".into(),
        kind: Kind::Symlink.into(),
        target: outside.path().display().to_string(),
        ..Default::default()
    };
    let lies = vec![
        vec![file("../../../../x")],
        vec![file("/etc/x")],
        vec![file("data/./x")],
        vec![link.clone(), file("data/l/x")],
        vec![file("backup.info")],
        vec![file("data/x\nforged")],
        vec![file("data/x"), file("data/x")],
        vec![FileMeta { mtime: f64::INFINITY, ..file("data/x") }],
        vec![FileMeta { mtime: f64::NAN, ..file("data/x") }],
    ];
    for files in lies {
        let passive = Home::new();
        let addr = serve(&pki, "a", Routes::new(SyncServer::new(ListingLiar { files: files.clone() }))).await;
        let mut c = client(&pki, "b", "a", addr);
        let want = wanted(&mut c, "a", &passive.layout).await.unwrap();
        let e = sync_backup(&mut c, "a", &passive.layout, &want[0], &opts()).await.unwrap_err();
        assert!(matches!(e, SyncError::Refused { .. }), "{files:?}: {e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "{files:?}: wrote outside");
        let info = BackupInfo::read(&meta_path(&passive.layout, BACKUP)).unwrap();
        assert_eq!(info.status, "FAILED", "{files:?}");
        assert!(info.error.unwrap().starts_with(&format!("failure syncing server pg backup {BACKUP}: ")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_files_are_served_only_inside_the_backup() {
    let pki = Pki::new();
    let primary = Home::new();
    write_backup(&primary);
    let addr = serve(&pki, "a", Routes::new(SyncService::new(primary.cfg.clone(), everyone()).server())).await;
    let mut c = client(&pki, "b", "a", addr);
    let ask = |backup_id: &str, path: &str| FetchRequest {
        server: "pg".into(),
        backup_id: backup_id.into(),
        path: path.into(),
        ..Default::default()
    };
    for (id, path) in [
        (BACKUP, "../../../../etc/passwd"),
        (BACKUP, "/etc/passwd"),
        (BACKUP, "data/pg_tblspc/16385/PG_15_202209061/5/16386"),
        ("../x", "data/PG_VERSION"),
    ] {
        let s = c.fetch(ask(id, path)).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{id} {path}: {s}");
    }
    let s = c.fetch(ask(BACKUP, "data/nope")).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound, "{s}");
    let listed = c
        .list_backup_files(BackupRequest { server: "pg".into(), backup_id: BACKUP.into() })
        .await
        .unwrap()
        .into_inner()
        .files;
    let paths: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"data/pg_tblspc/16385") && paths.contains(&"16385/PG_15_202209061/5/16386"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("data/pg_tblspc/16385/")), "a link was followed: {paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_left_by_an_earlier_listing_never_receives_a_part_file() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("authorized_keys");
    std::fs::write(&victim, b"").unwrap();
    let passive = Home::new();
    // Where a part file of `data/x` used to be made, a link a peer listed earlier.
    let data = passive.layout.base_dir.join(BACKUP).join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(&victim, data.join(".x.sync-part")).unwrap();
    let x = FileMeta {
        path: "data/x".into(),
        kind: Kind::File.into(),
        size: 5,
        mode: 0o4777,
        mtime: 1e9,
        ..Default::default()
    };
    let addr = serve(&pki, "a", Routes::new(SyncServer::new(ListingLiar { files: vec![x] }))).await;
    let mut c = client(&pki, "b", "a", addr);
    let want = wanted(&mut c, "a", &passive.layout).await.unwrap();
    sync_backup(&mut c, "a", &passive.layout, &want[0], &opts()).await.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"", "written through the link");
    assert_eq!(std::fs::read(data.join("x")).unwrap(), b"owned");
    // The mode is ours: nothing for others, no set-id bit, whatever the peer said.
    let mode = std::fs::metadata(data.join("x")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode & 0o4007, 0, "mode {mode:o}");
}
