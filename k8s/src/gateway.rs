//! `siesta gateway` in a cluster: the same gateway and Knative-exact autoscalers as `siesta up`,
//! with [`KubeBackend`] for replicas and the routes following the InferenceServices in the API
//! server (watched, not read once). Requests reach it through the `siesta-gateway` Service, by
//! `Host` (`{name}.{namespace}.{domain}`, `{name}-predictor...`) or by model name in the path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use parking_lot::Mutex;
use serde_json::json;
use siesta_lifecycle::backend::ReplicaBackend;
use siesta_lifecycle::gateway::install::{InstallSettings, InstalledService, install_service};
use siesta_lifecycle::gateway::{self, BindError, Gateway, MetricsRender, Routes};
use siesta_lifecycle::manifest::{self, ClusterDefaults};
use siesta_lifecycle::status::{ComponentStatus, StatusDocument};

use crate::backend::{Clock, KubeBackend};
use crate::controller::api_resource;

#[derive(Clone)]
pub struct GatewayConfig {
    /// The group whose InferenceServices to serve (Siesta's or KServe's).
    pub api_group: String,
    /// One namespace, or `None` for all.
    pub namespace: Option<String>,
    pub addr: SocketAddr,
    /// A replica's time to become ready (same as the controller's startup probe).
    pub startup_deadline: Duration,
    /// Requests held per component while it has no ready replica.
    pub hold_limit: usize,
    /// Request-body bytes the gateway holds in memory at once.
    pub body_budget: usize,
    /// How long a client has to send the start of its body once a replica slot is its.
    pub body_timeout: Duration,
    pub defaults: ClusterDefaults,
    pub metrics: MetricsRender,
    pub clock: Clock,
    /// Header read timeout and HTTP/2 limits of the gateway's port.
    pub connections: siesta_http_server::ConnectionLimits,
    /// The replicas' control token (`SIESTA_CONTROL_TOKEN`): parking where GPUs are shared.
    pub control_token: Option<String>,
}

/// One InferenceService being served.
struct Installed {
    /// Spec and annotations as last installed: a change reinstalls the service.
    fingerprint: String,
    service: InstalledService,
}

struct Services {
    backend: KubeBackend,
    routes: Routes,
    /// By (namespace, name).
    installed: Mutex<HashMap<(String, String), Installed>>,
    hold_limit: usize,
    defaults: ClusterDefaults,
}

/// The parts of an InferenceService the gateway acts on, as text: a change elsewhere (status,
/// managed fields) is not a change.
fn fingerprint(obj: &DynamicObject) -> String {
    json!({"spec": obj.data["spec"], "annotations": obj.metadata.annotations}).to_string()
}

impl Services {
    /// Brings the routes and autoscalers in line with the InferenceServices that exist now.
    fn sync(&self, objects: &[Arc<DynamicObject>]) {
        let mut installed = self.installed.lock();
        let mut present = std::collections::HashSet::new();
        for obj in objects {
            let (Some(ns), Some(name)) =
                (obj.metadata.namespace.clone(), obj.metadata.name.clone())
            else {
                continue;
            };
            let id = (ns, name);
            present.insert(id.clone());
            let fp = fingerprint(obj);
            if installed.get(&id).is_some_and(|i| i.fingerprint == fp) {
                continue;
            }
            // A new spec for the same components keeps the pools and what they hold; the
            // controller rolls the Deployments.
            if let Some(current) = installed.get_mut(&id) {
                match self.update(&id, obj, current) {
                    Ok(true) => {
                        current.fingerprint = fp;
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(namespace = %id.0, service = %id.1, error = %e,
                            "the new spec is not served; keeping the last one (the controller's status says why)");
                        continue;
                    }
                }
            }
            if let Some(old) = installed.remove(&id) {
                self.uninstall(&id, old);
            }
            // Routes are by name, across namespaces: the first namespace to claim one keeps it.
            if let Some(((other_ns, _), _)) = installed.iter().find(|((_, n), _)| *n == id.1) {
                tracing::error!(namespace = %id.0, service = %id.1, %other_ns,
                    "an InferenceService of this name is already served from another namespace; not routing this one");
                continue;
            }
            match self.install(&id, obj, fp) {
                Ok(i) => {
                    installed.insert(id, i);
                }
                Err(e) => {
                    tracing::warn!(namespace = %id.0, service = %id.1, error = %e,
                        "InferenceService not served (the controller's status says why too)")
                }
            }
        }
        let gone: Vec<(String, String)> = installed
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(old) = installed.remove(&id) {
                self.uninstall(&id, old);
            }
        }
    }

    fn checked(
        &self,
        (ns, name): &(String, String),
        obj: &DynamicObject,
    ) -> Result<manifest::InferenceService, manifest::ManifestError> {
        let doc = json!({
            "apiVersion": obj.types.as_ref().map(|t| t.api_version.clone()),
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": ns,
                         "annotations": obj.metadata.annotations.clone().unwrap_or_default()},
            "spec": obj.data["spec"],
        });
        manifest::from_json(doc, &self.defaults)
    }

    /// The new spec in place (`Ok(false)`: its components changed, so it is installed anew).
    fn update(
        &self,
        id: &(String, String),
        obj: &DynamicObject,
        current: &mut Installed,
    ) -> Result<bool, manifest::ManifestError> {
        let isvc = self.checked(id, obj)?;
        let updated = current.service.update(
            &isvc,
            Arc::new(self.backend.clone()),
            self.settings(),
            // The components' Deployments are the controller's to change.
            |_, _| Ok::<_, manifest::ManifestError>(()),
        )?;
        if updated {
            self.routes
                .write()
                .insert(id.1.clone(), current.service.route.clone());
            tracing::info!(namespace = %id.0, service = %id.1, "spec changed; applied in place");
        }
        Ok(updated)
    }

    fn settings(&self) -> InstallSettings {
        InstallSettings {
            hold_limit: self.hold_limit,
            enable_scale_to_zero: self.defaults.enable_scale_to_zero,
        }
    }

    fn install(
        &self,
        id: &(String, String),
        obj: &DynamicObject,
        fingerprint: String,
    ) -> Result<Installed, manifest::ManifestError> {
        let (ns, name) = id;
        let isvc = self.checked(id, obj)?;
        let service = install_service(
            &isvc,
            Arc::new(self.backend.clone()),
            self.settings(),
            |key, c| {
                // Only a model replica (`siesta serve` with a model) can be parked.
                let tiers = matches!(c.workload, manifest::Workload::Model(_)).then_some(
                    siesta_lifecycle::backend::ReplicaTiers {
                        policy: c.tiers,
                        min_replicas: c.scaling.min_scale,
                    },
                );
                self.backend.register_in(ns, key, tiers);
                Ok::<_, manifest::ManifestError>(())
            },
        )?;
        self.routes
            .write()
            .insert(name.clone(), service.route.clone());
        tracing::info!(namespace = %ns, service = %name, components = service.keys.len(), "serving");
        Ok(Installed {
            fingerprint,
            service,
        })
    }

    fn uninstall(&self, (ns, name): &(String, String), old: Installed) {
        self.routes.write().remove(name);
        old.service.remove();
        for k in &old.service.keys {
            self.backend.forget(k);
        }
        tracing::info!(namespace = %ns, service = %name, "no longer serving");
    }

    fn status(&self) -> StatusDocument {
        let installed = self.installed.lock();
        StatusDocument {
            components: installed
                .values()
                .flat_map(|i| &i.service.watched)
                .map(|(pool, view)| ComponentStatus::read(pool, view, &self.backend))
                .collect(),
            // The nodes' GPUs are the cluster's to report (e.g. DCGM's exporter).
            gpus: Vec::new(),
        }
    }
}

/// Serves until `shutdown` resolves. The replicas stay as they are when it stops.
pub async fn run(
    client: Client,
    cfg: GatewayConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BindError> {
    let backend = KubeBackend::new(
        client.clone(),
        cfg.namespace.as_deref().unwrap_or("default"),
        cfg.startup_deadline,
        cfg.clock.clone(),
    )
    .with_control_token(cfg.control_token.clone());
    let routes: Routes = Arc::default();
    let services = Arc::new(Services {
        backend: backend.clone(),
        routes: routes.clone(),
        installed: Mutex::new(HashMap::new()),
        hold_limit: cfg.hold_limit,
        defaults: cfg.defaults.clone(),
    });
    let resource = api_resource(&cfg.api_group);
    let api: Api<DynamicObject> = match &cfg.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    let follower = tokio::spawn(follow_services(api, resource, services.clone()));

    let (listener, addr) = gateway::bind(cfg.addr).await?;
    on_listening(addr);
    let status_services = services.clone();
    let app = Gateway::with_routes(
        routes,
        cfg.metrics.clone(),
        Arc::new(move || status_services.status()),
        None,
    )
    .with_body_limits(cfg.body_budget, cfg.body_timeout)
    .router();
    let closing = services.clone();
    siesta_http_server::serve(listener, app, cfg.connections, async move {
        shutdown.await;
        // Held requests are answered (503) rather than cut off with their connections.
        for i in closing.installed.lock().values() {
            i.service.watched.iter().for_each(|(pool, _)| pool.close());
        }
    })
    .await;
    follower.abort();
    let ids: Vec<(String, String)> = services.installed.lock().keys().cloned().collect();
    for id in ids {
        if let Some(i) = services.installed.lock().remove(&id) {
            services.uninstall(&id, i);
        }
    }
    backend.shutdown().await;
    Ok(())
}

async fn follow_services(
    api: Api<DynamicObject>,
    resource: kube::api::ApiResource,
    services: Arc<Services>,
) {
    let writer = reflector::store::Writer::new(resource);
    let reader = writer.as_reader();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => services.sync(&reader.state()),
            Err(e) => tracing::warn!(error = %e, "watching InferenceServices failed; retrying"),
        }
    }
}
