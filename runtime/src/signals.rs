//! The one way a Siesta process learns it should stop: SIGTERM (a backend or Kubernetes stopping
//! a replica, `siesta up` being stopped) or SIGINT (Ctrl-C).

use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct ShutdownSignal {
    term: Signal,
    int: Signal,
}

impl ShutdownSignal {
    /// Registers both handlers before returning, so a signal right after start-up is not missed.
    pub fn register() -> std::io::Result<Self> {
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the first of the two, with its name.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
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
