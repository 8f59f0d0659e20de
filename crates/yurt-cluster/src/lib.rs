//! Local fleet provisioning: a real upstream Kubernetes (built once from Debian's
//! `kubernetes` source and cached) with a cloud host and edge hosts as Linux network
//! namespaces behind a router, real certificates, images built here (imported into each
//! node, and pushed to the fleet's own registry, [`registry`]), and supervised processes.
//! Used by `yurt up`/`down`/`fleet` and by the test fixture.
//!
//! Layer: a library beside the components; it talks to the cluster only through the
//! Kubernetes API.
//!
//! ```no_run
//! # async fn demo() -> yurt_cluster::Result<()> {
//! use std::sync::Arc;
//! use yurt_cluster::{MachineConfig, UpOptions, progress::LineReporter};
//! let fleet = yurt_cluster::up(
//!     &MachineConfig::default(),
//!     std::path::Path::new("/var/lib/yurt/default"),
//!     UpOptions::default(),
//!     Arc::new(LineReporter),
//! )
//! .await?;
//! println!("kubeconfig: {}", fleet.admin_kubeconfig().display());
//! # Ok(()) }
//! ```

pub mod cgroup;
pub mod cmd;
pub mod components;
pub mod error;
pub mod fleet;
pub mod image;
pub mod lock;
pub mod mountns;
pub mod mounts;
pub mod netns;
pub mod network;
pub mod packages;
pub mod paths;
pub mod pki;
pub mod probe;
pub mod process;
pub mod progress;
pub mod registry;
pub mod sample;
pub mod slots;
pub mod spec;
pub mod state;
pub mod upstream;

pub use error::{Error, Result};
pub use fleet::{Fleet, MachineConfig, UpOptions, down, down_all, up};
pub use spec::{EdgeApi, FleetSpec, HubUpstreamTimings, NetMode, Timing};
pub use yurt_core::units;
