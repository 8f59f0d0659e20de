//! The node's `Autonomy` condition (OpenYurt §2.9): whether this node can keep working
//! offline. `False` when the node is not an autonomous edge node or the hub's cache
//! writer has stopped, `True` when the hub's cache is healthy, `Unknown` when cache
//! writes have been failing (a full disk, I/O errors, a corrupt database replaced, a
//! skipped item, writes dropped because the write queue stayed full). Checked when
//! kubelet reads its Node; written with the node's identity, only when it changes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};

use crate::metrics::HubMetrics;

use yurt_api::labels::{
    AUTONOMY_CONDITION as CONDITION, AUTONOMY_DURATION, AUTONOMY_LEGACY,
    IS_EDGE_WORKER as EDGE_LABEL,
};

/// What the condition should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// Machine-readable reason.
    pub reason: &'static str,
    /// For humans.
    pub message: String,
}

/// What the hub knows of its cache when it judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheHealth {
    /// Cache writes that failed since the last check.
    pub failed_writes: u64,
    /// Whether the cache writer still runs.
    pub writer_running: bool,
}

/// The verdict for `node`, given the cache's health since the last check.
pub fn verdict(node: &Node, cache: CacheHealth) -> Verdict {
    let failed_writes = cache.failed_writes;
    let meta = &node.metadata;
    let annotations = meta.annotations.clone().unwrap_or_default();
    let autonomous = annotations.contains_key(AUTONOMY_DURATION)
        || annotations.get(AUTONOMY_LEGACY).map(String::as_str) == Some("true");
    let edge = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(EDGE_LABEL))
        .is_none_or(|v| v != "false");
    if !autonomous || !edge {
        return Verdict {
            status: "False",
            reason: "AutonomyDisabled",
            message: "the node is not an autonomous edge node".into(),
        };
    }
    if !cache.writer_running {
        return Verdict {
            status: "False",
            reason: "CacheWriterStopped",
            message: "the hub's cache writer has stopped: nothing new is cached, so the node cannot work offline as expected".into(),
        };
    }
    if failed_writes > 0 {
        return Verdict {
            status: "Unknown",
            reason: "CacheFailed",
            message: format!(
                "{failed_writes} cache writes failed recently; offline serving may be incomplete"
            ),
        };
    }
    Verdict {
        status: "True",
        reason: "AutonomyEnabled",
        message: "the hub's cache is healthy".into(),
    }
}

/// Rate-limits checks and remembers failed-write counts between them.
#[derive(Debug)]
pub struct AutonomyReporter {
    last: Mutex<(Option<Instant>, u64)>,
    every: Duration,
}

impl AutonomyReporter {
    /// Checks at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            last: Mutex::new((None, 0)),
            every,
        }
    }

    fn failed_writes(metrics: &HubMetrics) -> u64 {
        crate::metrics::CACHE_WRITE_ERROR_REASONS
            .iter()
            .map(|r| {
                metrics
                    .cache_write_errors
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: (*r).to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    /// Updates the node's condition if it is due and changed.
    ///
    /// # Errors
    /// API errors.
    pub async fn check(
        &self,
        client: &kube::Client,
        node: &str,
        metrics: &HubMetrics,
        writer_running: bool,
    ) -> Result<(), kube::Error> {
        let failed_now = Self::failed_writes(metrics);
        let failed_since = {
            let Ok(mut last) = self.last.lock() else {
                return Ok(());
            };
            if last.0.is_some_and(|t| t.elapsed() < self.every) {
                return Ok(());
            }
            let delta = failed_now.saturating_sub(last.1);
            *last = (Some(Instant::now()), failed_now);
            delta
        };
        let nodes: Api<Node> = Api::all(client.clone());
        let current = nodes.get(node).await?;
        let v = verdict(
            &current,
            CacheHealth {
                failed_writes: failed_since,
                writer_running,
            },
        );
        let existing = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == CONDITION));
        if existing.is_some_and(|c| c.status == v.status && c.reason.as_deref() == Some(v.reason)) {
            return Ok(());
        }
        let now = Time(jiff::Timestamp::now());
        let condition = NodeCondition {
            type_: CONDITION.into(),
            status: v.status.into(),
            reason: Some(v.reason.into()),
            message: Some(v.message),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        };
        let patch = serde_json::json!({"status": {"conditions": [condition]}});
        nodes
            .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        tracing::info!(
            node,
            status = v.status,
            reason = v.reason,
            "Autonomy condition updated"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn node(annotations: &[(&str, &str)], edge: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                labels: edge.map(|e| [(EDGE_LABEL.to_owned(), e.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    fn failed(failed_writes: u64) -> CacheHealth {
        CacheHealth {
            failed_writes,
            writer_running: true,
        }
    }

    #[test]
    fn verdicts_follow_annotations_labels_and_cache_health() {
        assert_eq!(verdict(&node(&[], Some("true")), failed(0)).status, "False");
        assert_eq!(
            verdict(&node(&[(AUTONOMY_DURATION, "0")], Some("true")), failed(0)).status,
            "True"
        );
        assert_eq!(
            verdict(&node(&[(AUTONOMY_LEGACY, "true")], None), failed(0)).status,
            "True"
        );
        assert_eq!(
            verdict(
                &node(&[(AUTONOMY_DURATION, "1h")], Some("false")),
                failed(0)
            )
            .status,
            "False"
        );
        let v = verdict(&node(&[(AUTONOMY_DURATION, "0")], Some("true")), failed(3));
        assert_eq!((v.status, v.reason), ("Unknown", "CacheFailed"));
        let stopped = CacheHealth {
            failed_writes: 0,
            writer_running: false,
        };
        let v = verdict(&node(&[(AUTONOMY_DURATION, "0")], Some("true")), stopped);
        assert_eq!((v.status, v.reason), ("False", "CacheWriterStopped"));
    }
}
