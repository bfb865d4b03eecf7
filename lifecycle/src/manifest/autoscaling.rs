//! A component's autoscaling settings: KServe's fields (`scaleTarget`, `scaleMetric`,
//! `minReplicas`, `maxReplicas`, `containerConcurrency`) and Knative's `autoscaling.knative.dev/*`
//! annotations, resolved against the cluster defaults exactly as Knative's target resolution does
//! (autoscaling-semantics.md §1.1, §1.3, §5).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ManifestError, err};
use crate::autoscaler::DeciderSpec;
use crate::autoscaler::duration::parse_go_duration;
use crate::autoscaler::spec::defaults;

const PREFIX: &str = "autoscaling.knative.dev/";
const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
/// Knative's floor for a target value.
const TARGET_MIN: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleMetric {
    Concurrency,
    Rps,
}

impl ScaleMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleMetric::Concurrency => "concurrency",
            ScaleMetric::Rps => "rps",
        }
    }
}

/// Cluster-wide settings (Knative's config-autoscaler), overridable by `siesta up` flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterDefaults {
    pub container_concurrency_target_percentage: f64,
    pub container_concurrency_target_default: f64,
    pub rps_target_default: f64,
    pub target_burst_capacity: f64,
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub scale_to_zero_grace: Duration,
    pub scale_to_zero_pod_retention: Duration,
    pub scale_down_delay: Duration,
    pub initial_scale: u32,
    pub allow_zero_initial_scale: bool,
    pub enable_scale_to_zero: bool,
    pub tick: Duration,
}

impl Default for ClusterDefaults {
    fn default() -> Self {
        ClusterDefaults {
            container_concurrency_target_percentage:
                defaults::CONTAINER_CONCURRENCY_TARGET_PERCENTAGE,
            container_concurrency_target_default: defaults::CONTAINER_CONCURRENCY_TARGET_DEFAULT,
            rps_target_default: defaults::RPS_TARGET_DEFAULT,
            target_burst_capacity: defaults::TARGET_BURST_CAPACITY,
            stable_window: defaults::STABLE_WINDOW,
            panic_window_percentage: defaults::PANIC_WINDOW_PERCENTAGE,
            panic_threshold_percentage: defaults::PANIC_THRESHOLD_PERCENTAGE,
            max_scale_up_rate: defaults::MAX_SCALE_UP_RATE,
            max_scale_down_rate: defaults::MAX_SCALE_DOWN_RATE,
            scale_to_zero_grace: defaults::SCALE_TO_ZERO_GRACE,
            scale_to_zero_pod_retention: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            enable_scale_to_zero: true,
            tick: defaults::TICK,
        }
    }
}

/// Everything the autoscaler needs about one component.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentScaling {
    pub metric: ScaleMetric,
    pub decider: DeciderSpec,
    pub min_scale: u32,
    /// 0 = unbounded.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub panic_window: Duration,
    pub scale_to_zero_grace: Duration,
    pub scale_to_zero_pod_retention: Duration,
}

pub(super) struct ComponentFields {
    pub path_prefix: String,
    pub min_replicas: Option<u32>,
    pub max_replicas: Option<u32>,
    pub scale_target: Option<f64>,
    pub scale_metric: Option<String>,
    pub container_concurrency: u32,
}

const KNOWN: [&str; 14] = [
    "class",
    "metric",
    "target",
    "target-utilization-percentage",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "target-burst-capacity",
    "min-scale",
    "max-scale",
    "initial-scale",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "activation-scale",
];

struct Annotations<'a> {
    map: &'a BTreeMap<String, String>,
}

impl Annotations<'_> {
    fn path(key: &str) -> String {
        format!("metadata.annotations[{PREFIX}{key}]")
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.map.get(&format!("{PREFIX}{key}")).map(String::as_str)
    }

    fn number(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<Option<f64>, ManifestError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| range.contains(x))
                    .ok_or_else(|| {
                        err(
                            Self::path(key),
                            format!(
                                "'{v}' must be a number in {}..={}",
                                range.start(),
                                range.end()
                            ),
                        )
                    })
            })
            .transpose()
    }

    fn count(&self, key: &str, min: u32) -> Result<Option<u32>, ManifestError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|x| *x >= min)
                    .ok_or_else(|| {
                        err(
                            Self::path(key),
                            format!("'{v}' must be a whole number >= {min}"),
                        )
                    })
            })
            .transpose()
    }

    fn duration(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Option<Duration>, ManifestError> {
        self.get(key)
            .map(|v| {
                let d = parse_go_duration(v).map_err(|reason| err(Self::path(key), reason))?;
                if range.contains(&d) {
                    Ok(d)
                } else {
                    Err(err(
                        Self::path(key),
                        format!(
                            "'{v}' must be between {:?} and {:?}",
                            range.start(),
                            range.end()
                        ),
                    ))
                }
            })
            .transpose()
    }
}

pub(super) fn resolve(
    fields: &ComponentFields,
    annotations: &BTreeMap<String, String>,
    cluster: &ClusterDefaults,
) -> Result<ComponentScaling, ManifestError> {
    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix(PREFIX)
            && !KNOWN.contains(&name)
            && name != "metric-aggregation-algorithm"
        {
            return Err(err(
                format!("metadata.annotations[{key}]"),
                "unknown autoscaling annotation",
            ));
        }
    }
    let a = Annotations { map: annotations };
    if let Some(class) = a.get("class")
        && class != KPA_CLASS
    {
        return Err(err(
            Annotations::path("class"),
            format!("'{class}' is not supported: Siesta autoscales with the KPA ({KPA_CLASS})"),
        ));
    }
    let metric_field = format!("{}.scaleMetric", fields.path_prefix);
    let (metric_name, metric_path) = match (&fields.scale_metric, a.get("metric")) {
        (Some(m), _) => (m.as_str(), metric_field),
        (None, Some(m)) => (m, Annotations::path("metric")),
        (None, None) => ("concurrency", metric_field),
    };
    let metric = match metric_name {
        "concurrency" => ScaleMetric::Concurrency,
        "rps" => ScaleMetric::Rps,
        "cpu" | "memory" => {
            return Err(err(
                metric_path,
                format!(
                    "'{metric_name}' is not supported yet: Siesta scales on concurrency or rps"
                ),
            ));
        }
        other => {
            return Err(err(
                metric_path,
                format!("'{other}' is not one of concurrency, rps"),
            ));
        }
    };

    // Target resolution (Knative's ResolveMetricTarget).
    let cc = f64::from(fields.container_concurrency);
    let (mut total, mut utilization) = match metric {
        ScaleMetric::Concurrency => (
            if cc > 0.0 {
                cc
            } else {
                cluster.container_concurrency_target_default
            },
            fraction(cluster.container_concurrency_target_percentage),
        ),
        ScaleMetric::Rps => (
            cluster.rps_target_default,
            fraction(cluster.container_concurrency_target_percentage),
        ),
    };
    // KServe writes scaleTarget into the target annotation; the field wins over a hand-set one.
    let target_annotation = match fields.scale_target {
        Some(t) => Some(t),
        None => a.number("target", TARGET_MIN..=f64::MAX)?,
    };
    if let Some(t) = target_annotation {
        total = if metric == ScaleMetric::Concurrency && cc > 0.0 {
            t.min(cc)
        } else {
            t
        };
    }
    if let Some(tu) = a.number("target-utilization-percentage", 1.0..=100.0)? {
        utilization = tu / 100.0;
    }
    let target = (total * utilization).max(TARGET_MIN);

    let stable_window = a
        .duration("window", Duration::from_secs(6)..=Duration::from_secs(3600))?
        .unwrap_or(cluster.stable_window);
    let panic_pct = a
        .number("panic-window-percentage", 1.0..=100.0)?
        .unwrap_or(cluster.panic_window_percentage);
    let panic_window = Duration::from_secs(
        ((stable_window.as_secs_f64() * panic_pct / 100.0).round() as u64).max(1),
    );
    let panic_threshold = a
        .number("panic-threshold-percentage", 110.0..=1000.0)?
        .unwrap_or(cluster.panic_threshold_percentage)
        / 100.0;
    let target_burst_capacity = match a.get("target-burst-capacity") {
        None => cluster.target_burst_capacity,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(x) if x >= 0.0 || x == -1.0 => x,
            _ => {
                return Err(err(
                    Annotations::path("target-burst-capacity"),
                    format!("'{v}' must be >= 0 or -1"),
                ));
            }
        },
    };
    // KServe: minReplicas (default 1) and maxReplicas become min-scale and max-scale.
    let min_scale = match fields.min_replicas {
        Some(m) => m,
        None => a.count("min-scale", 0)?.unwrap_or(1),
    };
    let max_scale = match fields.max_replicas {
        Some(m) => m,
        None => a.count("max-scale", 0)?.unwrap_or(0),
    };
    if max_scale != 0 && max_scale < min_scale {
        return Err(err(
            format!("{}.maxReplicas", fields.path_prefix),
            format!("{max_scale} is below minReplicas {min_scale}"),
        ));
    }
    let initial_scale = a
        .count("initial-scale", 0)?
        .unwrap_or(cluster.initial_scale);
    if initial_scale == 0 && !cluster.allow_zero_initial_scale {
        return Err(err(
            Annotations::path("initial-scale"),
            "0 needs allow-zero-initial-scale in the cluster settings",
        ));
    }
    let scale_down_delay = a
        .duration(
            "scale-down-delay",
            Duration::ZERO..=Duration::from_secs(3600),
        )?
        .unwrap_or(cluster.scale_down_delay);
    let retention = a
        .duration(
            "scale-to-zero-pod-retention-period",
            Duration::ZERO..=Duration::from_secs(3600),
        )?
        .unwrap_or(cluster.scale_to_zero_pod_retention);
    let activation_scale = a.count("activation-scale", 1)?.unwrap_or(1);
    match a.get("metric-aggregation-algorithm") {
        None | Some("linear") => {}
        Some(other) => {
            return Err(err(
                Annotations::path("metric-aggregation-algorithm"),
                format!("'{other}' is not supported: Siesta averages linearly"),
            ));
        }
    }
    Ok(ComponentScaling {
        metric,
        decider: DeciderSpec {
            target,
            total_target: total,
            target_burst_capacity,
            panic_threshold,
            max_scale_up_rate: cluster.max_scale_up_rate,
            max_scale_down_rate: cluster.max_scale_down_rate,
            stable_window,
            scale_down_delay,
            activation_scale,
            tick: cluster.tick,
        },
        min_scale,
        max_scale,
        initial_scale,
        panic_window,
        scale_to_zero_grace: cluster.scale_to_zero_grace,
        scale_to_zero_pod_retention: retention,
    })
}

/// Knative reads percentages > 1 as percent and (0, 1] as a fraction.
fn fraction(pct: f64) -> f64 {
    if pct > 1.0 { pct / 100.0 } else { pct }
}
