//! Building blocks shared by every openyurt-rs component: validated names
//! ([`names`]), a small certificate authority ([`pki`]), signal-driven shutdown
//! ([`shutdown`]) and the admin server with `/healthz`, `/readyz` and `/metrics`
//! ([`admin`]).
//!
//! This crate is layer 0: it depends on no other `yurt-*` crate.
//!
//! ```no_run
//! use yurt_core::pki::{CertSpec, CertificateAuthority};
//! let ca = CertificateAuthority::generate("yurt-ca")?;
//! let admin = ca.issue(&CertSpec::client("kubernetes-admin", &["system:masters"]))?;
//! println!("{}", admin.cert_pem);
//! # Ok::<(), yurt_core::pki::Error>(())
//! ```

pub mod admin;
#[cfg(feature = "edge-binary")]
pub mod edge_binary;
pub mod go_duration;
pub mod host;
pub mod names;
pub mod pki;
pub mod runtime;
pub mod shutdown;
pub mod units;

pub use names::{NodeName, PoolName};
