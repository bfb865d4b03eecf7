//! `siesta up` as a child process: started on port 0 with shortened windows (stable 6 s, grace
//! 1 s, tick 200 ms) so scenarios fit in seconds, read through its status, stopped by PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use siesta_lifecycle::backend::Listening;

pub struct Up {
    pub child: Child,
    pub gateway: String,
    /// Holds the manifest (`isvc.yaml`) and the replicas' logs (`logs/`).
    pub dir: tempfile::TempDir,
}

impl Up {
    pub fn start(manifest: &str) -> Up {
        Self::start_with(manifest, &[])
    }

    pub fn start_with(manifest: &str, extra: &[&str]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("isvc.yaml");
        std::fs::write(&file, manifest).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_siesta"))
            .args([
                "up",
                file.to_str().unwrap(),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .args([
                "--stable-window",
                "6s",
                "--scale-to-zero-grace",
                "1s",
                "--tick",
                "200ms",
            ])
            .args(if extra.contains(&"--device") {
                &[][..]
            } else {
                &["--device", "cpu"][..]
            })
            .args(["--log-dir", dir.path().join("logs").to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let gateway = line.parse::<Listening>().expect("the listening line").http;
        Up {
            child,
            gateway: format!("http://{gateway}"),
            dir,
        }
    }

    /// The first component's status (the one a single-service scenario has).
    pub async fn status(&self) -> Value {
        self.document().await["components"][0].clone()
    }

    /// Every component's status, by component name.
    pub async fn components(&self) -> std::collections::HashMap<String, Value> {
        let doc = self.document().await;
        doc["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["component"].as_str().unwrap().to_string(), c.clone()))
            .collect()
    }

    async fn document(&self) -> Value {
        reqwest::get(format!("{}/siesta/status", self.gateway))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The gateway's Prometheus text (`/siesta/metrics`).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/siesta/metrics", self.gateway))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status().await;
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not reached within {limit:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "siesta up exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "siesta up did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A failed test still stops the replicas: SIGTERM lets `up` drain them.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
    }
}
