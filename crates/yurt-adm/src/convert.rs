//! `yurt adm convert|revert --node N`: what an administrator runs to convert a plain
//! node to an edge node or back, through the conversion controller (OpenYurt 1.7's
//! label-driven conversion): convert adds the pool label, revert removes it, and both
//! wait until the node's `YurtNodeConversionFailed` condition says the controller's
//! Job finished (or failed: its message is the error).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The pool label (the trigger).
const NODE_POOL: &str = "apps.openyurt.io/nodepool";
/// The label the controller sets on a converted node.
const IS_EDGE_WORKER: &str = "openyurt.io/is-edge-worker";
/// The condition the controller reports on.
const CONDITION: &str = "YurtNodeConversionFailed";
/// How often the node is read while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Conversion failures.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Bad input or a node that cannot take it.
    #[error("{0}")]
    Refused(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// Why it failed.
        source: kube::Error,
    },
    /// The controller reported a failure.
    #[error("{reason}: {message}")]
    Failed {
        /// `ConvertFailed` or `RevertFailed`.
        reason: String,
        /// The controller's message.
        message: String,
    },
    /// Not done in time.
    #[error(
        "the node was not {wanted} within {timeout:?}; its condition {CONDITION} last said: {last} (is yurt manager running with its yurtnodeconversion controller? `kubectl -n kube-system get job node-servant-conversion-<node>`)"
    )]
    Timeout {
        /// `Converted` or `Reverted`.
        wanted: &'static str,
        /// The wait.
        timeout: Duration,
        /// The condition's last reason and message.
        last: String,
    },
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted {
    /// The node already was what was asked.
    Already,
    /// The controller converted or reverted it.
    Done,
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ConvertError {
    let what = what.into();
    move |source| ConvertError::Api { what, source }
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// The node's conversion condition: status, reason, message, last transition.
fn condition(node: &Node) -> Option<(String, String, String, Option<String>)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION)
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
                c.last_transition_time.as_ref().map(|t| t.0.to_string()),
            )
        })
}

/// The condition as it is before the command acts: the conversion's end must differ
/// from it (the transition time has one-second resolution, so the whole condition is
/// compared).
type Before = Option<(String, String, String, Option<String>)>;

/// Converts `node` into `pool` (default: the pool it is labelled with) and waits.
///
/// # Errors
/// [`ConvertError`].
pub async fn convert(
    client: &kube::Client,
    node: &str,
    pool: Option<&str>,
    timeout: Duration,
    progress: crate::join::Progress<'_>,
) -> Result<Converted, ConvertError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes
        .get(node)
        .await
        .map_err(api(format!("reading Node {node}")))?;
    let labelled = label(&current, NODE_POOL).map(str::to_owned);
    let pool = match (pool, labelled.as_deref()) {
        (Some(p), Some(l)) if p != l => {
            return Err(ConvertError::Refused(format!(
                "Node {node} is in pool {l}: a node's pool is not changed in place (revert it, then convert it into {p})"
            )));
        }
        (Some(p), _) => p.to_owned(),
        (None, Some(l)) => l.to_owned(),
        (None, None) => {
            return Err(ConvertError::Refused(format!(
                "Node {node} has no pool label: give --nodepool-name"
            )));
        }
    };
    let edge = label(&current, IS_EDGE_WORKER) == Some("true");
    if edge && labelled.as_deref() == Some(&pool) {
        return Ok(Converted::Already);
    }
    let pools = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("apps.openyurt.io", "v1beta2", "NodePool"),
        "nodepools",
    );
    let found: Option<kube::core::DynamicObject> = Api::all_with(client.clone(), &pools)
        .get_opt(&pool)
        .await
        .map_err(api(format!("reading NodePool {pool}")))?;
    let Some(found) = found else {
        return Err(ConvertError::Refused(format!(
            "NodePool {pool} does not exist: create it first (`kubectl get nodepools` lists them)"
        )));
    };
    if found.data["spec"]["type"].as_str() == Some("Cloud") {
        return Err(ConvertError::Refused(format!(
            "NodePool {pool} is a Cloud pool: its nodes are not converted"
        )));
    }
    // The label was there and the conversion failed: the controller keeps that answer
    // until its Job is deleted.
    if labelled.is_some()
        && let Some((status, reason, message, _)) = condition(&current)
        && status == "True"
        && reason == "ConvertFailed"
    {
        return Err(ConvertError::Failed { reason, message });
    }
    let since: Before = condition(&current);
    if labelled.is_none() {
        progress(&format!("labelling Node {node} with {NODE_POOL}={pool}"));
        let patch = json!({"metadata": {"labels": {NODE_POOL: pool}}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(api(format!("labelling Node {node}")))?;
    }
    let reverting = since
        .as_ref()
        .is_some_and(|(_, reason, _, _)| reason == "Reverting" || reason == "RevertFailed");
    if edge && !reverting {
        // Converted already, its pool label gone but no revert begun: with the label
        // back there is nothing to do.
        return Ok(Converted::Already);
    }
    wait(&nodes, node, "Converted", since, timeout, progress, |n| {
        label(n, IS_EDGE_WORKER) == Some("true")
    })
    .await
    .map(|()| Converted::Done)
}

/// Reverts `node` and waits.
///
/// # Errors
/// [`ConvertError`].
pub async fn revert(
    client: &kube::Client,
    node: &str,
    timeout: Duration,
    progress: crate::join::Progress<'_>,
) -> Result<Converted, ConvertError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes
        .get(node)
        .await
        .map_err(api(format!("reading Node {node}")))?;
    let edge = label(&current, IS_EDGE_WORKER) == Some("true");
    let failed_convert =
        condition(&current).is_some_and(|(s, r, _, _)| s == "True" && r == "ConvertFailed");
    if label(&current, NODE_POOL).is_none()
        && let Some((status, reason, message, _)) = condition(&current)
        && status == "True"
        && reason == "RevertFailed"
    {
        return Err(ConvertError::Failed { reason, message });
    }
    if label(&current, NODE_POOL).is_none() && !edge && !failed_convert {
        return Ok(Converted::Already);
    }
    let since: Before = condition(&current);
    if label(&current, NODE_POOL).is_some() {
        progress(&format!("removing {NODE_POOL} from Node {node}"));
        let patch = json!({"metadata": {"labels": {NODE_POOL: null}}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(api(format!("unlabelling Node {node}")))?;
    }
    wait(&nodes, node, "Reverted", since, timeout, progress, |n| {
        label(n, IS_EDGE_WORKER) != Some("true")
    })
    .await
    .map(|()| Converted::Done)
}

/// Waits until the condition's reason is `wanted`, changed since `since` (an earlier
/// conversion's answer does not count), and `labelled` holds; fails on this
/// direction's failure.
async fn wait(
    nodes: &Api<Node>,
    node: &str,
    wanted: &'static str,
    since: Before,
    timeout: Duration,
    progress: crate::join::Progress<'_>,
    labelled: impl Fn(&Node) -> bool,
) -> Result<(), ConvertError> {
    let deadline = Instant::now() + timeout;
    let mut said = String::new();
    let mut last = "nothing yet".to_owned();
    loop {
        match nodes.get(node).await {
            Ok(n) => {
                let now = condition(&n);
                let fresh = now != since;
                if let Some((status, reason, message, _)) = now {
                    // Only this direction's failure: a revert begins from a failed
                    // convert's condition.
                    let failed = if wanted == "Converted" {
                        "ConvertFailed"
                    } else {
                        "RevertFailed"
                    };
                    if fresh && status == "True" && reason == failed {
                        return Err(ConvertError::Failed { reason, message });
                    }
                    if fresh && reason == wanted && labelled(&n) {
                        return Ok(());
                    }
                    if reason != said {
                        progress(&format!("{reason}: {message}"));
                        said.clone_from(&reason);
                    }
                    last = format!("{reason} ({message})");
                }
            }
            // The API server may be restarting: the deadline decides.
            Err(e) => last = format!("reading Node {node}: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(ConvertError::Timeout {
                wanted,
                timeout,
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
