//! The local control socket: how `barman` commands reach the node of their `barman_home`
//! (`.node/control.sock`, mode 0600, one JSON request and one JSON answer per line).
//! Node-to-node traffic never goes through it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request of a CLI command to its local node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Members, leader, and every server's owner, epoch, lease and stream.
    Status,
    /// Bootstraps the Raft group from `cluster_peers` (and this node).
    Init,
    /// Adds a node (as a voter) to a running cluster.
    AddNode { name: String, addr: String },
    /// Removes a node from the cluster.
    RemoveNode { name: String },
    /// A planned hand-over of `server` to `node`.
    Transfer { server: String, node: String },
    /// Puts a certificate (`sha256:HEX` or `serial:HEX`) on the cluster's deny list.
    Revoke { id: String },
}

/// The answer: `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ControlResponse {
    pub fn ok(data: serde_json::Value) -> ControlResponse {
        ControlResponse { ok: true, data: Some(data), error: None }
    }
    pub fn err(msg: impl Into<String>) -> ControlResponse {
        ControlResponse { ok: false, data: None, error: Some(msg.into()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the local node at {path}: {source}; start it with 'barman node run' (or check barman_home)")]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("the local node at {path} did not answer: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the local node at {path} answered something unreadable: {detail}")]
    BadAnswer { path: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
}

/// The socket of the node whose `barman_home` is `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(".node").join("control.sock")
}

/// Sends one request to the local node and waits up to `timeout` for its answer.
pub fn call(path: &Path, req: &ControlRequest, timeout: Duration) -> Result<serde_json::Value, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    let mut s =
        UnixStream::connect(path).map_err(|source| ControlError::Unreachable { path: path.to_path_buf(), source })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req)
        .map_err(|e| ControlError::BadAnswer { path: path.to_path_buf(), detail: e.to_string() })?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).map_err(io)?;
    let r: ControlResponse = serde_json::from_str(answer.trim_end())
        .map_err(|e| ControlError::BadAnswer { path: path.to_path_buf(), detail: e.to_string() })?;
    if r.ok {
        Ok(r.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ControlError::Refused(r.error.unwrap_or_else(|| "refused without a reason".into())))
    }
}

/// Serves the control socket until `shutdown`; each request is answered by `handle`.
pub async fn serve<F, Fut>(
    path: PathBuf,
    handle: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn(ControlRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ControlResponse> + Send,
{
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    // A socket left by a killed node is stale: nobody can be listening on it, since only
    // the node holding the store's lock gets here.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("control socket {}: {e}", path.display());
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            let Ok(Some(line)) = lines.next_line().await else { return };
            let answer = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(req) => handle(req).await,
                Err(e) => ControlResponse::err(format!("unreadable request: {e}")),
            };
            let mut out = serde_json::to_string(&answer)
                .unwrap_or_else(|_| r#"{"ok":false,"error":"unserialisable answer"}"#.into());
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = ControlRequest::Transfer { server: "pg".into(), node: "n2".into() };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"op":"transfer","server":"pg","node":"n2"}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(&j).unwrap(), r);
        assert_eq!(serde_json::to_string(&ControlRequest::Status).unwrap(), r#"{"op":"status"}"#);
    }

    #[tokio::test]
    async fn serve_and_call() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let p = path.clone();
        let server = tokio::spawn(serve(
            p,
            |req| async move {
                match req {
                    ControlRequest::Status => ControlResponse::ok(serde_json::json!({"leader": "n1"})),
                    _ => ControlResponse::err("no"),
                }
            },
            async {
                let _ = rx.await;
            },
        ));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let p2 = path.clone();
        let v = tokio::task::spawn_blocking(move || call(&p2, &ControlRequest::Status, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v["leader"], "n1");
        let p3 = path.clone();
        let e = tokio::task::spawn_blocking(move || call(&p3, &ControlRequest::Init, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.to_string(), "no");
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(!path.exists(), "socket removed at shutdown");
        let e = call(&path, &ControlRequest::Status, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("barman node run"), "{e}");
    }
}
