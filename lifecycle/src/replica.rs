//! The one replica template: what runs for an InferenceService component, on one host (the local
//! backend's child processes) and in a cluster (the controller's Deployments). Only the site
//! differs (addresses, ports, drain, device); which `siesta serve` arguments a model or KServe's
//! image transformer becomes is decided here and nowhere else.

use std::net::SocketAddr;
use std::time::Duration;

use crate::manifest::{Component, ComponentKind, Container, InferenceService, Workload};

/// Where the replicas run.
#[derive(Debug, Clone, PartialEq)]
pub enum Site {
    /// Child processes on this host: loopback, ports the replica picks and announces
    /// (`backend::Listening`), and the gateway at `gateway`.
    Host { gateway: SocketAddr },
    /// Pods: fixed ports on all interfaces, the gateway's in-cluster address.
    Pod {
        gateway: String,
        http_port: u16,
        grpc_port: u16,
        /// How long a stopping replica drains in-flight requests.
        drain: Duration,
        /// The component asks for a GPU (`nvidia.com/gpu` in its limits).
        gpu: bool,
    },
}

/// What one replica of a component is.
#[derive(Debug, Clone, PartialEq)]
pub enum Replica<'a> {
    /// `siesta serve` with these arguments.
    Serve(ServeCommand<'a>),
    /// The manifest's own containers, as given: only a container runtime (a cluster) runs them.
    Containers(&'a [Container]),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServeCommand<'a> {
    /// The arguments after `siesta serve`.
    pub args: Vec<String>,
    /// The manifest's environment for the replica (e.g. `OMP_NUM_THREADS`).
    pub env: &'a [(String, String)],
    pub role: Role<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// Serves the model at this `storageUri` (`None`: the model server's default).
    Model { storage_uri: Option<&'a str> },
    /// Siesta's image transformer, in place of KServe's `kserve/image-transformer` container;
    /// decoding and resizing run on the CPU.
    ImageTransformer { image: &'a str },
}

/// KServe's image transformer image, from any registry, at any tag or digest
/// (`kserve/image-transformer`, `docker.io/kserve/image-transformer:v0.11`), and nothing else
/// (`kserve/image-transformer-v2` and other owners' images are the user's own code).
pub fn is_kserve_image_transformer(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag follows the last ':' after the last '/' (a registry's port comes before it).
    let repository = match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    };
    repository == "kserve/image-transformer" || repository.ends_with("/kserve/image-transformer")
}

/// `--model_name X`, `--model_name=X` (or with `-`) among a KServe container's args.
fn container_model_name(args: &[String]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        let a = a.trim_start_matches('-');
        if let Some(v) = a
            .strip_prefix("model_name=")
            .or_else(|| a.strip_prefix("model-name="))
        {
            return Some(v.to_string());
        }
        (a == "model_name" || a == "model-name")
            .then(|| args.get(i + 1).cloned())
            .flatten()
    })
}

fn strings<const N: usize>(args: [&str; N]) -> impl Iterator<Item = String> {
    args.into_iter().map(str::to_string)
}

/// The replica of component `c` of `isvc` at `site`.
pub fn replica<'a>(isvc: &'a InferenceService, c: &'a Component, site: &Site) -> Replica<'a> {
    let mut args: Vec<String> = Vec::new();
    let serves_grpc = matches!(c.workload, Workload::Model(_));
    match site {
        Site::Host { .. } => {
            args.extend(strings(["--host", "127.0.0.1", "--http-port", "0"]));
            if serves_grpc {
                args.extend(strings(["--grpc-port", "0"]));
            }
        }
        Site::Pod {
            http_port,
            grpc_port,
            drain,
            ..
        } => {
            args.extend(strings(["--host", "0.0.0.0", "--http-port"]));
            args.push(http_port.to_string());
            if serves_grpc {
                args.extend(["--grpc-port".to_string(), grpc_port.to_string()]);
            }
            args.extend([
                "--drain-timeout".to_string(),
                format!("{}s", drain.as_secs()),
            ]);
        }
    }
    if !serves_grpc {
        args.push("--no-grpc".into());
    }
    if c.container_concurrency > 0 {
        // queue-proxy's admission (CC running + 10 x CC queued), for clients that reach the
        // replica without the gateway.
        args.extend([
            "--queue-limit".to_string(),
            (c.container_concurrency * 11).to_string(),
        ]);
    }
    match &c.workload {
        Workload::Model(m) => {
            args.extend(["--model-name".to_string(), isvc.name.clone()]);
            if let Some(uri) = &m.storage_uri {
                args.extend(["--storage-uri".to_string(), uri.clone()]);
            }
            args.extend(["--model-format".to_string(), m.format.clone()]);
            if let Some(runtime) = &m.runtime {
                args.extend(["--runtime".to_string(), runtime.clone()]);
            }
            if let Site::Pod { gpu, .. } = site {
                args.extend([
                    "--device".to_string(),
                    if *gpu { "auto" } else { "cpu" }.into(),
                ]);
            }
            args.extend(m.args.iter().cloned());
            Replica::Serve(ServeCommand {
                args,
                env: &m.env,
                role: Role::Model {
                    storage_uri: m.storage_uri.as_deref(),
                },
            })
        }
        Workload::Containers(given)
            if c.kind == ComponentKind::Transformer
                && given.len() == 1
                && is_kserve_image_transformer(&given[0].image) =>
        {
            let container = &given[0];
            let gateway = match site {
                Site::Host { gateway } => gateway.to_string(),
                Site::Pod { gateway, .. } => gateway.clone(),
            };
            args.extend(strings(["--transformer", "image", "--model-name"]));
            args.push(container_model_name(&container.args).unwrap_or_else(|| isvc.name.clone()));
            args.extend([
                // Back through the gateway, so the predictor's demand is counted and scaled.
                "--predictor-url".to_string(),
                format!("http://{gateway}"),
                "--predictor-host".to_string(),
                format!("{}-predictor", isvc.name),
                "--predictor-model".to_string(),
                isvc.name.clone(),
            ]);
            Replica::Serve(ServeCommand {
                args,
                env: &container.env,
                role: Role::ImageTransformer {
                    image: &container.image,
                },
            })
        }
        Workload::Containers(given) => Replica::Containers(given),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ClusterDefaults, parse};

    fn isvc(text: &str) -> InferenceService {
        parse(text, &ClusterDefaults::default()).unwrap().remove(0)
    }

    const MODEL: &str = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: m}\n\
        spec:\n  predictor:\n    containerConcurrency: 2\n    model:\n      modelFormat: {name: siesta}\n      \
        storageUri: siesta://mnist\n      runtime: candle\n      args: [--max-batch-size, '8']\n      \
        env: [{name: OMP_NUM_THREADS, value: \"1\"}]\n";

    fn serve<'a>(r: Replica<'a>) -> ServeCommand<'a> {
        match r {
            Replica::Serve(s) => s,
            Replica::Containers(c) => panic!("containers {c:?}"),
        }
    }

    #[test]
    fn a_model_is_the_same_serve_command_on_a_host_and_in_a_pod_but_for_the_site() {
        let isvc = isvc(MODEL);
        let model_args = [
            "--queue-limit",
            "22",
            "--model-name",
            "m",
            "--storage-uri",
            "siesta://mnist",
            "--model-format",
            "siesta",
            "--runtime",
            "candle",
        ];
        let host = serve(replica(
            &isvc,
            &isvc.predictor,
            &Site::Host {
                gateway: "127.0.0.1:9".parse().unwrap(),
            },
        ));
        let mut want: Vec<&str> = vec![
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ];
        want.extend(model_args);
        want.extend(["--max-batch-size", "8"]);
        assert_eq!(host.args, want);
        assert_eq!(
            host.role,
            Role::Model {
                storage_uri: Some("siesta://mnist")
            }
        );
        assert_eq!(host.env, [("OMP_NUM_THREADS".into(), "1".into())]);

        let pod = serve(replica(
            &isvc,
            &isvc.predictor,
            &Site::Pod {
                gateway: "gw.svc".into(),
                http_port: 8080,
                grpc_port: 8081,
                drain: Duration::from_secs(30),
                gpu: true,
            },
        ));
        let mut want: Vec<&str> = vec![
            "--host",
            "0.0.0.0",
            "--http-port",
            "8080",
            "--grpc-port",
            "8081",
            "--drain-timeout",
            "30s",
        ];
        want.extend(model_args);
        want.extend(["--device", "auto", "--max-batch-size", "8"]);
        assert_eq!(pod.args, want);
    }

    #[test]
    fn kserves_image_transformer_becomes_siestas_calling_back_through_the_gateway() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/autoscale-adv.yaml"
        ))
        .unwrap();
        let isvc = isvc(&text);
        let t = isvc.transformer.as_ref().unwrap();
        let cmd = serve(replica(
            &isvc,
            t,
            &Site::Host {
                gateway: "127.0.0.1:8080".parse().unwrap(),
            },
        ));
        assert!(matches!(cmd.role, Role::ImageTransformer { .. }));
        assert_eq!(
            cmd.args,
            [
                "--host",
                "127.0.0.1",
                "--http-port",
                "0",
                "--no-grpc",
                "--transformer",
                "image",
                "--model-name",
                "mnist",
                "--predictor-url",
                "http://127.0.0.1:8080",
                "--predictor-host",
                "torch-transformer-predictor",
                "--predictor-model",
                "torch-transformer"
            ]
        );
        let pod = serve(replica(
            &isvc,
            t,
            &Site::Pod {
                gateway: "siesta-gateway.siesta-system.svc".into(),
                http_port: 8080,
                grpc_port: 8081,
                drain: Duration::from_secs(30),
                gpu: false,
            },
        ));
        assert_eq!(
            pod.args,
            [
                "--host",
                "0.0.0.0",
                "--http-port",
                "8080",
                "--drain-timeout",
                "30s",
                "--no-grpc",
                "--transformer",
                "image",
                "--model-name",
                "mnist",
                "--predictor-url",
                "http://siesta-gateway.siesta-system.svc",
                "--predictor-host",
                "torch-transformer-predictor",
                "--predictor-model",
                "torch-transformer"
            ]
        );
    }

    #[test]
    fn only_kserves_image_transformer_image_is_replaced() {
        for image in [
            "kserve/image-transformer",
            "kserve/image-transformer:v0.11",
            "docker.io/kserve/image-transformer:v0.11",
            "registry.local:5000/kserve/image-transformer@sha256:abc",
        ] {
            assert!(is_kserve_image_transformer(image), "{image}");
        }
        for image in [
            "kserve/image-transformer-v2",
            "kserve/image-transformer-v2:latest",
            "someone/image-transformer",
            "registry.local:5000/image-transformer",
            "kserve/sklearnserver",
        ] {
            assert!(!is_kserve_image_transformer(image), "{image}");
        }
        assert_eq!(
            container_model_name(&["--model_name=x".into()]),
            Some("x".into())
        );
        assert_eq!(
            container_model_name(&["--model-name".into(), "y".into()]),
            Some("y".into())
        );
        assert_eq!(container_model_name(&["--model_name".into()]), None);
    }

    #[test]
    fn other_containers_run_as_given() {
        let isvc = isvc(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: c}\n\
             spec:\n  predictor:\n    containers: [{image: me/server:1}]\n",
        );
        let site = Site::Host {
            gateway: "127.0.0.1:9".parse().unwrap(),
        };
        match replica(&isvc, &isvc.predictor, &site) {
            Replica::Containers(c) => assert_eq!(c[0].image, "me/server:1"),
            other => panic!("{other:?}"),
        }
    }
}
