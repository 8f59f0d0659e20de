//! One watch per kind for the whole manager, shared by the webhooks and every
//! controller that needs that kind.
//!
//! At fleet scale Nodes and Pods dominate the manager's memory and the API server's
//! watch load: six controllers each opening their own Node watch (and two of them
//! keeping a store) meant six initial LISTs of every node and two copies in memory.
//! A [`Feed`] keeps one store and hands every subscriber the same events, in order.
//!
//! kube-runtime's own shared streams (`unstable-runtime-subscribe`) broadcast object
//! references only (no deletions, no relist boundaries), which the pool membership
//! index needs; this fan-out is the small piece it lacks.
//!
//! Ordering: an event is applied to the store before any subscriber sees it, so a
//! reconcile triggered by an event reads a store at least that new (ADR 003).

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{Stream, StreamExt, future, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Subscriber<K> = mpsc::UnboundedSender<Arc<watcher::Event<K>>>;

struct Fanout<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    writer: Writer<K>,
    subscribers: Vec<Subscriber<K>>,
    /// A (re)list is under way: the store still shows the previous one.
    listing: bool,
}

impl<K: Resource + Clone + 'static> Fanout<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    /// Applies `event` to the store, then hands it to every subscriber still listening.
    fn publish(&mut self, event: watcher::Event<K>) {
        self.writer.apply_watcher_event(&event);
        match event {
            watcher::Event::Init => self.listing = true,
            watcher::Event::InitDone => self.listing = false,
            _ => {}
        }
        let event = Arc::new(event);
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }
}

/// A shared watch of one kind: its store and its event stream.
pub struct Feed<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: Store<K>,
    fanout: Arc<Mutex<Fanout<K>>>,
}

impl<K: Resource + Clone + 'static> Clone for Feed<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            fanout: self.fanout.clone(),
        }
    }
}

impl<K> Default for Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// A feed with nothing in it yet: its store is empty (not ready) until [`Feed::start`]
    /// has listed.
    pub fn new() -> Self {
        let (store, writer) = reflector::store();
        Self {
            store,
            fanout: Arc::new(Mutex::new(Fanout {
                writer,
                subscribers: Vec::new(),
                listing: true,
            })),
        }
    }

    /// Watches every object of `api`'s kind into the feed until `shutdown`; `kind` names
    /// it in logs. Watch failures are retried with backoff.
    pub fn start(&self, api: Api<K>, kind: &'static str, shutdown: CancellationToken) {
        self.start_selected(api, watcher::Config::default(), kind, shutdown);
    }

    /// As [`Feed::start`], for the objects `selected` picks (a label selector).
    pub fn start_selected(
        &self,
        api: Api<K>,
        selected: watcher::Config,
        kind: &'static str,
        shutdown: CancellationToken,
    ) {
        let fanout = self.fanout.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, selected).default_backoff().boxed();
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    e = events.next() => e,
                };
                match event {
                    None => break,
                    Some(Err(e)) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
                    Some(Ok(event)) => fanout
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .publish(event),
                }
            }
            // Ends every subscriber's stream.
            fanout
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .subscribers
                .clear();
        });
    }

    /// The shared store (empty until the first list completes).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every event from the moment of subscribing, preceded by the store's contents as
    /// one relist (`Init`, an `InitApply` per object, `InitDone`), so a subscriber starts
    /// from a complete picture whenever it joins. Subscribes at once, unless a list is
    /// under way: then when it is done (the store still shows the previous list).
    pub fn events(&self) -> impl Stream<Item = Arc<watcher::Event<K>>> + Send + 'static {
        let (store, fanout) = (self.store.clone(), self.fanout.clone());
        let now = subscribe(&store, &fanout);
        stream::once(async move {
            if let Some(subscribed) = now {
                return subscribed;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(subscribed) = subscribe(&store, &fanout) {
                    return subscribed;
                }
            }
        })
        .flat_map(|(snapshot, rx)| {
            let relist = std::iter::once(watcher::Event::Init)
                .chain(
                    snapshot
                        .into_iter()
                        .map(|o| watcher::Event::InitApply((*o).clone())),
                )
                .chain(std::iter::once(watcher::Event::InitDone))
                .map(Arc::new);
            let live = stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|event| (event, rx))
            });
            stream::iter(relist).chain(live)
        })
    }

    /// The objects the events touch (listed, applied or deleted), as a controller
    /// trigger stream. A deleted object always carries a deletionTimestamp here (the
    /// watch's last state of an object deleted at once has none), so a trigger mapper
    /// can tell a deletion from an update.
    pub fn objects(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        self.events().filter_map(|event| {
            future::ready(match &*event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => Some(Ok(o.clone())),
                watcher::Event::Delete(o) => {
                    let mut o = o.clone();
                    o.meta_mut()
                        .deletion_timestamp
                        .get_or_insert_with(|| Time(jiff::Timestamp::now()));
                    Some(Ok(o))
                }
                watcher::Event::Init | watcher::Event::InitDone => None,
            })
        })
    }
}

type Subscription<K> = (Vec<Arc<K>>, mpsc::UnboundedReceiver<Arc<watcher::Event<K>>>);

/// Registers a subscriber and takes the store's picture under the fan-out's lock, so
/// nothing is missed or seen twice between the picture and the first live event.
fn subscribe<K>(store: &Store<K>, fanout: &Mutex<Fanout<K>>) -> Option<Subscription<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    let mut f = fanout.lock().unwrap_or_else(PoisonError::into_inner);
    if f.listing {
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    f.subscribers.push(tx);
    Some((store.state(), rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.to_owned());
        n
    }

    type Node = k8s_openapi::api::core::v1::Node;

    /// A feed whose events are pushed by hand instead of coming from a watch.
    fn manual() -> (Feed<Node>, impl FnMut(watcher::Event<Node>)) {
        let feed = Feed::new();
        let fanout = feed.fanout.clone();
        let push = move |event| fanout.lock().expect("lock").publish(event);
        (feed, push)
    }

    fn describe(e: &watcher::Event<Node>) -> String {
        use kube::ResourceExt;
        match e {
            watcher::Event::Init => "init".into(),
            watcher::Event::InitApply(n) => format!("list {}", n.name_any()),
            watcher::Event::InitDone => "done".into(),
            watcher::Event::Apply(n) => format!("apply {}", n.name_any()),
            watcher::Event::Delete(n) => format!("delete {}", n.name_any()),
        }
    }

    /// The next `n` items, each within 5 s.
    async fn take<S: futures_util::Stream + Unpin>(s: &mut S, n: usize) -> Vec<S::Item> {
        let mut out = Vec::new();
        for _ in 0..n {
            let item = tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .expect("an item in time")
                .expect("stream open");
            out.push(item);
        }
        out
    }

    #[tokio::test]
    async fn a_late_subscriber_starts_from_the_store_then_follows_live_events() {
        let (feed, mut push) = manual();
        push(watcher::Event::Init);
        push(watcher::Event::InitApply(node("a")));
        // A subscriber joining during the list waits for it to finish.
        let mut events = Box::pin(feed.events());
        push(watcher::Event::InitApply(node("b")));
        push(watcher::Event::InitDone);
        push(watcher::Event::Apply(node("c")));
        let mut seen: Vec<String> = take(&mut events, 5)
            .await
            .iter()
            .map(|e| describe(e))
            .collect();
        // Subscribed after c was applied: c is part of its starting picture.
        seen[1..4].sort();
        assert_eq!(seen, ["init", "list a", "list b", "list c", "done"]);
        push(watcher::Event::Delete(node("a")));
        push(watcher::Event::Apply(node("d")));
        let later: Vec<String> = take(&mut events, 2)
            .await
            .iter()
            .map(|e| describe(e))
            .collect();
        assert_eq!(later, ["delete a", "apply d"]);
        let mut names: Vec<String> = feed
            .store()
            .state()
            .iter()
            .map(|n| kube::ResourceExt::name_any(&**n))
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c", "d"]);
    }

    #[tokio::test]
    async fn objects_carry_applies_lists_and_deletions_to_every_subscriber() {
        let (feed, mut push) = manual();
        push(watcher::Event::Init);
        push(watcher::Event::InitDone);
        // Both subscribe here, before anything happens (the store is empty).
        let mut first = Box::pin(feed.objects());
        let mut second = Box::pin(feed.objects());
        push(watcher::Event::Apply(node("x")));
        push(watcher::Event::Delete(node("x")));
        for s in [&mut first, &mut second] {
            let seen: Vec<(String, bool)> = take(s, 2)
                .await
                .into_iter()
                .map(|o| {
                    let o = o.expect("no error");
                    (
                        kube::ResourceExt::name_any(&o),
                        o.metadata.deletion_timestamp.is_some(),
                    )
                })
                .collect();
            assert_eq!(
                seen,
                [("x".to_owned(), false), ("x".to_owned(), true)],
                "the deletion is marked"
            );
        }
    }
}
