//! OpenYurt's API surface: the labels and annotations OpenYurt components agree on.
//!
//! The CRD types (`apps.openyurt.io`, `iot.openyurt.io`, `raven.openyurt.io`) join this
//! crate with the orchestration milestone. This crate does no I/O.

pub mod labels;
