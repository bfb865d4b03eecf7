//! Per-component demand as queue-proxy and the activator measure it: requests in flight
//! (from arrival at the gateway, so held requests count), averaged over time (in-flight x dt),
//! and requests started per report interval. Time is passed in.

#[derive(Debug, Clone, Default)]
pub struct DemandStats {
    in_flight: u32,
    last_change_ms: u64,
    /// Sum of in-flight x milliseconds since the last report.
    weighted_ms: f64,
    requests: u64,
    report_started_ms: u64,
}

/// One report: the time-weighted average in flight and the request rate over the interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemandReport {
    pub concurrency: f64,
    pub rps: f64,
}

impl DemandStats {
    pub fn new(now_ms: u64) -> Self {
        DemandStats {
            last_change_ms: now_ms,
            report_started_ms: now_ms,
            ..Default::default()
        }
    }

    fn advance(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_change_ms);
        self.weighted_ms += f64::from(self.in_flight) * dt as f64;
        self.last_change_ms = now_ms.max(self.last_change_ms);
    }

    pub fn start(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.in_flight += 1;
        self.requests += 1;
    }

    pub fn end(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Averages since the previous report and starts a new interval.
    pub fn report(&mut self, now_ms: u64) -> DemandReport {
        self.advance(now_ms);
        let elapsed = now_ms.saturating_sub(self.report_started_ms);
        let report = if elapsed == 0 {
            DemandReport {
                concurrency: f64::from(self.in_flight),
                rps: 0.0,
            }
        } else {
            DemandReport {
                concurrency: self.weighted_ms / elapsed as f64,
                rps: self.requests as f64 * 1000.0 / elapsed as f64,
            }
        };
        self.weighted_ms = 0.0;
        self.requests = 0;
        self.report_started_ms = now_ms;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_half_second_requests_in_one_second_average_one() {
        let mut s = DemandStats::new(0);
        s.start(0);
        s.start(0);
        s.end(500);
        s.end(500);
        let r = s.report(1_000);
        assert_eq!(r.concurrency, 1.0);
        assert_eq!(r.rps, 2.0);
        // A request still in flight carries over into the next interval.
        s.start(1_500);
        assert_eq!(s.report(2_000).concurrency, 0.5);
        assert_eq!(
            s.report(3_000),
            DemandReport {
                concurrency: 1.0,
                rps: 0.0
            }
        );
    }
}
