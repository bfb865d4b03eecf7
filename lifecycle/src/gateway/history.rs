//! The dashboard's memory: one sample per second of every component's replicas by tier,
//! demand and cold starts, kept for 15 minutes in the gateway, so a page opened after an
//! incident shows the incident. `GET /siesta/history[?since=UNIX_MS]`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::status::StatusDocument;

pub const INTERVAL: Duration = Duration::from_secs(1);
/// 15 minutes of one-second samples.
pub const KEEP: usize = 900;

/// One component at one second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub parked: u32,
    pub waiting: usize,
    pub in_flight: u32,
    pub stable: f64,
    pub panic: f64,
    pub device_memory_bytes: u64,
    /// Requests at zero served by a resumed or a new replica since the gateway started.
    pub cold_resume: u64,
    pub cold_spawn: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Unix time, milliseconds.
    pub t: u64,
    pub components: BTreeMap<String, Point>,
}

#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

#[derive(Debug, Serialize)]
pub struct HistoryDocument {
    pub interval_ms: u64,
    pub keep: usize,
    pub samples: Vec<Sample>,
}

impl History {
    pub fn record(&self, t: u64, doc: &StatusDocument) {
        let components = doc
            .components
            .iter()
            .map(|c| {
                (
                    c.component.clone(),
                    Point {
                        desired: c.desired,
                        ready: c.ready,
                        starting: c.starting,
                        parked: c.parked,
                        waiting: c.waiting,
                        in_flight: c.in_flight,
                        stable: c.autoscaler.stable,
                        panic: c.autoscaler.panic,
                        device_memory_bytes: c.device_memory_bytes,
                        cold_resume: c.cold_starts.resume,
                        cold_spawn: c.cold_starts.spawn,
                    },
                )
            })
            .collect();
        let mut samples = self.samples.lock();
        samples.push_back(Sample { t, components });
        while samples.len() > KEEP {
            samples.pop_front();
        }
    }

    /// Samples after `since` (all of them without it).
    pub fn since(&self, since: Option<u64>) -> HistoryDocument {
        HistoryDocument {
            interval_ms: INTERVAL.as_millis() as u64,
            keep: KEEP,
            samples: self
                .samples
                .lock()
                .iter()
                .filter(|s| since.is_none_or(|t| s.t > t))
                .cloned()
                .collect(),
        }
    }

    /// Samples `status` every second for as long as the history is shared with anyone else.
    pub fn run(
        self: &Arc<Self>,
        status: impl Fn() -> StatusDocument + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(history) = weak.upgrade() else {
                    return;
                };
                history.record(unix_ms(), &status());
            }
        })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ComponentKind, ScaleMetric};
    use crate::status::ComponentStatus;

    fn doc(ready: u32) -> StatusDocument {
        StatusDocument {
            components: vec![ComponentStatus {
                component: "m-predictor".into(),
                service: "m".into(),
                kind: ComponentKind::Predictor,
                desired: ready,
                starting: 0,
                ready,
                parked: 1,
                device_memory_bytes: 0,
                in_flight: 0,
                autoscaler: Default::default(),
                waiting: 0,
                metric: ScaleMetric::Concurrency,
                target: 1.0,
                min_replicas: 0,
                max_replicas: 0,
                container_concurrency: 0,
                endpoints: vec![],
                pending: None,
                crash_loop: None,
                cold_starts: Default::default(),
            }],
            gpus: vec![],
        }
    }

    #[test]
    fn keeps_fifteen_minutes_of_seconds_and_answers_what_is_new() {
        let h = History::default();
        for i in 0..(KEEP as u64 + 100) {
            h.record(1_000 * i, &doc(i as u32 % 3));
        }
        let all = h.since(None);
        assert_eq!(all.samples.len(), KEEP);
        assert_eq!(all.samples[0].t, 100_000, "the oldest went first");
        let newer = h.since(Some(1_000 * (KEEP as u64 + 97)));
        assert_eq!(newer.samples.len(), 2);
        assert_eq!(newer.samples[1].components["m-predictor"].parked, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sampler_records_each_second_and_stops_with_the_history() {
        let h = Arc::new(History::default());
        let task = h.run(|| doc(1));
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(h.since(None).samples.len(), 4, "at 0, 1, 2 and 3 s");
        drop(h);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(task.is_finished());
    }
}
