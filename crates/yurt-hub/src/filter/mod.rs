//! Response filters, applied per client before it sees a response, online or offline
//! (OpenYurt's servicetopology, masterservice, ...). Each filter says which components
//! and resources it applies to and rewrites or drops one object at a time; for a list
//! the hub filters every item, for a watch every event (an event filtered to nothing is
//! sent as DELETED).

pub mod builtin;
pub mod view;

use crate::codec::RawObject;
use crate::request::Gvr;

/// The filters' names, as `yurt-hub-cfg` keys that add clients to them.
pub const FILTER_NAMES: &[&str] = &[
    "servicetopology",
    "masterservice",
    "discardcloudservice",
    "inclusterconfig",
    "nodeportisolation",
];

/// One response filter.
pub trait Filter: Send + Sync {
    /// The filter's name (`servicetopology`).
    fn name(&self) -> &'static str;
    /// Whether it applies to responses of `gvr` sent to `component`.
    fn applies(&self, component: &str, gvr: &Gvr) -> bool;
    /// Rewrites `obj`, or drops it (`None`).
    fn apply(&self, obj: RawObject) -> Option<RawObject>;
}

/// The filters in force.
#[derive(Default)]
pub struct Filters {
    filters: Vec<Box<dyn Filter>>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|x| x.name()))
            .finish()
    }
}

impl Filters {
    /// No filters.
    pub fn none() -> Self {
        Self::default()
    }

    /// These filters, applied in order.
    pub fn new(filters: Vec<Box<dyn Filter>>) -> Self {
        Self { filters }
    }

    /// Whether any filter applies to `gvr` for `component`.
    pub fn applies(&self, component: &str, gvr: &Gvr) -> bool {
        self.filters.iter().any(|f| f.applies(component, gvr))
    }

    /// Runs every applicable filter over `obj`.
    pub fn apply(&self, component: &str, gvr: &Gvr, obj: RawObject) -> Option<RawObject> {
        self.filters
            .iter()
            .filter(|f| f.applies(component, gvr))
            .try_fold(obj, |o, f| f.apply(o))
    }
}
