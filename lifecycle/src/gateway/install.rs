//! One InferenceService wired into a gateway, the same for `siesta up` and `siesta gateway`: per
//! component the backend learns it, a pool counts and holds its requests, and an autoscaler runs
//! for it; the service gets its route (the transformer, if any, is the entry; the predictor is
//! what it calls).

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::Route;
use super::pool::Pool;
use crate::autoscaler::live::LiveAutoscaler;
use crate::backend::{ComponentKey, ReplicaBackend};
use crate::manifest::{Component, InferenceService};
use crate::status::{ScalingView, Watched};

/// What every installed service shares.
#[derive(Debug, Clone, Copy)]
pub struct InstallSettings {
    /// Requests held per component while it has no ready replica.
    pub hold_limit: usize,
    pub enable_scale_to_zero: bool,
}

pub struct InstalledService {
    pub route: Route,
    pub keys: Vec<ComponentKey>,
    /// For the status document.
    pub watched: Vec<Watched>,
    autoscalers: Vec<JoinHandle<()>>,
}

impl InstalledService {
    /// Stops its autoscalers; the replicas stay as they are (the backend owns them).
    pub fn stop(&self) {
        for a in &self.autoscalers {
            a.abort();
        }
    }

    /// Stops serving it: its autoscalers stop and the requests its components hold are
    /// answered (503) instead of waiting for replicas that no longer come.
    pub fn remove(&self) {
        self.stop();
        for (pool, _) in &self.watched {
            pool.close();
        }
    }

    /// A new spec for the same service, applied in place: the pools (with their held
    /// requests and demand windows) stay, `containerConcurrency`, the scaling settings and
    /// the timeout are the new spec's, and `register` hands each component's new spec to the
    /// backend (which rolls its replicas). `Ok(false)`: the components themselves changed (a
    /// transformer added or removed), so the service must be installed anew.
    pub fn update<E>(
        &mut self,
        isvc: &InferenceService,
        backend: Arc<dyn ReplicaBackend>,
        settings: InstallSettings,
        mut register: impl FnMut(&ComponentKey, &Component) -> Result<(), E>,
    ) -> Result<bool, E> {
        let components = components_of(isvc);
        if components
            .iter()
            .map(|c| c.kind)
            .ne(self.keys.iter().map(|k| k.kind))
        {
            return Ok(false);
        }
        for (key, c) in self.keys.iter().zip(&components) {
            register(key, c)?;
        }
        self.stop();
        self.autoscalers.clear();
        for ((pool, view), c) in self.watched.iter_mut().zip(&components) {
            pool.set_container_concurrency(c.container_concurrency);
            *view = ScalingView::of(c);
            self.autoscalers
                .push(spawn_autoscaler(pool, &backend, c, settings));
        }
        self.route.namespace = isvc.namespace.clone();
        self.route.timeout = isvc.predictor.timeout;
        Ok(true)
    }
}

fn components_of(isvc: &InferenceService) -> Vec<&Component> {
    std::iter::once(&isvc.predictor)
        .chain(isvc.transformer.as_ref())
        .collect()
}

fn spawn_autoscaler(
    pool: &Arc<Pool>,
    backend: &Arc<dyn ReplicaBackend>,
    c: &Component,
    settings: InstallSettings,
) -> JoinHandle<()> {
    tokio::spawn(
        LiveAutoscaler {
            pool: pool.clone(),
            backend: backend.clone(),
            scaling: c.scaling.clone(),
            enable_scale_to_zero: settings.enable_scale_to_zero,
        }
        .run(),
    )
}

/// Installs `isvc`. `register` makes one component known to the backend (on one host with its
/// replica template); its error stops the installation before anything runs.
pub fn install_service<E>(
    isvc: &InferenceService,
    backend: Arc<dyn ReplicaBackend>,
    settings: InstallSettings,
    mut register: impl FnMut(&ComponentKey, &Component) -> Result<(), E>,
) -> Result<InstalledService, E> {
    let components = components_of(isvc);
    let keys: Vec<ComponentKey> = components
        .iter()
        .map(|c| ComponentKey {
            service: isvc.name.clone(),
            kind: c.kind,
        })
        .collect();
    for (key, c) in keys.iter().zip(&components) {
        register(key, c)?;
    }
    let mut watched = Vec::new();
    let mut autoscalers = Vec::new();
    for (key, c) in keys.iter().zip(&components) {
        let endpoints = backend
            .endpoints(key)
            .expect("the component was registered above");
        let crash_loop = backend
            .crash_loop(key)
            .expect("the component was registered above");
        let activity = backend
            .activity(key)
            .expect("the component was registered above");
        let pool = Pool::with_activity(
            key.clone(),
            c.container_concurrency,
            settings.hold_limit,
            endpoints,
            crash_loop,
            activity,
        );
        autoscalers.push(spawn_autoscaler(&pool, &backend, c, settings));
        watched.push((pool, ScalingView::of(c)));
    }
    let predictor = watched[0].0.clone();
    let entry = watched.last().map_or(predictor.clone(), |(p, _)| p.clone());
    Ok(InstalledService {
        route: Route {
            namespace: isvc.namespace.clone(),
            entry,
            predictor,
            timeout: isvc.predictor.timeout,
        },
        keys,
        watched,
        autoscalers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ReplicaTemplate;
    use crate::backend::local::LocalBackend;
    use crate::manifest::{ClusterDefaults, ComponentKind, parse};

    #[tokio::test]
    async fn a_service_with_a_transformer_enters_through_it_and_registers_both() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/autoscale-adv.yaml"
        ))
        .unwrap();
        let isvc = parse(&text, &ClusterDefaults::default()).unwrap().remove(0);
        let dir = std::env::temp_dir();
        let backend = Arc::new(LocalBackend::new("/bin/false".into(), dir, None));
        let mut registered = Vec::new();
        let installed = install_service(
            &isvc,
            backend.clone(),
            InstallSettings {
                hold_limit: 10,
                enable_scale_to_zero: true,
            },
            |key, _| {
                registered.push(key.kind);
                backend.register(
                    key,
                    ReplicaTemplate {
                        args: Vec::new(),
                        env: Vec::new(),
                        gpu_memory_bytes: None,
                        tiers: None,
                    },
                );
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        installed.stop();
        assert_eq!(
            registered,
            [ComponentKind::Predictor, ComponentKind::Transformer]
        );
        assert_eq!(installed.route.entry.key.kind, ComponentKind::Transformer);
        assert_eq!(installed.route.predictor.key.kind, ComponentKind::Predictor);
        assert_eq!(installed.watched.len(), 2);
        let failed = install_service(
            &isvc,
            backend.clone(),
            InstallSettings {
                hold_limit: 10,
                enable_scale_to_zero: true,
            },
            |_, _| Err("refused"),
        );
        assert!(matches!(failed, Err("refused")));
        backend.shutdown().await;
    }
}
