//! The one way a Siesta process learns it should stop: SIGTERM (a backend or Kubernetes stopping
//! a replica, `siesta up` being stopped), SIGINT (Ctrl-C), or, for a replica of `siesta up`, its
//! parent gone (`SIESTA_PARENT_PID`; a killed parent cannot send SIGTERM, and an orphaned parked
//! replica would otherwise keep its memory forever).

use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct ShutdownSignal {
    term: Signal,
    int: Signal,
    parent: Option<u32>,
}

impl ShutdownSignal {
    /// Registers both handlers before returning, so a signal right after start-up is not missed.
    pub fn register() -> std::io::Result<Self> {
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            parent: std::env::var(siesta_http_server::replica_control::PARENT_ENV)
                .ok()
                .and_then(|p| p.parse().ok()),
        })
    }

    /// Resolves at the first of them, with its name.
    pub async fn recv(mut self) -> &'static str {
        let parent = self.parent;
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = parent_gone(parent) => "parent process gone",
        }
    }
}

/// Resolves once this process's parent is no longer `parent` (it exited and the process was
/// re-parented); never without one.
async fn parent_gone(parent: Option<u32>) {
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        every.tick().await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sigterm_to_this_process_is_seen_once_registered() {
        let signal = ShutdownSignal::register().unwrap();
        kill_self();
        let name = tokio::time::timeout(std::time::Duration::from_secs(5), signal.recv())
            .await
            .expect("the signal arrives");
        assert_eq!(name, "SIGTERM");
    }

    fn kill_self() {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
