//! Raw HTTP/1 exchanges for hostile-client tests: exactly the bytes a misbehaving client sends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends raw bytes on a fresh connection and reads one response: (status, body).
pub fn raw_exchange(
    addr: &str,
    request: &[u8],
    close_write: bool,
    pause_after: Option<Duration>,
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    if let Some(p) = pause_after {
        std::thread::sleep(p);
    }
    if close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s
            .read(&mut chunk)
            .expect("the server must answer, not hang");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                return (status, buf[end + 4..end + 4 + len].to_vec());
            }
        }
    }
    panic!(
        "connection closed without a full response: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

/// Sends half a request head and waits for the server to close the connection; how long it took.
pub fn half_a_header_is_cut_off(addr: &str) -> Duration {
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(addr.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-le")
        .unwrap();
    let mut buf = Vec::new();
    // EOF, or a 408 then EOF; a read timeout (the connection held open) fails the test.
    s.read_to_end(&mut buf)
        .expect("the server closes a connection whose head never completes");
    let head = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || head.starts_with("HTTP/1.1 408"), "{head}");
    started.elapsed()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
