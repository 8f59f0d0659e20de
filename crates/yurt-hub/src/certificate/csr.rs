//! The pod-facing port's serving certificate, asked of the cluster by CSR and renewed
//! before it expires (see the module above).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

use super::{CertSlot, CertificateError, Loaded, renewal_fraction, unix_now};

/// The signer of node serving certificates (kube-controller-manager signs, the
/// manager's csrapprover approves a hub's for its own node).
pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Usages kube-controller-manager 1.20 requires of a kubelet-serving request.
pub const USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];
/// The file holding the current certificate chain and key.
pub const CURRENT_FILE: &str = "yurthub-server-current.pem";

/// How the serving certificate is requested.
#[derive(Debug, Clone)]
pub struct ServingRequest {
    /// This node: the subject is `system:node:<node>`.
    pub node: String,
    /// Addresses the certificate names (the pod-facing address).
    pub ips: Vec<IpAddr>,
    /// Where the current certificate and key are kept.
    pub dir: PathBuf,
    /// How long one request may wait to be approved and issued before it is given up
    /// and a new one made.
    pub issue_timeout: Duration,
    /// Pause between polls of a pending request, and the first pause after a failure.
    pub poll_interval: Duration,
    /// The longest pause between failed attempts.
    pub max_backoff: Duration,
}

/// The serving certificate from the cluster, kept in a [`CertSlot`].
#[derive(Debug)]
pub struct ServingCertificate {
    request: ServingRequest,
    slot: Arc<CertSlot>,
}

impl ServingCertificate {
    /// A serving certificate for `request`, starting from the stored one if it is still
    /// valid (an unreadable or expired file is ignored: a new one is asked for).
    pub fn new(request: ServingRequest) -> Self {
        let slot = Arc::new(CertSlot::default());
        let path = request.dir.join(CURRENT_FILE);
        match std::fs::read(&path) {
            Ok(pem) => match Loaded::from_pem("stored serving certificate", &pem, &pem) {
                Ok(loaded) if loaded.valid_at(unix_now()) => slot.set(loaded),
                Ok(_) => {
                    tracing::info!(file = %path.display(), "stored serving certificate expired: asking for a new one")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "stored serving certificate unusable: asking for a new one")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "stored serving certificate unreadable: asking for a new one")
            }
        }
        Self { request, slot }
    }

    /// The slot the TLS server reads.
    pub fn slot(&self) -> Arc<CertSlot> {
        self.slot.clone()
    }

    /// Keeps a valid certificate in the slot until `shutdown`: asks for one when there is
    /// none, and renews at 70–90 % of its lifetime, through whichever of `clients` (one
    /// per API server) answers.
    pub async fn run(self: Arc<Self>, clients: Vec<kube::Client>, shutdown: CancellationToken) {
        let mut backoff = self.request.poll_interval;
        let mut renew_at = self.slot.get().map(|l| l.renew_at(renewal_fraction()));
        loop {
            if let Some(at) = renew_at {
                let wait = u64::try_from(at - unix_now()).unwrap_or(0);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(wait)) => {}
                }
            }
            let mut outcome = Err(CertificateError::Request("no API server configured".into()));
            for client in &clients {
                outcome = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = self.obtain(client) => r,
                };
                if outcome.is_ok() {
                    break;
                }
            }
            match outcome {
                Ok(loaded) => {
                    tracing::info!(node = %self.request.node, not_after = loaded.not_after, "serving certificate issued");
                    renew_at = Some(loaded.renew_at(renewal_fraction()));
                    self.slot.set(loaded);
                    backoff = self.request.poll_interval;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "serving certificate not obtained");
                    renew_at = None;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.request.max_backoff);
                }
            }
        }
    }

    /// One request: a new key, a CSR, wait for it to be issued, store the result.
    async fn obtain(&self, client: &kube::Client) -> Result<Loaded, CertificateError> {
        let (csr_pem, key_pem) = make_request(&self.request)?;
        let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client.clone());
        let object = CertificateSigningRequest {
            metadata: ObjectMeta {
                generate_name: Some("csr-".to_owned()),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(csr_pem.into_bytes()),
                signer_name: SIGNER.to_owned(),
                usages: Some(USAGES.iter().map(|u| (*u).to_owned()).collect()),
                ..CertificateSigningRequestSpec::default()
            },
            status: None,
        };
        let created = api
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| CertificateError::Request(format!("creating the serving CSR: {e}")))?;
        let name = created.metadata.name.unwrap_or_default();
        tracing::info!(csr = %name, "serving certificate requested; waiting for approval and signing");
        let cert_pem = tokio::time::timeout(
            self.request.issue_timeout,
            wait_issued(&api, &name, self.request.poll_interval),
        )
        .await
        .map_err(|_| {
            CertificateError::Request(format!(
                "CSR {name} was not issued within {:?} (is it approved? `kubectl get csr {name}`)",
                self.request.issue_timeout
            ))
        })??;
        let loaded = Loaded::from_pem("issued serving certificate", &cert_pem, key_pem.as_bytes())?;
        let mut both = cert_pem;
        if !both.ends_with(b"\n") {
            both.push(b'\n');
        }
        both.extend_from_slice(key_pem.as_bytes());
        store(&self.request.dir, &both)?;
        Ok(loaded)
    }
}

/// A new ECDSA P-256 key and a PEM CSR for `request`'s node and addresses.
fn make_request(request: &ServingRequest) -> Result<(String, String), CertificateError> {
    let fail = |e: rcgen::Error| CertificateError::Request(format!("building the CSR: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{}", request.node),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.subject_alt_names = request
        .ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.pem().map_err(fail)?, key.serialize_pem()))
}

/// Polls CSR `name` until it carries a certificate; a Denied or Failed condition ends it.
async fn wait_issued(
    api: &kube::Api<CertificateSigningRequest>,
    name: &str,
    interval: Duration,
) -> Result<Vec<u8>, CertificateError> {
    loop {
        match api.get(name).await {
            Ok(csr) => {
                let status = csr.status.unwrap_or_default();
                if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                    return Ok(cert.0);
                }
                if let Some(c) = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
                {
                    return Err(CertificateError::Request(format!(
                        "CSR {name} was {}: {}",
                        c.type_.to_lowercase(),
                        c.message.unwrap_or_default()
                    )));
                }
            }
            // A passing error (a restarting API server): ask again.
            Err(e) => tracing::debug!(csr = %name, error = %e, "polling the serving CSR"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Writes the certificate and key atomically, readable by root only.
fn store(dir: &Path, pem: &[u8]) -> Result<(), CertificateError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CertificateError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{CURRENT_FILE}.tmp"));
    let path = dir.join(CURRENT_FILE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(pem).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
