//! The manager's controllers and the `--controllers` selection (upstream's syntax:
//! `*` for all default controllers, `name` to add one, `-name` to remove one).

pub mod csrapprover;
pub mod daemonpodupdater;
pub mod nodepool;
pub mod podbinding;
pub mod servicetopology;
pub mod yurtappdaemon;
pub mod yurtappset;
pub mod yurtstaticset;

use std::collections::BTreeSet;

use kube::runtime::controller;

/// Logs what a controller's run stream reports besides reconciles: a failing watch
/// (the watcher retries on its own, but a kind the manager cannot list or decode
/// would otherwise fail silently). Reconcile errors are logged by each error policy.
pub(crate) async fn log_stream_error<T, E1, E2>(
    name: &'static str,
    result: Result<T, controller::Error<E1, E2>>,
) where
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    match result {
        Err(controller::Error::QueueError(e)) => {
            tracing::warn!(controller = name, error = %e, "watch failed; retrying");
        }
        Err(controller::Error::RunnerError(e)) => {
            tracing::warn!(controller = name, error = %e, "controller runner failed");
        }
        _ => {}
    }
}

/// Every controller this manager has, by `--controllers` name.
pub const ALL: &[&str] = &[
    csrapprover::NAME,
    daemonpodupdater::NAME,
    nodepool::NAME,
    podbinding::NAME,
    servicetopology::NAME,
    yurtappdaemon::NAME,
    yurtappset::NAME,
    yurtstaticset::NAME,
];

/// Upstream names and short aliases accepted for ours.
fn canonical(name: &str) -> Option<&'static str> {
    match name {
        "nodepool" | "nodepool-controller" => Some(nodepool::NAME),
        "podbinding" | "pod-binding-controller" | "autonomy" => Some(podbinding::NAME),
        "servicetopology"
        | "service-topology-endpoints-controller"
        | "service-topology-endpointslice-controller" => Some(servicetopology::NAME),
        "csrapprover" | "csr-approver-controller" => Some(csrapprover::NAME),
        "daemonpodupdater" | "daemon-pod-updater-controller" => Some(daemonpodupdater::NAME),
        "yurtappset" | "yurt-app-set-controller" => Some(yurtappset::NAME),
        "yurtappdaemon" | "yurt-app-daemon-controller" => Some(yurtappdaemon::NAME),
        "yurtstaticset" | "yurt-static-set-controller" => Some(yurtstaticset::NAME),
        _ => None,
    }
}

/// The controllers a `--controllers` list enables.
///
/// # Errors
/// An unknown controller name.
pub fn select(list: &[String]) -> Result<BTreeSet<&'static str>, String> {
    let mut on = BTreeSet::new();
    let mut off = BTreeSet::new();
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "*" {
            on.extend(ALL.iter().copied());
            continue;
        }
        let (negated, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item),
        };
        let name = canonical(name)
            .ok_or_else(|| format!("unknown controller {name:?}; known: {}", ALL.join(", ")))?;
        if negated {
            off.insert(name);
        } else {
            on.insert(name);
        }
    }
    Ok(on.difference(&off).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selection_follows_upstream_syntax() {
        assert_eq!(select(&s(&["*"])).expect("ok").len(), ALL.len());
        let some = select(&s(&["*", "-nodepool"])).expect("ok");
        assert!(!some.contains(nodepool::NAME));
        assert!(some.contains(podbinding::NAME));
        let one = select(&s(&["nodepool-controller"])).expect("ok");
        assert_eq!(one.into_iter().collect::<Vec<_>>(), vec![nodepool::NAME]);
        assert!(select(&s(&["*", "bogus"])).is_err());
        assert!(select(&s(&[])).expect("ok").is_empty());
    }
}
