//! The csrapprover controller (reference/openyurt.md §5.2): approves the certificate
//! signing requests of hubs and tunnel components that match OpenYurt's rules exactly,
//! and leaves every other request alone (for kube-controller-manager or a human):
//!
//! | who | signer | subject | usages |
//! |---|---|---|---|
//! | hub client | `kubernetes.io/kube-apiserver-client` | CN `system:node:*`, ≥ 2 orgs, all of `openyurt:yurthub`, `system:nodes`, `openyurt:tenant:*` | client |
//! | OpenYurt TLS server | `kubernetes.io/kubelet-serving` | CN `system:node:*`, the single org `system:nodes`, ≥ 1 SAN | server |
//! | tunnel proxy client | `kubernetes.io/kube-apiserver-client` | CN `tunnel-proxy-client`, org `openyurt:yurttunnel` | client |
//! | tunnel agent | `kubernetes.io/kube-apiserver-client` | CN `tunnel-agent-client`, org `openyurt:yurttunnel` | client |
//!
//! "client" usages are `digital signature` + `client auth` (with or without `key
//! encipherment`), "server" the same with `server auth`; nothing else may be asked for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "csrapprover";

const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const HUB_GROUP: &str = "openyurt:yurthub";
const TUNNEL_GROUP: &str = "openyurt:yurttunnel";

/// What a request asks for, read from its PKCS#10 body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// Subject common name.
    pub common_name: String,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// Number of subject alternative names (DNS and IP).
    pub alt_names: usize,
}

/// Reads the subject and SANs of a PEM certificate request.
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
    let subject = &csr.certification_request_info.subject;
    let text =
        |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().map(str::to_owned).ok();
    let common_name = subject
        .iter_common_name()
        .find_map(text)
        .unwrap_or_default();
    let organizations = subject.iter_organization().filter_map(text).collect();
    let alt_names = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            ParsedExtension::SubjectAlternativeName(san) => Some(
                san.general_names
                    .iter()
                    .filter(|n| matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_)))
                    .count(),
            ),
            _ => None,
        })
        .sum();
    Ok(Requested {
        common_name,
        organizations,
        alt_names,
    })
}

fn usages_are(usages: &[String], purpose: &str) -> bool {
    let set: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    let plain: BTreeSet<&str> = ["digital signature", purpose].into_iter().collect();
    let with_key: BTreeSet<&str> = ["digital signature", "key encipherment", purpose]
        .into_iter()
        .collect();
    set == plain || set == with_key
}

/// Why OpenYurt approves a request, or `None` if it is not ours to approve.
pub fn approval_reason(signer: &str, usages: &[String], req: &Requested) -> Option<&'static str> {
    let node_cn = req.common_name.starts_with("system:node:") && req.common_name.len() > 12;
    let orgs: BTreeSet<&str> = req.organizations.iter().map(String::as_str).collect();
    match signer {
        CLIENT_SIGNER if usages_are(usages, "client auth") => {
            let hub = node_cn
                && orgs.len() >= 2
                && orgs.contains(HUB_GROUP)
                && orgs.iter().all(|o| {
                    *o == HUB_GROUP || *o == "system:nodes" || o.starts_with("openyurt:tenant:")
                });
            let tunnel = orgs.len() == 1
                && orgs.contains(TUNNEL_GROUP)
                && (req.common_name == "tunnel-proxy-client"
                    || req.common_name == "tunnel-agent-client");
            if hub {
                Some("AutoApproved: yurthub client certificate")
            } else if tunnel {
                Some("AutoApproved: yurt tunnel client certificate")
            } else {
                None
            }
        }
        SERVING_SIGNER if usages_are(usages, "server auth") => {
            (node_cn && orgs.len() == 1 && orgs.contains("system:nodes") && req.alt_names > 0)
                .then_some("AutoApproved: OpenYurt TLS server certificate")
        }
        _ => None,
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
    let Some(reason) = approval_reason(&spec.signer_name, &usages, &requested) else {
        return Ok(Action::await_change());
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
        reason,
        "certificate request approved"
    );
    Ok(Action::await_change())
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

/// Runs until `shutdown`.
pub async fn run(client: kube::Client, metrics: ManagerMetrics, shutdown: CancellationToken) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(Ctx { client, metrics }))
        .for_each(|r| super::log_stream_error(NAME, r))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn req(cn: &str, orgs: &[&str], sans: usize) -> Requested {
        Requested {
            common_name: cn.to_owned(),
            organizations: s(orgs),
            alt_names: sans,
        }
    }

    const CLIENT: &[&str] = &["digital signature", "key encipherment", "client auth"];
    const SERVER: &[&str] = &["digital signature", "server auth"];

    #[test]
    fn openyurt_requests_are_approved_and_nothing_else() {
        let hub = req(
            "system:node:edge-1",
            &["system:nodes", "openyurt:yurthub"],
            0,
        );
        assert!(approval_reason(CLIENT_SIGNER, &s(CLIENT), &hub).is_some());
        let tenant = req(
            "system:node:e",
            &["openyurt:yurthub", "openyurt:tenant:t1"],
            0,
        );
        assert!(approval_reason(CLIENT_SIGNER, &s(CLIENT), &tenant).is_some());
        // A plain kubelet client request is kube-controller-manager's business.
        let kubelet = req("system:node:edge-1", &["system:nodes"], 0);
        assert!(approval_reason(CLIENT_SIGNER, &s(CLIENT), &kubelet).is_none());
        // An extra group, a wrong usage, a wrong signer: refused.
        let admin = req("system:node:e", &["openyurt:yurthub", "system:masters"], 0);
        assert!(approval_reason(CLIENT_SIGNER, &s(CLIENT), &admin).is_none());
        assert!(
            approval_reason(
                CLIENT_SIGNER,
                &s(&["digital signature", "client auth", "server auth"]),
                &hub
            )
            .is_none()
        );
        assert!(approval_reason("example.com/other", &s(CLIENT), &hub).is_none());

        let server = req("system:node:edge-1", &["system:nodes"], 2);
        assert!(approval_reason(SERVING_SIGNER, &s(SERVER), &server).is_some());
        assert!(
            approval_reason(
                SERVING_SIGNER,
                &s(SERVER),
                &req("system:node:e", &["system:nodes"], 0)
            )
            .is_none()
        );
        assert!(approval_reason(SERVING_SIGNER, &s(CLIENT), &server).is_none());

        for cn in ["tunnel-proxy-client", "tunnel-agent-client"] {
            assert!(
                approval_reason(
                    CLIENT_SIGNER,
                    &s(CLIENT),
                    &req(cn, &["openyurt:yurttunnel"], 0)
                )
                .is_some()
            );
        }
        assert!(
            approval_reason(
                CLIENT_SIGNER,
                &s(CLIENT),
                &req("tunnel-other", &["openyurt:yurttunnel"], 0)
            )
            .is_none()
        );
    }

    #[test]
    fn requests_are_read_from_pem() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["edge-1".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:edge-1");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let csr = params.serialize_request(&key).expect("csr");
        let pem = csr.pem().expect("pem");
        let r = parse(pem.as_bytes()).expect("parse");
        assert_eq!(r.common_name, "system:node:edge-1");
        assert_eq!(r.organizations, vec!["system:nodes".to_owned()]);
        assert_eq!(r.alt_names, 1);
        assert!(parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(parse(b"garbage").is_err());
    }
}
