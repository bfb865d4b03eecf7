//! Restarts of replicas that keep failing, as kubelet's CrashLoopBackOff spaces them, per
//! replica slot as kubelet does per pod: the first failure is replaced at once (a replica
//! killed under load must come back now), each further one waits 10 s, doubling up to 5 min,
//! and the count starts over once the slot's replica has stayed ready for 10 minutes. A
//! failure is a replica that exited unexpectedly with an error (not a drain, not an idle exit)
//! or missed its startup deadline. The component is in a crash loop when no replica is ready
//! and a slot has failed more than once since it was last ready.
//!
//! Time is passed in, so the policy is tested without waiting.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub const FIRST_DELAY: Duration = Duration::from_secs(10);
pub const MAX_DELAY: Duration = Duration::from_secs(300);
pub const HEALTHY_RESET: Duration = Duration::from_secs(600);

/// A component in a crash loop, as the status shows it and held requests are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// Consecutive failed replicas.
    pub failures: u32,
    /// What the last failed replica said (its exit status and last log line).
    pub last_error: String,
    /// Until the next start is allowed, milliseconds.
    pub retry_in_ms: u64,
}

#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
    last_error: Option<String>,
    not_before: Option<Instant>,
    /// A replica became ready after the last failure: the component is serving again.
    recovered: bool,
    healthy_since: Option<Instant>,
}

impl Backoff {
    /// A replica failed; `error` says how.
    pub fn failed(&mut self, now: Instant, error: String) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
        self.recovered = false;
        self.healthy_since = None;
        self.not_before = Some(now + delay(self.failures));
    }

    /// Whether a new replica may be started now.
    pub fn may_start(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// Whether any replica is ready now; after 10 minutes of readiness the count starts over.
    pub fn observe(&mut self, now: Instant, any_ready: bool) {
        if !any_ready {
            self.healthy_since = None;
            return;
        }
        self.recovered = true;
        let since = *self.healthy_since.get_or_insert(now);
        if self.failures > 0 && now.duration_since(since) >= HEALTHY_RESET {
            *self = Backoff::default();
        }
    }

    /// The crash loop, while the component is in one: replicas failed more than once and none
    /// has become ready since (what the status shows).
    pub fn crash_loop(&self, now: Instant) -> Option<CrashLoop> {
        if self.failures < 2 || self.recovered {
            return None;
        }
        Some(CrashLoop {
            failures: self.failures,
            last_error: self.last_error.clone().unwrap_or_default(),
            retry_in_ms: self
                .not_before
                .map_or(0, |t| t.saturating_duration_since(now).as_millis() as u64),
        })
    }
}

/// A component's replica slots, each backing off on its own as kubelet does per pod: the slot
/// whose replica failed waits, the component's other slots start at once. (A slot is a
/// replica's place in the component, numbered from 1: its log file, its pod.)
#[derive(Debug, Default)]
pub struct Slots {
    by_slot: std::collections::BTreeMap<usize, Backoff>,
}

impl Slots {
    pub fn failed(&mut self, slot: usize, now: Instant, error: String) {
        self.by_slot.entry(slot).or_default().failed(now, error);
    }

    /// Which slots have a ready replica now.
    pub fn observe(&mut self, now: Instant, ready: impl Fn(usize) -> bool) {
        for (slot, b) in &mut self.by_slot {
            b.observe(now, ready(*slot));
        }
    }

    /// The lowest slot of `1..=limit` that is not `taken` and may start now.
    pub fn free(&self, now: Instant, limit: usize, taken: &[usize]) -> Option<usize> {
        (1..=limit)
            .find(|s| !taken.contains(s) && self.by_slot.get(s).is_none_or(|b| b.may_start(now)))
    }

    /// The component's crash loop: no replica is ready, and a slot's replicas failed more than
    /// once since it last had a ready one (the slot that failed most is the one shown).
    pub fn crash_loop(&self, now: Instant, any_ready: bool) -> Option<CrashLoop> {
        if any_ready {
            return None;
        }
        self.by_slot
            .values()
            .filter_map(|b| b.crash_loop(now))
            .max_by_key(|c| c.failures)
    }

    /// The crash loop while no slot of `1..=limit` may start: requests are answered with it
    /// instead of held.
    pub fn refusing(
        &self,
        now: Instant,
        any_ready: bool,
        limit: usize,
        taken: &[usize],
    ) -> Option<CrashLoop> {
        self.crash_loop(now, any_ready)
            .filter(|_| self.free(now, limit.max(1), taken).is_none())
    }
}

/// The wait before the start that follows failure number `failures` (1-based).
pub fn delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => FIRST_DELAY
            .saturating_mul(1u32.checked_shl(n - 2).unwrap_or(u32::MAX))
            .min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delays_follow_kubelet_after_one_immediate_replacement() {
        let d: Vec<u64> = (1..=9).map(|n| delay(n).as_secs()).collect();
        assert_eq!(d, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_failing_component_waits_between_starts_and_says_why() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.may_start(t0));
        b.failed(t0, "exit status: 1: model load failed".into());
        assert!(b.may_start(t0), "one failure is replaced at once");
        assert_eq!(b.crash_loop(t0), None, "one failure is not a loop");

        b.failed(t0 + S, "exit status: 1: model load failed".into());
        assert!(!b.may_start(t0 + 5 * S));
        assert!(!b.may_start(t0 + 10 * S) && b.may_start(t0 + 11 * S));
        assert!(b.may_start(t0 + 11 * S));
        assert!(
            b.crash_loop(t0 + 11 * S).is_some(),
            "still shown until a replica is ready"
        );
        let c = b.crash_loop(t0 + 5 * S).unwrap();
        assert_eq!(
            (c.failures, c.retry_in_ms, c.last_error.as_str()),
            (2, 6_000, "exit status: 1: model load failed")
        );

        b.failed(t0 + 12 * S, "again".into());
        assert!(!b.may_start(t0 + 31 * S) && b.may_start(t0 + 32 * S));
    }

    #[test]
    fn readiness_ends_the_loop_and_ten_healthy_minutes_reset_the_delay() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.failed(t0, "a".into());
        b.failed(t0, "b".into());
        assert!(b.crash_loop(t0).is_some());
        b.observe(t0 + 10 * S, true);
        assert_eq!(b.crash_loop(t0 + 10 * S), None, "serving again");

        // A crash after 5 healthy minutes continues the count: the next start waits 20 s.
        b.observe(t0 + 310 * S, true);
        b.failed(t0 + 310 * S, "c".into());
        assert!(!b.may_start(t0 + 329 * S) && b.may_start(t0 + 330 * S));

        // Ready for 10 minutes: the next failure is replaced at once again.
        b.observe(t0 + 400 * S, true);
        b.observe(t0 + 1000 * S, true);
        b.failed(t0 + 1000 * S, "d".into());
        assert!(b.may_start(t0 + 1000 * S));
    }

    #[test]
    fn a_slot_that_keeps_failing_waits_while_the_others_start_at_once() {
        let t0 = Instant::now();
        let mut slots = Slots::default();
        // Slot 2's replica is killed twice; slots 1 and 3 serve.
        slots.failed(2, t0, "signal: 9 (SIGKILL)".into());
        assert_eq!(
            slots.free(t0, 3, &[1, 3]),
            Some(2),
            "the first is replaced at once"
        );
        slots.failed(2, t0 + S, "signal: 9 (SIGKILL)".into());
        assert_eq!(slots.free(t0 + 2 * S, 3, &[1, 3]), None);
        assert_eq!(slots.free(t0 + 10 * S, 3, &[1, 3]), None);
        // A fourth replica (more demand, or a rollout's surge) takes slot 4 at once.
        assert_eq!(slots.free(t0 + 2 * S, 4, &[1, 3]), Some(4));
        // Others are ready: no crash loop for the component.
        slots.observe(t0 + 2 * S, |s| s != 2);
        assert_eq!(slots.crash_loop(t0 + 2 * S, true), None);
        assert!(slots.refusing(t0 + 2 * S, true, 3, &[1, 3]).is_none());
        assert_eq!(slots.free(t0 + 11 * S, 3, &[1, 3]), Some(2));
    }

    #[test]
    fn a_component_whose_only_slot_keeps_failing_is_in_a_crash_loop() {
        let t0 = Instant::now();
        let mut slots = Slots::default();
        slots.failed(1, t0, "exit status: 1: model load failed".into());
        assert!(slots.crash_loop(t0, false).is_none(), "one failure");
        slots.failed(1, t0 + S, "exit status: 1: model load failed".into());
        let c = slots.refusing(t0 + 2 * S, false, 1, &[]).expect("refused");
        assert_eq!(c.failures, 2);
        assert!(
            slots.refusing(t0 + 11 * S, false, 1, &[]).is_none(),
            "the next attempt may come"
        );
        // Wanted count 0 (scaled to zero meanwhile): the next request may still bring a start.
        assert!(slots.refusing(t0 + 11 * S, false, 0, &[]).is_none());
        assert!(slots.crash_loop(t0 + 11 * S, false).is_some());
        // Slot 2 is not a way around slot 1's backoff when one replica is wanted.
        assert_eq!(slots.free(t0 + 2 * S, 1, &[]), None);
    }

    #[test]
    fn readiness_lost_restarts_the_healthy_clock() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.failed(t0, "a".into());
        b.observe(t0, true);
        b.observe(t0 + 500 * S, false);
        b.observe(t0 + 501 * S, true);
        b.observe(t0 + 700 * S, true);
        b.failed(t0 + 700 * S, "b".into());
        assert!(
            !b.may_start(t0 + 700 * S),
            "199 s healthy is not 10 minutes"
        );
    }
}
