//! Pooled clients that follow the hub's client certificate.
//!
//! The API server sees a client certificate once, at the TLS handshake, so a new
//! identity (a renewed or a newly issued certificate) shows only on new connections.
//! hyper-util's pooled client cannot be told to stop reusing a connection, so when the
//! certificate is replaced the whole client is: requests already sent finish on the old
//! one's connections, whose idle ones close when it is dropped, and every later request
//! goes out on the new one. The HTTP/2 pool ([`super::pool::H2Pool`]) does the same per
//! connection.

use std::sync::{Arc, Mutex};

use crate::certificate::CertSlot;

/// A client rebuilt whenever the certificate in `identity` is replaced.
pub(crate) struct Rotating<C> {
    identity: Option<Arc<CertSlot>>,
    make: Box<dyn Fn() -> C + Send + Sync>,
    current: Mutex<(u64, C)>,
}

impl<C> std::fmt::Debug for Rotating<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotating")
            .field("follows_identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: Clone> Rotating<C> {
    /// A client from `make`, made again after each change of `identity` (never, without).
    pub(crate) fn new(
        identity: Option<Arc<CertSlot>>,
        make: impl Fn() -> C + Send + Sync + 'static,
    ) -> Self {
        let generation = identity.as_ref().map_or(0, |i| i.generation());
        let first = make();
        Self {
            identity,
            make: Box::new(make),
            current: Mutex::new((generation, first)),
        }
    }

    /// The client for the identity held now.
    pub(crate) fn get(&self) -> C {
        let generation = self.identity.as_ref().map_or(0, |i| i.generation());
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != generation {
            tracing::info!(
                "client certificate replaced: new upstream connections present the new one"
            );
            *current = (generation, (self.make)());
        }
        current.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_client_is_made_again_only_after_the_certificate_is_replaced() {
        let slot = Arc::new(CertSlot::default());
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let rotating = Rotating::new(Some(slot.clone()), move || {
            counter.fetch_add(1, Ordering::SeqCst)
        });
        assert_eq!((rotating.get(), rotating.get()), (0, 0));
        let ca = yurt_core::pki::CertificateAuthority::generate("t").unwrap();
        let issued = ca
            .issue(&yurt_core::pki::CertSpec::client("system:node:n", &[]))
            .unwrap();
        let loaded = crate::certificate::Loaded::from_pem(
            "t",
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .unwrap();
        slot.set(loaded.clone());
        assert_eq!((rotating.get(), rotating.get()), (1, 1));
        slot.set(loaded);
        assert_eq!(rotating.get(), 2);
        assert_eq!(made.load(Ordering::SeqCst), 3);
        let fixed = Rotating::new(None, || 7);
        assert_eq!(fixed.get(), 7);
    }
}
