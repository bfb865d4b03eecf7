//! Draining on SIGTERM and the idle tiers (release device memory, exit): how a replica stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics;
use crate::registry::ModelRegistry;
use crate::status::ModelState;

#[derive(Default)]
pub struct ServerLifecycle {
    draining: AtomicBool,
    shutdown: Notify,
}

impl ServerLifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Fails readiness and new requests, and tells the servers to stop accepting connections.
    pub fn begin_drain(&self, why: &str) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            tracing::info!(
                reason = why,
                "draining: readiness fails, in-flight requests finish"
            );
            metrics::server_draining(true);
            self.shutdown.notify_waiters();
        }
    }

    pub async fn drained(&self) {
        let notified = self.shutdown.notified();
        if self.is_draining() {
            return;
        }
        notified.await;
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct IdlePolicy {
    pub release_after: Option<Duration>,
    pub exit_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAction {
    Nothing,
    Release,
    Exit,
}

/// What one model's idleness calls for. Pure, with `now` passed in, so every rule is testable.
pub fn idle_action(
    policy: IdlePolicy,
    now: Instant,
    last_activity: Instant,
    in_flight: usize,
    state: ModelState,
) -> IdleAction {
    if in_flight > 0 {
        return IdleAction::Nothing;
    }
    let idle = now.saturating_duration_since(last_activity);
    if policy.exit_after.is_some_and(|d| idle >= d) {
        return IdleAction::Exit;
    }
    if state == ModelState::Ready && policy.release_after.is_some_and(|d| idle >= d) {
        return IdleAction::Release;
    }
    IdleAction::Nothing
}

/// Watches every model and applies the idle tiers. Exit happens when all models are idle.
pub async fn run_idle_watch(
    registry: Arc<ModelRegistry>,
    lifecycle: Arc<ServerLifecycle>,
    policy: IdlePolicy,
) {
    let Some(shortest) = [policy.release_after, policy.exit_after]
        .into_iter()
        .flatten()
        .min()
    else {
        return;
    };
    let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        if lifecycle.is_draining() {
            return;
        }
        let now = Instant::now();
        let handles = registry.handles();
        let mut all_exit = !handles.is_empty();
        for h in &handles {
            let s = &h.status;
            match idle_action(policy, now, s.last_activity(), s.in_flight(), s.state()) {
                IdleAction::Release => h.release_device_memory().await,
                IdleAction::Exit => continue,
                IdleAction::Nothing => {}
            }
            all_exit = false;
        }
        if all_exit {
            lifecycle.begin_drain("idle: no request within --idle-exit-after");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IdlePolicy {
        IdlePolicy {
            release_after: Some(Duration::from_secs(10)),
            exit_after: Some(Duration::from_secs(60)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tiers_follow_idle_time_and_never_touch_busy_models() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let p = policy();
        assert_eq!(
            idle_action(p, at(9), t0, 0, ModelState::Ready),
            IdleAction::Nothing
        );
        assert_eq!(
            idle_action(p, at(10), t0, 0, ModelState::Ready),
            IdleAction::Release
        );
        assert_eq!(
            idle_action(p, at(30), t0, 0, ModelState::Released),
            IdleAction::Nothing
        );
        assert_eq!(
            idle_action(p, at(60), t0, 0, ModelState::Released),
            IdleAction::Exit
        );
        assert_eq!(
            idle_action(p, at(600), t0, 1, ModelState::Ready),
            IdleAction::Nothing
        );
        let none = IdlePolicy::default();
        assert_eq!(
            idle_action(none, at(10_000), t0, 0, ModelState::Ready),
            IdleAction::Nothing
        );
    }
}
