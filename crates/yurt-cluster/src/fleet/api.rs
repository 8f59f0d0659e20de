//! The fleet's use of the Kubernetes API: an admin client, node pre-registration and
//! waiting for nodes to become Ready.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};
use crate::spec::Plan;

/// A client from a kubeconfig file.
///
/// # Errors
/// If the kubeconfig is unreadable or invalid.
pub async fn admin_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| Error::Corrupt {
        path: kubeconfig.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Corrupt {
            path: kubeconfig.to_owned(),
            reason: e.to_string(),
        })?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(config).map_err(|e| Error::kube("build the API client", e))
}

/// Whether the API server answers `/readyz` with `ok`.
pub async fn api_ready(client: &kube::Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await,
        Ok(Ok(body)) if body.trim() == "ok"
    )
}

/// Creates each edge host's Node object before its kubelet starts, with its pool
/// labels and the pod CIDR the address plan gave it, so every node's CNI range, its
/// Node object and the fleet's routes agree from the start. An existing Node (a
/// restarted fleet) is left as it is.
///
/// # Errors
/// API errors other than "already exists".
pub async fn register_nodes(client: &kube::Client, plan: &Plan) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for edge in &plan.edges {
        let pool = &plan.pools[edge.pool];
        let node = Node {
            metadata: ObjectMeta {
                name: Some(edge.name.to_string()),
                labels: Some(BTreeMap::from([
                    (
                        yurt_api::labels::NODE_POOL.to_owned(),
                        pool.name.to_string(),
                    ),
                    (
                        yurt_api::labels::IS_EDGE_WORKER.to_owned(),
                        "true".to_owned(),
                    ),
                ])),
                // kubelet 1.20 writes into the annotations of an existing Node without
                // creating the map (and panics on a nil map): give it the value it sets.
                // Edge nodes of the fleet are autonomous (OpenYurt's default for edge
                // nodes joined with the hub): the hub reports it in the node's Autonomy
                // condition and the manager keeps their pods through outages.
                annotations: Some(BTreeMap::from([
                    (
                        "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
                        "true".to_owned(),
                    ),
                    (
                        yurt_api::labels::AUTONOMY_DURATION.to_owned(),
                        "0".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(edge.pod_cidr.to_string()),
                pod_cidrs: Some(vec![edge.pod_cidr.to_string()]),
                ..NodeSpec::default()
            }),
            // kubelet 1.20 also writes into the capacity maps of an existing Node; they
            // must be non-empty to survive serialisation. kubelet replaces them at once.
            status: Some(NodeStatus {
                capacity: Some(BTreeMap::from([(
                    "pods".to_owned(),
                    Quantity("110".into()),
                )])),
                allocatable: Some(BTreeMap::from([(
                    "pods".to_owned(),
                    Quantity("110".into()),
                )])),
                ..NodeStatus::default()
            }),
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("register node {}", edge.name), e)),
        }
    }
    Ok(())
}

/// Lets hubs (group `openyurt:yurthub`) read what they and the components behind them
/// need beyond what the Node authorizer grants a node: Services, Endpoints and
/// EndpointSlices for kube-proxy and the hub's filters, Nodes for pool membership, the
/// hub's ConfigMaps, and writing Events.
///
/// # Errors
/// API errors.
pub async fn apply_hub_rbac(client: &kube::Client) -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{Patch, PatchParams};
    let name = "openyurt:yurthub";
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "endpoints", "nodes", "configmaps", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools", "nodebuckets"], "verbs": ["get", "list", "watch"]},
        ],
    }))
    .map_err(|e| Error::Invalid(format!("hub ClusterRole: {e}")))?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": crate::pki::HUB_GROUP}],
    }))
    .map_err(|e| Error::Invalid(format!("hub ClusterRoleBinding: {e}")))?;
    let params = PatchParams::apply("yurt-up").force();
    Api::<ClusterRole>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&role))
        .await
        .map_err(|e| Error::kube("apply the hub ClusterRole", e))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&binding))
        .await
        .map_err(|e| Error::kube("apply the hub ClusterRoleBinding", e))?;
    Ok(())
}

/// What yurt manager (user `openyurt:yurt-manager`) may do: install its CRDs and
/// webhook configurations, keep its certificates, Lease and Events in `kube-system`,
/// and run its controllers (nodes, pods, endpoints, NodePools and the other OpenYurt
/// kinds).
///
/// # Errors
/// API errors.
pub async fn apply_manager_rbac(client: &kube::Client) -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{Patch, PatchParams};
    let name = "openyurt:yurt-manager";
    let all = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let read = ["get", "list", "watch"];
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": all},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], "verbs": all},
            {"apiGroups": [""], "resources": ["secrets", "configmaps", "services", "endpoints"], "verbs": all},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": all},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "update", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": all},
            {"apiGroups": [""], "resources": ["nodes/status", "pods/status"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": all},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets", "controllerrevisions"], "verbs": all},
            {"apiGroups": ["apps.openyurt.io", "raven.openyurt.io", "network.openyurt.io"], "resources": ["*"], "verbs": all},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": read},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval"], "verbs": ["update"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "resourceNames": ["kubernetes.io/kube-apiserver-client", "kubernetes.io/kubelet-serving"], "verbs": ["approve"]},
        ],
    }))
    .map_err(|e| Error::Invalid(format!("manager ClusterRole: {e}")))?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::pki::MANAGER_USER}],
    }))
    .map_err(|e| Error::Invalid(format!("manager ClusterRoleBinding: {e}")))?;
    let params = PatchParams::apply("yurt-up").force();
    Api::<ClusterRole>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&role))
        .await
        .map_err(|e| Error::kube("apply the manager ClusterRole", e))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&binding))
        .await
        .map_err(|e| Error::kube("apply the manager ClusterRoleBinding", e))?;
    Ok(())
}

/// Creates a NodePool (`apps.openyurt.io/v1beta2`, type Edge) for each pool of the
/// plan; its nodes already carry its label. Existing pools are left as they are.
///
/// # Errors
/// API errors other than "already exists".
pub async fn create_node_pools(client: &kube::Client, plan: &Plan) -> Result<()> {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps.openyurt.io", "v1beta2", "NodePool"),
        "nodepools",
    );
    let pools: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    for pool in &plan.pools {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.openyurt.io/v1beta2",
            "kind": "NodePool",
            "metadata": {"name": pool.name.as_str()},
            "spec": {"type": "Edge"},
        }))
        .map_err(|e| Error::Invalid(format!("NodePool {}: {e}", pool.name)))?;
        match pools.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("create NodePool {}", pool.name), e)),
        }
    }
    Ok(())
}

/// Readiness of the plan's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReadiness {
    /// Nodes whose Ready condition is True.
    pub ready: Vec<String>,
    /// Nodes that are not (yet) Ready.
    pub not_ready: Vec<String>,
}

/// Readiness of every edge node of `plan`.
///
/// # Errors
/// API errors.
pub async fn node_readiness(client: &kube::Client, plan: &Plan) -> Result<NodeReadiness> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list nodes", e))?;
    let is_ready = |name: &str| {
        list.items.iter().any(|n| {
            n.metadata.name.as_deref() == Some(name)
                && n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    };
    let (ready, not_ready) = plan
        .edges
        .iter()
        .map(|e| e.name.to_string())
        .partition(|n| is_ready(n));
    Ok(NodeReadiness { ready, not_ready })
}

/// Waits until every edge node of `plan` is Ready, calling `progress` on each change.
///
/// # Errors
/// [`Error::NotReady`] naming the nodes that are not Ready after `timeout`.
pub async fn wait_nodes_ready(
    client: &kube::Client,
    plan: &Plan,
    timeout: Duration,
    progress: &(dyn Fn(&NodeReadiness) + Sync),
) -> Result<()> {
    let start = Instant::now();
    let mut last = None;
    loop {
        match node_readiness(client, plan).await {
            Ok(r) => {
                if last.as_ref() != Some(&r) {
                    progress(&r);
                }
                if r.not_ready.is_empty() {
                    return Ok(());
                }
                last = Some(r);
            }
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => {}
        }
        if start.elapsed() > timeout {
            return Err(Error::NotReady {
                what: format!(
                    "nodes {}",
                    last.map(|r| r.not_ready.join(", ")).unwrap_or_default()
                ),
                waited: timeout,
                log: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
