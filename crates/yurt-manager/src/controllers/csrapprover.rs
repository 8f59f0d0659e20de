//! The csrapprover controller (reference/openyurt.md §5.2): approves the certificate
//! signing requests of hubs, of nodes' serving certificates and of tunnel components
//! when they have OpenYurt's shape **and** the requester (`spec.username` and
//! `spec.groups`, written by the API server, not by the client) is the identity the
//! certificate is for. Every other request is left pending, for kube-controller-manager
//! or a human.
//!
//! | certificate | signer | subject | usages | requester | SANs |
//! |---|---|---|---|---|---|
//! | hub client | `kubernetes.io/kube-apiserver-client` | CN `system:node:<n>`, ≥ 2 orgs, all of `openyurt:yurthub`, `system:nodes`, `openyurt:tenant:*` | client | `system:node:<n>` (the same `<n>`) in `system:nodes` | not checked (a client-only certificate) |
//! | node serving (hub pod port, kubelet) | `kubernetes.io/kubelet-serving` | CN `system:node:<n>`, the single org `system:nodes` | server | `system:node:<n>` (the same `<n>`) in `system:nodes` | ≥ 1, DNS and IP only, each one `<n>`, an address of Node `<n>` (`status.addresses`: IPs, hostnames, DNS names) or the hub's pod address (`--hub-pod-address`, 169.254.2.1); never the API server's names (`kubernetes`, `kubernetes.default…`); Node `<n>` must exist unless the hub's pod address is the only SAN (every node's: a joining node's hub asks before kubelet registers the Node) |
//! | tunnel agent | `kubernetes.io/kube-apiserver-client` | CN `tunnel-agent-client`, the single org `openyurt:yurttunnel` | client | any node: `system:node:*` in `system:nodes` | not checked |
//! | tunnel proxy client | `kubernetes.io/kube-apiserver-client` | CN `tunnel-proxy-client`, the single org `openyurt:yurttunnel` | client | only the tunnel server's service account, `system:serviceaccount:kube-system:yurt-tunnel-server` | not checked |
//!
//! Usages, as upstream: "client" is exactly `digital signature`, `key encipherment` and
//! `client auth` (OpenYurt's `clientRequiredUsages`). "server" is exactly `digital
//! signature`, `key encipherment` and `server auth` (Kubernetes 1.20's
//! `kubeletServingRequiredUsages`, OpenYurt's `serverRequiredUsages`); a request whose key
//! is not RSA may leave out `key encipherment`, as Kubernetes ≥ 1.27 allows
//! (`kubeletServingRequiredUsagesNoRSA`; newer kubelets ask that way for their ECDSA keys,
//! and 1.20's signer marks such a request Failed itself).
//!
//! Why the requester: any process on a node can create a CSR as that node (the Node
//! authorizer lets nodes create CSRs, and everything on the node's 127.0.0.1:10261 goes
//! out with its hub's certificate). Without the binding a node could get a client
//! certificate for any other node, or a serving certificate, signed by the cluster CA,
//! for any name, the API server's included (reference/review-2026-11.md, finding 2).
//!
//! Deliberately narrower than OpenYurt:
//! - OpenYurt's hub also asks for `kubernetes`, `kubernetes.default…` and `127.0.0.1` in
//!   its serving certificate; those stay pending here. The fleet's hubs get their serving
//!   certificate from `yurt up`, issued by the fleet CA.
//! - `tunnel-proxy-client` authenticates the tunnel server to every kubelet (logs, exec),
//!   so only the tunnel server's own service account may ask for it; any node may ask for
//!   `tunnel-agent-client`, whose subject names no node. The tunnel does not exist yet
//!   (DESIGN.md §5); when it does, its server runs as that service account or this rule
//!   changes with it.
//! - A node identity asked for by anyone else (an admin included) stays pending: an
//!   admin can approve it by hand, kube-controller-manager never does.
//!
//! Joining: there is no bootstrap-token join yet (`yurt adm join`, DESIGN.md §8 milestone
//! 7): `yurt up` issues every node's and hub's first certificates from the fleet CA, so
//! what reaches this controller are renewals and requests a node makes for itself. A
//! first hub certificate asked for with a bootstrap token (`system:bootstrap:<id>` in
//! `system:bootstrappers`) therefore stays pending. The rule stays "only the node itself
//! gets its identity"; join will add kube-controller-manager's own rule for bootstrappers
//! (a SubjectAccessReview that the requester may create
//! `certificatesigningrequests/nodeclient`), not a looser shape match.
//! Every fleet does bind kubeadm's auto-approval, so kube-controller-manager (not this
//! controller) signs a bootstrapper's plain kubelet client request (org `system:nodes`
//! alone) for any node name, as on a kubeadm cluster (ADR 007).
//!
//! Refusals are visible: a request that looks like one of the four above (its signer and
//! a node or tunnel subject) but breaks a rule stays pending and gets one Warning Event,
//! reason `CSRNotApproved`, whose message names the rule (`requester system:node:edge-a1
//! may not obtain a certificate for system:node:edge-b1`, `SAN 10.9.9.9 is not an address
//! of node edge-a1`, ...). It is written once per request and message: not on each
//! resync, and not again after a restart or a change of leader (the Events already there
//! are looked up first). A kubelet's own client request (org `system:nodes` alone) and
//! every other shape are not ours and get nothing. A serving request refused because of
//! its Node (missing, or not listing an address) is looked at again every 30 s, as the
//! Node may register or report the address later. Events are core/v1 ones in `default`:
//! Kubernetes 1.20 refuses an `events.k8s.io` Event about a cluster-scoped object outside
//! `kube-system`, which is where kube-runtime's `Recorder` would write it.
//!
//! Known limit: a node writes its own `status.addresses` (NodeRestriction allows it), so a
//! node can claim an address and then get a serving certificate for it. The rule stops a
//! node from taking another node's name or the API server's names, not from lying about
//! its own addresses; addresses are not checked against other Nodes because nodes behind
//! different NATs may share a private address.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use k8s_openapi::api::core::v1::{Event, EventSource, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "csrapprover";

/// The reason of the Event on a request that looks like ours and was not approved.
pub const REFUSED_REASON: &str = "CSRNotApproved";

/// The only requester of a tunnel proxy client certificate: the tunnel server's service
/// account, by upstream's name.
pub const TUNNEL_SERVER_ACCOUNT: &str = "system:serviceaccount:kube-system:yurt-tunnel-server";

const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The group of the hubs' own client certificates.
pub const HUB_GROUP: &str = "openyurt:yurthub";
const TENANT_GROUP_PREFIX: &str = "openyurt:tenant:";
const TUNNEL_GROUP: &str = "openyurt:yurttunnel";
const TUNNEL_AGENT_CN: &str = "tunnel-agent-client";
const TUNNEL_PROXY_CN: &str = "tunnel-proxy-client";
const NODES_GROUP: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";

const CLIENT_USAGES: &str = "digital signature, key encipherment, client auth";
const SERVER_USAGES: &str =
    "digital signature, key encipherment, server auth (without key encipherment for a non-RSA key)";

/// Core Events about cluster-scoped objects live here (client-go's recorder does the same).
const EVENT_NAMESPACE: &str = "default";

/// How soon a serving request refused because of its Node is looked at again.
const NODE_RECHECK: Duration = Duration::from_secs(30);

/// Past this many remembered Events, those of requests no longer in the store are forgotten.
const REPORTED_PRUNE_AT: usize = 1024;

/// What a request asks for, read from its PKCS#10 body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// Subject common name.
    pub common_name: String,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Subject alternative names of any other kind (email, URI, ...).
    pub other_names: usize,
    /// Whether the public key is an RSA key.
    pub rsa_key: bool,
}

/// Reads the subject, SANs and key type of a PEM certificate request.
///
/// # Errors
/// Not a PEM-encoded PKCS#10 request.
pub fn parse(pem: &[u8]) -> Result<Requested, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!(
            "PEM block is {:?}, not a certificate request",
            pem.label
        ));
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("not a certificate request: {e}"))?;
    let info = &csr.certification_request_info;
    let text =
        |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().map(str::to_owned).ok();
    let mut requested = Requested {
        common_name: info
            .subject
            .iter_common_name()
            .find_map(text)
            .unwrap_or_default(),
        organizations: info.subject.iter_organization().filter_map(text).collect(),
        rsa_key: info.subject_pki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION,
        ..Requested::default()
    };
    for extension in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = extension else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => requested.dns_names.push((*d).to_owned()),
                GeneralName::IPAddress(b) => match ip_from(b) {
                    Some(ip) => requested.ip_addresses.push(ip),
                    None => requested.other_names += 1,
                },
                _ => requested.other_names += 1,
            }
        }
    }
    Ok(requested)
}

/// An IP SAN's octets (4 or 16 of them).
fn ip_from(octets: &[u8]) -> Option<IpAddr> {
    match octets.len() {
        4 => <[u8; 4]>::try_from(octets).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(octets).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Who asked for a certificate, as the API server recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    /// `spec.username`.
    pub username: String,
    /// `spec.groups`.
    pub groups: Vec<String>,
}

impl Requester {
    /// The requester's spec fields.
    pub fn of(csr: &CertificateSigningRequest) -> Self {
        Self {
            username: csr.spec.username.clone().unwrap_or_default(),
            groups: csr.spec.groups.clone().unwrap_or_default(),
        }
    }

    /// The node this requester is, as the Node authorizer sees it: `system:node:<n>` in
    /// `system:nodes`.
    fn node(&self) -> Option<&str> {
        let name = node_name(&self.username)?;
        self.groups.iter().any(|g| g == NODES_GROUP).then_some(name)
    }

    fn shown(&self) -> &str {
        if self.username.is_empty() {
            "<unknown>"
        } else {
            &self.username
        }
    }
}

/// `<n>` of `system:node:<n>`.
fn node_name(subject: &str) -> Option<&str> {
    subject.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty())
}

/// Why a request that looks like one of OpenYurt's is left pending; the message of its
/// Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Usages other than the certificate's exact set.
    #[error("usages [{}] are not exactly {want}", got.join(", "))]
    Usages {
        /// What was asked for.
        got: Vec<String>,
        /// What this certificate takes.
        want: &'static str,
    },
    /// Subject organizations outside the certificate's set.
    #[error("organizations [{}] are not {want}", got.join(", "))]
    Organizations {
        /// What was asked for.
        got: Vec<String>,
        /// What this certificate takes.
        want: &'static str,
    },
    /// A tunnel subject with an unknown common name.
    #[error("common name {0:?} is not {TUNNEL_AGENT_CN} or {TUNNEL_PROXY_CN}")]
    CommonName(String),
    /// The requester is not the identity the certificate is for.
    #[error("requester {requester} may not obtain a certificate for {subject}")]
    Requester {
        /// `spec.username`.
        requester: String,
        /// The subject asked for.
        subject: String,
    },
    /// A serving request with no DNS or IP SAN.
    #[error("a serving certificate needs at least one DNS or IP SAN")]
    NoSan,
    /// A serving request with an email, URI or other SAN.
    #[error("only DNS and IP SANs may be asked for, not {0} other SAN(s)")]
    SanKind(usize),
    /// A serving request for one of the API server's names.
    #[error("SAN {0} is one of the API server's names")]
    ApiServerName(String),
    /// A serving request for a node the manager does not know.
    #[error("node {0} does not exist")]
    NoNode(String),
    /// A serving request for a SAN its node does not have.
    #[error("SAN {san} is not an address of node {node}")]
    San {
        /// The SAN.
        san: String,
        /// The node.
        node: String,
    },
}

impl Refusal {
    /// Whether a change of a Node may turn this refusal into an approval.
    pub fn depends_on_node(&self) -> bool {
        matches!(self, Self::NoNode(_) | Self::San { .. })
    }
}

/// What the approver makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Approve it, with this message on the Approved condition.
    Approve(&'static str),
    /// Ours, but a rule refuses it: it stays pending, with an Event.
    Refuse(Refusal),
    /// Not an OpenYurt request: left to kube-controller-manager or a human.
    NotOurs,
}

/// The approver's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The hubs' pod-facing address (169.254.2.1), allowed in every node's serving
    /// certificate.
    pub hub_pod_address: IpAddr,
}

/// Which OpenYurt certificate a request's signer and subject say it is.
enum Kind<'a> {
    HubClient { node: &'a str },
    Serving { node: &'a str },
    Tunnel,
}

fn kind<'a>(signer: &str, req: &'a Requested) -> Option<Kind<'a>> {
    let node = node_name(&req.common_name);
    let has = |org: &str| req.organizations.iter().any(|o| o == org);
    match signer {
        CLIENT_SIGNER => match node {
            Some(node) if has(HUB_GROUP) => Some(Kind::HubClient { node }),
            _ if has(TUNNEL_GROUP)
                || req.common_name == TUNNEL_AGENT_CN
                || req.common_name == TUNNEL_PROXY_CN =>
            {
                Some(Kind::Tunnel)
            }
            _ => None,
        },
        SERVING_SIGNER => node.map(|node| Kind::Serving { node }),
        _ => None,
    }
}

/// Exactly `digital signature`, `key encipherment` and `purpose`, or without `key
/// encipherment` where `key_encipherment_optional`.
fn usages_are(usages: &[String], purpose: &str, key_encipherment_optional: bool) -> bool {
    let set: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    let full: BTreeSet<&str> = ["digital signature", "key encipherment", purpose]
        .into_iter()
        .collect();
    let plain: BTreeSet<&str> = ["digital signature", purpose].into_iter().collect();
    set == full || (key_encipherment_optional && set == plain)
}

/// `kubernetes`, `kubernetes.default`, `kubernetes.default.svc` and anything under it.
fn is_api_server_name(dns: &str) -> bool {
    let dns = dns.trim_end_matches('.').to_ascii_lowercase();
    dns == "kubernetes"
        || dns == "kubernetes.default"
        || dns == "kubernetes.default.svc"
        || dns.starts_with("kubernetes.default.svc.")
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            hub_pod_address: IpAddr::from([169, 254, 2, 1]),
        }
    }
}

impl Rules {
    /// Judges a request: `signer`, `usages` and `requester` from its spec, `req` from its
    /// body; `node` looks a Node up by name.
    pub fn judge(
        &self,
        signer: &str,
        usages: &[String],
        requester: &Requester,
        req: &Requested,
        node: impl Fn(&str) -> Option<Arc<Node>>,
    ) -> Verdict {
        let Some(kind) = kind(signer, req) else {
            return Verdict::NotOurs;
        };
        let checked = match kind {
            Kind::HubClient { node } => self
                .hub_client(usages, requester, req, node)
                .map(|()| "AutoApproved: yurthub client certificate of its own node"),
            Kind::Serving { node: name } => self
                .serving(usages, requester, req, name, node(name).as_deref())
                .map(|()| "AutoApproved: serving certificate of its own node"),
            Kind::Tunnel => self.tunnel(usages, requester, req),
        };
        match checked {
            Ok(reason) => Verdict::Approve(reason),
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }

    fn hub_client(
        &self,
        usages: &[String],
        requester: &Requester,
        req: &Requested,
        node: &str,
    ) -> Result<(), Refusal> {
        if !usages_are(usages, "client auth", false) {
            return Err(Refusal::Usages {
                got: usages.to_vec(),
                want: CLIENT_USAGES,
            });
        }
        let allowed =
            |o: &String| o == HUB_GROUP || o == NODES_GROUP || o.starts_with(TENANT_GROUP_PREFIX);
        if req.organizations.len() < 2 || !req.organizations.iter().all(allowed) {
            return Err(Refusal::Organizations {
                got: req.organizations.clone(),
                want: "openyurt:yurthub with system:nodes and/or openyurt:tenant:* groups",
            });
        }
        Self::own_node(requester, req, node)
    }

    fn serving(
        &self,
        usages: &[String],
        requester: &Requester,
        req: &Requested,
        name: &str,
        node: Option<&Node>,
    ) -> Result<(), Refusal> {
        if !usages_are(usages, "server auth", !req.rsa_key) {
            return Err(Refusal::Usages {
                got: usages.to_vec(),
                want: SERVER_USAGES,
            });
        }
        if req.organizations != [NODES_GROUP] {
            return Err(Refusal::Organizations {
                got: req.organizations.clone(),
                want: "exactly system:nodes",
            });
        }
        Self::own_node(requester, req, name)?;
        if req.other_names > 0 {
            return Err(Refusal::SanKind(req.other_names));
        }
        if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
            return Err(Refusal::NoSan);
        }
        if let Some(dns) = req.dns_names.iter().find(|d| is_api_server_name(d)) {
            return Err(Refusal::ApiServerName(dns.clone()));
        }
        // The hub's pod address is every node's: a request for it alone needs no Node (a
        // joining node's hub asks before kubelet has registered one).
        if req.dns_names.is_empty()
            && req
                .ip_addresses
                .iter()
                .all(|ip| *ip == self.hub_pod_address)
        {
            return Ok(());
        }
        let node = node.ok_or_else(|| Refusal::NoNode(name.to_owned()))?;
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        let not_ours = |san: String| Refusal::San {
            san,
            node: name.to_owned(),
        };
        for dns in &req.dns_names {
            let known = dns.eq_ignore_ascii_case(name)
                || addresses.iter().any(|a| {
                    matches!(a.type_.as_str(), "Hostname" | "InternalDNS" | "ExternalDNS")
                        && a.address.eq_ignore_ascii_case(dns)
                });
            if !known {
                return Err(not_ours(dns.clone()));
            }
        }
        for ip in &req.ip_addresses {
            let known = *ip == self.hub_pod_address
                || addresses
                    .iter()
                    .any(|a| a.address.parse::<IpAddr>().ok() == Some(*ip));
            if !known {
                return Err(not_ours(ip.to_string()));
            }
        }
        Ok(())
    }

    fn tunnel(
        &self,
        usages: &[String],
        requester: &Requester,
        req: &Requested,
    ) -> Result<&'static str, Refusal> {
        if !usages_are(usages, "client auth", false) {
            return Err(Refusal::Usages {
                got: usages.to_vec(),
                want: CLIENT_USAGES,
            });
        }
        if req.organizations != [TUNNEL_GROUP] {
            return Err(Refusal::Organizations {
                got: req.organizations.clone(),
                want: "exactly openyurt:yurttunnel",
            });
        }
        let refused = || Refusal::Requester {
            requester: requester.shown().to_owned(),
            subject: req.common_name.clone(),
        };
        match req.common_name.as_str() {
            TUNNEL_AGENT_CN => requester
                .node()
                .map(|_| "AutoApproved: tunnel agent client certificate of a node")
                .ok_or_else(refused),
            TUNNEL_PROXY_CN => (requester.username == TUNNEL_SERVER_ACCOUNT)
                .then_some("AutoApproved: tunnel server proxy client certificate")
                .ok_or_else(refused),
            other => Err(Refusal::CommonName(other.to_owned())),
        }
    }

    /// The requester must be node `node` itself.
    fn own_node(requester: &Requester, req: &Requested, node: &str) -> Result<(), Refusal> {
        if requester.node() == Some(node) {
            Ok(())
        } else {
            Err(Refusal::Requester {
                requester: requester.shown().to_owned(),
                subject: req.common_name.clone(),
            })
        }
    }
}

fn decided(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Approved" || c.type_ == "Denied")
        })
}

struct Ctx {
    client: kube::Client,
    nodes: Store<Node>,
    csrs: Store<CertificateSigningRequest>,
    rules: Rules,
    /// The refusal last written as an Event, per request uid.
    reported: Mutex<HashMap<String, String>>,
    metrics: ManagerMetrics,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReconcileError(#[from] kube::Error);

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    if decided(&csr) {
        return Ok(Action::await_change());
    }
    let Some(name) = csr.metadata.name.as_deref() else {
        return Ok(Action::await_change());
    };
    let spec = &csr.spec;
    let requested = match parse(&spec.request.0) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(csr = name, error = %e, "unreadable request left alone");
            return Ok(Action::await_change());
        }
    };
    let usages = spec.usages.clone().unwrap_or_default();
    let requester = Requester::of(&csr);
    let verdict = ctx
        .rules
        .judge(&spec.signer_name, &usages, &requester, &requested, |n| {
            ctx.nodes.get(&ObjectRef::new(n))
        });
    let reason = match verdict {
        Verdict::NotOurs => return Ok(Action::await_change()),
        Verdict::Refuse(refusal) => {
            report(&ctx, &csr, name, &requester, &refusal).await?;
            ctx.metrics.reconciled(NAME);
            return Ok(if refusal.depends_on_node() {
                Action::requeue(NODE_RECHECK)
            } else {
                Action::await_change()
            });
        }
        Verdict::Approve(reason) => reason,
    };
    let mut approved = (*csr).clone();
    let status = approved
        .status
        .get_or_insert_with(CertificateSigningRequestStatus::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".to_owned(),
            status: "True".to_owned(),
            reason: Some("AutoApproved".to_owned()),
            message: Some(reason.to_owned()),
            ..CertificateSigningRequestCondition::default()
        });
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    api.replace_subresource("approval", name, &PostParams::default(), &approved)
        .await?;
    ctx.metrics.reconciled(NAME);
    tracing::info!(
        csr = name,
        subject = requested.common_name,
        requester = requester.username,
        reason,
        "certificate request approved"
    );
    Ok(Action::await_change())
}

/// Writes the Warning Event saying why `csr` stays pending, unless this refusal was
/// written already (by this process, or by an earlier one: the Events are looked up).
async fn report(
    ctx: &Ctx,
    csr: &CertificateSigningRequest,
    name: &str,
    requester: &Requester,
    refusal: &Refusal,
) -> Result<(), kube::Error> {
    let message = refusal.to_string();
    let uid = csr.metadata.uid.clone().unwrap_or_else(|| name.to_owned());
    let known = ctx
        .reported
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&uid)
        .is_some_and(|m| *m == message);
    if known {
        return Ok(());
    }
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), EVENT_NAMESPACE);
    let selector = match &csr.metadata.uid {
        Some(uid) => format!("involvedObject.uid={uid},reason={REFUSED_REASON}"),
        None => format!(
            "involvedObject.kind=CertificateSigningRequest,involvedObject.name={name},reason={REFUSED_REASON}"
        ),
    };
    let written = events
        .list(&ListParams::default().fields(&selector))
        .await?
        .items
        .iter()
        .any(|e| e.message.as_deref() == Some(message.as_str()));
    if !written {
        let now = jiff::Timestamp::now();
        // client-go's naming (`<object>.<nanoseconds in hex>`) where it fits a name.
        let event_name = format!("{name}.{:x}", now.as_nanosecond());
        let (event_name, generate_name) = if event_name.len() <= 253 {
            (Some(event_name), None)
        } else {
            (None, Some("csrapprover.".to_owned()))
        };
        let event = Event {
            metadata: ObjectMeta {
                name: event_name,
                generate_name,
                namespace: Some(EVENT_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object: csr.object_ref(&()),
            reason: Some(REFUSED_REASON.to_owned()),
            message: Some(message.clone()),
            type_: Some("Warning".to_owned()),
            source: Some(EventSource {
                component: Some("yurt-manager".to_owned()),
                host: None,
            }),
            reporting_component: Some("yurt-manager".to_owned()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Event::default()
        };
        events.create(&PostParams::default(), &event).await?;
        tracing::info!(
            csr = name,
            requester = requester.username,
            reason = %message,
            "certificate request left pending"
        );
    }
    let mut reported = ctx.reported.lock().unwrap_or_else(PoisonError::into_inner);
    if reported.len() >= REPORTED_PRUNE_AT {
        let live: BTreeSet<String> = ctx
            .csrs
            .state()
            .iter()
            .filter_map(|c| c.metadata.uid.clone())
            .collect();
        reported.retain(|uid, _| live.contains(uid));
    }
    reported.insert(uid, message);
    Ok(())
}

fn error_policy(
    _c: Arc<CertificateSigningRequest>,
    error: &ReconcileError,
    ctx: Arc<Ctx>,
) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "approval failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs until `shutdown`, once the manager's Node store has its first list (a serving
/// request is judged against its Node).
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let nodes = inputs.nodes.store();
    tokio::select! {
        () = shutdown.cancelled() => return,
        ready = nodes.wait_until_ready() => if let Err(e) = ready {
            tracing::warn!(controller = NAME, error = %e, "node store never filled; not approving");
            return;
        },
    }
    let api: Api<CertificateSigningRequest> = Api::all(inputs.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let ctx = Arc::new(Ctx {
        client: inputs.client,
        nodes,
        csrs: controller.store(),
        rules: Rules {
            hub_pod_address: inputs.hub_pod_address,
        },
        reported: Mutex::new(HashMap::new()),
        metrics: inputs.metrics,
    });
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            super::instrumented(NAME, ctx.metrics.clone(), reconcile),
            error_policy,
            ctx,
        )
        .for_each(|r| super::log_stream_error(NAME, r))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    const CLIENT: &[&str] = &["digital signature", "key encipherment", "client auth"];
    const CLIENT_NO_KE: &[&str] = &["digital signature", "client auth"];
    const SERVER: &[&str] = &["digital signature", "key encipherment", "server auth"];
    const SERVER_NO_KE: &[&str] = &["digital signature", "server auth"];
    const HUB_ORGS: &[&str] = &["system:nodes", "openyurt:yurthub"];

    /// An RSA request for `system:node:edge-a1` (org `system:nodes`, SANs `edge-a1` and
    /// 10.0.1.11), made with `openssl req -newkey rsa:1024` (rcgen on ring cannot make
    /// RSA keys).
    const RSA_SERVING: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBoDCCAQkCAQAwNTEcMBoGA1UEAwwTc3lzdGVtOm5vZGU6ZWRnZS1hMTEVMBMG
A1UECgwMc3lzdGVtOm5vZGVzMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDj
KGUhLJ9uqgY6AZzveME7V1SQ6i/HBVQJnEklPEtEeygLqRdU4PfSMRtM2U1dBFMB
RfBjXqir6iJTMT6/7l+rWcW93jsuidvbPM3JSaMhsUqtrbBT0HKvCu+MoXV2lCN+
gIdVxJnoySTIf3hs/2EvrhpOEhgo166ZIsu4lydJUwIDAQABoCswKQYJKoZIhvcN
AQkOMRwwGjAYBgNVHREEETAPggdlZGdlLWExhwQKAAELMA0GCSqGSIb3DQEBCwUA
A4GBALZALN0OZoF6HMPyi2aHSP1pvCsnPgCINuRn9p1Zv3scxgPEXuO6XmKJBqkt
TSyqshoU1Ptvj3J8t9OKYuF8oOqniuUlOkKW9vLV5kOdnGdst9QaEwcKmtMjpGH+
HFggw1doRlZa/p7pWR96wWIRG61Fl6VEIq15UkyxZ0VTCKyy
-----END CERTIFICATE REQUEST-----
";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    /// A PEM request (ECDSA P-256) for `cn` in `orgs` (at most two), with `sans`: IPs,
    /// DNS names, or `email:<address>`.
    fn pem(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        for san in sans {
            params
                .subject_alt_names
                .push(match san.strip_prefix("email:") {
                    Some(email) => rcgen::SanType::Rfc822Name(email.try_into().expect("ia5")),
                    None => match san.parse::<IpAddr>() {
                        Ok(ip) => rcgen::SanType::IpAddress(ip),
                        Err(_) => rcgen::SanType::DnsName((*san).try_into().expect("ia5")),
                    },
                });
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        // rcgen keeps one value per attribute type: a second organization goes in
        // under the raw OID of organizationName.
        assert!(orgs.len() <= 2, "at most two organizations");
        if let Some(first) = orgs.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *first);
        }
        if let Some(second) = orgs.get(1) {
            params.distinguished_name.push(
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
                rcgen::DnValue::Utf8String((*second).to_owned()),
            );
        }
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn node_requester(name: &str) -> Requester {
        Requester {
            username: format!("system:node:{name}"),
            groups: s(&["system:nodes", "openyurt:yurthub", "system:authenticated"]),
        }
    }

    fn user(name: &str, groups: &[&str]) -> Requester {
        Requester {
            username: name.to_owned(),
            groups: s(groups),
        }
    }

    /// Node edge-a1 at 10.0.1.11 (and hostname `edge-a1.pool-a`); edge-b1 at 10.0.2.11.
    fn nodes(name: &str) -> Option<Arc<Node>> {
        let addresses = match name {
            "edge-a1" => vec![("InternalIP", "10.0.1.11"), ("Hostname", "edge-a1.pool-a")],
            "edge-b1" => vec![("InternalIP", "10.0.2.11"), ("Hostname", "edge-b1")],
            _ => return None,
        };
        let mut node = Node::default();
        node.metadata.name = Some(name.to_owned());
        node.status = Some(NodeStatus {
            addresses: Some(
                addresses
                    .into_iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_owned(),
                        address: a.to_owned(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        });
        Some(Arc::new(node))
    }

    /// What a case expects: approval, a refusal whose message is this, or nothing.
    #[derive(Debug)]
    enum Want {
        Approved,
        Refused(&'static str),
        NotOurs,
    }

    struct Case {
        what: &'static str,
        signer: &'static str,
        usages: &'static [&'static str],
        requester: Requester,
        cn: &'static str,
        orgs: &'static [&'static str],
        sans: &'static [&'static str],
        want: Want,
    }

    fn check(rules: Rules, cases: Vec<Case>) {
        let mut failed = Vec::new();
        for c in cases {
            let req = parse(pem(c.cn, c.orgs, c.sans).as_bytes()).expect("parse");
            let got = rules.judge(c.signer, &s(c.usages), &c.requester, &req, nodes);
            let ok = match (&c.want, &got) {
                (Want::Approved, Verdict::Approve(_)) | (Want::NotOurs, Verdict::NotOurs) => true,
                (Want::Refused(msg), Verdict::Refuse(r)) => r.to_string() == *msg,
                _ => false,
            };
            if !ok {
                failed.push(format!("{}: want {:?}, got {got:?}", c.what, c.want));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn client_certificates_go_to_their_own_node_only() {
        use Want::*;
        let case = |what, usages, requester, cn, orgs, want| Case {
            what,
            signer: CLIENT_SIGNER,
            usages,
            requester,
            cn,
            orgs,
            sans: &[],
            want,
        };
        let a1 = || node_requester("edge-a1");
        let admin = || {
            user(
                "kubernetes-admin",
                &["system:masters", "system:authenticated"],
            )
        };
        check(
            Rules::default(),
            vec![
                case(
                    "own identity",
                    CLIENT,
                    a1(),
                    "system:node:edge-a1",
                    HUB_ORGS,
                    Approved,
                ),
                case(
                    "own identity, tenant group",
                    CLIENT,
                    a1(),
                    "system:node:edge-a1",
                    &["openyurt:yurthub", "openyurt:tenant:t1"],
                    Approved,
                ),
                case(
                    "another node's identity",
                    CLIENT,
                    a1(),
                    "system:node:edge-b1",
                    HUB_ORGS,
                    Refused(
                        "requester system:node:edge-a1 may not obtain a certificate for system:node:edge-b1",
                    ),
                ),
                case(
                    "a node identity asked for by an admin",
                    CLIENT,
                    admin(),
                    "system:node:edge-a1",
                    HUB_ORGS,
                    Refused(
                        "requester kubernetes-admin may not obtain a certificate for system:node:edge-a1",
                    ),
                ),
                case(
                    "the node's name outside system:nodes",
                    CLIENT,
                    user("system:node:edge-a1", &["system:authenticated"]),
                    "system:node:edge-a1",
                    HUB_ORGS,
                    Refused(
                        "requester system:node:edge-a1 may not obtain a certificate for system:node:edge-a1",
                    ),
                ),
                case(
                    "a bootstrap token",
                    CLIENT,
                    user("system:bootstrap:abcdef", &["system:bootstrappers"]),
                    "system:node:edge-a1",
                    HUB_ORGS,
                    Refused(
                        "requester system:bootstrap:abcdef may not obtain a certificate for system:node:edge-a1",
                    ),
                ),
                case(
                    "usages without key encipherment",
                    CLIENT_NO_KE,
                    a1(),
                    "system:node:edge-a1",
                    HUB_ORGS,
                    Refused(
                        "usages [digital signature, client auth] are not exactly digital signature, key encipherment, client auth",
                    ),
                ),
                case(
                    "server auth on top",
                    &[
                        "digital signature",
                        "key encipherment",
                        "client auth",
                        "server auth",
                    ],
                    a1(),
                    "system:node:edge-a1",
                    HUB_ORGS,
                    Refused(
                        "usages [digital signature, key encipherment, client auth, server auth] are not exactly digital signature, key encipherment, client auth",
                    ),
                ),
                case(
                    "system:masters on top",
                    CLIENT,
                    a1(),
                    "system:node:edge-a1",
                    &["openyurt:yurthub", "system:masters"],
                    Refused(
                        "organizations [openyurt:yurthub, system:masters] are not openyurt:yurthub with system:nodes and/or openyurt:tenant:* groups",
                    ),
                ),
                case(
                    "the hub group alone",
                    CLIENT,
                    a1(),
                    "system:node:edge-a1",
                    &["openyurt:yurthub"],
                    Refused(
                        "organizations [openyurt:yurthub] are not openyurt:yurthub with system:nodes and/or openyurt:tenant:* groups",
                    ),
                ),
                // kubelet's own client request is kube-controller-manager's business.
                case(
                    "a kubelet client",
                    CLIENT,
                    a1(),
                    "system:node:edge-a1",
                    &["system:nodes"],
                    NotOurs,
                ),
                case(
                    "no node subject",
                    CLIENT,
                    a1(),
                    "someone",
                    HUB_ORGS,
                    NotOurs,
                ),
                Case {
                    signer: "example.com/other",
                    ..case(
                        "another signer",
                        CLIENT,
                        a1(),
                        "system:node:edge-a1",
                        HUB_ORGS,
                        NotOurs,
                    )
                },
            ],
        );
    }

    #[test]
    fn serving_certificates_cover_their_own_node_only() {
        use Want::*;
        let case = |what, usages, requester, cn, sans, want| Case {
            what,
            signer: SERVING_SIGNER,
            usages,
            requester,
            cn,
            orgs: &["system:nodes"],
            sans,
            want,
        };
        let a1 = || node_requester("edge-a1");
        check(
            Rules::default(),
            vec![
                case(
                    "own name, addresses and the hub's pod address",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["edge-a1", "edge-a1.pool-a", "10.0.1.11", "169.254.2.1"],
                    Approved,
                ),
                case(
                    "own IP alone",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["10.0.1.11"],
                    Approved,
                ),
                case(
                    "the hub's pod address alone",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["169.254.2.1"],
                    Approved,
                ),
                case(
                    "an ECDSA key without key encipherment",
                    SERVER_NO_KE,
                    a1(),
                    "system:node:edge-a1",
                    &["edge-a1"],
                    Approved,
                ),
                case(
                    "a foreign IP",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["edge-a1", "10.9.9.9"],
                    Refused("SAN 10.9.9.9 is not an address of node edge-a1"),
                ),
                case(
                    "another node's IP",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["10.0.2.11"],
                    Refused("SAN 10.0.2.11 is not an address of node edge-a1"),
                ),
                case(
                    "a foreign DNS name",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["edge-a1", "evil.example"],
                    Refused("SAN evil.example is not an address of node edge-a1"),
                ),
                case(
                    "loopback",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["127.0.0.1"],
                    Refused("SAN 127.0.0.1 is not an address of node edge-a1"),
                ),
                case(
                    "the API server's name",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["edge-a1", "kubernetes.default.svc.cluster.local"],
                    Refused(
                        "SAN kubernetes.default.svc.cluster.local is one of the API server's names",
                    ),
                ),
                case(
                    "an email SAN",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["edge-a1", "email:root@edge-a1"],
                    Refused("only DNS and IP SANs may be asked for, not 1 other SAN(s)"),
                ),
                case(
                    "no SAN",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &[],
                    Refused("a serving certificate needs at least one DNS or IP SAN"),
                ),
                case(
                    "a missing Node",
                    SERVER,
                    node_requester("edge-z9"),
                    "system:node:edge-z9",
                    &["edge-z9"],
                    Refused("node edge-z9 does not exist"),
                ),
                case(
                    "a missing Node, its address",
                    SERVER,
                    node_requester("edge-z9"),
                    "system:node:edge-z9",
                    &["169.254.2.1", "10.0.2.11"],
                    Refused("node edge-z9 does not exist"),
                ),
                // A joining node's hub asks before kubelet has registered the Node (yurt
                // adm join starts it as soon as kubelet holds its client certificate):
                // the hub's pod address is every node's, so it needs no Node.
                case(
                    "a missing Node, only the hub's pod address",
                    SERVER,
                    node_requester("edge-z9"),
                    "system:node:edge-z9",
                    &["169.254.2.1"],
                    Approved,
                ),
                case(
                    "a missing Node, the hub's pod address for another node",
                    SERVER,
                    node_requester("edge-z9"),
                    "system:node:edge-z8",
                    &["169.254.2.1"],
                    Refused(
                        "requester system:node:edge-z9 may not obtain a certificate for system:node:edge-z8",
                    ),
                ),
                case(
                    "another node's serving certificate",
                    SERVER,
                    a1(),
                    "system:node:edge-b1",
                    &["10.0.2.11"],
                    Refused(
                        "requester system:node:edge-a1 may not obtain a certificate for system:node:edge-b1",
                    ),
                ),
                case(
                    "a node's serving certificate asked for by an admin",
                    SERVER,
                    user("kubernetes-admin", &["system:masters"]),
                    "system:node:edge-a1",
                    &["10.0.1.11"],
                    Refused(
                        "requester kubernetes-admin may not obtain a certificate for system:node:edge-a1",
                    ),
                ),
                case(
                    "client usages",
                    CLIENT,
                    a1(),
                    "system:node:edge-a1",
                    &["edge-a1"],
                    Refused(
                        "usages [digital signature, key encipherment, client auth] are not exactly digital signature, key encipherment, server auth (without key encipherment for a non-RSA key)",
                    ),
                ),
                Case {
                    orgs: HUB_ORGS,
                    ..case(
                        "the hub group on top",
                        SERVER,
                        a1(),
                        "system:node:edge-a1",
                        &["edge-a1"],
                        Refused(
                            "organizations [system:nodes, openyurt:yurthub] are not exactly system:nodes",
                        ),
                    )
                },
                case(
                    "no node subject",
                    SERVER,
                    a1(),
                    "edge-a1",
                    &["edge-a1"],
                    NotOurs,
                ),
            ],
        );
        // The hub's pod address is a setting, not a constant.
        check(
            Rules {
                hub_pod_address: IpAddr::from([169, 254, 9, 9]),
            },
            vec![
                case(
                    "the configured address",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["169.254.9.9"],
                    Approved,
                ),
                case(
                    "the default one, when another is configured",
                    SERVER,
                    a1(),
                    "system:node:edge-a1",
                    &["169.254.2.1"],
                    Refused("SAN 169.254.2.1 is not an address of node edge-a1"),
                ),
            ],
        );
    }

    #[test]
    fn an_rsa_serving_request_needs_key_encipherment() {
        let req = parse(RSA_SERVING.as_bytes()).expect("parse");
        assert!(req.rsa_key);
        let rules = Rules::default();
        let a1 = node_requester("edge-a1");
        assert!(matches!(
            rules.judge(SERVING_SIGNER, &s(SERVER), &a1, &req, nodes),
            Verdict::Approve(_)
        ));
        assert!(matches!(
            rules.judge(SERVING_SIGNER, &s(SERVER_NO_KE), &a1, &req, nodes),
            Verdict::Refuse(Refusal::Usages { .. })
        ));
    }

    #[test]
    fn tunnel_certificates_are_bound_to_their_requesters() {
        use Want::*;
        let case = |what, requester, cn, orgs, want| Case {
            what,
            signer: CLIENT_SIGNER,
            usages: CLIENT,
            requester,
            cn,
            orgs,
            sans: &[],
            want,
        };
        let tunnel: &[&str] = &["openyurt:yurttunnel"];
        let admin = || user("kubernetes-admin", &["system:masters"]);
        let server = || user(TUNNEL_SERVER_ACCOUNT, &["system:serviceaccounts"]);
        check(
            Rules::default(),
            vec![
                case(
                    "agent by a node",
                    node_requester("edge-a1"),
                    "tunnel-agent-client",
                    tunnel,
                    Approved,
                ),
                case(
                    "agent by an admin",
                    admin(),
                    "tunnel-agent-client",
                    tunnel,
                    Refused(
                        "requester kubernetes-admin may not obtain a certificate for tunnel-agent-client",
                    ),
                ),
                case(
                    "proxy client by the tunnel server",
                    server(),
                    "tunnel-proxy-client",
                    tunnel,
                    Approved,
                ),
                case(
                    "proxy client by a node",
                    node_requester("edge-a1"),
                    "tunnel-proxy-client",
                    tunnel,
                    Refused(
                        "requester system:node:edge-a1 may not obtain a certificate for tunnel-proxy-client",
                    ),
                ),
                case(
                    "proxy client by an admin",
                    admin(),
                    "tunnel-proxy-client",
                    tunnel,
                    Refused(
                        "requester kubernetes-admin may not obtain a certificate for tunnel-proxy-client",
                    ),
                ),
                case(
                    "another tunnel name",
                    server(),
                    "tunnel-other",
                    tunnel,
                    Refused(
                        "common name \"tunnel-other\" is not tunnel-agent-client or tunnel-proxy-client",
                    ),
                ),
                case(
                    "nodes group on top",
                    node_requester("edge-a1"),
                    "tunnel-agent-client",
                    &["openyurt:yurttunnel", "system:nodes"],
                    Refused(
                        "organizations [openyurt:yurttunnel, system:nodes] are not exactly openyurt:yurttunnel",
                    ),
                ),
                Case {
                    usages: CLIENT_NO_KE,
                    ..case(
                        "usages without key encipherment",
                        node_requester("edge-a1"),
                        "tunnel-agent-client",
                        tunnel,
                        Refused(
                            "usages [digital signature, client auth] are not exactly digital signature, key encipherment, client auth",
                        ),
                    )
                },
            ],
        );
    }

    #[test]
    fn requests_are_read_from_pem() {
        let r = parse(
            pem(
                "system:node:edge-1",
                &["system:nodes"],
                &["edge-1", "10.0.0.1", "email:a@b"],
            )
            .as_bytes(),
        )
        .expect("parse");
        assert_eq!(r.common_name, "system:node:edge-1");
        assert_eq!(r.organizations, vec!["system:nodes".to_owned()]);
        assert_eq!(r.dns_names, vec!["edge-1".to_owned()]);
        assert_eq!(r.ip_addresses, vec![IpAddr::from([10, 0, 0, 1])]);
        assert_eq!(r.other_names, 1);
        assert!(!r.rsa_key, "rcgen makes ECDSA keys");
        let rsa = parse(RSA_SERVING.as_bytes()).expect("parse");
        assert_eq!(rsa.dns_names, vec!["edge-a1".to_owned()]);
        assert_eq!(rsa.ip_addresses, vec![IpAddr::from([10, 0, 1, 11])]);
        assert!(parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(parse(b"garbage").is_err());
    }

    /// A fake API server that keeps the core Events created in `default`.
    async fn fake_events_api() -> (kube::Client, Arc<Mutex<Vec<serde_json::Value>>>) {
        use axum::extract::State;
        use axum::routing::get;
        type Events = Arc<Mutex<Vec<serde_json::Value>>>;
        async fn list(State(events): State<Events>) -> axum::Json<serde_json::Value> {
            let items = events.lock().expect("lock").clone();
            axum::Json(serde_json::json!({
                "apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items,
            }))
        }
        async fn create(
            State(events): State<Events>,
            axum::Json(event): axum::Json<serde_json::Value>,
        ) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
            events.lock().expect("lock").push(event.clone());
            (axum::http::StatusCode::CREATED, axum::Json(event))
        }
        let events: Events = Arc::default();
        let router = axum::Router::new()
            .route("/api/v1/namespaces/default/events", get(list).post(create))
            .with_state(events.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        let url = format!("http://{addr}").parse().expect("url");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("client");
        (client, events)
    }

    fn ctx(client: kube::Client) -> Ctx {
        let (nodes, _) = kube::runtime::reflector::store();
        let (csrs, _) = kube::runtime::reflector::store();
        Ctx {
            client,
            nodes,
            csrs,
            rules: Rules::default(),
            reported: Mutex::new(HashMap::new()),
            metrics: ManagerMetrics::default(),
        }
    }

    #[tokio::test]
    async fn a_refusal_is_reported_once_per_request_even_across_restarts() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let (client, events) = fake_events_api().await;
            let mut csr = CertificateSigningRequest::default();
            csr.metadata.name = Some("node-csr-1".to_owned());
            csr.metadata.uid = Some("uid-1".to_owned());
            let requester = node_requester("edge-a1");
            let refusal = Refusal::Requester {
                requester: requester.username.clone(),
                subject: "system:node:edge-b1".to_owned(),
            };
            let first = ctx(client.clone());
            // The first look and two resyncs: one Event.
            for _ in 0..3 {
                report(&first, &csr, "node-csr-1", &requester, &refusal)
                    .await
                    .expect("report");
            }
            {
                let written = events.lock().expect("lock");
                assert_eq!(written.len(), 1, "{written:?}");
                let e = &written[0];
                assert_eq!(e["involvedObject"]["kind"], "CertificateSigningRequest");
                assert_eq!(e["involvedObject"]["name"], "node-csr-1");
                assert_eq!(e["involvedObject"]["uid"], "uid-1");
                assert_eq!(e["reason"], REFUSED_REASON);
                assert_eq!(e["type"], "Warning");
                assert_eq!(e["metadata"]["namespace"], "default");
                assert_eq!(
                    e["message"],
                    "requester system:node:edge-a1 may not obtain a certificate for system:node:edge-b1"
                );
            }
            // A restarted manager finds the Event and does not repeat it.
            let restarted = ctx(client.clone());
            report(&restarted, &csr, "node-csr-1", &requester, &refusal)
                .await
                .expect("report");
            assert_eq!(events.lock().expect("lock").len(), 1);
            // A different refusal of the same request (its Node changed) is news.
            let other = Refusal::NoNode("edge-b1".to_owned());
            report(&restarted, &csr, "node-csr-1", &requester, &other)
                .await
                .expect("report");
            assert_eq!(events.lock().expect("lock").len(), 2);
        })
        .await
        .expect("the fake API server answered in time");
    }
}
