//! `barman node run` and `barman cluster ...`: the node daemon, and the commands that reach
//! it over its control socket; the certificate helpers need neither.

use std::path::Path;
use std::time::Duration;

use super::args::{CertCommand, ClusterCommand};
use super::context::Ctx;
use crate::node::control::{self, ControlRequest};
use crate::transport::tls;

/// `barman cluster cert ...`: runs without a configuration (a cluster is set up with it).
pub fn cert(cmd: &CertCommand) -> i32 {
    // Relative directories are taken from the working directory, made absolute so that
    // their parents can be fsynced.
    let abs = |p: &Path| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf());
    let r = match cmd {
        CertCommand::Ca { dir } => cert_ca(&abs(dir)),
        CertCommand::Node { name, hosts, ca_dir, dir } => cert_node(name, hosts, &abs(ca_dir), &abs(dir)),
        CertCommand::Client { name, servers, ca_dir, dir } => cert_client(name, servers, &abs(ca_dir), &abs(dir)),
    };
    match r {
        Ok(msg) => {
            println!("{msg}");
            0
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            1
        }
    }
}

fn cert_ca(dir: &Path) -> Result<String, String> {
    crate::catalog::durable::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pem = tls::new_ca("barman cluster CA").map_err(|e| e.to_string())?;
    let (c, k) = (dir.join("ca.crt"), dir.join("ca.key"));
    tls::write_pem_files(&pem, &c, &k).map_err(|e| e.to_string())?;
    Ok(format!(
        "Cluster CA written to {} and {}; copy ca.crt to every node (cluster_ca_file) and keep ca.key off them",
        c.display(),
        k.display()
    ))
}

fn read_ca(ca_dir: &Path) -> Result<tls::Pem, String> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| format!("{}: {e}; create the CA with 'barman cluster cert ca'", p.display()))
    };
    Ok(tls::Pem { cert: read(&ca_dir.join("ca.crt"))?, key: read(&ca_dir.join("ca.key"))? })
}

fn cert_client(name: &str, servers: &[String], ca_dir: &Path, dir: &Path) -> Result<String, String> {
    let pem = tls::new_client_cert(&read_ca(ca_dir)?, name, servers).map_err(|e| e.to_string())?;
    if name.contains('/') || name.starts_with('.') {
        return Err(format!("client name '{name}' cannot name a file: use letters, digits, '-' and '.'"));
    }
    crate::catalog::durable::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    tls::write_pem_files(&pem, &c, &k).map_err(|e| e.to_string())?;
    Ok(format!(
        "WAL client certificate '{}' for server(s) {} written to {} and {} (--tls-cert-file, \
         --tls-key-file of barman-wal-archive and barman-wal-restore)",
        tls::wal_client_name(name),
        servers.join(", "),
        c.display(),
        k.display()
    ))
}

fn cert_node(name: &str, hosts: &[String], ca_dir: &Path, dir: &Path) -> Result<String, String> {
    let pem = tls::new_node_cert(&read_ca(ca_dir)?, name, hosts).map_err(|e| e.to_string())?;
    crate::catalog::durable::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    tls::write_pem_files(&pem, &c, &k).map_err(|e| e.to_string())?;
    Ok(format!(
        "Certificate of node '{name}' written to {} and {} (node_cert_file, node_key_file)",
        c.display(),
        k.display()
    ))
}

/// The cluster options' errors stop the node and the cluster commands (Barman's own
/// commands only warn about them).
fn cluster_config_ok(ctx: &mut Ctx) -> bool {
    for e in ctx.cfg.cluster_errors.clone() {
        ctx.out.error(e);
    }
    ctx.cfg.cluster_errors.is_empty()
}

/// `barman node run`.
pub fn node_run(ctx: &mut Ctx) {
    if !cluster_config_ok(ctx) {
        return;
    }
    if let Err(e) = crate::node::run(&ctx.cfg) {
        ctx.out.error(e);
    }
}

fn ask(ctx: &mut Ctx, req: &ControlRequest, timeout: Duration) -> Option<serde_json::Value> {
    let path = control::socket_path(&ctx.cfg.global.barman_home);
    match control::call(&path, req, timeout) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.out.error(e.to_string());
            None
        }
    }
}

pub fn cluster(ctx: &mut Ctx, cmd: &ClusterCommand) {
    if !cluster_config_ok(ctx) {
        return;
    }
    if ctx.cfg.global.node_name.is_none() {
        ctx.out.error("node_name is not set in [barman]: this host is not a cluster node (see docs/cluster.md)");
        return;
    }
    match cmd {
        ClusterCommand::Cert(_) => unreachable!("dispatched before the configuration is read"),
        ClusterCommand::Init => {
            if let Some(v) = ask(ctx, &ControlRequest::Init, Duration::from_secs(30)) {
                ctx.out.info(format!("Cluster initialised with members: {}", list(&v["members"])));
            }
        }
        ClusterCommand::AddNode { name, addr } => {
            let req = ControlRequest::AddNode { name: name.clone(), addr: addr.clone() };
            if ask(ctx, &req, Duration::from_secs(60)).is_some() {
                ctx.out.info(format!("Node '{name}' ({addr}) added to the cluster as a voter"));
            }
        }
        ClusterCommand::RemoveNode { name } => {
            if ask(ctx, &ControlRequest::RemoveNode { name: name.clone() }, Duration::from_secs(60)).is_some() {
                ctx.out.info(format!("Node '{name}' removed from the cluster"));
            }
        }
        ClusterCommand::Revoke { certificate } => {
            let Some(id) = tls::parse_revocation_id(certificate) else {
                return ctx.out.error(format!(
                    "'{certificate}' is neither a SHA-256 fingerprint (64 hex digits) nor a serial number: \
                     see 'openssl x509 -noout -fingerprint -sha256 -serial -in CERT'"
                ));
            };
            if ask(ctx, &ControlRequest::Revoke { id: id.clone() }, Duration::from_secs(10)).is_some() {
                ctx.out.info(format!("Certificate {id} revoked: every node refuses it"));
            }
        }
        ClusterCommand::Status => {
            if let Some(v) = ask(ctx, &ControlRequest::Status, Duration::from_secs(10)) {
                show_status(ctx, &v);
            }
        }
        ClusterCommand::Transfer { server, node, wait } => {
            let req = ControlRequest::Transfer { server: server.clone(), node: node.clone() };
            if ask(ctx, &req, Duration::from_secs(10)).is_none() {
                return;
            }
            ctx.out.info(format!("Hand-over of server '{server}' to node '{node}' requested"));
            let deadline = std::time::Instant::now() + Duration::from_secs(*wait);
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let path = control::socket_path(&ctx.cfg.global.barman_home);
                if let Ok(v) = control::call(&path, &ControlRequest::Status, Duration::from_secs(5))
                    && let Some(s) =
                        v["servers"].as_array().and_then(|a| a.iter().find(|s| s["name"] == server.as_str()))
                    && s["owner"] == node.as_str()
                    && s["flushed_lsn"].as_str().is_some_and(|l| l != "0/0")
                {
                    ctx.out.info(format!(
                        "Node '{node}' owns server '{server}' (epoch {}) and streams from {}",
                        s["epoch"],
                        s["flushed_lsn"].as_str().unwrap_or("?")
                    ));
                    return;
                }
                if std::time::Instant::now() > deadline {
                    ctx.out.error(format!(
                        "node '{node}' did not take over server '{server}' within {wait} s; see 'barman cluster status'"
                    ));
                    return;
                }
            }
        }
    }
}

fn list(v: &serde_json::Value) -> String {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

fn show_status(ctx: &mut Ctx, v: &serde_json::Value) {
    if ctx.out.is_json() {
        if let serde_json::Value::Object(m) = v {
            for (k, x) in m {
                ctx.out.json_set(k, x.clone());
            }
        }
        return;
    }
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    ctx.out.info(format!("Cluster (seen from node {}):", s(&v["node"])));
    ctx.out.info(format!(
        "\tLeader: {} (term {}, commit index {})",
        s(&v["leader"]),
        s(&v["term"]),
        s(&v["commit_index"])
    ));
    ctx.out.info("\tMembers:");
    for m in v["members"].as_array().into_iter().flatten() {
        ctx.out.info(format!(
            "\t\t{} (site {}, {}){}",
            s(&m["name"]),
            s(&m["site"]),
            s(&m["addr"]),
            if m["voter"] == true { "" } else { " learner" }
        ));
    }
    ctx.out.info("\tServers:");
    for x in v["servers"].as_array().into_iter().flatten() {
        ctx.out.info(format!(
            "\t\t{}: owner {}, epoch {}, lease renewed {} ms ago, flushed {}, lag {} bytes{}",
            s(&x["name"]),
            s(&x["owner"]),
            s(&x["epoch"]),
            s(&x["lease_age_ms"]),
            s(&x["flushed_lsn"]),
            s(&x["lag_bytes"]),
            if x["transfer_to"].is_null() {
                String::new()
            } else {
                format!(", handing over to {}", s(&x["transfer_to"]))
            }
        ));
    }
}

/// The owner's name (None: no owner yet) and the epoch of `server` in a `cluster status`
/// answer; None when the answer does not list the server.
pub fn server_owner(status: &serde_json::Value, server: &str) -> Option<(Option<String>, u64)> {
    let s = status["servers"].as_array()?.iter().find(|s| s["name"] == server)?;
    Some((s["owner"].as_str().map(str::to_string), s["epoch"].as_u64().unwrap_or(0)))
}

/// On a cluster node, only the owner of a server streams and backs it up: the reason this
/// node may not, naming the owner; `None` when it may (or the host is no cluster node).
pub fn refused_here(ctx: &mut Ctx, server: &str, what: &str) -> Option<String> {
    let me = ctx.cfg.global.node_name.as_ref()?.to_string();
    let path = control::socket_path(&ctx.cfg.global.barman_home);
    let v = match control::call(&path, &ControlRequest::Status, Duration::from_secs(10)) {
        Ok(v) => v,
        Err(e) => {
            return Some(format!("{what} of server '{server}' refused: this host is cluster node '{me}' and {e}"));
        }
    };
    match server_owner(&v, server) {
        Some((Some(o), _)) if o == me => None,
        Some((Some(o), epoch)) => Some(format!(
            "{what} of server '{server}' refused: node '{o}' owns it (epoch {epoch}); run it there, or move the server with 'barman cluster transfer {server} {me}'"
        )),
        _ => Some(format!(
            "{what} of server '{server}' refused: the cluster has not given it an owner yet; see 'barman cluster status'"
        )),
    }
}
