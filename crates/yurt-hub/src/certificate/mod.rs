//! The hub's certificates (reference/openyurt.md §2.12): the client certificate it shows
//! the API servers and the serving certificate of its pod-facing port, each held in a
//! [`CertSlot`] that rustls asks at every handshake, so a new certificate is used from
//! the next connection on, with no restart and no moment without one.
//!
//! - **Followed files** ([`FollowedFiles`]): the client certificate is read from files
//!   and read again whenever they change, so a hub given the kubelet's rotating
//!   `kubelet-client-current.pem` (OpenYurt's `kubeletcertificate` mode, what `yurtadm
//!   join` sets up) follows each rotation. A serving certificate given as files is
//!   followed the same way. A change that does not parse, or whose key does not match,
//!   is logged and the last good pair kept.
//! - **Serving certificate by CSR** ([`csr::ServingCertificate`]): without serving files,
//!   the hub asks the cluster for one, as OpenYurt's hub does: a new ECDSA key, a CSR
//!   for `system:node:<node>` in `system:nodes` with signer `kubernetes.io/kubelet-serving`
//!   and the pod-facing address as its SAN, made with the hub's own node identity (the
//!   manager's csrapprover approves it only for that node). The issued certificate and
//!   its key are stored in one file, written atomically; a stored one still valid is used
//!   at start. It is renewed at a random point between 70 % and 90 % of its lifetime
//!   (kubelet's rule), and the hub is not ready while it has no valid one.

pub mod csr;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// Certificate failures.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// PEM or DER that is not a usable certificate and key.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which certificate.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The cluster did not issue a certificate.
    #[error("{0}")]
    Request(String),
}

fn invalid(what: &str, reason: impl ToString) -> CertificateError {
    CertificateError::Invalid {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

/// A certificate with its key, ready for rustls, and when it is valid.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What rustls presents.
    pub key: Arc<CertifiedKey>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Loaded {
    /// Parses a certificate chain (leaf first) and its private key, checking that they
    /// belong together.
    ///
    /// # Errors
    /// [`CertificateError::Invalid`] naming `what`.
    pub fn from_pem(what: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(what, e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| invalid(what, "no certificate"))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| invalid(what, e))?;
        let validity = parsed.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(what, e))?;
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| invalid(what, e))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| invalid(what, format!("the key does not match the certificate: {e}")))?;
        Ok(Self {
            key: Arc::new(certified),
            not_before,
            not_after,
        })
    }

    /// Whether it is valid at `now` (Unix seconds).
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// When to renew it: `fraction` (0.7–0.9) of the way through its lifetime, kubelet's
    /// rule, but never before half of what is left at `now` has passed. The floor matters
    /// for short lifetimes: kube-controller-manager 1.20 backdates `notBefore` by five
    /// minutes, so a certificate signed for six minutes has one left and would otherwise
    /// be due for renewal the moment it is issued, again and again.
    pub fn renew_at(&self, fraction: f64, now: i64) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0);
        // Lifetimes are at most centuries: f64 holds them exactly enough.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let offset = (lifetime as f64 * fraction.clamp(0.0, 1.0)) as i64;
        let halfway = now + (self.not_after - now).max(0) / 2;
        (self.not_before + offset).max(halfway)
    }
}

/// A random point between 70 % and 90 % of a lifetime, as kubelet renews.
pub fn renewal_fraction() -> f64 {
    0.7 + 0.2 * fastrand::f64()
}

/// The certificate a TLS endpoint presents now; swapped whole. Each swap starts a new
/// generation: a client connection made with an older one is not reused for new
/// requests (the API server checks a client certificate at the handshake, so only a new
/// connection shows the new identity).
#[derive(Debug, Default)]
pub struct CertSlot {
    current: RwLock<Option<Loaded>>,
    generation: std::sync::atomic::AtomicU64,
}

impl CertSlot {
    /// A slot holding `loaded`.
    pub fn with(loaded: Loaded) -> Self {
        Self {
            current: RwLock::new(Some(loaded)),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many times what it holds was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What it holds.
    pub fn get(&self) -> Option<Loaded> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces what it holds.
    pub fn set(&self, loaded: Loaded) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(loaded);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether it holds a certificate valid now.
    pub fn ready(&self) -> bool {
        self.get().is_some_and(|l| l.valid_at(unix_now()))
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get().map(|l| l.key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get().map(|l| l.key)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A certificate and key read from files and read again when they change.
#[derive(Debug)]
pub struct FollowedFiles {
    what: &'static str,
    cert: PathBuf,
    key: PathBuf,
    slot: Arc<CertSlot>,
    last: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl FollowedFiles {
    /// Reads `cert` and `key` (one file may hold both).
    ///
    /// # Errors
    /// Unreadable files, or a pair that does not belong together.
    pub fn load(what: &'static str, cert: &Path, key: &Path) -> Result<Self, CertificateError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let loaded = Loaded::from_pem(what, &cert_pem, &key_pem)?;
        Ok(Self {
            what,
            cert: cert.to_owned(),
            key: key.to_owned(),
            slot: Arc::new(CertSlot::with(loaded)),
            last: std::sync::Mutex::new((cert_pem, key_pem)),
        })
    }

    /// The slot rustls reads.
    pub fn slot(&self) -> Arc<CertSlot> {
        self.slot.clone()
    }

    /// Reads the files again; swaps in a changed pair if it is valid.
    ///
    /// # Errors
    /// The files changed to something unusable (the last good pair stays).
    pub fn reload(&self) -> Result<bool, CertificateError> {
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.0 == cert_pem && last.1 == key_pem {
            return Ok(false);
        }
        let loaded = Loaded::from_pem(self.what, &cert_pem, &key_pem)?;
        tracing::info!(
            certificate = self.what,
            file = %self.cert.display(),
            not_after = loaded.not_after,
            "certificate changed on disk: using the new one from the next connection"
        );
        self.slot.set(loaded);
        *last = (cert_pem, key_pem);
        Ok(true)
    }

    /// Re-reads the files every `interval` until `shutdown`.
    pub async fn follow(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.reload() {
                // A rotation may be caught half-written: the next round reads it whole.
                tracing::warn!(certificate = self.what, error = %e, "keeping the last good certificate");
            }
        }
    }
}
