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
    /// How long the leader may go without a successful renewal (a call that fails or
    /// hangs counts as none) before it steps down; shorter than the lease, so it stops
    /// leading before another replica may take over.
    pub renew_deadline: Duration,
}

/// The other holder's lease as this replica last saw it change, timed by the local
/// monotonic clock: expiry is judged by how long it has looked unchanged here, never by
/// comparing another host's `renewTime` with this host's wall clock (client-go does the
/// same), so a replica whose clock runs ahead cannot steal a valid lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew_time: Option<String>,
    resource_version: Option<String>,
    at: tokio::time::Instant,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Whether `lease` is held by someone else and still valid, judged by when this replica
/// last saw it change (`observed`, updated here) and the local clock `now`.
fn held_by_other(
    lease: &Lease,
    identity: &str,
    observed: &mut Option<Observed>,
    now: tokio::time::Instant,
) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return false;
    };
    if holder == identity {
        return false;
    }
    let seen = Observed {
        holder: holder.to_owned(),
        renew_time: spec
            .renew_time
            .as_ref()
            .or(spec.acquire_time.as_ref())
            .map(|t| t.0.to_string()),
        resource_version: lease.metadata.resource_version.clone(),
        at: now,
    };
    let unchanged = observed.as_ref().is_some_and(|o| {
        (&o.holder, &o.renew_time, &o.resource_version)
            == (&seen.holder, &seen.renew_time, &seen.resource_version)
    });
    if !unchanged {
        *observed = Some(seen);
    }
    let since = observed.as_ref().map_or(now, |o| o.at);
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15));
    now.duration_since(since) < duration
}

/// One attempt to acquire or renew. `Ok(true)` when this replica holds the lease.
async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
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
            if held_by_other(&lease, &cfg.identity, observed, tokio::time::Instant::now()) {
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
/// leads. Leadership is given up (the receiver turns `false`) when no renewal has
/// succeeded within the renew deadline (each attempt is bounded by it too), which is
/// shorter than the lease, so two replicas never both think they lead.
pub fn run(
    client: kube::Client,
    cfg: LeaseConfig,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_renewed: Option<tokio::time::Instant> = None;
        let mut observed: Option<Observed> = None;
        loop {
            let attempt =
                tokio::time::timeout(cfg.renew_deadline, try_acquire(&api, &cfg, &mut observed))
                    .await
                    .unwrap_or_else(|_| {
                        Err(kube::Error::Service(
                            format!(
                                "no answer within the renew deadline {:?}",
                                cfg.renew_deadline
                            )
                            .into(),
                        ))
                    });
            match attempt {
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
                    let expired = last_renewed.is_none_or(|t| t.elapsed() >= cfg.renew_deadline);
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

    /// A lease renewed at `renewed` (another host's wall clock), as read at `rv`.
    fn lease(holder: Option<&str>, renewed: &str, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(rv.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn expiry_is_judged_by_local_observation_not_by_the_holders_clock() {
        let t0 = tokio::time::Instant::now();
        let s = Duration::from_secs;
        let mut seen = None;
        // Renewed "in 1970" by the holder's clock: a wall-clock comparison would call it
        // expired; first seen now, it is valid for a lease duration from here.
        let old = lease(Some("b"), "1970-01-01T00:00:00Z", "1");
        assert!(held_by_other(&old, "a", &mut seen, t0));
        assert!(held_by_other(&old, "a", &mut seen, t0 + s(14)));
        assert!(
            !held_by_other(&old, "a", &mut seen, t0 + s(15)),
            "unchanged for a lease: expired"
        );
        // Renewed again (new renewTime and resourceVersion): valid from when it was seen.
        let renewed = lease(Some("b"), "1970-01-01T00:00:10Z", "2");
        assert!(held_by_other(&renewed, "a", &mut seen, t0 + s(16)));
        assert!(held_by_other(&renewed, "a", &mut seen, t0 + s(30)));
        assert!(!held_by_other(&renewed, "a", &mut seen, t0 + s(31)));
        // Ours or released: free to take.
        let mut fresh = None;
        assert!(!held_by_other(
            &lease(Some("a"), "2026-01-01T00:00:00Z", "3"),
            "a",
            &mut fresh,
            t0
        ));
        assert!(!held_by_other(
            &lease(None, "2026-01-01T00:00:00Z", "3"),
            "a",
            &mut fresh,
            t0
        ));
        assert!(!held_by_other(
            &lease(Some(""), "2026-01-01T00:00:00Z", "3"),
            "a",
            &mut fresh,
            t0
        ));
    }
}
