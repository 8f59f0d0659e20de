//! The fleet's certificates and kubeconfigs: one cluster CA, the API server's serving
//! certificate, service-account keys, a client certificate per component and per node,
//! and a serving certificate per kubelet. Node and RBAC authorization rely on the
//! names and groups chosen here (`system:node:<name>` in `system:nodes`, ...).
//!
//! Existing keys are kept, so a restarted fleet keeps its identity; the API server's
//! serving certificate is reissued each start because its addresses depend on the slot.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use yurt_core::NodeName;
use yurt_core::pki::{CertSpec, CertificateAuthority, IssuedCert, generate_key_pair};

use crate::error::{Error, Result};
use crate::paths::FleetPaths;
use crate::spec::{Plan, net};

/// The CA's common name.
pub const CA_NAME: &str = "yurt-fleet-ca";

/// A client identity with a certificate in the pki folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `kubernetes-admin` in `system:masters`.
    Admin,
    /// `system:kube-controller-manager`.
    ControllerManager,
    /// `system:kube-scheduler`.
    Scheduler,
    /// `system:kube-proxy`.
    KubeProxy,
    /// The API server's client certificate towards kubelets.
    ApiserverKubeletClient,
    /// `system:node:<name>` in `system:nodes`.
    Node(NodeName),
    /// The node's hub: `system:node:<name>` in `system:nodes` and `openyurt:yurthub`.
    Hub(NodeName),
    /// yurt manager: `openyurt:yurt-manager`.
    Manager,
    /// The tunnel server (it watches Nodes): `openyurt:yurt-tunnel-server`.
    TunnelServer,
    /// Prometheus (`yurt up --prometheus`; it scrapes kubelets through the API server's
    /// node proxy): `yurt:prometheus`.
    Prometheus,
    /// The fleet's route controller (it lists Nodes, from the router):
    /// `yurt:route-controller`.
    RouteController,
}

/// File stem of the tunnel server's serving certificate (towards agents).
pub const TUNNEL_SERVING_STEM: &str = "yurt-tunnel-server-serving";
/// The name the tunnel server's certificate carries, and agents check.
pub const TUNNEL_SERVER_NAME: &str = "yurt-tunnel-server";
/// The user name of the tunnel server's client certificate.
pub const TUNNEL_SERVER_USER: &str = "openyurt:yurt-tunnel-server";

/// The user name of Prometheus' client certificate.
pub const PROMETHEUS_USER: &str = "yurt:prometheus";

/// The user name of the fleet's route controller.
pub const ROUTE_CONTROLLER_USER: &str = "yurt:route-controller";

/// File stem of the registry's serving certificate.
pub const REGISTRY_STEM: &str = "registry";

/// The kubeconfig of local components on an edge host: the hub on 127.0.0.1:10261.
pub const HUB_LOCAL: &str = "hub-local";
/// The user name of yurt manager's client certificate.
pub const MANAGER_USER: &str = "openyurt:yurt-manager";
/// The group of hub client certificates (OpenYurt's).
pub const HUB_GROUP: &str = "openyurt:yurthub";
/// The hub's pod-facing address.
pub const HUB_POD_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 2, 1);

impl Identity {
    /// File stem of the certificate and kubeconfig.
    pub fn stem(&self) -> String {
        match self {
            Self::Admin => "admin".into(),
            Self::ControllerManager => "controller-manager".into(),
            Self::Scheduler => "scheduler".into(),
            Self::KubeProxy => "kube-proxy".into(),
            Self::ApiserverKubeletClient => "apiserver-kubelet-client".into(),
            Self::Node(n) => format!("kubelet-{n}"),
            Self::Hub(n) => format!("yurthub-{n}"),
            Self::Manager => "yurt-manager".into(),
            Self::TunnelServer => "yurt-tunnel-server".into(),
            Self::Prometheus => "prometheus".into(),
            Self::RouteController => "route-controller".into(),
        }
    }

    fn spec(&self) -> CertSpec {
        match self {
            Self::Admin => CertSpec::client("kubernetes-admin", &["system:masters"]),
            Self::ControllerManager => CertSpec::client("system:kube-controller-manager", &[]),
            Self::Scheduler => CertSpec::client("system:kube-scheduler", &[]),
            Self::KubeProxy => CertSpec::client("system:kube-proxy", &[]),
            Self::ApiserverKubeletClient => {
                CertSpec::client("kube-apiserver-kubelet-client", &["system:masters"])
            }
            Self::Node(n) => CertSpec::client(format!("system:node:{n}"), &["system:nodes"]),
            Self::Hub(n) => {
                CertSpec::client(format!("system:node:{n}"), &["system:nodes", HUB_GROUP])
            }
            Self::Manager => CertSpec::client(MANAGER_USER, &[]),
            Self::TunnelServer => CertSpec::client(TUNNEL_SERVER_USER, &[]),
            Self::Prometheus => CertSpec::client(PROMETHEUS_USER, &[]),
            Self::RouteController => CertSpec::client(ROUTE_CONTROLLER_USER, &[]),
        }
    }
}

/// Paths of the fleet's PKI files.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    dir: PathBuf,
}

impl PkiPaths {
    /// The PKI of a fleet.
    pub fn new(paths: &FleetPaths) -> Self {
        Self { dir: paths.pki() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// `<stem>.crt`.
    pub fn cert(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.crt"))
    }

    /// `<stem>.key`.
    pub fn key(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.key"))
    }

    /// `<stem>.kubeconfig`.
    pub fn kubeconfig(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.kubeconfig"))
    }

    /// Service-account signing key.
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    /// Service-account verification key.
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// The kubelet serving certificate stem of `node`.
    pub fn kubelet_serving(node: &NodeName) -> String {
        format!("kubelet-{node}-serving")
    }

    /// The hub's serving certificate stem of `node` (its pod-facing HTTPS port).
    pub fn hub_serving(node: &NodeName) -> String {
        format!("yurthub-{node}-serving")
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    if secret {
        // Private from the first byte: the temporary file is created 0600.
        yurt_core::units::write_atomic_private(path, contents.as_bytes())?;
    } else {
        crate::state::write_atomic(path, contents.as_bytes())?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn write_pair(pki: &PkiPaths, stem: &str, cert: &IssuedCert) -> Result<()> {
    write_file(&pki.key(stem), &cert.key_pem, true)?;
    write_file(&pki.cert(stem), &cert.cert_pem, false)
}

/// Creates what is missing of the fleet's PKI and rewrites every kubeconfig.
///
/// # Errors
/// I/O or signing errors.
pub fn ensure(paths: &FleetPaths, plan: &Plan) -> Result<PkiPaths> {
    let pki = PkiPaths::new(paths);
    std::fs::create_dir_all(pki.dir()).map_err(|e| Error::io(pki.dir(), e))?;
    let ca = if pki.ca_cert().exists() && pki.ca_key().exists() {
        CertificateAuthority::from_pem(CA_NAME, &read(&pki.ca_cert())?, &read(&pki.ca_key())?)?
    } else {
        let ca = CertificateAuthority::generate(CA_NAME)?;
        write_file(&pki.ca_key(), ca.key_pem(), true)?;
        write_file(&pki.ca_cert(), ca.cert_pem(), false)?;
        ca
    };
    if !pki.sa_key().exists() || !pki.sa_pub().exists() {
        let sa = generate_key_pair("service-account")?;
        write_file(&pki.sa_key(), &sa.private_pem, true)?;
        write_file(&pki.sa_pub(), &sa.public_pem, false)?;
    }

    let ips: Vec<IpAddr> = [
        net::CLOUD_IP.addr,
        plan.cloud_host_side_ip().addr,
        net::KUBERNETES_SERVICE_IP,
        std::net::Ipv4Addr::LOCALHOST,
    ]
    .into_iter()
    .map(IpAddr::V4)
    .collect();
    let apiserver = CertSpec::server(
        "kube-apiserver",
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ],
        &ips,
    );
    write_pair(&pki, "apiserver", &ca.issue(&apiserver)?)?;
    // The registry's certificate names both of the cloud host's addresses, like the API
    // server's: reissued each start, as they depend on the slot.
    let registry = CertSpec::server(
        crate::registry::REGISTRY_NAME,
        &[crate::registry::REGISTRY_NAME, "localhost"],
        &ips,
    );
    write_pair(&pki, REGISTRY_STEM, &ca.issue(&registry)?)?;
    // The tunnel server's, which agents dial at the cloud host's fleet address.
    let tunnel = CertSpec::server(TUNNEL_SERVER_NAME, &[TUNNEL_SERVER_NAME], &ips);
    write_pair(&pki, TUNNEL_SERVING_STEM, &ca.issue(&tunnel)?)?;
    crate::registry::ensure_push_credentials(pki.dir())?;

    let mut identities = vec![
        Identity::Admin,
        Identity::ControllerManager,
        Identity::Scheduler,
        Identity::KubeProxy,
        Identity::ApiserverKubeletClient,
        Identity::Manager,
        Identity::TunnelServer,
        Identity::Prometheus,
        Identity::RouteController,
    ];
    identities.extend(plan.edges.iter().map(|e| Identity::Node(e.name.clone())));
    identities.extend(plan.edges.iter().map(|e| Identity::Hub(e.name.clone())));
    if let Some(cloud) = &plan.cloud_worker {
        identities.push(Identity::Node(cloud.name.clone()));
    }
    for id in &identities {
        let stem = id.stem();
        if !pki.cert(&stem).exists() || !pki.key(&stem).exists() {
            write_pair(&pki, &stem, &ca.issue(&id.spec())?)?;
        }
    }
    let kubelets = plan
        .edges
        .iter()
        .map(|e| (&e.name, e.ip))
        .chain(plan.cloud_worker.iter().map(|w| (&w.name, w.ip)));
    for (node, ip) in kubelets {
        let stem = PkiPaths::kubelet_serving(node);
        if !pki.cert(&stem).exists() || !pki.key(&stem).exists() {
            let spec = CertSpec::server(
                node.as_str(),
                &[node.as_str(), "localhost"],
                &[IpAddr::V4(ip), IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
            );
            write_pair(&pki, &stem, &ca.issue(&spec)?)?;
        }
    }
    for edge in &plan.edges {
        let stem = PkiPaths::hub_serving(&edge.name);
        if !pki.cert(&stem).exists() || !pki.key(&stem).exists() {
            let spec = CertSpec::server(
                format!("system:node:{}", edge.name),
                &[
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                    edge.name.as_str(),
                ],
                &[
                    IpAddr::V4(HUB_POD_ADDRESS),
                    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                ],
            );
            write_pair(&pki, &stem, &ca.issue(&spec)?)?;
        }
    }

    let ca_pem = read(&pki.ca_cert())?;
    let local = format!("https://127.0.0.1:{}", net::API_PORT);
    let in_fleet = plan.api_url_in_fleet();
    for id in &identities {
        let server = match id {
            Identity::ControllerManager
            | Identity::Scheduler
            | Identity::Admin
            | Identity::Manager
            | Identity::TunnelServer
            | Identity::Prometheus => &local,
            Identity::KubeProxy
            | Identity::Node(_)
            | Identity::Hub(_)
            | Identity::RouteController
            | Identity::ApiserverKubeletClient => &in_fleet,
        };
        let stem = id.stem();
        let text = kubeconfig(
            server,
            &ca_pem,
            &read(&pki.cert(&stem))?,
            &read(&pki.key(&stem))?,
            &stem,
        )?;
        write_file(&pki.kubeconfig(&stem), &text, true)?;
    }
    let admin = kubeconfig(
        &plan.api_url_from_host(),
        &ca_pem,
        &read(&pki.cert("admin"))?,
        &read(&pki.key("admin"))?,
        "admin",
    )?;
    write_file(&paths.admin_kubeconfig(), &admin, true)?;
    write_file(&pki.kubeconfig(HUB_LOCAL), &hub_local_kubeconfig()?, false)?;
    Ok(pki)
}

/// The kubeconfig of components behind the hub: plain HTTP to 127.0.0.1:10261, no
/// credentials (the hub authenticates upstream as the node).
///
/// # Errors
/// Only if YAML serialisation fails.
pub fn hub_local_kubeconfig() -> Result<String> {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hub", "cluster": {"server": "http://127.0.0.1:10261"}}],
        "users": [{"name": "hub", "user": {}}],
        "contexts": [{"name": "hub", "context": {"cluster": "hub", "user": "hub"}}],
        "current-context": "hub",
    });
    serde_yaml::to_string(&value).map_err(|e| Error::Invalid(format!("kubeconfig: {e}")))
}

/// Issues the client certificate a node's kubelet gets (`system:node:<node>` in
/// `system:nodes`) from the fleet's CA and writes a kubeconfig with it for the in-fleet
/// API server URL to `path` (mode 0600). It stands in for a kubelet's TLS bootstrap
/// where a test or benchmark needs a node identity the fleet did not plan.
///
/// # Errors
/// The CA cannot be read, signing or writing fails.
pub fn issue_node_kubeconfig(
    paths: &FleetPaths,
    plan: &Plan,
    node: &yurt_core::NodeName,
    path: &Path,
) -> Result<()> {
    let pki = PkiPaths::new(paths);
    let ca_pem = read(&pki.ca_cert())?;
    let ca = CertificateAuthority::from_pem(CA_NAME, &ca_pem, &read(&pki.ca_key())?)?;
    let issued = ca.issue(&Identity::Node(node.clone()).spec())?;
    let text = kubeconfig(
        &plan.api_url_in_fleet(),
        &ca_pem,
        &issued.cert_pem,
        &issued.key_pem,
        &format!("system:node:{node}"),
    )?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_file(path, &text, true)
}

/// Renders a kubeconfig with the certificates embedded, so it can be copied anywhere.
///
/// # Errors
/// Only if YAML serialisation fails.
pub fn kubeconfig(
    server: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    user: &str,
) -> Result<String> {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "yurt", "cluster": {
            "server": server,
            "certificate-authority-data": BASE64.encode(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": BASE64.encode(cert_pem),
            "client-key-data": BASE64.encode(key_pem),
        }}],
        "contexts": [{"name": "yurt", "context": {"cluster": "yurt", "user": user}}],
        "current-context": "yurt",
    });
    serde_yaml::to_string(&value).map_err(|e| Error::Invalid(format!("kubeconfig: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FleetSpec, Slot};
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn ensure_creates_everything_and_keeps_keys_on_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let paths = FleetPaths::new(dir.path());
        let plan = Plan::new(&FleetSpec::default(), Slot(5)).unwrap();
        let pki = ensure(&paths, &plan).unwrap();
        for stem in [
            "admin",
            "kubelet-edge-a1",
            "kubelet-edge-b2-serving",
            "apiserver",
            "kube-proxy",
        ] {
            assert!(pki.cert(stem).exists(), "{stem}");
            let mode = std::fs::metadata(pki.key(stem))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{stem} key mode");
        }
        let node_key = std::fs::read(pki.key("kubelet-edge-a1")).unwrap();
        let ca = std::fs::read(pki.ca_cert()).unwrap();
        ensure(&paths, &plan).unwrap();
        assert_eq!(std::fs::read(pki.key("kubelet-edge-a1")).unwrap(), node_key);
        assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), ca);

        let admin: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(paths.admin_kubeconfig()).unwrap())
                .unwrap();
        assert_eq!(
            admin["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://10.255.5.2:6443")
        );
        let kubelet: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(pki.kubeconfig("kubelet-edge-a1")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            kubelet["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://10.10.0.1:6443")
        );
    }
}
