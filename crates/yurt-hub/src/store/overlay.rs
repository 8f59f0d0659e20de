//! What readers must already see but the disk does not hold yet, kept in memory and
//! bounded.
//!
//! - Tombstones: deletes (watch DELETED events, objects a fresh LIST no longer has, rows
//!   found corrupt) that could not be committed (a full disk, an I/O error) or could not
//!   be queued (the write queue was full). Every read consults them, so an object gone
//!   upstream is never served from the cache; the writer applies them first on every
//!   round (deletes free space) and forgets them once applied.
//! - Shape markers: a cache write for some object of (component, resource, namespace)
//!   was dropped (the queue stayed full, or failed writes piled up past their bound), so
//!   the recorded list shapes that may hold that object are incomplete. They are not
//!   served offline, the writer deletes their records, and only a fresh complete LIST
//!   taken at or after the dropped write's resourceVersion records them again.

use std::collections::HashMap;

use super::{ObjectKey, Shape};

/// Most tombstones kept in memory (about 10 MiB at worst).
pub(super) const MAX_TOMBSTONES: usize = 65_536;

/// Most namespace markers per (component, resource) before they collapse into one
/// marker for every namespace.
const MAX_MARKERS_PER_RESOURCE: usize = 256;

/// A delete not yet on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tombstone {
    /// Removes stored versions up to this resourceVersion (0: any version).
    pub(super) rv: u64,
    /// Removes only a row with this checksum (a corrupt row; a refill replaces it).
    pub(super) crc: Option<i64>,
    /// Writes queued when it was made: it stays (and keeps older queued upserts of the
    /// object out) until the writer has taken that many writes off the queue.
    pub(super) queued_before: u64,
    /// Committed to disk.
    pub(super) applied: bool,
}

impl Tombstone {
    /// Whether a stored version at `rv` with checksum `crc` is deleted.
    pub(super) fn hides(&self, rv: u64, crc: i64) -> bool {
        (self.rv == 0 || rv <= self.rv) && self.crc.is_none_or(|c| c == crc)
    }

    /// Whether an upsert at `rv` is older than this delete (and must not bring the
    /// object back). A corrupt-row tombstone never blocks its refill.
    pub(super) fn blocks_upsert(&self, rv: u64) -> bool {
        self.crc.is_none() && (self.rv == 0 || rv <= self.rv)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    /// The namespace of the dropped write; `None`: every namespace.
    namespace: Option<String>,
    /// The highest resourceVersion dropped.
    rv: u64,
    /// The shapes' records were deleted on disk.
    applied: bool,
}

impl Marker {
    fn covers(&self, shape_namespace: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| shape_namespace.is_empty() || shape_namespace == ns)
    }
}

/// A marker the writer has to put on disk: delete the records of shapes of
/// (component, resource) over `namespace` (`None`: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PendingMarker {
    pub(super) component: String,
    pub(super) gvr: String,
    pub(super) namespace: Option<String>,
}

/// Tombstones and shape markers.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    tombstones: HashMap<ObjectKey, Tombstone>,
    markers: HashMap<(String, String), Vec<Marker>>,
}

impl Overlay {
    /// Records a delete of `key`; `false` if the overlay is full (the delete is lost).
    pub(super) fn tombstone(&mut self, key: &ObjectKey, new: Tombstone) -> bool {
        if let Some(old) = self.tombstones.get_mut(key) {
            *old = match (old.crc, new.crc) {
                // A corrupt row is detected again on its next read anyway.
                (_, Some(_)) => return true,
                (Some(_), None) => new,
                (None, None) => Tombstone {
                    rv: if old.rv == 0 || new.rv == 0 {
                        0
                    } else {
                        old.rv.max(new.rv)
                    },
                    crc: None,
                    queued_before: old.queued_before.max(new.queued_before),
                    applied: false,
                },
            };
            return true;
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            return false;
        }
        self.tombstones.insert(key.clone(), new);
        true
    }

    /// The tombstone of `key`.
    pub(super) fn tombstone_of(&self, key: &ObjectKey) -> Option<Tombstone> {
        self.tombstones.get(key).copied()
    }

    /// Tombstones not committed yet.
    pub(super) fn unapplied(&self) -> Vec<(ObjectKey, Tombstone)> {
        self.tombstones
            .iter()
            .filter(|(_, t)| !t.applied)
            .map(|(k, t)| (k.clone(), *t))
            .collect()
    }

    /// `done` were committed: forgets those unchanged since and no longer needed to keep
    /// older queued writes out (`dequeued`: writes the writer took off the queue so far).
    pub(super) fn applied(&mut self, done: &[(ObjectKey, Tombstone)], dequeued: u64) {
        for (key, t) in done {
            if let Some(now) = self.tombstones.get_mut(key)
                && now == t
            {
                now.applied = true;
            }
        }
        self.forget_settled(dequeued);
    }

    /// Forgets committed tombstones that no queued write can be older than.
    pub(super) fn forget_settled(&mut self, dequeued: u64) {
        self.tombstones
            .retain(|_, t| !t.applied || t.queued_before > dequeued);
    }

    /// Whether nothing is left to commit or to forget.
    pub(super) fn is_settled(&self) -> bool {
        self.tombstones.is_empty() && self.markers.values().flatten().all(|m| m.applied)
    }

    /// Tombstones not committed yet, in number.
    pub(super) fn pending_deletes(&self) -> usize {
        self.tombstones.values().filter(|t| !t.applied).count()
    }

    /// A write of objects of (component, gvr) in `namespace` (`None`: any namespace) at
    /// `rv` was dropped.
    pub(super) fn mark(&mut self, component: &str, gvr: &str, namespace: Option<&str>, rv: u64) {
        // A write without a resourceVersion still outdates lists without one.
        let rv = rv.max(1);
        let markers = self
            .markers
            .entry((component.to_owned(), gvr.to_owned()))
            .or_default();
        if let Some(m) = markers
            .iter_mut()
            .find(|m| m.namespace.is_none() || m.namespace.as_deref() == namespace)
        {
            m.rv = m.rv.max(rv);
            m.applied = false;
            return;
        }
        if namespace.is_none() || markers.len() >= MAX_MARKERS_PER_RESOURCE {
            let top = markers.iter().map(|m| m.rv).max().unwrap_or(0).max(rv);
            *markers = vec![Marker {
                namespace: None,
                rv: top,
                applied: false,
            }];
            return;
        }
        markers.push(Marker {
            namespace: namespace.map(str::to_owned),
            rv,
            applied: false,
        });
    }

    /// Whether the recorded `shape` must not be served: a dropped write may be missing
    /// from it and its record is not deleted yet.
    pub(super) fn hides_shape(&self, component: &str, gvr: &str, shape: &Shape) -> bool {
        self.markers
            .get(&(component.to_owned(), gvr.to_owned()))
            .is_some_and(|ms| ms.iter().any(|m| !m.applied && m.covers(&shape.namespace)))
    }

    /// Whether a complete LIST of `shape` at `list_rv` is older than a dropped write it
    /// may hold (so it must not be recorded as complete).
    pub(super) fn outdates_list(
        &self,
        component: &str,
        gvr: &str,
        shape: &Shape,
        list_rv: u64,
    ) -> bool {
        self.markers
            .get(&(component.to_owned(), gvr.to_owned()))
            .is_some_and(|ms| {
                ms.iter()
                    .any(|m| m.covers(&shape.namespace) && (list_rv == 0 || list_rv < m.rv))
            })
    }

    /// Markers whose shape records are not deleted on disk yet.
    pub(super) fn unapplied_markers(&self) -> Vec<PendingMarker> {
        self.markers
            .iter()
            .flat_map(|((component, gvr), ms)| {
                ms.iter().filter(|m| !m.applied).map(|m| PendingMarker {
                    component: component.clone(),
                    gvr: gvr.clone(),
                    namespace: m.namespace.clone(),
                })
            })
            .collect()
    }

    /// `done` were committed.
    pub(super) fn markers_applied(&mut self, done: &[PendingMarker]) {
        for d in done {
            if let Some(ms) = self.markers.get_mut(&(d.component.clone(), d.gvr.clone())) {
                for m in ms.iter_mut().filter(|m| m.namespace == d.namespace) {
                    m.applied = true;
                }
            }
        }
    }

    /// Shapes made incomplete by dropped writes, in number of markers.
    pub(super) fn markers(&self) -> usize {
        self.markers.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            component: "kubelet".into(),
            gvr: "pods.v1.core".into(),
            namespace: "a".into(),
            name: name.into(),
        }
    }

    fn delete(rv: u64) -> Tombstone {
        Tombstone {
            rv,
            crc: None,
            queued_before: 0,
            applied: false,
        }
    }

    fn shape(ns: &str) -> Shape {
        Shape {
            namespace: ns.into(),
            label_selector: String::new(),
            field_selector: String::new(),
        }
    }

    #[test]
    fn tombstones_hide_versions_up_to_theirs_and_merge_to_the_widest() {
        let mut o = Overlay::default();
        assert!(o.tombstone(&key("p"), delete(10)));
        let t = o.tombstone_of(&key("p")).unwrap();
        assert!(t.hides(10, 1) && t.hides(3, 1) && !t.hides(11, 1));
        assert!(t.blocks_upsert(10) && !t.blocks_upsert(11));
        assert!(o.tombstone(&key("p"), delete(12)));
        assert_eq!(o.tombstone_of(&key("p")).unwrap().rv, 12);
        assert!(o.tombstone(&key("p"), delete(0)));
        assert_eq!(o.tombstone_of(&key("p")).unwrap().rv, 0, "0 deletes any");
        let corrupt = Tombstone {
            crc: Some(7),
            ..delete(5)
        };
        assert!(o.tombstone(&key("q"), corrupt));
        let t = o.tombstone_of(&key("q")).unwrap();
        assert!(t.hides(5, 7) && !t.hides(5, 8), "only the corrupt bytes");
        assert!(
            !t.blocks_upsert(5),
            "a refill at the same version is let in"
        );
    }

    #[test]
    fn applied_tombstones_stay_until_older_queued_writes_are_through() {
        let mut o = Overlay::default();
        let t = Tombstone {
            queued_before: 5,
            ..delete(3)
        };
        o.tombstone(&key("p"), t);
        let done = o.unapplied();
        o.applied(&done, 4);
        assert_eq!(o.pending_deletes(), 0);
        assert!(
            o.tombstone_of(&key("p")).is_some(),
            "a write queued before it may still come"
        );
        o.forget_settled(5);
        assert!(o.tombstone_of(&key("p")).is_none());
    }

    #[test]
    fn the_overlay_is_bounded() {
        let mut o = Overlay::default();
        for i in 0..MAX_TOMBSTONES {
            assert!(o.tombstone(&key(&i.to_string()), delete(1)));
        }
        assert!(!o.tombstone(&key("one-more"), delete(1)));
        assert!(
            o.tombstone(&key("0"), delete(2)),
            "an existing key still merges"
        );
        for i in 0..1000 {
            o.mark("kubelet", "pods.v1.core", Some(&format!("ns{i}")), 5);
        }
        assert_eq!(
            o.markers(),
            1,
            "collapsed into one marker for every namespace"
        );
        assert!(o.hides_shape("kubelet", "pods.v1.core", &shape("zzz")));
    }

    #[test]
    fn markers_hide_shapes_until_applied_and_outdate_older_lists() {
        let mut o = Overlay::default();
        o.mark("kubelet", "pods.v1.core", Some("a"), 20);
        assert!(o.hides_shape("kubelet", "pods.v1.core", &shape("a")));
        assert!(o.hides_shape("kubelet", "pods.v1.core", &shape("")));
        assert!(!o.hides_shape("kubelet", "pods.v1.core", &shape("b")));
        assert!(!o.hides_shape("kube-proxy", "pods.v1.core", &shape("a")));
        assert!(o.outdates_list("kubelet", "pods.v1.core", &shape("a"), 19));
        assert!(o.outdates_list("kubelet", "pods.v1.core", &shape("a"), 0));
        assert!(!o.outdates_list("kubelet", "pods.v1.core", &shape("a"), 20));
        let pending = o.unapplied_markers();
        assert_eq!(pending.len(), 1);
        o.markers_applied(&pending);
        assert!(!o.hides_shape("kubelet", "pods.v1.core", &shape("a")));
        assert!(
            o.outdates_list("kubelet", "pods.v1.core", &shape("a"), 19),
            "a list older than the dropped write is still not complete"
        );
    }
}
