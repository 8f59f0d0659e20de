//! The fleet's use of the Kubernetes API: an admin client, node pre-registration and
//! waiting for nodes to become Ready.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};
use crate::spec::{HostId, Plan};
use yurt_manager::install::rbac::Grant;

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

/// Creates each planned node's Node object before its kubelet starts, with the pod
/// CIDR the address plan gave it (and an edge host's pool labels, unless the fleet is
/// `bare`), so every node's CNI range, its Node object and the fleet's routes agree
/// from the start. An existing Node (a restarted fleet) is left as it is.
///
/// # Errors
/// API errors other than "already exists".
pub async fn register_nodes(client: &kube::Client, plan: &Plan, bare: bool) -> Result<()> {
    for host in plan.hosts() {
        register_node(client, plan, &host, bare).await?;
    }
    Ok(())
}

/// [`register_nodes`] for one host (nothing for a host the plan gives no node).
///
/// # Errors
/// API errors other than "already exists".
pub async fn register_node(
    client: &kube::Client,
    plan: &Plan,
    host: &HostId,
    bare: bool,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    {
        let Some(worker) = plan.worker(host) else {
            return Ok(());
        };
        // kubelet 1.20 writes into the annotations of an existing Node without creating
        // the map (and panics on a nil map): give it the value it sets.
        let mut annotations = BTreeMap::from([(
            "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
            "true".to_owned(),
        )]);
        let mut labels = BTreeMap::new();
        if let Some(pool) = worker.pool.filter(|_| !bare) {
            labels.insert(
                yurt_api::labels::NODE_POOL.to_owned(),
                plan.pools[pool].name.to_string(),
            );
            labels.insert(
                yurt_api::labels::IS_EDGE_WORKER.to_owned(),
                "true".to_owned(),
            );
            // Edge nodes of the fleet are autonomous (OpenYurt's default for edge nodes
            // joined with the hub): the hub reports it in the node's Autonomy condition
            // and the manager keeps their pods through outages.
            annotations.insert(
                yurt_api::labels::AUTONOMY_DURATION.to_owned(),
                "0".to_owned(),
            );
        }
        // The cloud host's node is a control-plane node as kubeadm 1.20 marks one: both
        // role labels, and a taint only add-ons that ask for it tolerate.
        let mut taints = None;
        if *host == HostId::Cloud {
            for role in ["master", "control-plane"] {
                labels.insert(format!("node-role.kubernetes.io/{role}"), String::new());
            }
            taints = Some(vec![Taint {
                key: "node-role.kubernetes.io/master".to_owned(),
                effect: "NoSchedule".to_owned(),
                ..Taint::default()
            }]);
        }
        let node = Node {
            metadata: ObjectMeta {
                name: Some(worker.name.to_string()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(worker.pod_cidr.to_string()),
                pod_cidrs: Some(vec![worker.pod_cidr.to_string()]),
                taints,
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
            Err(e) => return Err(Error::kube(format!("register node {}", worker.name), e)),
        }
    }
    Ok(())
}

// === RBAC ===

/// Name of the hubs' ClusterRole, Role and bindings.
pub const HUB_ROLE: &str = yurt_manager::install::rbac::HUB_ROLE_NAME;
/// Where the components keep their own objects: the hubs' ConfigMap, the manager's
/// Secret and Lease (the hub's `--namespace`, the manager's `--working-namespace`).
pub const SYSTEM_NAMESPACE: &str = "kube-system";

/// Server-side applies `object` (`apiVersion`, `kind`, `metadata.name` set) through `api`.
async fn apply_object<K>(api: Api<K>, object: serde_json::Value) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    use kube::api::{Patch, PatchParams};
    let what = format!(
        "{} {}",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    );
    let typed: K =
        serde_json::from_value(object).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    let name = typed.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply("yurt-up").force(),
        &Patch::Apply(&typed),
    )
    .await
    .map_err(|e| Error::kube(format!("apply {what}"), e))?;
    Ok(())
}

/// Applies the ClusterRole, Roles and bindings of `grant`.
async fn apply_grant(client: &kube::Client, grant: Grant) -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    for object in grant.objects() {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match object["kind"].as_str() {
            Some("ClusterRole") => {
                apply_object(Api::<ClusterRole>::all(client.clone()), object).await?
            }
            Some("ClusterRoleBinding") => {
                apply_object(Api::<ClusterRoleBinding>::all(client.clone()), object).await?;
            }
            Some("Role") => {
                apply_object(Api::<Role>::namespaced(client.clone(), &namespace), object).await?;
            }
            _ => {
                apply_object(
                    Api::<RoleBinding>::namespaced(client.clone(), &namespace),
                    object,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Lets hubs (group `openyurt:yurthub`) do what they and the components behind them
/// need beyond what the Node authorizer grants a node: read Services, Endpoints,
/// EndpointSlices, Nodes and NodePools, write Events, fetch the service-account
/// issuer's keys (ClusterRole `openyurt:yurthub`), and read `kube-system/yurt-hub-cfg`
/// and no other ConfigMap (Role `kube-system/openyurt:yurthub`).
///
/// # Errors
/// API errors.
pub async fn apply_hub_rbac(client: &kube::Client) -> Result<()> {
    apply_grant(
        client,
        Grant::hub(HUB_ROLE, crate::pki::HUB_GROUP, SYSTEM_NAMESPACE),
    )
    .await
}

/// What yurt manager (user `openyurt:yurt-manager`) may do: apply its own CRDs and
/// webhook configurations, run its controllers and webhooks with the verbs they call
/// (ClusterRole `openyurt:yurt-manager`), keep its webhook certificate Secret and
/// leader Lease in `kube-system` (Role `kube-system/openyurt:yurt-manager`) and write
/// the csrapprover's Events in `default` (Role `default/openyurt:yurt-manager`); and the
/// device agents' ClusterRoles `openyurt:yurt-iot-dock` and
/// `openyurt:yurt-iot-dock-virtual`, which the manager may bind.
///
/// # Errors
/// API errors.
pub async fn apply_manager_rbac(client: &kube::Client) -> Result<()> {
    apply_grant(
        client,
        Grant::manager(
            yurt_manager::install::rbac::ROLE_NAME,
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::pki::MANAGER_USER}),
            SYSTEM_NAMESPACE,
        ),
    )
    .await?;
    // The device agents' ClusterRoles, which the manager binds per PlatformAdmin.
    for role in yurt_manager::install::rbac::iot_agent_roles() {
        apply_object(
            Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone()),
            role,
        )
        .await?;
    }
    Ok(())
}

/// What the tunnel server (user `openyurt:yurt-tunnel-server`) may do: list and watch
/// Nodes, its routing table (ClusterRole `openyurt:yurt-tunnel-server`). Nothing else:
/// it carries the API server's connections, it makes none of its own.
///
/// # Errors
/// API errors.
pub async fn apply_tunnel_rbac(client: &kube::Client) -> Result<()> {
    apply_grant(
        client,
        Grant {
            name: "openyurt:yurt-tunnel-server".to_owned(),
            subject: serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::pki::TUNNEL_SERVER_USER}),
            cluster_rules: yurt_tunnel::install::cluster_rules(),
            roles: Vec::new(),
        },
    )
    .await
}

/// Where tunnel agents find the tunnel servers, as OpenYurt's agents do: Service
/// `kube-system/x-tunnel-server-svc`. The servers are processes of the cloud host, not
/// pods, so the Service has no selector (and no cluster IP: nothing dials it through
/// kube-proxy) and its Endpoints name every server's agent address. `yurt adm join`
/// and the node servant read them to write an edge node's agent.
///
/// # Errors
/// API errors.
pub async fn apply_tunnel_discovery(
    client: &kube::Client,
    servers: &[std::net::SocketAddrV4],
) -> Result<()> {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use serde_json::json;
    const NAMESPACE: &str = "kube-system";
    const NAME: &str = "x-tunnel-server-svc";
    let port_name = |i: usize| {
        if i == 0 {
            "tunnel".to_owned()
        } else {
            format!("tunnel-{}", i + 1)
        }
    };
    let metadata = json!({"name": NAME, "namespace": NAMESPACE,
                          "labels": {"app.kubernetes.io/managed-by": "yurt-up"}});
    let service_ports: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"name": port_name(i), "protocol": "TCP", "port": a.port(), "targetPort": a.port()}))
        .collect();
    apply_object(
        Api::<Service>::namespaced(client.clone(), NAMESPACE),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata,
               "spec": {"clusterIP": "None", "ports": service_ports}}),
    )
    .await?;
    let subsets: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({"addresses": [{"ip": a.ip().to_string()}],
                   "ports": [{"name": port_name(i), "protocol": "TCP", "port": a.port()}]})
        })
        .collect();
    apply_object(
        Api::<Endpoints>::namespaced(client.clone(), NAMESPACE),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": metadata, "subsets": subsets}),
    )
    .await
}

/// What Prometheus may do: GET through the API server's node proxy (every kubelet's
/// `/metrics` and `/metrics/cadvisor`), nothing else. Its targets come from a file
/// (Debian's Prometheus has no Kubernetes discovery), so it lists no nodes. The proxy
/// reaches a kubelet as the API server, so `get` alone keeps it from kubelet endpoints
/// that take POST (exec, attach, port-forward).
///
/// # Errors
/// API errors.
pub async fn apply_prometheus_rbac(client: &kube::Client) -> Result<()> {
    apply_grant(
        client,
        Grant {
            name: "yurt:prometheus".to_owned(),
            subject: serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::pki::PROMETHEUS_USER}),
            cluster_rules: serde_json::json!([
                {"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]},
            ]),
            roles: Vec::new(),
        },
    )
    .await
}

/// Lets the fleet's route controller read Nodes (their pod CIDRs), and nothing else.
///
/// # Errors
/// API errors.
pub async fn apply_route_controller_rbac(client: &kube::Client) -> Result<()> {
    apply_grant(
        client,
        Grant {
            name: crate::pki::ROUTE_CONTROLLER_USER.to_owned(),
            subject: serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::pki::ROUTE_CONTROLLER_USER}),
            cluster_rules: serde_json::json!([
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
            ]),
            roles: Vec::new(),
        },
    )
    .await
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
        list.items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(name) && node_is_ready(n))
    };
    let (ready, not_ready) = plan
        .edges
        .iter()
        .map(|e| e.name.to_string())
        .chain(plan.cloud_worker.iter().map(|w| w.name.to_string()))
        .partition(|n| is_ready(n));
    Ok(NodeReadiness { ready, not_ready })
}

/// Whether `node` reports Ready=True.
pub(crate) fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until every planned node of `plan` (edge hosts, the cloud worker) is Ready, calling `progress` on each change.
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

/// The group `kubeadm token create` gives new tokens, bound below as kubeadm binds it.
pub const BOOTSTRAP_TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// What the bootstrap group may read of NodePools: one by name.
const GET_NODEPOOLS: &str = "openyurt:bootstrappers-get-nodepools";
/// What nodes may delete: their own Node (NodeRestriction admits no other).
const DELETE_OWN_NODE: &str = "openyurt:nodes-delete-own-node";
/// Nodes may read what kube-proxy reads (services, endpoints, EndpointSlices, nodes).
const NODES_PROXIER: &str = "openyurt:nodes-proxier";

/// What a kubeadm cluster has for hosts to join with a bootstrap token, so `kubeadm
/// join`, `yurt adm join` and kubeadm's own tokens work on every fleet as on a cluster
/// kubeadm made:
/// - `kube-public/cluster-info`: a kubeconfig with the API server `server` (as joining
///   hosts reach it) and the cluster CA, readable anonymously (Role and RoleBinding
///   `kubeadm:bootstrap-signer-clusterinfo`); the bootstrap signer adds a
///   `jws-kubeconfig-<token id>` signature per signing token;
/// - the bootstrap group may create node CSRs (`kubeadm:kubelet-bootstrap`), have them
///   approved (`kubeadm:node-autoapprove-bootstrap`), read Nodes (`kubeadm:get-nodes`) and
///   NodePools (`openyurt:bootstrappers-get-nodepools`, for `yurt adm join`'s pool check);
/// - nodes may renew their client certificates (`kubeadm:node-autoapprove-certificate-rotation`)
///   and delete their own Node (`openyurt:nodes-delete-own-node`, for `yurt adm reset
///   --delete-node`; NodeRestriction refuses any other Node);
/// - nodes may read what kube-proxy reads (`openyurt:nodes-proxier`, binding 1.20's
///   `system:node-proxier`): a plain node joined by `yurt adm join` runs kube-proxy
///   with kubelet's credentials, where kubeadm runs a DaemonSet with a service
///   account of that role;
/// - `kube-system/kubelet-config-<major>.<minor>`: the cluster's KubeletConfiguration,
///   readable by the bootstrap group and nodes (Role and RoleBinding
///   `kubeadm:kubelet-config-<major>.<minor>`), from which `yurt adm join` takes whether
///   kubelets ask for serving certificates by CSR (`kubelets_serve_by_csr`: where a
///   manager approves them; the API server checks kubelets' certificates).
///
/// # Errors
/// API errors.
pub async fn apply_bootstrap_prerequisites(
    client: &kube::Client,
    server: &str,
    ca_pem: &[u8],
    kubelets_serve_by_csr: bool,
) -> Result<()> {
    use base64::Engine as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use serde_json::json;
    const PUBLIC: &str = "kube-public";
    const CLUSTER_INFO_ROLE: &str = "kubeadm:bootstrap-signer-clusterinfo";
    let rbac = "rbac.authorization.k8s.io/v1";
    let group = |name: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name});
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "", "cluster": {
            "server": server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        }}],
        "contexts": [],
        "current-context": "",
        "preferences": {},
        "users": [],
    });
    let kubeconfig = serde_yaml::to_string(&kubeconfig)
        .map_err(|e| Error::Invalid(format!("cluster-info kubeconfig: {e}")))?;
    apply_object(
        Api::<ConfigMap>::namespaced(client.clone(), PUBLIC),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "cluster-info", "namespace": PUBLIC},
               "data": {"kubeconfig": kubeconfig}}),
    )
    .await?;
    let metadata = json!({"name": CLUSTER_INFO_ROLE, "namespace": PUBLIC});
    apply_object(
        Api::<Role>::namespaced(client.clone(), PUBLIC),
        json!({"apiVersion": rbac, "kind": "Role", "metadata": metadata,
               "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                          "resourceNames": ["cluster-info"], "verbs": ["get"]}]}),
    )
    .await?;
    apply_object(
        Api::<RoleBinding>::namespaced(client.clone(), PUBLIC),
        json!({"apiVersion": rbac, "kind": "RoleBinding", "metadata": metadata,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CLUSTER_INFO_ROLE},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]}),
    )
    .await?;
    apply_object(
        Api::<ClusterRole>::all(client.clone()),
        json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "kubeadm:get-nodes"},
               "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
    )
    .await?;
    // `yurt adm reset --delete-node` deletes the Node with kubelet's own credentials.
    // RBAC grants every node the verb; the NodeRestriction admission plugin (on in every
    // fleet) lets a node delete only its own Node.
    apply_object(
        Api::<ClusterRole>::all(client.clone()),
        json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": DELETE_OWN_NODE},
               "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["delete"]}]}),
    )
    .await?;
    // `yurt adm join --nodepool-name` checks the pool exists and takes edge nodes
    // before it changes anything.
    apply_object(
        Api::<ClusterRole>::all(client.clone()),
        json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": GET_NODEPOOLS},
               "rules": [{"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools"], "verbs": ["get"]}]}),
    )
    .await?;
    let bindings = [
        (
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            BOOTSTRAP_TOKEN_GROUP,
        ),
        (
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            BOOTSTRAP_TOKEN_GROUP,
        ),
        (
            "kubeadm:get-nodes",
            "kubeadm:get-nodes",
            BOOTSTRAP_TOKEN_GROUP,
        ),
        (GET_NODEPOOLS, GET_NODEPOOLS, BOOTSTRAP_TOKEN_GROUP),
        (DELETE_OWN_NODE, DELETE_OWN_NODE, "system:nodes"),
        (NODES_PROXIER, "system:node-proxier", "system:nodes"),
        (
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
    ];
    for (name, role, subject) in bindings {
        apply_object(
            Api::<ClusterRoleBinding>::all(client.clone()),
            json!({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                   "subjects": [group(subject)]}),
        )
        .await?;
    }
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| Error::kube("read the API server's version", e))?;
    let name = yurt_adm::join::kubelet_config_map(&version.major, &version.minor);
    apply_object(
        Api::<ConfigMap>::namespaced(client.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE},
               "data": {"kubelet": cluster_kubelet_config(kubelets_serve_by_csr)}}),
    )
    .await?;
    let role = format!("kubeadm:{name}");
    let metadata = json!({"name": role, "namespace": SYSTEM_NAMESPACE});
    apply_object(
        Api::<Role>::namespaced(client.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": rbac, "kind": "Role", "metadata": metadata,
               "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                          "resourceNames": [name], "verbs": ["get"]}]}),
    )
    .await?;
    apply_object(
        Api::<RoleBinding>::namespaced(client.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": rbac, "kind": "RoleBinding", "metadata": metadata,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
               "subjects": [group("system:nodes"), group(BOOTSTRAP_TOKEN_GROUP)]}),
    )
    .await?;
    Ok(())
}

/// The cluster-wide part of kubelets' configuration, as kubeadm keeps it for joining
/// hosts (YAML): webhook authentication and authorization against the cluster CA,
/// rotating client certificates, and serving certificates by CSR when
/// `serve_by_csr`.
pub fn cluster_kubelet_config(serve_by_csr: bool) -> String {
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
rotateCertificates: true
serverTLSBootstrap: {serve_by_csr}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_kubelet_configuration_says_what_join_reads() {
        for serve_by_csr in [true, false] {
            assert_eq!(
                yurt_adm::join::serves_by_csr(&cluster_kubelet_config(serve_by_csr)),
                Ok(serve_by_csr)
            );
        }
    }
}
