//! The scale-down-delay window: the maximum recommendation over the last `delay`, in buckets of
//! one tick indexed by absolute time (Knative's aggregation/max/timewindow.go), kept as a
//! monotonic deque so each record is amortised O(1).

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MaxTimeWindow {
    buckets: u64,
    granularity_ms: u64,
    /// (bucket index, value), indexes ascending, values strictly descending.
    entries: VecDeque<(u64, i32)>,
}

impl MaxTimeWindow {
    pub fn new(duration: Duration, granularity: Duration) -> Self {
        let granularity_ms = (granularity.as_millis() as u64).max(1);
        MaxTimeWindow {
            buckets: (duration.as_millis() as u64)
                .div_ceil(granularity_ms)
                .max(1),
            granularity_ms,
            entries: VecDeque::new(),
        }
    }

    /// Records `value` at `now_ms` (milliseconds on any fixed clock).
    pub fn record(&mut self, now_ms: u64, value: i32) {
        let index = now_ms / self.granularity_ms;
        while self
            .entries
            .front()
            .is_some_and(|&(i, _)| index.saturating_sub(i) >= self.buckets)
        {
            self.entries.pop_front();
        }
        while self.entries.back().is_some_and(|&(_, v)| v <= value) {
            self.entries.pop_back();
        }
        self.entries.push_back((index, value));
    }

    pub fn current(&self) -> i32 {
        self.entries.front().map_or(0, |&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_max_until_it_ages_out() {
        let mut w = MaxTimeWindow::new(Duration::from_secs(6), Duration::from_secs(2));
        w.record(0, 5);
        w.record(2_000, 3);
        assert_eq!(w.current(), 5);
        w.record(4_000, 1);
        assert_eq!(w.current(), 5);
        w.record(6_000, 1); // bucket 3: bucket 0 (the 5) is now 3 buckets old and expires
        assert_eq!(w.current(), 3);
        w.record(8_000, 1);
        assert_eq!(w.current(), 1);
        w.record(8_500, 7); // same bucket, larger value replaces
        assert_eq!(w.current(), 7);
    }
}
