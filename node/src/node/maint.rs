//! The maintenance loop: what `barman cron` does (archive-wal, backup states, retention,
//! lock cleanup), every few seconds, as a child `barman cron` so that a crash in one pass
//! cannot take the node down. Streaming is not cron's business on a node: the node
//! supervises it for the servers it owns.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Runs `barman -c CONFIG -q cron` every `every`, and at once when `kick` is notified (a
/// streamed segment completed: archiving it now is what lets the passives fetch it), until
/// `shutdown`.
pub async fn run(
    node: String,
    config: PathBuf,
    every: Duration,
    kick: Arc<Notify>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(node = %node, "maintenance loop disabled: cannot find our own executable: {e}");
            return;
        }
    };
    loop {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("-c").arg(&config).arg("-q").arg("cron");
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let run = async {
            match cmd.output().await {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    tracing::warn!(node = %node, "maintenance (cron) failed ({}): {}", o.status, err.trim());
                }
                Err(e) => tracing::warn!(node = %node, "maintenance (cron) could not start: {e}"),
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = run => {}
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
            () = kick.notified() => {}
        }
    }
}
