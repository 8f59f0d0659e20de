//! One shared upstream watch: its buffer of recent events, its subscribers, and the task
//! that reads the upstream stream, hands every event to every subscriber, opens the
//! stream again when it ends, and closes it when the last subscriber has left.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{Key, Opener, RawSelectors, Settings, upstream_request};
use crate::body::ResponseBody;
use crate::codec::{Format, WatchDecoder, WatchEvent};
use crate::metrics::HubMetrics;
use crate::proxy::Hub;

/// What a subscriber needs to know about an object's labels before an event, to tell
/// whether the object matched its label selector before (as the API server's watch
/// cache does with the previous object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prev {
    /// The object did not exist (an ADDED event).
    New,
    /// The object existed but the shared watch has not seen it since it started.
    Unknown,
    /// The object's labels before the event.
    Labels(BTreeMap<String, String>),
}

/// One upstream event as every subscriber gets it.
#[derive(Debug)]
pub struct SharedEvent {
    /// Its object's resourceVersion.
    pub rv: u64,
    /// The event.
    pub event: WatchEvent,
    /// Its bytes as the API server sent them.
    pub wire: Bytes,
    /// The object's labels before it.
    pub prev: Prev,
}

impl SharedEvent {
    /// The bytes it holds.
    pub fn size(&self) -> usize {
        self.wire.len() + self.event.object.data.len()
    }
}

/// A subscriber as it joined.
#[derive(Debug)]
pub struct Joined {
    /// Its id, to leave.
    pub id: u64,
    /// The buffered events after its resourceVersion, to send first.
    pub replay: VecDeque<Arc<SharedEvent>>,
    /// The live events; closed when the shared watch ends or drops the subscriber.
    pub events: mpsc::Receiver<Arc<SharedEvent>>,
}

/// Why a watch could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// Events after its resourceVersion are no longer in the buffer.
    TooOld,
    /// The shared watch has ended.
    Ended,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<SharedEvent>>,
}

struct State {
    /// Every event after this resourceVersion is in the buffer (or still to come).
    floor: u64,
    /// The resourceVersion of the last event or bookmark.
    last_rv: u64,
    buffer: VecDeque<Arc<SharedEvent>>,
    /// The bytes the buffer holds ([`SharedEvent::size`]).
    buffer_bytes: usize,
    subscribers: Vec<Subscriber>,
    next_id: u64,
    ended: bool,
    /// When the last subscriber left.
    idle_since: Option<Instant>,
}

/// A shared upstream watch.
pub struct Shared {
    /// What it watches.
    pub key: Key,
    raw: RawSelectors,
    /// The format of its events.
    pub format: Format,
    status: StatusCode,
    headers: HeaderMap,
    settings: Settings,
    state: Mutex<State>,
    wake: Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A shared watch of `key` opened from `from`, whose upstream answered with `status`
    /// and `headers`.
    pub fn new(
        key: Key,
        raw: RawSelectors,
        format: Format,
        status: StatusCode,
        headers: HeaderMap,
        from: u64,
        settings: Settings,
    ) -> Self {
        Self {
            key,
            raw,
            format,
            status,
            headers,
            settings,
            state: Mutex::new(State {
                floor: from,
                last_rv: from,
                buffer: VecDeque::new(),
                buffer_bytes: 0,
                subscribers: Vec::new(),
                next_id: 0,
                ended: false,
                // Idle until its first subscriber joins (which it does right away).
                idle_since: Some(Instant::now()),
            }),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock leaves the state consistent: go on after a panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A response to a client with the upstream's head and `body`.
    pub fn response(&self, body: ResponseBody) -> Response<ResponseBody> {
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp
    }

    /// Joins a client that wants the events after `from`.
    ///
    /// # Errors
    /// [`JoinError`] when the shared watch cannot serve it.
    pub fn subscribe(&self, metrics: &HubMetrics, from: u64) -> Result<Joined, JoinError> {
        let mut st = self.state();
        if st.ended {
            return Err(JoinError::Ended);
        }
        if from < st.floor {
            return Err(JoinError::TooOld);
        }
        let replay = st.buffer.iter().filter(|e| e.rv > from).cloned().collect();
        let (tx, events) = mpsc::channel(self.settings.subscriber_queue.max(1));
        let id = st.next_id;
        st.next_id += 1;
        st.subscribers.push(Subscriber { id, tx });
        st.idle_since = None;
        metrics.shared_watch_subscribers.inc();
        Ok(Joined { id, replay, events })
    }

    /// A subscriber leaves (its client went, or its timeout passed).
    pub fn leave(&self, metrics: &HubMetrics, id: u64) {
        let mut st = self.state();
        if let Some(i) = st.subscribers.iter().position(|s| s.id == id) {
            st.subscribers.swap_remove(i);
            metrics.shared_watch_subscribers.dec();
            if st.subscribers.is_empty() && !st.ended {
                st.idle_since = Some(Instant::now());
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Hands `event` to every subscriber and keeps it for later ones (not bookmarks and
    /// errors). A subscriber whose queue is full is dropped: its stream ends and its
    /// client watches again from where it was.
    fn publish(&self, metrics: &HubMetrics, event: SharedEvent) {
        let event = Arc::new(event);
        let mut st = self.state();
        st.last_rv = st.last_rv.max(event.rv);
        if !matches!(event.event.event_type.as_str(), "BOOKMARK" | "ERROR") {
            st.buffer.push_back(event.clone());
            st.buffer_bytes += event.size();
            while st.buffer.len() > self.settings.buffer_events
                || st.buffer_bytes > self.settings.buffer_bytes
            {
                let Some(old) = st.buffer.pop_front() else {
                    break;
                };
                st.buffer_bytes -= old.size();
                st.floor = st.floor.max(old.rv);
            }
        }
        let before = st.subscribers.len();
        st.subscribers.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.shared_watch_lagged.inc();
                tracing::info!(gvr = %self.key.gvr, "a shared watch's subscriber fell behind; its stream ends");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        let gone = before - st.subscribers.len();
        if gone > 0 {
            metrics
                .shared_watch_subscribers
                .dec_by(i64::try_from(gone).unwrap_or(i64::MAX));
            if st.subscribers.is_empty() {
                st.idle_since = Some(Instant::now());
            }
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let st = self.state();
        st.idle_since
            .filter(|_| st.subscribers.is_empty())
            .map(|t| t + self.settings.linger)
    }

    /// Ends the shared watch if it has had no subscriber for [`Settings::linger`].
    fn close_if_idle(self: &Arc<Self>, hub: &Hub) -> bool {
        let mut map = hub.shared_watches.lock();
        let mut st = self.state();
        let idle = st.subscribers.is_empty()
            && st
                .idle_since
                .is_some_and(|t| t + self.settings.linger <= Instant::now());
        if idle {
            st.ended = true;
            if map.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, self)) {
                map.remove(&self.key);
            }
        }
        idle
    }

    /// Ends the shared watch and every subscriber's stream.
    fn end(self: &Arc<Self>, hub: &Hub) {
        let mut map = hub.shared_watches.lock();
        let mut st = self.state();
        st.ended = true;
        let gone = st.subscribers.len();
        st.subscribers.clear();
        hub.metrics
            .shared_watch_subscribers
            .dec_by(i64::try_from(gone).unwrap_or(i64::MAX));
        if map.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, self)) {
            map.remove(&self.key);
        }
    }

    fn last_rv(&self) -> u64 {
        self.state().last_rv
    }
}

/// The labels each object had at its last event, to give every event its [`Prev`]: kept
/// only for a watch without a label selector, the one where clients' selectors are
/// evaluated here.
struct KnownLabels {
    kept: bool,
    labels: HashMap<(String, String), BTreeMap<String, String>>,
}

impl KnownLabels {
    fn new(kept: bool) -> Self {
        Self {
            kept,
            labels: HashMap::new(),
        }
    }

    fn shared_event(&mut self, event: WatchEvent, wire: Bytes) -> SharedEvent {
        let info = &event.object.info;
        if !self.kept {
            return SharedEvent {
                rv: info.rv(),
                prev: Prev::Unknown,
                event,
                wire,
            };
        }
        let key = (info.namespace.clone(), info.name.clone());
        let prev = match event.event_type.as_str() {
            "ADDED" => {
                self.labels.insert(key, info.labels.clone());
                Prev::New
            }
            "MODIFIED" => self
                .labels
                .insert(key, info.labels.clone())
                .map_or(Prev::Unknown, Prev::Labels),
            "DELETED" => self.labels.remove(&key).map_or(Prev::Unknown, Prev::Labels),
            _ => Prev::Unknown,
        };
        SharedEvent {
            rv: info.rv(),
            event,
            wire,
            prev,
        }
    }
}

/// Reads the upstream stream `body` of `shared` in a task until the watch ends.
pub fn run(hub: Arc<Hub>, shared: Arc<Shared>, opener: Opener, body: ResponseBody) {
    tokio::spawn(async move {
        pump(&hub, &shared, &opener, body).await;
        hub.metrics.shared_watch_upstreams.dec();
    });
}

async fn pump(hub: &Arc<Hub>, shared: &Arc<Shared>, opener: &Opener, mut body: ResponseBody) {
    let mut decoder = WatchDecoder::new(shared.format);
    let mut known = KnownLabels::new(shared.key.label_selector.is_none());
    let mut opened = Instant::now();
    let mut events_since_open = 0_u64;
    loop {
        let idle_deadline = shared.idle_deadline();
        let until_idle = async {
            match idle_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            f = body.frame() => f,
            () = until_idle => {
                if shared.close_if_idle(hub) {
                    return;
                }
                continue;
            }
            () = shared.wake.notified() => continue,
            () = hub.shutdown.cancelled() => {
                shared.end(hub);
                return;
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let events = match decoder.push(&data) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::debug!(gvr = %shared.key.gvr, error = %e, "shared watch stream malformed; its subscribers watch again");
                        shared.end(hub);
                        return;
                    }
                };
                for (event, wire) in events {
                    events_since_open += 1;
                    let error = event.event_type == "ERROR";
                    shared.publish(&hub.metrics, known.shared_event(event, wire));
                    if error {
                        // 410 Gone and other errors end every subscriber's stream after
                        // the ERROR, as they end a watch of its own.
                        shared.end(hub);
                        return;
                    }
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::debug!(gvr = %shared.key.gvr, error = %e, "shared upstream watch broke");
                hub.health.request_failed();
            }
            None => {}
        }
        if events_since_open == 0 && opened.elapsed() < shared.settings.min_stream {
            shared.end(hub);
            return;
        }
        match reopen(hub, shared, opener).await {
            Some(b) => {
                hub.metrics.shared_watch_reopens.inc();
                body = b;
                decoder = WatchDecoder::new(shared.format);
                opened = Instant::now();
                events_since_open = 0;
            }
            None => {
                shared.end(hub);
                return;
            }
        }
    }
}

/// Opens the upstream watch again from the last resourceVersion it delivered.
async fn reopen(hub: &Hub, shared: &Shared, opener: &Opener) -> Option<ResponseBody> {
    let from = shared.last_rv();
    let req = upstream_request(&shared.key, &shared.raw, from, &opener.url)?;
    let resp = match tokio::time::timeout(reopen_timeout(hub), (opener.send)(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(failure)) => {
            failure.report(&hub.health, opener.index);
            return None;
        }
        Err(_) => return None,
    };
    let format = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::of_content_type);
    if !resp.status().is_success() || format != Some(shared.format) {
        tracing::debug!(gvr = %shared.key.gvr, status = %resp.status(), "shared watch not opened again; its subscribers watch again");
        return None;
    }
    Some(resp.into_body())
}

fn reopen_timeout(hub: &Hub) -> Duration {
    hub.config.upstream.read_timeout
}
