//! Leader election through a `coordination.k8s.io/v1` Lease, as controller-runtime does
//! for OpenYurt's yurt-manager: one replica runs the controllers, the others wait and
//! take over when the holder stops renewing.
//!
//! Written here rather than taken from a crate: it is a short loop over the Lease API,
//! and the published helpers pull in a second HTTP stack or lack optimistic locking.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How the election runs.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (written as the holder).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub retry_period: Duration,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Whether `lease` is held by someone else and still valid.
fn held_by_other(lease: &Lease, identity: &str) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return false;
    };
    if holder == identity {
        return false;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return false;
    };
    let age = jiff::Timestamp::now().duration_since(renewed.0);
    age.as_secs() < duration
}

/// One attempt to acquire or renew. `Ok(true)` when this replica holds the lease.
async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if held_by_other(&lease, &cfg.identity) {
                return Ok(false);
            }
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(now());
            // `replace` carries the resourceVersion we read: a concurrent writer wins,
            // and we learn it as a 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs the election until `shutdown`; the returned receiver says whether this replica
/// leads. Leadership is given up (the receiver turns `false`) as soon as a renewal
/// fails for longer than the lease lasts, so two replicas never both think they lead
/// beyond one lease period.
pub fn run(
    client: kube::Client,
    cfg: LeaseConfig,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            match try_acquire(&api, &cfg).await {
                Ok(true) => {
                    if !*tx.borrow() {
                        tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
                    }
                    last_renewed = Some(tokio::time::Instant::now());
                    let _ = tx.send(true);
                }
                Ok(false) => {
                    if *tx.borrow() {
                        tracing::warn!(lease = %cfg.name, "leadership lost to another replica");
                    }
                    last_renewed = None;
                    let _ = tx.send(false);
                }
                Err(e) => {
                    tracing::warn!(lease = %cfg.name, error = %e, "lease renewal failed");
                    let expired =
                        last_renewed.is_none_or(|t| t.elapsed() >= cfg.lease_duration * 2 / 3);
                    if expired && *tx.borrow() {
                        tracing::warn!(lease = %cfg.name, "could not renew in time; stepping down");
                        let _ = tx.send(false);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(cfg.retry_period) => {}
            }
        }
        // Release so a successor need not wait for the lease to expire.
        if *tx.borrow()
            && let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
        }
        let _ = tx.send(false);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, age_secs: i64, duration: i32) -> Lease {
        let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(age_secs);
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_expired_or_ours() {
        assert!(held_by_other(&lease(Some("b"), 3, 15), "a"));
        assert!(!held_by_other(&lease(Some("b"), 20, 15), "a"), "expired");
        assert!(!held_by_other(&lease(Some("a"), 3, 15), "a"), "ours");
        assert!(!held_by_other(&lease(None, 3, 15), "a"), "released");
        assert!(!held_by_other(&lease(Some(""), 3, 15), "a"), "released");
    }
}
