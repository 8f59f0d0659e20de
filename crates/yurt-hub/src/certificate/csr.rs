//! Certificates asked of the cluster by CSR and renewed before they expire (see the
//! module above): the pod-facing port's serving certificate, and the hub's own client
//! certificate when it starts from kubelet's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// The file holding the current serving certificate chain and key.
pub const CURRENT_FILE: &str = "yurthub-server-current.pem";
/// The signer of client certificates for the API server.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// Usages of a client request (OpenYurt's `clientRequiredUsages`).
pub const CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
/// The file holding the hub's own current client certificate and key (OpenYurt's name).
pub const CLIENT_CURRENT_FILE: &str = "yurthub-current.pem";
/// The groups of the hub's own client certificate.
pub const CLIENT_ORGANIZATIONS: [&str; 2] = ["system:nodes", "openyurt:yurthub"];

/// What a certificate kept by CSR is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The pod-facing port's serving certificate: `system:node:<node>` in
    /// `system:nodes`, signer `kubernetes.io/kubelet-serving`, the port's address.
    Serving,
    /// The hub's own client certificate: `system:node:<node>` in `system:nodes` and
    /// `openyurt:yurthub`, signer `kubernetes.io/kube-apiserver-client`, no address.
    Client,
}

impl Purpose {
    /// The CSR's signer.
    pub fn signer(self) -> &'static str {
        match self {
            Self::Serving => SIGNER,
            Self::Client => CLIENT_SIGNER,
        }
    }

    /// The CSR's usages.
    pub fn usages(self) -> &'static [&'static str] {
        match self {
            Self::Serving => &USAGES,
            Self::Client => &CLIENT_USAGES,
        }
    }

    /// The subject's organizations.
    pub fn organizations(self) -> &'static [&'static str] {
        match self {
            Self::Serving => &["system:nodes"],
            Self::Client => &CLIENT_ORGANIZATIONS,
        }
    }

    /// The file the certificate and key are kept in.
    pub fn file(self) -> &'static str {
        match self {
            Self::Serving => CURRENT_FILE,
            Self::Client => CLIENT_CURRENT_FILE,
        }
    }

    /// Its name in logs and errors.
    pub fn what(self) -> &'static str {
        match self {
            Self::Serving => "serving certificate",
            Self::Client => "client certificate",
        }
    }
}

/// How a certificate is requested.
#[derive(Debug, Clone)]
pub struct CsrRequest {
    /// What it is for.
    pub purpose: Purpose,
    /// This node: the subject is `system:node:<node>`.
    pub node: String,
    /// Addresses the certificate names (the pod-facing address; none for a client).
    pub ips: Vec<IpAddr>,
    /// Where the current certificate and key are kept.
    pub dir: PathBuf,
    /// How long one request may wait to be approved and issued before it is given up
    /// and a new one made.
    pub issue_timeout: Duration,
    /// The first pause after a failed request (doubled after each further failure).
    pub poll_interval: Duration,
    /// The longest pause between failed attempts.
    pub max_backoff: Duration,
}

/// A certificate from the cluster, kept in a [`CertSlot`].
#[derive(Debug)]
pub struct CsrCertificate {
    request: CsrRequest,
    slot: Arc<CertSlot>,
    /// Whether the slot holds a certificate this keeper obtained (or found stored),
    /// rather than the stand-in it was seeded with.
    own: AtomicBool,
}

impl CsrCertificate {
    /// A certificate for `request`, starting from the stored one if it is still valid
    /// and is the one asked for (an unreadable, expired or other file is ignored: a new
    /// one is asked for).
    pub fn new(request: CsrRequest) -> Self {
        let slot = Arc::new(CertSlot::default());
        let path = request.dir.join(request.purpose.file());
        let what = request.purpose.what();
        match std::fs::read(&path) {
            Ok(pem) => match Loaded::from_pem(what, &pem, &pem) {
                Ok(loaded) if !fits(&loaded, &request) => {
                    tracing::info!(file = %path.display(), "stored {what} names another node, other groups or other addresses: asking for a new one")
                }
                Ok(loaded) if loaded.valid_at(unix_now()) => slot.set(loaded),
                Ok(_) => {
                    tracing::info!(file = %path.display(), "stored {what} expired: asking for a new one")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "stored {what} unusable: asking for a new one")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "stored {what} unreadable: asking for a new one")
            }
        }
        let own = AtomicBool::new(slot.get().is_some());
        Self { request, slot, own }
    }

    /// Puts `stand_in` in the slot while it holds nothing of its own: the hub's client
    /// certificate starts as kubelet's until its own is issued.
    #[must_use]
    pub fn with_stand_in(self, stand_in: Option<Loaded>) -> Self {
        if let Some(loaded) = stand_in {
            self.stand_in(loaded);
        }
        self
    }

    /// Puts `loaded` in the slot if it holds nothing of its own and not that
    /// certificate already (kubelet's rotated one replaces its last while the hub waits
    /// for its own).
    pub fn stand_in(&self, loaded: Loaded) {
        if self.own.load(Ordering::Acquire) {
            return;
        }
        let same = self
            .slot
            .get()
            .is_some_and(|current| current.key.cert == loaded.key.cert);
        if !same {
            self.slot.set(loaded);
        }
    }

    /// The slot the TLS endpoint reads.
    pub fn slot(&self) -> Arc<CertSlot> {
        self.slot.clone()
    }

    /// Whether it holds a valid certificate of its own (not a stand-in).
    pub fn ready(&self) -> bool {
        self.own.load(Ordering::Acquire) && self.slot.ready()
    }

    /// Keeps a valid certificate in the slot until `shutdown`: asks for one when there is
    /// none, and renews at 70–90 % of its lifetime, through whichever of `clients` (one
    /// per API server) answers.
    pub async fn run(self: Arc<Self>, clients: Vec<kube::Client>, shutdown: CancellationToken) {
        let mut backoff = self.request.poll_interval;
        // A stored certificate: kubelet's rule alone (the floor is for one just issued).
        let mut renew_at = self
            .slot
            .get()
            .filter(|_| self.own.load(Ordering::Acquire))
            .map(|l| l.renew_at(renewal_fraction(), l.not_before));
        let what = self.request.purpose.what();
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
            let now = unix_now();
            let outcome = outcome.and_then(|loaded| {
                // Less than this left at issue would be renewed at once, again and again:
                // a failure, so the backoff applies.
                const SHORTEST_USEFUL: i64 = 10;
                if loaded.valid_at(now) && loaded.not_after - now >= SHORTEST_USEFUL {
                    Ok(loaded)
                } else {
                    Err(CertificateError::Request(format!(
                        "the issued certificate is not valid now or for less than {SHORTEST_USEFUL} s (valid from {} to {}, now {now}, Unix seconds): is the signer's duration shorter than its five-minute backdating?",
                        loaded.not_before, loaded.not_after
                    )))
                }
            });
            match outcome {
                Ok(loaded) => {
                    tracing::info!(node = %self.request.node, not_after = loaded.not_after, "{what} issued");
                    renew_at = Some(loaded.renew_at(renewal_fraction(), now));
                    self.slot.set(loaded);
                    self.own.store(true, Ordering::Release);
                    backoff = self.request.poll_interval;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "{what} not obtained");
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

    /// One request: a new key, a CSR, wait for it to be issued; the result is stored
    /// (chain, then key) before it is used.
    async fn obtain(&self, client: &kube::Client) -> Result<Loaded, CertificateError> {
        let (loaded, pem) = self.request_once(client).await?;
        store(&self.request.dir, self.request.purpose.file(), &pem)?;
        Ok(loaded)
    }

    /// Asks for one certificate and waits for it, without storing or using it:
    /// the certificate with its key, and both as PEM (chain, then key). `yurt bench adm`
    /// times this.
    ///
    /// # Errors
    /// The request could not be made, or was not issued in time.
    pub async fn request_once(
        &self,
        client: &kube::Client,
    ) -> Result<(Loaded, Vec<u8>), CertificateError> {
        let purpose = self.request.purpose;
        let (csr_pem, key_pem) = new_request(
            &self.request.node,
            purpose.organizations(),
            &self.request.ips,
        )?;
        let mut pem = request_certificate(
            client,
            purpose.signer(),
            purpose.usages(),
            &csr_pem,
            self.request.issue_timeout,
        )
        .await?;
        let loaded = Loaded::from_pem(purpose.what(), &pem, key_pem.as_bytes())?;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(key_pem.as_bytes());
        Ok((loaded, pem))
    }
}

/// Whether a stored certificate is the one `request` asks for: subject
/// `system:node:<node>`, exactly its groups and exactly its addresses.
fn fits(loaded: &Loaded, request: &CsrRequest) -> bool {
    let Some(leaf) = loaded.key.cert.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    let mut ips: Vec<IpAddr> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut wanted = request.ips.clone();
    ips.sort();
    wanted.sort();
    let mut organizations: Vec<&str> = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    let mut wanted_organizations = request.purpose.organizations().to_vec();
    organizations.sort_unstable();
    wanted_organizations.sort_unstable();
    common_name == Some(format!("system:node:{}", request.node).as_str())
        && ips == wanted
        && organizations == wanted_organizations
}

/// A new ECDSA P-256 key and a PEM CSR for `system:node:<node>` in `organizations`,
/// naming `ips` (none: a client certificate's request): `(CSR, key)`, both PEM.
///
/// # Errors
/// The key or request could not be made.
pub fn new_request(
    node: &str,
    organizations: &[&str],
    ips: &[IpAddr],
) -> Result<(String, String), CertificateError> {
    let fail = |e: rcgen::Error| CertificateError::Request(format!("building the CSR: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    // rcgen keeps one value per attribute type: a second organization goes in under the
    // raw OID of organizationName (2.5.4.10), as yurt-core's PKI does.
    match organizations {
        [] => {}
        [first] | [first, _] => {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *first);
            if let [_, second] = organizations {
                params.distinguished_name.push(
                    rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
                    rcgen::DnValue::Utf8String((*second).to_owned()),
                );
            }
        }
        _ => {
            return Err(CertificateError::Request(format!(
                "at most two organizations are supported, got {organizations:?}"
            )));
        }
    }
    params.subject_alt_names = ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.pem().map_err(fail)?, key.serialize_pem()))
}

/// Creates a CSR (`csr-*`) for `csr_pem` with `signer` and `usages` and waits, watching
/// it, until it carries a certificate (returned, PEM) or is denied or failed, for at most
/// `timeout`. Errors name the CSR.
///
/// # Errors
/// [`CertificateError::Request`]: not created, denied, failed, or not issued in time.
pub async fn request_certificate(
    client: &kube::Client,
    signer: &str,
    usages: &[&str],
    csr_pem: &str,
    timeout: Duration,
) -> Result<Vec<u8>, CertificateError> {
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client.clone());
    let object = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("csr-".to_owned()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: signer.to_owned(),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .map_err(|e| CertificateError::Request(format!("creating a {signer} CSR: {e}")))?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, signer, "certificate requested; waiting for approval and signing");
    tokio::time::timeout(timeout, wait_issued(&api, &name))
        .await
        .map_err(|_| {
            CertificateError::Request(format!(
                "CSR {name} was not issued within {timeout:?} (is it approved? `kubectl get csr {name}`)"
            ))
        })?
}

/// The certificate of `csr` if issued, an error if denied or failed, `None` while pending.
fn verdict(
    name: &str,
    csr: CertificateSigningRequest,
) -> Option<Result<Vec<u8>, CertificateError>> {
    let status = csr.status.unwrap_or_default();
    if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
        return Some(Ok(cert.0));
    }
    status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        .map(|c| {
            Err(CertificateError::Request(format!(
                "CSR {name} was {}: {}",
                c.type_.to_lowercase(),
                c.message.unwrap_or_default()
            )))
        })
}

/// Waits for CSR `name` to be decided: reads it, then watches it from that version, and
/// again after a watch ends or fails (a restarting API server, an expired version).
async fn wait_issued(
    api: &kube::Api<CertificateSigningRequest>,
    name: &str,
) -> Result<Vec<u8>, CertificateError> {
    use futures_util::StreamExt as _;
    let retry = Duration::from_secs(1);
    loop {
        let version = match api.get(name).await {
            Ok(csr) => {
                let version = csr.metadata.resource_version.clone().unwrap_or_default();
                if let Some(decided) = verdict(name, csr) {
                    return decided;
                }
                version
            }
            Err(e) => {
                tracing::debug!(csr = %name, error = %e, "reading the CSR");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let params = kube::api::WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(290);
        let stream = match api.watch(&params, &version).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(csr = %name, error = %e, "watching the CSR");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let watched = tokio::time::Instant::now();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(kube::api::WatchEvent::Added(csr) | kube::api::WatchEvent::Modified(csr)) => {
                    if let Some(decided) = verdict(name, csr) {
                        return decided;
                    }
                }
                Ok(kube::api::WatchEvent::Deleted(_)) => {
                    return Err(CertificateError::Request(format!(
                        "CSR {name} was deleted before it was issued"
                    )));
                }
                // An expired version or a broken stream: read it again, then watch anew.
                Ok(kube::api::WatchEvent::Error(_)) | Err(_) => break,
                Ok(kube::api::WatchEvent::Bookmark(_)) => {}
            }
        }
        // A watch that ends at once (a proxy that cuts streams) must not turn this into
        // a busy loop of reads and watches.
        if watched.elapsed() < retry {
            tokio::time::sleep(retry).await;
        }
    }
}

/// Writes the certificate and key atomically to `dir/file`, readable by root only.
fn store(dir: &Path, file: &str, pem: &[u8]) -> Result<(), CertificateError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CertificateError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{file}.tmp"));
    let path = dir.join(file);
    // A leftover of an interrupted write keeps its mode when opened: start afresh.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
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
