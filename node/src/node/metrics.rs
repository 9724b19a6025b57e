//! The Prometheus endpoint (`node_metrics_listen`): plain HTTP, `GET /metrics`, text format.

use std::fmt::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One metric family being written.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

/// Text exposition format, built family by family.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn family(&mut self, name: &'static str, kind: &str, help: &str) -> Family<'_> {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out: &mut self.out, name }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

impl Family<'_> {
    /// One sample; label values are escaped as the format wants.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.sample_suffixed("", labels, value)
    }

    /// A sample of the family under `name + suffix` (a summary's `_count` and `_sum`).
    pub fn sample_suffixed(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = write!(self.out, "{}{suffix}", self.name);
        if !labels.is_empty() {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
                .collect();
            let _ = write!(self.out, "{{{}}}", body.join(","));
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

/// Serves `render()` at every GET until `shutdown`.
pub async fn serve<F>(listener: tokio::net::TcpListener, render: F, shutdown: impl std::future::Future<Output = ()>)
where
    F: FnOnce() -> String + Clone + Send + Sync + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (mut s, _) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            // Headers only: requests carry no body worth reading.
            while got < buf.len() {
                match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf[got..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => got += n,
                }
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..got]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
                // Rendering reads the catalog under its (blocking) locks.
                ("200 OK", tokio::task::spawn_blocking(render).await.unwrap_or_default())
            } else {
                ("404 Not Found", "only GET /metrics is served here\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let mut e = Exposition::default();
        e.family("barman_epoch", "gauge", "Epoch of the server's ownership.")
            .sample(&[("server", "pg")], 3.0)
            .sample(&[("server", "a\"b")], 1.0);
        e.family("barman_raft_term", "gauge", "Raft term.").sample(&[], 7.0);
        assert_eq!(
            e.finish(),
            "# HELP barman_epoch Epoch of the server's ownership.\n# TYPE barman_epoch gauge\nbarman_epoch{server=\"pg\"} 3\nbarman_epoch{server=\"a\\\"b\"} 1\n# HELP barman_raft_term Raft term.\n# TYPE barman_raft_term gauge\nbarman_raft_term 7\n"
        );
    }
}
