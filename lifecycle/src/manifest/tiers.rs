//! A component's idle tiers, from Siesta's own `siesta.dev/*` annotations (component ones
//! override the InferenceService's): how many surplus replicas stay parked (device memory
//! given back, process and host copy kept) instead of exiting, for how long, and whether a
//! cluster's GPUs are shared so that parking a pod frees anything.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ManifestError, err};
use crate::autoscaler::duration::parse_go_duration;

const PREFIX: &str = "siesta.dev/";
const PARKED_REPLICAS: &str = "parked-replicas";
const PARK_TIMEOUT: &str = "park-timeout";
const GPU_SHARING: &str = "gpu-sharing";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierPolicy {
    /// Surplus replicas kept parked at most; 0 turns parking off (scale down = exit).
    pub parked_replicas: u32,
    /// A parked replica exits after this long unused.
    pub park_timeout: Duration,
    /// The cluster shares GPUs between pods (time-slicing, MPS): only then does a parked pod
    /// free a GPU for another, so only then does the Kubernetes backend park.
    pub gpu_sharing: bool,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy {
            parked_replicas: 1,
            park_timeout: Duration::from_secs(600),
            gpu_sharing: false,
        }
    }
}

fn path(key: &str) -> String {
    format!("metadata.annotations[{PREFIX}{key}]")
}

pub(super) fn resolve(annotations: &BTreeMap<String, String>) -> Result<TierPolicy, ManifestError> {
    let mut tiers = TierPolicy::default();
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let v = value.trim();
        match name {
            PARKED_REPLICAS => {
                tiers.parked_replicas =
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| *n <= 1000)
                        .ok_or_else(|| {
                            err(
                                path(name),
                                format!("'{v}' must be a whole number in 0..=1000"),
                            )
                        })?;
            }
            PARK_TIMEOUT => {
                let d = parse_go_duration(v).map_err(|reason| err(path(name), reason))?;
                if d.is_zero() {
                    return Err(err(
                        path(name),
                        format!(
                            "'{v}' must be positive (turn parking off with {PREFIX}{PARKED_REPLICAS}: \"0\")"
                        ),
                    ));
                }
                tiers.park_timeout = d;
            }
            GPU_SHARING => {
                tiers.gpu_sharing = match v {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(err(
                            path(name),
                            format!("'{v}' must be \"true\" or \"false\""),
                        ));
                    }
                };
            }
            _ => {
                return Err(err(
                    format!("metadata.annotations[{key}]"),
                    format!(
                        "unknown Siesta annotation (known: {PREFIX}{PARKED_REPLICAS}, {PREFIX}{PARK_TIMEOUT}, {PREFIX}{GPU_SHARING})"
                    ),
                ));
            }
        }
    }
    Ok(tiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Result<TierPolicy, ManifestError> {
        resolve(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_keep_one_parked_replica_for_ten_minutes() {
        let t = of(&[("autoscaling.knative.dev/window", "60s")]).unwrap();
        assert_eq!(t, TierPolicy::default());
        assert_eq!(t.parked_replicas, 1);
        assert_eq!(t.park_timeout, Duration::from_secs(600));
        assert!(!t.gpu_sharing);
    }

    #[test]
    fn annotations_set_each_field() {
        let t = of(&[
            ("siesta.dev/parked-replicas", "3"),
            ("siesta.dev/park-timeout", "90s"),
            ("siesta.dev/gpu-sharing", "true"),
        ])
        .unwrap();
        assert_eq!(
            t,
            TierPolicy {
                parked_replicas: 3,
                park_timeout: Duration::from_secs(90),
                gpu_sharing: true
            }
        );
        assert_eq!(
            of(&[("siesta.dev/parked-replicas", "0")])
                .unwrap()
                .parked_replicas,
            0
        );
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (k, v, says) in [
            ("siesta.dev/parked-replicas", "-1", "whole number"),
            ("siesta.dev/parked-replicas", "1e9", "whole number"),
            ("siesta.dev/park-timeout", "0s", "must be positive"),
            ("siesta.dev/park-timeout", "soon", ""),
            ("siesta.dev/gpu-sharing", "yes", "\"true\" or \"false\""),
            (
                "siesta.dev/parked-replica",
                "1",
                "unknown Siesta annotation",
            ),
        ] {
            let e = of(&[(k, v)]).unwrap_err();
            assert_eq!(e.path, format!("metadata.annotations[{k}]"), "{k}={v}");
            assert!(e.reason.contains(says), "{k}={v}: {}", e.reason);
        }
    }
}
