//! What installing the manager into a cluster takes: the rights its controllers and
//! webhooks use ([`rbac`]), and the objects `kubectl apply -f -` needs to run it as a
//! Deployment in a cluster OpenYurt did not create ([`manifests`],
//! `yurt manager manifests`). `yurt up` grants the same rights to the manager it runs
//! on the cloud host, so both ways of running it are held to one list.

pub mod manifests;
pub mod rbac;
