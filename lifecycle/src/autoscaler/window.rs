//! Windowed averages of the per-second metric (Knative's aggregation/bucketing.go, linear): one
//! bucket per granularity step in a ring, gaps between writes count as 0, a window that started
//! less than a window ago averages only over the buckets since its first write, and a window with
//! no write for longer than itself has no data.

#[derive(Debug, Clone)]
pub struct WindowAverage {
    buckets: Vec<f64>,
    granularity_ms: u64,
    /// Bucket indexes (time / granularity) of the first and the latest write.
    first: Option<u64>,
    last: u64,
}

impl WindowAverage {
    pub fn new(window_ms: u64, granularity_ms: u64) -> Self {
        let granularity_ms = granularity_ms.max(1);
        let n = window_ms.div_ceil(granularity_ms).max(1) as usize;
        WindowAverage {
            buckets: vec![0.0; n],
            granularity_ms,
            first: None,
            last: 0,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn slot(&self, index: u64) -> usize {
        (index % self.len()) as usize
    }

    /// Adds `value` to the bucket of `now_ms` (several sources may add to one bucket).
    pub fn record(&mut self, now_ms: u64, value: f64) {
        let index = now_ms / self.granularity_ms;
        match self.first {
            None => {
                self.first = Some(index);
                self.last = index;
            }
            Some(_) if index > self.last => {
                if index - self.last >= self.len() {
                    self.buckets.iter_mut().for_each(|b| *b = 0.0);
                    self.first = Some(index);
                } else {
                    for i in self.last + 1..=index {
                        let s = self.slot(i);
                        self.buckets[s] = 0.0;
                    }
                }
                self.last = index;
            }
            // A late write older than the window is dropped; a recent one lands in its bucket.
            Some(_) if self.last - index >= self.len() => return,
            Some(_) => {}
        }
        let s = self.slot(index);
        self.buckets[s] += value;
    }

    /// The average at `now_ms`; `None` when nothing was written within the window (no data:
    /// the autoscaler makes no decision).
    pub fn average(&self, now_ms: u64) -> Option<f64> {
        let first = self.first?;
        let index = (now_ms / self.granularity_ms).max(self.last);
        let n = self.len();
        let idle = index - self.last;
        if idle > n {
            return None;
        }
        if idle == n {
            return Some(0.0);
        }
        // The buckets still inside the window, summed afresh each time: a running total drifts
        // (adding and removing 4.87 leaves 1e-15, and ceil(1e-15 / target) is one replica that
        // never goes away).
        let lo = first.max((index + 1).saturating_sub(n));
        let sum: f64 = (lo..=self.last).map(|i| self.buckets[self.slot(i)]).sum();
        Some(sum / (self.last - lo + 1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_over_buckets_since_the_first_write() {
        let mut w = WindowAverage::new(6_000, 1_000);
        assert_eq!(w.average(0), None, "no data yet");
        w.record(0, 2.0);
        w.record(1_000, 4.0);
        assert_eq!(
            w.average(1_000),
            Some(3.0),
            "two buckets since the first write"
        );
        w.record(1_500, 2.0);
        assert_eq!(w.average(1_999), Some(4.0), "writes in one bucket add up");
    }

    #[test]
    fn gaps_count_as_zero_and_old_buckets_fall_out() {
        let mut w = WindowAverage::new(4_000, 1_000);
        for t in 0..4 {
            w.record(t * 1_000, 4.0);
        }
        assert_eq!(w.average(3_000), Some(4.0));
        // No write at 4 s or 5 s: 2 of the 4 buckets are left in the window.
        assert_eq!(w.average(5_000), Some(4.0));
        w.record(6_000, 0.0);
        assert_eq!(
            w.average(6_000),
            Some(4.0 / 4.0),
            "buckets 3..6: 4, 0, 0, 0"
        );
        assert_eq!(
            w.average(10_000),
            Some(0.0),
            "a full window without writes averages 0"
        );
        assert_eq!(w.average(11_000), None, "longer than a window: no data");
        w.record(20_000, 8.0);
        assert_eq!(
            w.average(20_000),
            Some(8.0),
            "the buffer restarted at the new write"
        );
    }

    #[test]
    fn values_that_left_the_window_leave_exactly_zero() {
        let mut w = WindowAverage::new(6_000, 1_000);
        for t in 0..20 {
            w.record(t * 1_000, 4.87 + t as f64 * 0.013);
        }
        for t in 20..30 {
            w.record(t * 1_000, 0.0);
        }
        assert_eq!(w.average(29_000), Some(0.0));
    }

    #[test]
    fn a_window_that_wrapped_keeps_exactly_n_buckets() {
        let mut w = WindowAverage::new(3_000, 1_000);
        for (t, v) in [(0, 9.0), (1_000, 3.0), (2_000, 3.0), (3_000, 3.0)] {
            w.record(t, v);
        }
        assert_eq!(
            w.average(3_000),
            Some(3.0),
            "the 9 from second 0 left the window"
        );
    }
}
