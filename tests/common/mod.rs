//! Starts the real `siesta` binary on free ports and stops it by PID.
#![allow(dead_code)]

pub mod raw;
pub mod up;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use siesta_lifecycle::backend::Listening;

pub struct Server {
    child: Option<Child>,
    client: reqwest::Client,
    pub http: String,
    pub grpc: String,
}

impl Server {
    /// `siesta serve` on 127.0.0.1 with ports 0 plus `args` (on the CPU unless they name a
    /// `--device`); waits for the listening line.
    pub fn start(args: &[&str]) -> Server {
        Self::start_logging(args, "warn", Stdio::inherit())
    }

    /// As [`Server::start`], with the log level and where the log goes.
    pub fn start_logging(args: &[&str], rust_log: &str, stderr: Stdio) -> Server {
        Self::start_with(args, rust_log, stderr, &[])
    }

    /// As [`Server::start_logging`], with environment variables for the server.
    pub fn start_with(
        args: &[&str],
        rust_log: &str,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Server {
        let device: &[&str] = if args.contains(&"--device") {
            &[]
        } else {
            &["--device", "cpu"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_siesta"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--http-port",
                "0",
                "--grpc-port",
                "0",
            ])
            .args(device)
            .args(args)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start siesta");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let listening: Listening = line.parse().expect("the listening line");
        Server {
            http: format!("http://{}", listening.http),
            grpc: listening
                .grpc
                .map_or_else(String::new, |g| format!("http://{g}")),
            child: Some(child),
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// One all-zero image through V2 JSON.
    pub async fn infer_zeros(&self) -> reqwest::Response {
        self.post_json("/v2/models/mnist/infer", &mnist_v2_body(&[vec![0.0; 784]]))
            .await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(self.url("/v2/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "server not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit by itself, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "siesta did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of a Prometheus sample whose line starts with `prefix` (name plus labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A V2 JSON body for the MNIST model from 28x28 images.
pub fn mnist_v2_body(images: &[Vec<f32>]) -> serde_json::Value {
    let data: Vec<f32> = images.iter().flatten().copied().collect();
    serde_json::json!({
        "inputs": [{"name": "input", "shape": [images.len(), 1, 28, 28], "datatype": "FP32", "data": data}]
    })
}

/// The held-out digits as (image, label).
pub fn held_out_digits() -> Vec<(Vec<f32>, u8)> {
    siesta_models::digits::load_digits()
        .unwrap()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| siesta_models::digits::is_held_out(*i))
        .map(|(_, d)| (siesta_models::mnist::digit_to_mnist(&d.pixels), d.label))
        .collect()
}

/// A square 8-bit grey picture, encoded (PNG, JPEG) and base64'd as image requests carry it.
pub fn grey_image_b64(px: &[u8], side: u32, format: image::ImageFormat) -> String {
    use base64::Engine;
    let img = image::GrayImage::from_raw(side, side, px.to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

/// A 28x28 image in [0, 1] as 8-bit pixels.
pub fn to_pixels(image: &[f32]) -> Vec<u8> {
    image
        .iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// A one-image V2 body for the MNIST model, as a file for `hey -D`.
pub fn mnist_body_file(dir: &std::path::Path) -> std::path::PathBuf {
    let img = vec![0.0f32; 784];
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": img}]});
    let path = dir.join("body.json");
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

/// Runs hey and returns the status codes it saw.
pub fn hey(args: &[&str], body: &std::path::Path, url: &str) -> Vec<String> {
    let out = Command::new("hey")
        .args(args)
        .args([
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            body.to_str().unwrap(),
            "-o",
            "csv",
            url,
        ])
        .output()
        .expect("hey is installed (scripts/test.sh installs it)");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(6).map(str::to_string))
        .collect()
}

/// Posts the body file to `url` through a gateway, expects 200, and returns how long the gateway
/// held the request for a replica (`x-siesta-held-ms`).
pub async fn post_held_ms(url: &str, body: &std::path::Path) -> f64 {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(std::fs::read(body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["x-siesta-held-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs hey off the async runtime, checks that every request it sent got a 200, and returns how
/// many it sent.
pub async fn hey_all_ok(args: &[&str], body: &std::path::Path, url: &str) -> usize {
    let (args, body, url): (Vec<String>, _, _) = (
        args.iter().map(|a| a.to_string()).collect(),
        body.to_path_buf(),
        url.to_string(),
    );
    let codes = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hey(&args, &body, &url)
    })
    .await
    .unwrap();
    assert!(!codes.is_empty(), "hey sent nothing");
    assert!(
        codes.iter().all(|c| c == "200"),
        "every request succeeded: {codes:?}"
    );
    codes.len()
}

/// A model store that accepts connections and never answers: a replica loading from it stays
/// loading, so the requests for it stay held. Serves its first 16 connections.
pub fn stuck_model_store() -> std::net::SocketAddr {
    let store = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = store.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for c in store.incoming().take(16) {
            open.push(c);
        }
    });
    addr
}
