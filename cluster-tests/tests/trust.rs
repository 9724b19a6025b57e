//! Trust boundaries: hand-made gRPC requests to a running cluster with certificates of its
//! own CA (a WAL client's, a node's that is not a member, a member's speaking for another
//! node) are refused, logged, and change nothing; a PostgreSQL host whose `barman-agent`
//! lists paths outside the backup gets nothing written there.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use barman::cluster::ownership::Command;
use barman::cluster::rpc::{ForwardRequest, ForwardResponse};
use barman::cluster::types::{Member, Request, node_id};
use barman::transport::grpc;
use barman::transport::tls::{ClientTls, Pem};
use barman_proto::v1::archive_client::ArchiveClient;
use barman_proto::v1::raft_client::RaftClient;
use barman_proto::v1::{GetWalRequest, RaftRequest};
use cluster_tests::fixture::{ClusterOptions, TestCluster, node_name};
use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::util::{TestDir, chown_to_pg_user, current_os_user, install_binaries};

/// `barman cluster cert ARGS --ca-dir TLS --dir TLS`, then the certificate `name` it wrote.
fn make_cert(tls: &Path, args: &[&str], name: &str) -> Pem {
    let out = std::process::Command::new(cluster_tests::nodes::barman_bin().unwrap())
        .args(["cluster", "cert"])
        .args(args)
        .arg("--ca-dir")
        .arg(tls)
        .arg("--dir")
        .arg(tls)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    read_cert(tls, name)
}

fn read_cert(tls: &Path, name: &str) -> Pem {
    let read = |ext: &str| std::fs::read_to_string(tls.join(format!("{name}.{ext}"))).unwrap();
    Pem { cert: read("crt"), key: read("key") }
}

fn listen_addr(c: &TestCluster, i: usize) -> String {
    let conf = std::fs::read_to_string(&c.confs[i]).unwrap();
    conf.lines().find_map(|l| l.strip_prefix("node_listen = ")).unwrap().trim().to_string()
}

/// One `Raft/Forward` call to node `i` with the identity `who`.
fn forward(c: &TestCluster, i: usize, who: &Pem, req: &ForwardRequest) -> Result<ForwardResponse, tonic::Status> {
    let ca = std::fs::read_to_string(c.dir.join("tls").join("ca.crt")).unwrap();
    let tls = ClientTls::from_pem(&ca, who);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = grpc::channel(&listen_addr(c, i), &node_name(i), &tls).unwrap();
        let mut client = RaftClient::new(channel);
        let data = grpc::encode(req).unwrap();
        let answer = client.forward(RaftRequest { data }).await?.into_inner();
        Ok(grpc::decode(&answer.data).unwrap())
    })
}

fn members(c: &TestCluster) -> usize {
    c.status(0).unwrap()["members"].as_array().map_or(0, Vec::len)
}

#[test]
fn forward_admits_only_members_speaking_for_themselves() {
    let dir = TestDir::new().unwrap();
    let mut c = TestCluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let (owner, epoch) = c.wait_streaming(Duration::from_secs(30)).unwrap();
    let tls = c.dir.join("tls");
    let client = make_cert(&tls, &["client", "pghost", "--server", "pg"], "pghost");
    let outsider = make_cert(&tls, &["node", "rogue", "--host", "127.0.0.1"], "rogue");
    let n2 = read_cert(&tls, "n2");
    let n3 = node_id("n3");

    // A WAL client and a node of the CA that is no member: nothing, at any node.
    let remove = ForwardRequest::RemoveNode { id: n3 };
    let add = ForwardRequest::AddNode {
        id: node_id("rogue"),
        member: Member { name: "rogue".into(), site: String::new(), addr: "127.0.0.1:1".into() },
    };
    for i in 0..3 {
        for (who, what) in [(&client, "the WAL client"), (&outsider, "a non-member node")] {
            for req in [&remove, &add] {
                let err = forward(&c, i, who, req).expect_err(&format!("{what} was let in by {}", node_name(i)));
                assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
            }
        }
    }

    // A member speaking for another node, or assigning ownership itself.
    let own = |cmd| ForwardRequest::Write(Request::Ownership { server: "pg".into(), cmd, report: None });
    let refused = [
        own(Command::Renew { node: n3, epoch }),
        own(Command::Release { node: n3, epoch, to: Some(node_id("n2")) }),
        own(Command::Assign { node: node_id("n2"), epoch: epoch + 1, renewals: 0 }),
        ForwardRequest::Write(Request::Site { node: n3, site: "elsewhere".into() }),
    ];
    for req in &refused {
        let err = forward(&c, 0, &n2, req).expect_err(&format!("{req:?} from n2 was let in"));
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{req:?}: {err:?}");
    }
    // Nesting is refused while decoding, before anything else.
    let nested = ForwardRequest::Write(Request::Batch(vec![Request::Batch(vec![])]));
    let err = forward(&c, 0, &n2, &nested).expect_err("a nested batch was let in");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // What n2 may say of itself still goes through.
    let site = ForwardRequest::Write(Request::Site { node: node_id("n2"), site: "site2".into() });
    let answer = (0..3).find_map(|i| match forward(&c, i, &n2, &site) {
        Ok(ForwardResponse::Written(r)) => Some(r),
        _ => None,
    });
    assert!(answer.is_some(), "n2's own site was refused everywhere");

    // Nothing changed, and each refusal was one log line naming who and what.
    assert_eq!(members(&c), 3);
    assert_eq!(c.owner(), Some((owner, epoch)), "the ownership of pg moved");
    // The node's log is written in the background: its last line first.
    c.nodes[0].wait_log("a batch inside a batch", Duration::from_secs(10)).unwrap();
    let log = c.nodes[0].log();
    assert!(log.contains("refused Forward from 'pghost (WAL client)'"), "{log}");
    assert!(log.contains("refused Forward from 'rogue'"), "{log}");
    assert!(log.contains("refused Forward from node 'n2'") && log.contains("not for itself"), "{log}");
    assert!(log.contains("only the leader assigns ownership"), "{log}");
}

/// put-wal (as its connection test) and get-wal of `server` at node `i` with `who`.
fn wal_calls(c: &TestCluster, i: usize, who: &Pem, server: &str) -> [Result<(), tonic::Status>; 2] {
    let ca = std::fs::read_to_string(c.dir.join("tls").join("ca.crt")).unwrap();
    let tls = ClientTls::from_pem(&ca, who);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = grpc::channel(&listen_addr(c, i), &node_name(i), &tls).unwrap();
        let put = barman::archive::rpc::put_test(channel.clone(), server).await;
        let req =
            GetWalRequest { server: server.into(), name: "000000010000000000000001".into(), ..Default::default() };
        let get = match ArchiveClient::new(channel).get_wal(req).await {
            Ok(mut stream) => stream.get_mut().message().await.map(drop),
            Err(s) => Err(s),
        };
        [put, get]
    })
}

#[test]
fn a_wal_client_certificate_serves_only_the_servers_it_names() {
    let dir = TestDir::new().unwrap();
    let opts = ClusterOptions { extra_servers: 1, ..ClusterOptions::default() };
    let mut c = TestCluster::start(dir.path(), opts).unwrap();
    let (owner, _) = c.wait_streaming(Duration::from_secs(30)).unwrap();
    let tls = c.dir.join("tls");
    let pg_only = make_cert(&tls, &["client", "pghost", "--server", "pg"], "pghost");
    let outsider = make_cert(&tls, &["node", "rogue", "--host", "127.0.0.1"], "rogue");
    let other = (owner + 1) % 3;
    // Its own server: answered (the test put, and a WAL that is not there).
    let [put, get] = wal_calls(&c, other, &pg_only, "pg");
    put.unwrap();
    assert_eq!(get.unwrap_err().code(), tonic::Code::NotFound);
    // Another server, at any node (the first it reaches refuses, before forwarding); and a
    // node certificate of the CA that is no member, for any server.
    for i in 0..3 {
        for (who, server) in [(&pg_only, "pg0"), (&outsider, "pg")] {
            for r in wal_calls(&c, i, who, server) {
                let e = r.expect_err("let in");
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            }
        }
    }
    c.nodes[other].wait_log("is not for server 'pg0'", Duration::from_secs(10)).unwrap();
    let log = c.nodes[other].log();
    assert!(log.contains("refused put-wal of server 'pg0' from 'pghost (WAL client)'"), "{log}");
    assert!(log.contains("refused get-wal of server 'pg0' from 'pghost (WAL client)'"), "{log}");
    assert!(log.contains("refused put-wal of server 'pg' from 'rogue'"), "{log}");
}

#[test]
fn a_host_listing_paths_outside_the_backup_gets_nothing_written() {
    let dir = TestDir::new().unwrap();
    let home = dir.path().join("home");
    let incoming = home.join("pg").join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    chown_to_pg_user(&incoming).unwrap();
    let opts = PgOptions { conf: vec![("archive_mode".into(), "on".into())], ..PgOptions::default() };
    let pg = PgCluster::start(dir.path(), opts).unwrap();
    pg.set_conf("archive_command", &conf_quote(&format!("cp %p {}/%f", incoming.display()))).unwrap();
    // The PostgreSQL host's agent is a stand-in that adds names to every listing.
    let built = cluster_tests::nodes::barman_bin().unwrap();
    let bin = install_binaries(
        &dir.path().join("install"),
        &[
            ("barman", &built),
            ("barman-agent", Path::new(env!("CARGO_BIN_EXE_hostile-agent"))),
            ("barman-agent.real", &built.with_file_name("barman-agent")),
        ],
    )
    .unwrap();
    let config = dir.path().join("barman.conf");
    std::fs::write(
        &config,
        format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}/barman.log\n\n\
             [pg]\nconninfo = {}\nbackup_method = local-rsync\narchiver = on\nimmediate_checkpoint = true\n",
            home.display(),
            current_os_user().unwrap().name,
            dir.path().display(),
            pg.conninfo()
        ),
    )
    .unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    // From <home>/pg/base/<id>/data: five levels up is the test directory.
    let climbing = "../../../../../victim/climbed".to_string();
    let absolute = victim.join("absolute").display().to_string();
    for (extra, why) in [(absolute.as_str(), "absolute"), (climbing.as_str(), "'.' or '..'"), ("global//x", "empty")] {
        let out = std::process::Command::new(bin.join("barman"))
            .arg("-c")
            .arg(&config)
            .args(["backup", "pg"])
            .env("HOSTILE_EXTRA", extra)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "the backup with {extra:?} listed succeeded:\n{text}");
        assert!(text.contains("the listing of data listed") && text.contains(why), "{extra:?}:\n{text}");
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "{extra:?} was written outside the backup");
    }
    // Every attempt is a FAILED backup, and nothing of the hostile names stands anywhere.
    let meta = home.join("pg").join("meta");
    let infos: Vec<String> = std::fs::read_dir(&meta)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-backup.info"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(infos.len(), 3);
    assert!(infos.iter().all(|i| i.contains("\nstatus=FAILED\n")), "{infos:?}");
}

/// `openssl x509 -noout ARG -in CERT`, its one line.
fn openssl_x509(cert: &Path, arg: &[&str]) -> String {
    let out =
        std::process::Command::new("openssl").args(["x509", "-noout"]).args(arg).arg("-in").arg(cert).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_revoked_certificate_is_refused_by_every_node_within_a_second() {
    let dir = TestDir::new().unwrap();
    let mut c = TestCluster::start(dir.path(), ClusterOptions::default()).unwrap();
    c.wait_streaming(Duration::from_secs(30)).unwrap();
    let tls = c.dir.join("tls");
    let one = make_cert(&tls, &["client", "pghost", "--server", "pg"], "pghost");
    let two = make_cert(&tls, &["client", "pghost2", "--server", "pg"], "pghost2");
    for i in 0..3 {
        for who in [&one, &two] {
            wal_calls(&c, i, who, "pg")[0].as_ref().unwrap();
        }
    }
    // One by its fingerprint, the other by its serial, as openssl prints them.
    let fingerprint = openssl_x509(&tls.join("pghost.crt"), &["-fingerprint", "-sha256"]);
    let serial = openssl_x509(&tls.join("pghost2.crt"), &["-serial"]);
    for (id, k) in [(&fingerprint, 0), (&serial, 1)] {
        let said = c.barman(k, &["cluster", "revoke", id]).unwrap();
        assert!(said.contains("revoked: every node refuses it"), "{said}");
    }
    let t0 = std::time::Instant::now();
    c.wait(Duration::from_secs(5), "every node refusing both certificates", |c| {
        (0..3).all(|i| [&one, &two].iter().all(|who| wal_calls(c, i, who, "pg").iter().all(Result::is_err)))
    })
    .unwrap();
    let took = t0.elapsed();
    println!("both certificates refused everywhere after {} ms", took.as_millis());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Another certificate of the same name (a rotation) is served.
    std::fs::remove_file(tls.join("pghost.crt")).unwrap();
    std::fs::remove_file(tls.join("pghost.key")).unwrap();
    let rotated = make_cert(&tls, &["client", "pghost", "--server", "pg"], "pghost");
    wal_calls(&c, 0, &rotated, "pg")[0].as_ref().unwrap();
    let log = c.nodes[1].log();
    assert!(log.contains("is revoked"), "{log}");
    // A bad id is one clear line.
    let e = c.barman(0, &["cluster", "revoke", "pg1"]).unwrap_err().to_string();
    assert!(e.contains("neither a SHA-256 fingerprint"), "{e}");
}
