//! `siesta controller`: watches InferenceServices (Siesta's group, or KServe's with
//! `--api-group serving.kserve.io`) and, per component, server-side applies the Deployment and
//! Service that [`crate::desired`] describes, then writes the status (URL, replicas, conditions).
//! Replica counts are not the controller's: the autoscaler sets them through the scale
//! subresource.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use siesta_lifecycle::manifest::ComponentKind;

use crate::backend::{PodView, crash_loop};
use crate::crd::{
    ComponentStatus, Condition, InferenceService, InferenceServiceSpec, InferenceServiceStatus,
};
use crate::credentials::StorageCredentials;
use crate::desired::{self, Settings};
use crate::error::ControllerError;

/// The field manager of everything the controller applies.
pub const MANAGER: &str = "siesta-controller";
/// A periodic look even without events, so status catches up with replicas the autoscaler moved.
const RESYNC: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(5);

pub struct Context {
    pub client: Client,
    pub settings: Settings,
}

pub fn api_resource(group: &str) -> ApiResource {
    ApiResource {
        group: group.to_string(),
        version: "v1beta1".into(),
        api_version: format!("{group}/v1beta1"),
        kind: "InferenceService".into(),
        plural: "inferenceservices".into(),
    }
}

/// The typed resource behind a watched object, whichever group it came from.
pub fn parse(obj: &DynamicObject) -> Result<InferenceService, ControllerError> {
    let name = obj.name_any();
    let spec: InferenceServiceSpec =
        serde_json::from_value(obj.data["spec"].clone()).map_err(|e| ControllerError::Invalid {
            name: name.clone(),
            reason: format!("spec: {e}"),
        })?;
    let mut isvc = InferenceService::new(&name, spec);
    isvc.metadata = obj.metadata.clone();
    Ok(isvc)
}

/// The storage credentials KServe's convention derives from the component's service account (its
/// `secrets`); a listed secret that does not exist is skipped with a warning, as the kubelet would
/// fail the pod on it otherwise.
async fn storage_credentials(
    client: &Client,
    ns: &str,
    spec: &crate::crd::ComponentSpec,
) -> Result<StorageCredentials, ControllerError> {
    let Some(sa) = &spec.service_account_name else {
        return Ok(StorageCredentials::default());
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(account) = accounts.get_opt(sa).await? else {
        tracing::warn!(service_account = %sa, "service account not found; no storage credentials");
        return Ok(StorageCredentials::default());
    };
    let mut found = Vec::new();
    for name in account
        .secrets
        .iter()
        .flatten()
        .filter_map(|r| r.name.as_deref())
    {
        match secrets.get_opt(name).await? {
            Some(secret) => found.push(secret),
            None => tracing::warn!(service_account = %sa, secret = name, "listed secret not found"),
        }
    }
    Ok(StorageCredentials::from_secrets(&found))
}

pub async fn reconcile(
    obj: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let isvc = parse(&obj)?;
    let name = isvc.name_any();
    let ns = isvc
        .namespace()
        .ok_or_else(|| ControllerError::NoNamespace(name.clone()))?;
    let span = tracing::info_span!("reconcile", service = %name, namespace = %ns);
    let _enter = span.enter();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let apply = PatchParams::apply(MANAGER).force();

    let mut status = InferenceServiceStatus {
        url: Some(format!("http://{name}.{ns}.{}", ctx.settings.domain)),
        observed_generation: isvc.metadata.generation,
        ..Default::default()
    };
    let mut all_ready = true;
    for (kind, spec) in desired::components(&isvc) {
        let object = desired::object_name(&isvc, kind);
        let creds = storage_credentials(&ctx.client, &ns, spec).await?;
        let want = desired::deployment(&isvc, kind, spec, &ctx.settings, &creds)?;
        let applied = deployments
            .patch(&object, &apply, &Patch::Apply(&want))
            .await?;
        services
            .patch(
                &object,
                &apply,
                &Patch::Apply(&desired::service(&isvc, kind, &ctx.settings)),
            )
            .await?;
        let desired_replicas = applied.spec.replicas.unwrap_or(1);
        let ready = applied
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        // Scaled to zero is ready: the gateway holds requests while a replica starts.
        let component_ready = ready > 0 || desired_replicas == 0;
        all_ready &= component_ready;
        let mut ready_condition = condition(
            &format!("{}Ready", capitalised(kind.as_str())),
            component_ready,
            (!component_ready).then(|| format!("0 of {desired_replicas} replicas ready")),
        );
        if !component_ready {
            // Why, when the kubelet knows: the same crash loop the gateway answers held
            // requests with.
            let selector = format!(
                "{}={name},{}={}",
                desired::LABEL_SERVICE,
                desired::LABEL_COMPONENT,
                kind.as_str()
            );
            let listed = pods.list(&ListParams::default().labels(&selector)).await?;
            let views: Vec<PodView> = listed.items.iter().map(PodView::from_pod).collect();
            if let Some(c) = crash_loop(&views) {
                ready_condition.reason = Some("CrashLoopBackOff".into());
                ready_condition.message = Some(format!(
                    "replicas keep failing ({} restarts): {}",
                    c.failures, c.last_error
                ));
            }
        }
        status.conditions.push(ready_condition);
        status.components.insert(
            kind.as_str().to_string(),
            ComponentStatus {
                desired_replicas,
                ready_replicas: ready,
                replicas: format!("{ready}/{desired_replicas}"),
                url: Some(format!("http://{object}.{ns}.svc")),
            },
        );
    }
    if isvc.spec.transformer.is_none() {
        // A transformer removed from the spec: its objects go too.
        let object = desired::object_name(&isvc, ComponentKind::Transformer);
        ignore_missing(
            deployments
                .delete(&object, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
        ignore_missing(
            services
                .delete(&object, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    status
        .conditions
        .insert(0, condition("Ready", all_ready, None));

    let isvcs: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &api_resource(&ctx.settings.api_group),
    );
    let patch = json!({
        "apiVersion": format!("{}/v1beta1", ctx.settings.api_group),
        "kind": "InferenceService",
        "status": status,
    });
    isvcs
        .patch_status(&name, &apply, &Patch::Apply(&patch))
        .await?;
    tracing::info!(ready = all_ready, "reconciled");
    Ok(Action::requeue(RESYNC))
}

fn ignore_missing(r: Result<(), kube::Error>) -> Result<(), ControllerError> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

fn condition(type_: &str, ok: bool, message: Option<String>) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: (!ok).then(|| "ReplicasNotReady".to_string()),
        message,
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

pub fn error_policy(obj: Arc<DynamicObject>, err: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %obj.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(client: Client, settings: Settings) {
    let ar = api_resource(&settings.api_group);
    let isvcs: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let deployments: Api<Deployment> = Api::all(client.clone());
    let ctx = Arc::new(Context { client, settings });
    Controller::new_with(isvcs, watcher::Config::default(), ar)
        .owns(
            deployments,
            watcher::Config::default().labels(desired::LABEL_SERVICE),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
