//! `yurt tunnel-server manifests` and `yurt tunnel-server egress-selector-config`: the
//! tunnel in a cluster OpenYurt did not create (ADR 006, "Adopted clusters").
//!
//! The server serves kube-apiserver's `cluster` egress on a Unix socket, so it runs on
//! every control-plane machine, beside its API server, as a DaemonSet of host-network
//! pods that share the socket's folder with the host. As the Konnectivity server of
//! Kubernetes' own set-up guide does, it presents the API server's serving certificate
//! to agents (hostPath mounts of kubeadm's `/etc/kubernetes/pki` files by default): the
//! agents that `yurt adm join` and the node servant start dial the addresses of
//! `kube-system/x-tunnel-server-svc` and check the server against the cluster CA by the
//! address they dial, which that certificate names (kubeadm puts the advertise address
//! in it). The Service selects the pods, so its Endpoints follow the control plane.
//!
//! Who may do what:
//! - the server's service account (`kube-system/yurt-tunnel-server`, the requester
//!   the manager's csrapprover accepts for the tunnel's proxy client certificate) may list
//!   and watch Nodes, its routing table, and nothing else;
//! - nodes find the servers by getting the Service's Endpoints, which the Node
//!   authorizer allows every node already (its static rules: `get` on Endpoints);
//! - the egress socket is created mode 0600 by the server (root), for the API server
//!   (root) alone; agents need a certificate of a Node from the cluster CA.
//!
//! What the administrator does besides `kubectl apply`: point kube-apiserver at the
//! socket with `--egress-selector-config-file` (the file `egress-selector-config`
//! prints), as for Konnectivity; on kubeadm its static pod must also mount that file and
//! the socket's folder (hostPath). Until the API server is restarted with it, nothing
//! goes through the tunnel; once it is, the API server's `cluster` traffic (kubelets,
//! pods, Service-addressed webhooks) needs the server running on its machine, so a
//! server that cannot start cuts the API server off from every node and webhook. The API
//! server should also check kubelets' certificates (`--kubelet-certificate-authority`)
//! and dial webhooks at their endpoints (`--enable-aggregator-routing`): the server
//! routes by what Nodes report, and refuses a target several Nodes claim.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

/// Name of the DaemonSet, its ServiceAccount, ClusterRole and ClusterRoleBinding, and the
/// pods' `app.kubernetes.io/name`. Not `yurt up`'s names for its process servers'
/// grants (`openyurt:yurt-tunnel-server`): applied to such a fleet, these must not
/// rebind them.
pub const NAME: &str = "yurt-tunnel-server";
/// The namespace of everything namespaced: where agents look for the Service and where
/// the manager's csrapprover expects the server's service account.
pub const NAMESPACE: &str = "kube-system";
/// The Service agents find the servers through (OpenYurt's name).
pub const DISCOVERY_SERVICE: &str = "x-tunnel-server-svc";
/// Where the `yurt` binary sits in the image (`yurt image build --with-yurt`).
pub const BINARY_IN_IMAGE: &str = "/usr/local/bin/yurt";
/// The server's `/healthz`, `/readyz` and `/metrics` port, on the host's loopback only.
pub const ADMIN_PORT: u16 = 10265;
/// The control-plane node labels of kubeadm clusters (1.20 sets both).
pub const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/control-plane",
];

/// Folders of a host that hold more than a socket should: never the socket's.
const SHARED_FOLDERS: [&str; 10] = [
    "/etc/kubernetes",
    "/etc/kubernetes/pki",
    "/etc/kubernetes/manifests",
    "/var/lib/kubelet",
    "/var/lib/etcd",
    "/var/run/secrets",
    "/run/containerd",
    "/var/lib/containerd",
    "/run/systemd",
    "/var/lib/yurthub",
];

/// What to install.
#[derive(Debug, Clone)]
pub struct Options {
    /// The image holding `yurt` at [`BINARY_IN_IMAGE`].
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// The cluster CA on the control-plane machines: it signs kubelets' (so agents')
    /// client certificates.
    pub ca_file: PathBuf,
    /// The certificate the server presents to agents (the API server's).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The socket kube-apiserver's `cluster` egress connects to, on the host.
    pub egress_socket: PathBuf,
    /// The port agents connect to, on every address of the host.
    pub agent_port: u16,
    /// Where the pods run (the DaemonSet's `nodeSelector`); empty: control-plane nodes.
    pub node_selector: BTreeMap<String, String>,
}

/// Why options cannot make manifests.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A path that is not absolute (a hostPath must be).
    #[error("{flag}: {path} is not an absolute path")]
    Relative {
        /// The option.
        flag: &'static str,
        /// Its value.
        path: String,
    },
    /// A socket path whose folder cannot be mounted.
    #[error("--egress-socket: {0} has no folder to share with the host")]
    SocketFolder(String),
    /// A socket folder shared with other files of the host.
    #[error(
        "--egress-socket: its folder {0} would be mounted read-write into the pod: give the socket a folder of its own (not one holding the TLS files, not a system folder)"
    )]
    SharedFolder(String),
    /// Port 0, or the admin port.
    #[error("--agent-port: {0} is not a port agents can connect to")]
    Port(u16),
    /// No image.
    #[error("--image: empty")]
    Image,
}

/// The user the API server authenticates the server's pods as.
pub fn service_account_user() -> String {
    format!("system:serviceaccount:{NAMESPACE}:{NAME}")
}

/// What a tunnel server may do cluster-wide: list and watch Nodes (its routing table).
/// It carries the API server's connections and makes none of its own.
pub fn cluster_rules() -> Value {
    json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}])
}

/// kube-apiserver's `--egress-selector-config-file`: its `cluster` traffic as HTTP
/// CONNECT on `socket`.
pub fn egress_selector_configuration(socket: &std::path::Path) -> Value {
    json!({
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [{
            "name": "cluster",
            "connection": {
                "proxyProtocol": "HTTPConnect",
                "transport": {"uds": {"udsName": socket.to_string_lossy()}},
            },
        }],
    })
}

fn absolute(flag: &'static str, path: &std::path::Path) -> Result<(), InstallError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(InstallError::Relative {
            flag,
            path: path.display().to_string(),
        })
    }
}

/// The `yurt tunnel-server` arguments the pods run (after [`BINARY_IN_IMAGE`]). Paths
/// are the host's: each file and the socket's folder is mounted at its own path.
pub fn server_args(options: &Options) -> Vec<String> {
    vec![
        "tunnel-server".to_owned(),
        format!("--egress-socket={}", options.egress_socket.display()),
        format!("--agent-bind-address=0.0.0.0:{}", options.agent_port),
        format!("--admin-address=127.0.0.1:{ADMIN_PORT}"),
        format!("--ca-file={}", options.ca_file.display()),
        format!("--cert-file={}", options.cert_file.display()),
        format!("--key-file={}", options.key_file.display()),
    ]
}

/// Every object, in the order `kubectl apply` needs them.
///
/// # Errors
/// [`InstallError`] for options no pod could run with.
pub fn objects(options: &Options) -> Result<Vec<Value>, InstallError> {
    absolute("--ca-file", &options.ca_file)?;
    absolute("--cert-file", &options.cert_file)?;
    absolute("--key-file", &options.key_file)?;
    absolute("--egress-socket", &options.egress_socket)?;
    let socket_dir = options
        .egress_socket
        .parent()
        .filter(|d| d.parent().is_some() && options.egress_socket.file_name().is_some())
        .ok_or_else(|| InstallError::SocketFolder(options.egress_socket.display().to_string()))?;
    // Mounted read-write into the pod: a folder of its own, never one holding the
    // cluster's keys (kubeadm's /etc/kubernetes holds the CA's and etcd's).
    let holds_tls_files = [&options.ca_file, &options.cert_file, &options.key_file]
        .iter()
        .any(|file| file.starts_with(socket_dir));
    if holds_tls_files
        || socket_dir.components().count() < 3
        || SHARED_FOLDERS
            .iter()
            .any(|shared| socket_dir == std::path::Path::new(shared))
    {
        return Err(InstallError::SharedFolder(socket_dir.display().to_string()));
    }
    if options.agent_port == 0 || options.agent_port == ADMIN_PORT {
        return Err(InstallError::Port(options.agent_port));
    }
    if options.image.trim().is_empty() {
        return Err(InstallError::Image);
    }

    let labels = json!({"app.kubernetes.io/name": NAME});
    let mut objects = vec![json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
    })];
    objects.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": NAME, "labels": labels},
        "rules": cluster_rules(),
    }));
    objects.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": NAME, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
    }));
    // Headless: agents dial each server's own address (every API server has its own),
    // never a virtual IP that would pick one for them.
    objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": DISCOVERY_SERVICE, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "clusterIP": "None",
            // Agents write the addresses they find into their units once: a server
            // starting up (a rolling update) must be among them.
            "publishNotReadyAddresses": true,
            "selector": labels,
            "ports": [{"name": "tunnel", "protocol": "TCP",
                       "port": options.agent_port, "targetPort": options.agent_port}],
        },
    }));

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (name, path) in [
        ("ca", &options.ca_file),
        ("serving-cert", &options.cert_file),
        ("serving-key", &options.key_file),
    ] {
        volumes.push(json!({"name": name, "hostPath": {"path": path, "type": "File"}}));
        mounts.push(json!({"name": name, "mountPath": path, "readOnly": true}));
    }
    volumes.push(
        json!({"name": "egress", "hostPath": {"path": socket_dir, "type": "DirectoryOrCreate"}}),
    );
    mounts.push(json!({"name": "egress", "mountPath": socket_dir}));
    // Host network: kubelet probes the loopback the admin port listens on.
    let probe = |path: &str| {
        json!({"httpGet": {"host": "127.0.0.1", "path": path, "port": ADMIN_PORT},
               "periodSeconds": 10, "timeoutSeconds": 5})
    };
    let mut liveness = probe("/healthz");
    // Generous: a slow API server at start must not get the server killed.
    liveness["initialDelaySeconds"] = json!(30);
    liveness["failureThreshold"] = json!(6);
    let mut pod_spec = json!({
        "serviceAccountName": NAME,
        "hostNetwork": true,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-cluster-critical",
        "tolerations": [
            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "containers": [{
            "name": NAME,
            "image": options.image,
            "imagePullPolicy": options.image_pull_policy,
            "command": [BINARY_IN_IMAGE],
            "args": server_args(options),
            "env": [{"name": "RUST_LOG", "value": "info"}],
            "ports": [{"name": "tunnel", "containerPort": options.agent_port, "protocol": "TCP"}],
            "readinessProbe": probe("/readyz"),
            "livenessProbe": liveness,
            "volumeMounts": mounts,
            // Why it stopped, in the pod's status (`kubectl describe`), from its log.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            // Root: it reads the API server's key and makes a socket only root opens.
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                // Root owns the files it reads and the socket it makes; the port is
                // unprivileged: no capability is needed.
                "capabilities": {"drop": ["ALL"]},
            },
        }],
        "volumes": volumes,
    });
    if options.node_selector.is_empty() {
        let terms: Vec<Value> = CONTROL_PLANE_LABELS
            .iter()
            .map(|key| json!({"matchExpressions": [{"key": key, "operator": "Exists"}]}))
            .collect();
        pod_spec["affinity"] = json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
        }});
    } else {
        pod_spec["nodeSelector"] = json!(options.node_selector);
    }
    objects.push(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }));
    Ok(objects)
}

/// JSON values as one multi-document YAML stream for `kubectl apply -f -`.
pub fn to_yaml(objects: &[Value]) -> String {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        // JSON values always have a YAML form.
        out.push_str(&serde_yaml::to_string(object).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests;
