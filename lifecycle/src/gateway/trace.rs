//! `siesta up --record-trace FILE`: one JSON line per answered request
//! (`{"component", "t_ms", "duration_ms"}`: arrival since start and time on the replica), the
//! input of `siesta scale simulate`. Written by a background task through a bounded channel so
//! the request path never waits on the disk; lines that do not fit are counted and dropped.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

#[derive(Clone)]
pub struct TraceRecorder {
    tx: mpsc::Sender<String>,
}

impl TraceRecorder {
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        let (tx, mut rx) = mpsc::channel::<String>(8192);
        std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Some(line) = rx.blocking_recv() {
                    let _ = writeln!(out, "{line}");
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
                let _ = out.flush();
            })?;
        Ok(TraceRecorder { tx })
    }

    pub fn record(&self, component: &str, t_ms: u64, on_replica: Duration) {
        let line = serde_json::json!({"component": component, "t_ms": t_ms, "duration_ms": on_replica.as_millis() as u64});
        if self.tx.try_send(line.to_string()).is_err() {
            metrics::counter!("siesta_gateway_trace_dropped_total").increment(1);
        }
    }
}
