//! `siesta scale decide`: the live autoscaler's decider, fed JSON lines instead of metrics, so
//! Knative's own unit-test cases can be replayed through the same code.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use serde::Deserialize;
use siesta_lifecycle::autoscaler::{Decider, DeciderSpec, Observation};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    now_ms: u64,
    ready: u32,
    stable: f64,
    panic: f64,
    #[serde(default = "yes")]
    reachable: bool,
}

fn yes() -> bool {
    true
}

/// The decider is created at the first line's time with `initial_ready` replicas (default: the
/// first line's `ready`), as Knative creates one when a revision's autoscaler starts, in panic
/// when more than one replica is ready.
pub fn run(
    spec: DeciderSpec,
    initial_ready: Option<u32>,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<()> {
    let mut decider: Option<Decider> = None;
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line =
            serde_json::from_str(&line).with_context(|| format!("line {}: {line}", n + 1))?;
        let d = decider.get_or_insert_with(|| {
            Decider::new(spec.clone(), l.now_ms, initial_ready.unwrap_or(l.ready))
        });
        let decision = d.scale(Observation {
            now_ms: l.now_ms,
            ready: l.ready,
            stable: l.stable,
            panic: l.panic,
            reachable: l.reachable,
        });
        serde_json::to_writer(&mut output, &decision)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}
