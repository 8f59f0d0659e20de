//! `yurt adm` (OpenYurt's `yurtadm`): what an administrator runs against a cluster to
//! bring nodes in and out: bootstrap tokens, the same objects `kubeadm token` makes and
//! reads ([`token`]), token discovery ([`discovery`]), joining a host ([`join`]) and resetting it
//! ([`reset`]), and the node servant that converts a joined node to an edge node and
//! back ([`servant`]), with an edge node's tunnel agent ([`tunnel`]).
//!
//! Everything here talks to the cluster only through the Kubernetes API, so it works
//! on clusters openyurt-rs did not create.

pub mod convert;
pub mod discovery;
pub mod join;
pub mod reset;
pub mod servant;
pub mod token;
pub mod tunnel;
