//! The lifecycle manager's side of replica control (`siesta_http_server::replica_control`):
//! park, resume and the tier report, over loopback or the pod network, with the token the
//! backend gave the replica. One short HTTP/1.1 exchange per call, bounded in time and size.

use std::net::SocketAddr;
use std::time::Duration;

use siesta_http_server::replica_control::{PARK_PATH, REPORT_PATH, RESUME_PATH, TOKEN_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A park waits for the replica's in-flight requests (up to 30 s there), then releases.
const CALL_TIMEOUT: Duration = Duration::from_secs(40);
const MAX_ANSWER: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("replica control at {addr}: {reason}")]
    Call { addr: SocketAddr, reason: String },
}

/// What a replica reports about itself (a subset of its `/siesta/replica` document).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct TierReport {
    pub tier: String,
    pub device_memory_bytes: u64,
    #[serde(default)]
    pub host_memory_bytes: u64,
    #[serde(default)]
    pub models: Vec<ModelReport>,
    /// Park and resume: the call's own time on the replica.
    #[serde(default)]
    pub took_ms: f64,
    /// Resume: the weights' upload.
    #[serde(default)]
    pub upload_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct ModelReport {
    pub name: String,
    pub load: LoadReport,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
pub struct LoadReport {
    pub fetch: f64,
    pub load: f64,
    pub warm_up: f64,
}

impl TierReport {
    /// The models' load phases added up (a replica usually serves one).
    pub fn load_phases(&self) -> (Duration, Duration, Duration) {
        let ms = |f: f64| Duration::from_secs_f64(f.max(0.0) / 1e3);
        self.models.iter().fold(
            (Duration::ZERO, Duration::ZERO, Duration::ZERO),
            |(f, l, w), m| {
                (
                    f + ms(m.load.fetch),
                    l + ms(m.load.load),
                    w + ms(m.load.warm_up),
                )
            },
        )
    }
}

pub async fn report(addr: SocketAddr, token: &str) -> Result<TierReport, ControlError> {
    call(addr, token, "GET", REPORT_PATH).await
}

pub async fn park(addr: SocketAddr, token: &str) -> Result<TierReport, ControlError> {
    call(addr, token, "POST", PARK_PATH).await
}

pub async fn resume(addr: SocketAddr, token: &str) -> Result<TierReport, ControlError> {
    call(addr, token, "POST", RESUME_PATH).await
}

async fn call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
) -> Result<TierReport, ControlError> {
    let fail = |reason: String| ControlError::Call { addr, reason };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let _ = s.set_nodelay(true);
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{TOKEN_HEADER}: {token}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| fail(format!("send: {e}")))?;
        let mut answer = Vec::new();
        s.take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| fail(format!("read: {e}")))?;
        Ok::<_, ControlError>(answer)
    };
    let answer = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))??;
    parse_answer(&answer).map_err(fail)
}

/// Status line and JSON body of a `connection: close` answer.
fn parse_answer(answer: &[u8]) -> Result<TierReport, String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete answer")?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| "answer head is not UTF-8")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status line")?;
    let body = &answer[split + 4..];
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("chunked answers are not expected".into());
    }
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
        return Err(format!("status {status}: {text}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("bad report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_or_refused_with_the_reason() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n\
            {\"tier\":\"parked\",\"device_memory_bytes\":0,\"host_memory_bytes\":5,\
            \"models\":[{\"name\":\"m\",\"load\":{\"fetch\":1.0,\"load\":2.5,\"warm_up\":0.5}}],\
            \"took_ms\":0.3}";
        let r = parse_answer(ok).unwrap();
        assert_eq!(r.tier, "parked");
        assert_eq!(
            r.load_phases(),
            (
                Duration::from_millis(1),
                Duration::from_micros(2500),
                Duration::from_micros(500)
            )
        );
        let denied = b"HTTP/1.1 403 Forbidden\r\n\r\n{\"error\":\"needs the token\"}";
        assert!(parse_answer(denied).unwrap_err().contains("status 403"));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n{not json").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }
}
