//! The node's `Autonomy` condition (OpenYurt §2.9): whether this node can keep working
//! offline. `False` when the node is not an autonomous edge node or the hub's cache
//! writer has stopped, `True` when the hub's cache is healthy, `Unknown` when cache
//! writes have been failing (a full disk, I/O errors, a corrupt database replaced, a
//! skipped item, writes dropped because the write queue stayed full). Checked when
//! kubelet reads its Node (at most every 30 s), judged from the freshest copy of the
//! Node in the hub's cache (kubelet's reads and watch, the hub's node view: no extra
//! read upstream; the server is asked only for a Node the hub has never seen); written
//! with the node's identity, only when it changes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use prost::Message as _;

use crate::codec::{Format, RawObject};
use crate::metrics::HubMetrics;
use crate::store::{ObjectKey, Store};

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

/// Who reads the node's own Node through the hub, so that its cache holds copies:
/// kubelet (its GET every 10 s, its watch of its Node, the answers to its status
/// patches) and the hub itself (its node view).
const NODE_READERS: &[&str] = &["kubelet", "yurthub"];

/// The freshest copy of Node `node` in the hub's cache (the highest resourceVersion of
/// kubelet's and the hub's copies), if the hub has seen it. Reads SQLite: call it from
/// a blocking thread.
pub fn cached_node(store: &Store, node: &str) -> Option<Node> {
    NODE_READERS
        .iter()
        .filter_map(|owner| {
            let key = ObjectKey {
                component: (*owner).to_owned(),
                gvr: "nodes.v1.core".to_owned(),
                namespace: String::new(),
                name: node.to_owned(),
            };
            // A copy of another kind (metadata only) cannot tell the condition.
            store.get(&key).ok().flatten().filter(|o| o.kind == "Node")
        })
        .max_by_key(|o| o.info.rv())
        .and_then(|o| decode_node(&o))
}

/// What the verdict needs of a stored Node: its labels, annotations and conditions
/// (protobuf copies are decoded to those only).
fn decode_node(obj: &RawObject) -> Option<Node> {
    match obj.format {
        Format::Json => serde_json::from_slice(&obj.data).ok(),
        Format::Protobuf => {
            let pb = k8s_pb::api::core::v1::Node::decode(obj.data.as_ref()).ok()?;
            let meta = pb.metadata.unwrap_or_default();
            let conditions = pb
                .status
                .map(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .map(|c| NodeCondition {
                    type_: c.r#type.unwrap_or_default(),
                    status: c.status.unwrap_or_default(),
                    reason: c.reason,
                    message: c.message,
                    ..NodeCondition::default()
                })
                .collect();
            Some(Node {
                metadata: ObjectMeta {
                    name: meta.name,
                    resource_version: meta.resource_version,
                    labels: Some(meta.labels),
                    annotations: Some(meta.annotations),
                    ..ObjectMeta::default()
                },
                status: Some(NodeStatus {
                    conditions: Some(conditions),
                    ..NodeStatus::default()
                }),
                ..Node::default()
            })
        }
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
        cache: Option<&Store>,
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
        let cached = match cache {
            Some(store) => {
                let (store, name) = (store.clone(), node.to_owned());
                tokio::task::spawn_blocking(move || cached_node(&store, &name))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let nodes: Api<Node> = Api::all(client.clone());
        let current = match cached {
            Some(n) => n,
            // The hub has never seen its Node: read it once.
            None => nodes.get(node).await?,
        };
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

    // === the check against a fake API server ===

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{Method, Request, Response};
    use http_body_util::{BodyExt, Full};
    use prost::Message;

    use crate::codec::{Format, ObjectInfo, RawObject};
    use crate::store::{ObjectKey, StoreConfig};

    const NODE: &str = "edge-a1";

    /// An API server holding Node `edge-a1` (autonomous, no Autonomy condition yet) that
    /// records every request.
    #[derive(Clone, Default)]
    struct FakeNodes {
        seen: Arc<Mutex<Vec<(Method, String, Bytes)>>>,
    }

    impl FakeNodes {
        fn client(&self) -> kube::Client {
            let fake = self.clone();
            let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
                let fake = fake.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    fake.seen.lock().expect("not poisoned").push((
                        parts.method,
                        parts.uri.path().to_owned(),
                        body,
                    ));
                    let node = serde_json::to_vec(&autonomous_node()).expect("JSON");
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(node))))
                }
            });
            kube::Client::new(svc, "default")
        }

        fn count(&self, method: &Method) -> usize {
            self.seen
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|(m, _, _)| m == method)
                .count()
        }

        /// The conditions' statuses every PATCH wrote.
        fn patched(&self) -> Vec<String> {
            self.seen
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|(m, _, _)| m == Method::PATCH)
                .map(|(_, path, body)| {
                    assert_eq!(path, &format!("/api/v1/nodes/{NODE}/status"));
                    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON patch");
                    v["status"]["conditions"][0]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        }
    }

    fn autonomous_node() -> Node {
        let mut n = node(&[(AUTONOMY_DURATION, "0")], Some("true"));
        n.metadata.name = Some(NODE.into());
        n.metadata.resource_version = Some("41".into());
        n
    }

    /// Node `edge-a1` as kubelet reads it (protobuf), with an Autonomy condition of
    /// `status` if given.
    fn node_proto(rv: &str, condition: Option<&str>) -> RawObject {
        use k8s_pb::api::core::v1 as core;
        use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
        let msg = core::Node {
            metadata: Some(meta::ObjectMeta {
                name: Some(NODE.into()),
                resource_version: Some(rv.into()),
                annotations: [(AUTONOMY_DURATION.to_owned(), "0".to_owned())].into(),
                labels: [(EDGE_LABEL.to_owned(), "true".to_owned())].into(),
                ..Default::default()
            }),
            spec: None,
            status: Some(core::NodeStatus {
                conditions: condition
                    .map(|status| core::NodeCondition {
                        r#type: Some(CONDITION.into()),
                        status: Some(status.into()),
                        reason: Some("AutonomyEnabled".into()),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
        };
        RawObject {
            format: Format::Protobuf,
            api_version: "v1".into(),
            kind: "Node".into(),
            info: ObjectInfo {
                name: NODE.into(),
                resource_version: rv.into(),
                ..ObjectInfo::default()
            },
            data: Bytes::from(msg.encode_to_vec()),
        }
    }

    /// Node `edge-a1` as the hub's node view reads it (JSON), with an Autonomy condition.
    fn node_json(rv: &str, status: &str) -> RawObject {
        let mut n = autonomous_node();
        n.metadata.resource_version = Some(rv.into());
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: CONDITION.into(),
                status: status.into(),
                reason: Some("AutonomyEnabled".into()),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        });
        let mut v = serde_json::to_value(&n).expect("JSON");
        v["apiVersion"] = "v1".into();
        v["kind"] = "Node".into();
        crate::codec::json_from_value(v).expect("a Node")
    }

    fn store_in(dir: &std::path::Path) -> Store {
        Store::open(&StoreConfig::new(dir.to_owned()), HubMetrics::default()).expect("store")
    }

    /// Caches `nodes` as read by their owners.
    fn cache(store: &Store, nodes: &[(&str, RawObject)]) {
        for (owner, obj) in nodes {
            let key = ObjectKey {
                component: (*owner).into(),
                gvr: "nodes.v1.core".into(),
                namespace: String::new(),
                name: NODE.into(),
            };
            store.upsert(key, obj.clone()).expect("queued");
        }
        store.flush().expect("written");
    }

    async fn check(reporter: &AutonomyReporter, fake: &FakeNodes, store: &Store) {
        tokio::time::timeout(
            Duration::from_secs(10),
            reporter.check(
                &fake.client(),
                NODE,
                Some(store),
                &HubMetrics::default(),
                true,
            ),
        )
        .await
        .expect("the check ends in time")
        .expect("the check succeeds");
    }

    #[tokio::test]
    async fn the_verdict_comes_from_the_cached_node_without_reading_it_again() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = store_in(dir.path());
        cache(&store, &[("kubelet", node_proto("40", None))]);
        let fake = FakeNodes::default();
        check(&AutonomyReporter::new(Duration::ZERO), &fake, &store).await;
        assert_eq!(fake.count(&Method::GET), 0, "no GET of the Node");
        assert_eq!(fake.patched(), ["True"], "the new verdict is written");
        // The cached Node now says True (kubelet read it again): nothing to write.
        cache(&store, &[("kubelet", node_proto("42", Some("True")))]);
        check(&AutonomyReporter::new(Duration::ZERO), &fake, &store).await;
        assert_eq!(fake.count(&Method::GET), 0);
        assert_eq!(
            fake.patched(),
            ["True"],
            "an unchanged verdict is not written"
        );
    }

    #[tokio::test]
    async fn the_freshest_cached_copy_decides() {
        let dir = tempfile::tempdir().expect("temporary folder");
        // The hub's own view holds a newer copy that already says True; kubelet's is older.
        let store = store_in(dir.path());
        cache(
            &store,
            &[
                ("kubelet", node_proto("40", None)),
                ("yurthub", node_json("45", "True")),
            ],
        );
        let fake = FakeNodes::default();
        check(&AutonomyReporter::new(Duration::ZERO), &fake, &store).await;
        assert_eq!(
            (fake.count(&Method::GET), fake.count(&Method::PATCH)),
            (0, 0),
            "(GET, PATCH): the newest copy already holds the verdict"
        );
    }

    #[tokio::test]
    async fn a_node_the_hub_never_saw_is_read_once_from_the_server() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = store_in(dir.path());
        let fake = FakeNodes::default();
        check(&AutonomyReporter::new(Duration::ZERO), &fake, &store).await;
        assert_eq!(fake.count(&Method::GET), 1);
        assert_eq!(fake.patched(), ["True"]);
    }
}
