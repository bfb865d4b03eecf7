//! How a replica became ready, phase by phase, for the requests that waited for it: the
//! `x-siesta-cold-start` header and `siesta_cold_start_seconds`.

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdStartKind {
    /// A parked replica's weights went back onto the device.
    Resume,
    /// A new process started and loaded the model.
    Spawn,
}

impl ColdStartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ColdStartKind::Resume => "resume",
            ColdStartKind::Spawn => "spawn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ColdStart {
    pub kind: ColdStartKind,
    /// Process start to its model load (exec, runtime start-up, binding ports), and for a
    /// resume the round trip of the control call.
    pub process: Duration,
    /// Resolving the model: the cache or a download.
    pub fetch: Duration,
    /// Reading the weights and putting them on the device (for a spawn).
    pub load: Duration,
    /// Uploading the host copy to the device again (for a resume).
    pub upload: Duration,
    pub warm_up: Duration,
}

impl ColdStart {
    pub fn total(&self) -> Duration {
        self.process + self.fetch + self.load + self.upload + self.warm_up
    }

    /// `x-siesta-cold-start-ms`: each phase in milliseconds, and `queue`, the rest of the time
    /// the request was held (`held`), e.g. waiting for the autoscaler's tick or a slot.
    pub fn phases_header(&self, held: Duration) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut out = String::new();
        for (name, d) in [
            ("process", self.process),
            ("fetch", self.fetch),
            ("load", self.load),
            ("upload", self.upload),
            ("warmup", self.warm_up),
            ("queue", held.saturating_sub(self.total())),
        ] {
            let _ = write!(
                out,
                "{}{name}={:.3}",
                if out.is_empty() { "" } else { ";" },
                ms(d)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_splits_the_held_time_into_phases_and_queue() {
        let ms = Duration::from_millis;
        let c = ColdStart {
            kind: ColdStartKind::Spawn,
            process: ms(8),
            fetch: ms(1),
            load: ms(10),
            upload: Duration::ZERO,
            warm_up: ms(3),
        };
        assert_eq!(c.total(), ms(22));
        assert_eq!(
            c.phases_header(ms(30)),
            "process=8.000;fetch=1.000;load=10.000;upload=0.000;warmup=3.000;queue=8.000"
        );
        // Held for less than the start took (it arrived while the replica was starting).
        assert!(c.phases_header(ms(5)).ends_with("queue=0.000"));
    }
}
