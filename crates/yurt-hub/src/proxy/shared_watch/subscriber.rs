//! One client of a shared watch: the events after its resourceVersion, as its label
//! selector and bookmark choice see them, teed into its cache, through its filters,
//! until its timeout.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::upstream::{Joined, Prev, Shared, SharedEvent};
use super::{Plan, client_timeout};
use crate::body::{self, ResponseBody};
use crate::codec::{self, Format};
use crate::proxy::forward::{self, Handling};
use crate::proxy::watch::{filter_event, push_event};
use crate::proxy::{Ctx, Hub};
use crate::selector::LabelSelector;

/// What a client watching from `from` with `labels` gets of `ev`, as a watch of its own
/// would get it from the API server: its type and bytes, or nothing.
///
/// With a label selector, the API server's watch cache compares the object before and
/// after the event: one that starts to match is ADDED, one that stops matching DELETED,
/// one that never matched is not sent. An object the shared watch has not seen since it
/// started ([`Prev::Unknown`]) is taken to have matched before: a change that still
/// matches is a MODIFIED, and one that does not is a DELETED, which a client that never
/// had the object ignores (an informer drops deletions of unknown objects). The DELETED
/// carries the object as it is now, where the API server sends its previous state with
/// the new resourceVersion; clients key deletions by namespace and name.
pub fn view(
    ev: &SharedEvent,
    from: u64,
    labels: Option<&LabelSelector>,
    bookmarks: bool,
    format: Format,
) -> Option<(&'static str, Bytes)> {
    let kind = ev.event.event_type.as_str();
    match kind {
        "ERROR" => return Some(("ERROR", ev.wire.clone())),
        "BOOKMARK" => return (bookmarks && ev.rv > from).then(|| ("BOOKMARK", ev.wire.clone())),
        "ADDED" | "MODIFIED" | "DELETED" => {}
        _ => return None,
    }
    if ev.rv <= from {
        return None;
    }
    let Some(selector) = labels else {
        return Some((static_kind(kind), ev.wire.clone()));
    };
    let now = &ev.event.object.info.labels;
    let matches_now = kind != "DELETED" && selector.matches(now);
    let matched_before = match (kind, &ev.prev) {
        ("DELETED", _) => selector.matches(now),
        ("ADDED", _) | (_, Prev::New) => false,
        (_, Prev::Labels(before)) => selector.matches(before),
        (_, Prev::Unknown) => true,
    };
    let out = match (matches_now, matched_before) {
        (true, true) => "MODIFIED",
        (true, false) => "ADDED",
        (false, true) => "DELETED",
        (false, false) => return None,
    };
    if out == kind {
        Some((out, ev.wire.clone()))
    } else {
        Some((
            out,
            codec::encode_watch_event(format, out, &ev.event.object),
        ))
    }
}

fn static_kind(kind: &str) -> &'static str {
    match kind {
        "ADDED" => "ADDED",
        "MODIFIED" => "MODIFIED",
        _ => "DELETED",
    }
}

/// Streams the shared watch to the client of `ctx` that joined as `joined`, evaluating
/// `labels` (its label selector, when the upstream watch has none).
pub fn start(
    hub: &Arc<Hub>,
    shared: &Arc<Shared>,
    ctx: &Ctx,
    plan: &Plan,
    labels: Option<LabelSelector>,
    joined: Joined,
) -> Response<ResponseBody> {
    let format = shared.format;
    let (cache_as, filter) =
        match forward::handling(hub, ctx, &http::Method::GET, StatusCode::OK, Some(format)) {
            Handling::Watch { cache_as, filter } => (cache_as, filter),
            _ => (None, false),
        };
    let component = ctx.component.clone().unwrap_or_default();
    let timeout = client_timeout(hub, &plan.request);
    let (tx, body) = body::channel(32);
    let (hub2, shared2, plan) = (hub.clone(), shared.clone(), plan.clone());
    tokio::spawn(async move {
        let (hub, shared) = (hub2, shared2);
        let r = &plan.request;
        let mut ingestor = cache_as
            .as_deref()
            .map(|owner| hub.cache.watch_ingestor(owner, r, format));
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let Joined {
            id,
            mut replay,
            mut events,
        } = joined;
        loop {
            let ev = match replay.pop_front() {
                Some(ev) => ev,
                None => tokio::select! {
                    ev = events.recv() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                    () = tx.closed() => break,
                    () = &mut deadline => break,
                },
            };
            let Some((kind, wire)) = view(&ev, plan.from, labels.as_ref(), plan.bookmarks, format)
            else {
                continue;
            };
            if let Some(i) = ingestor.as_mut() {
                i.ingest(&wire).await;
            }
            let mut out = Vec::with_capacity(wire.len() + 1);
            if filter && matches!(kind, "ADDED" | "MODIFIED" | "DELETED") {
                let event = codec::WatchEvent {
                    event_type: kind.to_owned(),
                    object: ev.event.object.clone(),
                };
                filter_event(
                    &hub.filters,
                    &component,
                    &r.gvr,
                    format,
                    &event,
                    &wire,
                    &mut out,
                );
            } else {
                push_event(format, &wire, &mut out);
            }
            tokio::select! {
                sent = tx.send(Ok(Bytes::from(out))) => if sent.is_err() { break },
                () = &mut deadline => break,
            }
            if kind == "ERROR" {
                break;
            }
        }
        shared.leave(&hub.metrics, id);
    });
    shared.response(body)
}
