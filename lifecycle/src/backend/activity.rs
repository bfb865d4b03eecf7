//! What the gateway sees of a component's traffic, shared with its backend: requests waiting
//! for a replica, and per replica the requests in flight and when it was last used. The
//! backend parks by it (the least recently used idle replica first) and makes room on a GPU
//! only for a component that has requests waiting.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaUse {
    pub in_flight: u32,
    pub last_used: Instant,
}

#[derive(Debug, Default)]
pub struct Activity {
    state: Mutex<State>,
    /// Notified when requests start waiting: the backend may have to make room for them.
    pub demand: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    waiting: usize,
    replicas: HashMap<String, ReplicaUse>,
}

impl Activity {
    /// A request took a slot on `replica`.
    pub fn begin(&self, replica: &str, now: Instant) {
        let mut st = self.state.lock();
        let u = st
            .replicas
            .entry(replica.to_string())
            .or_insert(ReplicaUse {
                in_flight: 0,
                last_used: now,
            });
        u.in_flight += 1;
        u.last_used = now;
    }

    /// A request on `replica` finished.
    pub fn end(&self, replica: &str, now: Instant) {
        if let Some(u) = self.state.lock().replicas.get_mut(replica) {
            u.in_flight = u.in_flight.saturating_sub(1);
            u.last_used = now;
        }
    }

    pub fn set_waiting(&self, waiting: usize) {
        let before = std::mem::replace(&mut self.state.lock().waiting, waiting);
        if waiting > before {
            self.demand.notify_one();
        }
    }

    /// Requests held or queued for a slot.
    pub fn waiting(&self) -> usize {
        self.state.lock().waiting
    }

    /// `None`: the gateway never sent it a request.
    pub fn replica(&self, replica: &str) -> Option<ReplicaUse> {
        self.state.lock().replicas.get(replica).copied()
    }

    /// Forgets a replica that is gone.
    pub fn forget(&self, replica: &str) {
        self.state.lock().replicas.remove(replica);
    }
}
