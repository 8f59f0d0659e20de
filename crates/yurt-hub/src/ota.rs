//! Over-the-air upgrades on the node's own terms (reference/openyurt.md §2.15, §5.2):
//! `POST /openyurt.io/v1/namespaces/{ns}/pods/{pod}/upgrade` on the admin port.
//!
//! The cloud marks pods with a newer version waiting with the condition
//! `PodNeedUpgrade=True` (the yurtstaticset and daemonpodupdater controllers); the node's
//! owner decides when. For a static pod of a YurtStaticSet the hub renders the new
//! manifest from the set itself (the same code the manager renders worker manifests
//! with, in `yurt-api`; the hub may read YurtStaticSets but no ConfigMap except its
//! own, ADR 004) and writes it into kubelet's static pod folder
//! (the old one backed up under `openyurtio-upgrade/`, the new one renamed into place
//! so kubelet never reads half a file); for a DaemonSet pod it deletes the pod and the
//! DaemonSet controller recreates it on the new template. Refused while the cloud is
//! unreachable, for pods of other nodes, and for pods not marked for an upgrade.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use yurt_api::apps::v1alpha1::YurtStaticSet;

use crate::codec::Format;
use crate::health::Health;
use crate::status::{self, StatusError};

/// Pod condition the cloud sets when a newer version waits.
pub const POD_NEED_UPGRADE: &str = "PodNeedUpgrade";
/// Pod condition of the image pre-pull (honoured when present).
pub const POD_IMAGE_READY: &str = "PodImageReady";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What the OTA endpoint needs.
pub struct Ota {
    /// A client to the API servers (through the hub, as the node).
    pub client: kube::Client,
    /// Cloud health.
    pub health: Arc<Health>,
    /// This node.
    pub node: String,
    /// kubelet's static pod folder.
    pub static_pod_dir: PathBuf,
}

/// Why an upgrade request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OtaError {
    /// The cloud is unreachable.
    #[error("the cloud is unreachable; upgrades wait until it is back")]
    Offline,
    /// No such pod.
    #[error("pod {0} not found")]
    NotFound(String),
    /// The pod runs elsewhere.
    #[error("pod {pod} runs on node {node:?}, not on this node")]
    OtherNode {
        /// The pod.
        pod: String,
        /// Its node.
        node: String,
    },
    /// Not marked for an upgrade.
    #[error("pod {0} has no pending upgrade (condition PodNeedUpgrade is not True)")]
    NotNeeded(String),
    /// The new images are not pulled yet.
    #[error("pod {0}: the new images are not pulled yet (condition PodImageReady is not True)")]
    ImageNotReady(String),
    /// Neither a static pod of a YurtStaticSet nor a DaemonSet pod.
    #[error("pod {0} is neither a static pod of a YurtStaticSet nor a DaemonSet pod")]
    Unsupported(String),
    /// The manifest in the cloud is unusable.
    #[error("{0}")]
    BadManifest(String),
    /// The API server failed.
    #[error("API server: {0}")]
    Api(String),
    /// Writing the manifest failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// The error.
        reason: String,
    },
}

impl OtaError {
    fn status_error(&self) -> StatusError {
        let message = self.to_string();
        match self {
            Self::Offline => StatusError::service_unavailable(message),
            Self::NotFound(_) => StatusError::not_found(message),
            Self::OtherNode { .. } => StatusError::forbidden(message),
            Self::NotNeeded(_) | Self::ImageNotReady(_) | Self::Unsupported(_) => {
                StatusError::bad_request(message)
            }
            Self::BadManifest(_) | Self::Api(_) | Self::Write { .. } => {
                StatusError::internal(message)
            }
        }
    }
}

/// How a pod is upgraded.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// A static pod of the named YurtStaticSet: rewrite its manifest.
    StaticPod {
        /// The YurtStaticSet.
        set: String,
    },
    /// A DaemonSet pod: delete it.
    DaemonSetPod,
}

fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a str> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .map(|c| c.status.as_str())
}

/// Whether `pod` may be upgraded on `node` now, and how.
///
/// # Errors
/// Why not.
pub fn decide(pod: &Pod, node: &str) -> Result<Target, OtaError> {
    let name = pod.name_any();
    let on = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if on != node {
        return Err(OtaError::OtherNode {
            pod: name,
            node: on,
        });
    }
    if condition(pod, POD_NEED_UPGRADE) != Some("True") {
        return Err(OtaError::NotNeeded(name));
    }
    if condition(pod, POD_IMAGE_READY).is_some_and(|s| s != "True") {
        return Err(OtaError::ImageNotReady(name));
    }
    let owners = pod.owner_references();
    if owners.iter().any(|o| o.kind == "DaemonSet") {
        return Ok(Target::DaemonSetPod);
    }
    let is_static = pod.annotations().contains_key(MIRROR_ANNOTATION)
        || owners.iter().any(|o| o.kind == "Node");
    match name.strip_suffix(&format!("-{node}")) {
        Some(set) if is_static && !set.is_empty() => Ok(Target::StaticPod {
            set: set.to_owned(),
        }),
        _ => Err(OtaError::Unsupported(name)),
    }
}

/// Writes `content` as `<dir>/<manifest>.yaml`: the old file backed up under
/// `openyurtio-upgrade/`, the new one written beside it under a hidden name (kubelet
/// skips dot files), synced, and renamed into place.
///
/// # Errors
/// A manifest name that is not a plain file name, or an I/O error.
pub fn write_manifest(dir: &Path, manifest: &str, content: &str) -> Result<PathBuf, OtaError> {
    if manifest.is_empty() || manifest.contains('/') || manifest.starts_with('.') {
        return Err(OtaError::BadManifest(format!(
            "manifest name {manifest:?} is not a plain file name"
        )));
    }
    let io = |path: &Path, e: std::io::Error| OtaError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let target = dir.join(format!("{manifest}.yaml"));
    if target.exists() {
        let backups = dir.join("openyurtio-upgrade");
        std::fs::create_dir_all(&backups).map_err(|e| io(&backups, e))?;
        let backup = backups.join(format!("{manifest}.yaml.bak"));
        std::fs::copy(&target, &backup).map_err(|e| io(&backup, e))?;
    }
    let tmp = dir.join(format!(".{manifest}.yaml.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(content.as_bytes()).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
    Ok(target)
}

fn api_error(what: &str, e: kube::Error) -> OtaError {
    match e {
        kube::Error::Api(s) if s.code == 404 => OtaError::NotFound(what.to_owned()),
        e => OtaError::Api(e.to_string()),
    }
}

impl Ota {
    /// Upgrades `namespace/pod` on this node.
    ///
    /// # Errors
    /// Why it was refused or failed.
    pub async fn upgrade(&self, namespace: &str, pod_name: &str) -> Result<String, OtaError> {
        if !self.health.online() {
            return Err(OtaError::Offline);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods
            .get(pod_name)
            .await
            .map_err(|e| api_error(&format!("{namespace}/{pod_name}"), e))?;
        match decide(&pod, &self.node)? {
            Target::DaemonSetPod => {
                pods.delete(pod_name, &DeleteParams::default())
                    .await
                    .map_err(|e| api_error(&format!("{namespace}/{pod_name}"), e))?;
                tracing::info!(
                    namespace,
                    pod = pod_name,
                    "OTA: DaemonSet pod deleted for its upgrade"
                );
                Ok(format!(
                    "pod {namespace}/{pod_name} deleted; its DaemonSet recreates it on the new version"
                ))
            }
            Target::StaticPod { set } => {
                let sets: Api<YurtStaticSet> = Api::namespaced(self.client.clone(), namespace);
                let yss = sets
                    .get(&set)
                    .await
                    .map_err(|e| api_error(&format!("YurtStaticSet {namespace}/{set}"), e))?;
                let manifest = yss.spec.static_pod_manifest.clone().unwrap_or_default();
                let content = yss.render_manifest(&yss.template_hash());
                let dir = self.static_pod_dir.clone();
                let (m, c) = (manifest, content);
                let path = tokio::task::spawn_blocking(move || write_manifest(&dir, &m, &c))
                    .await
                    .map_err(|e| OtaError::Api(e.to_string()))??;
                tracing::info!(namespace, pod = pod_name, yurtstaticset = %set, path = %path.display(), "OTA: static pod manifest upgraded");
                Ok(format!(
                    "static pod {namespace}/{pod_name} upgraded: {} written",
                    path.display()
                ))
            }
        }
    }
}

fn error(e: StatusError) -> Response {
    e.into_response(&[Format::Json]).map(axum::body::Body::new)
}

/// `POST /openyurt.io/v1/namespaces/{ns}/pods/{pod}/upgrade`.
pub async fn handle(
    State(ota): State<Option<Arc<Ota>>>,
    UrlPath((namespace, pod)): UrlPath<(String, String)>,
) -> Response {
    let Some(ota) = ota else {
        return error(StatusError::not_found(
            "OTA upgrades are not enabled on this hub",
        ));
    };
    match ota.upgrade(&namespace, &pod).await {
        Ok(message) => status::success(&message).map(axum::body::Body::new),
        Err(e) => {
            tracing::info!(namespace, pod, error = %e, "OTA upgrade refused");
            error(e.status_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, conditions: serde_json::Value, meta: serde_json::Value) -> Pod {
        let mut m = meta;
        m["name"] = json!(name);
        m["namespace"] = json!("kube-system");
        serde_json::from_value(json!({
            "metadata": m,
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": conditions},
        }))
        .expect("pod")
    }

    fn need() -> serde_json::Value {
        json!([{"type": "PodNeedUpgrade", "status": "True"}])
    }

    #[test]
    fn only_marked_pods_of_this_node_are_upgraded() {
        let mirror = json!({"annotations": {"kubernetes.io/config.mirror": "x"}});
        let p = pod("agent-edge-1", "edge-1", need(), mirror.clone());
        assert_eq!(
            decide(&p, "edge-1"),
            Ok(Target::StaticPod {
                set: "agent".into()
            })
        );
        assert!(matches!(
            decide(&p, "edge-2"),
            Err(OtaError::OtherNode { .. })
        ));
        let not = pod(
            "agent-edge-1",
            "edge-1",
            json!([{"type": "PodNeedUpgrade", "status": "False"}]),
            mirror.clone(),
        );
        assert_eq!(
            decide(&not, "edge-1"),
            Err(OtaError::NotNeeded("agent-edge-1".into()))
        );
        let pulling = pod(
            "agent-edge-1",
            "edge-1",
            json!([{"type": "PodNeedUpgrade", "status": "True"}, {"type": "PodImageReady", "status": "False"}]),
            mirror,
        );
        assert!(matches!(
            decide(&pulling, "edge-1"),
            Err(OtaError::ImageNotReady(_))
        ));
        let ds = pod(
            "fluent-x1",
            "edge-1",
            need(),
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "fluent", "uid": "u"}]}),
        );
        assert_eq!(decide(&ds, "edge-1"), Ok(Target::DaemonSetPod));
        let plain = pod("web-1", "edge-1", need(), json!({}));
        assert!(matches!(
            decide(&plain, "edge-1"),
            Err(OtaError::Unsupported(_))
        ));
    }

    #[test]
    fn the_manifest_is_swapped_with_a_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("agent.yaml"), "old").expect("write");
        let path = write_manifest(dir.path(), "agent", "new").expect("written");
        assert_eq!(std::fs::read_to_string(path).expect("read"), "new");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("openyurtio-upgrade/agent.yaml.bak"))
                .expect("bak"),
            "old"
        );
        assert!(!dir.path().join(".agent.yaml.tmp").exists());
        assert!(write_manifest(dir.path(), "../x", "y").is_err());
    }
}
