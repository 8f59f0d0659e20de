//! Watches: an upstream watch streamed to the client through the cache and the filters,
//! and the offline watch, held open with no events until the cloud is back.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt;

use super::Hub;
use crate::body::{self, ResponseBody};
use crate::cache;
use crate::codec::{self, Format, WatchDecoder};
use crate::filter::Filters;
use crate::request::{Gvr, ResourceRequest};

/// Streams a watch to the client, teeing it into the cache and filtering its events.
/// `cache_as` names the cache owner the events are stored under, if they are cached.
pub fn pump(
    hub: Arc<Hub>,
    cache_as: Option<String>,
    component: String,
    r: ResourceRequest,
    format: Format,
    filter_it: bool,
    mut upstream: ResponseBody,
) -> ResponseBody {
    let (tx, body) = body::channel(32);
    tokio::spawn(async move {
        let mut ingestor = cache_as
            .as_deref()
            .map(|owner| hub.cache.watch_ingestor(owner, &r, format));
        let mut decoder = filter_it.then(|| WatchDecoder::new(format));
        loop {
            let frame = tokio::select! {
                f = upstream.frame() => f,
                () = tx.closed() => break,
            };
            let chunk = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    // The connection died under the watch (a missed HTTP/2 ping, a reset):
                    // the prober decides now whether the server is gone.
                    tracing::debug!(error = %e, "upstream watch broke");
                    hub.health.request_failed();
                    break;
                }
                None => break,
            };
            if let Some(i) = ingestor.as_mut() {
                i.ingest(&chunk).await;
            }
            let out = match decoder.as_mut() {
                None => chunk,
                Some(d) => match filter_events(&hub.filters, &component, &r.gvr, format, d, &chunk)
                {
                    Some(out) => out,
                    None => break,
                },
            };
            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                break;
            }
        }
    });
    body
}

/// The complete events in `chunk` (with what `decoder` held before), filtered: an
/// event passed unchanged keeps its bytes (a JSON one on its own line), a rewritten one is re-encoded, a dropped one
/// becomes a DELETED (the client may have seen it before). `None` when the stream is
/// not a watch stream.
pub fn filter_events(
    filters: &Filters,
    component: &str,
    gvr: &Gvr,
    format: Format,
    decoder: &mut WatchDecoder,
    chunk: &[u8],
) -> Option<Bytes> {
    let events = decoder.push(chunk).ok()?;
    let mut buf = Vec::new();
    for (ev, wire) in events {
        filter_event(filters, component, gvr, format, &ev, &wire, &mut buf);
    }
    Some(Bytes::from(buf))
}

/// Appends one event, filtered, to `buf`: passed unchanged it keeps its `wire` bytes (a
/// JSON one on its own line), rewritten it is re-encoded, dropped it becomes a DELETED.
pub fn filter_event(
    filters: &Filters,
    component: &str,
    gvr: &Gvr,
    format: Format,
    ev: &codec::WatchEvent,
    wire: &[u8],
    buf: &mut Vec<u8>,
) {
    match filters.apply(component, gvr, ev.object.clone()) {
        Some(o) if o == ev.object => push_event(format, wire, buf),
        Some(o) => {
            buf.extend_from_slice(&codec::encode_watch_event(format, &ev.event_type, &o));
        }
        None => {
            buf.extend_from_slice(&codec::encode_watch_event(format, "DELETED", &ev.object));
        }
    }
}

/// Appends an event's `wire` bytes to `buf`.
pub fn push_event(format: Format, wire: &[u8], buf: &mut Vec<u8>) {
    buf.extend_from_slice(wire);
    // The decoder's bytes of a JSON event end at its closing brace: keep one event per
    // line, as the API server sends them (line-reading clients split on it).
    if format == Format::Json && !wire.ends_with(b"\n") {
        buf.push(b'\n');
    }
}

/// The least a held watch lasts before the cloud's return ends it. client-go (1.20's
/// reflector) takes a watch that ends within a second with no event for an error and
/// lists everything again; a client that re-watched just before the link came back
/// would otherwise relist for nothing.
pub const HELD_WATCH_MIN_AGE: std::time::Duration = std::time::Duration::from_millis(1500);

/// A watch with no events that ends when the cloud is healthy again (the client then
/// re-watches upstream from its resourceVersion; not before [`HELD_WATCH_MIN_AGE`]),
/// when its timeout passes, or on shutdown.
pub fn hold(hub: &Arc<Hub>, r: &ResourceRequest, accept: &[Format]) -> Response<ResponseBody> {
    let format = accept.first().copied().unwrap_or(Format::Json);
    let (tx, body) = body::channel(1);
    let mut online = hub.health.subscribe();
    let timeout = cache::offline_watch_timeout(r, hub.config.min_request_timeout);
    let shutdown = hub.shutdown.clone();
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        let until_online = async {
            while !*online.borrow_and_update() {
                if online.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep_until(started + HELD_WATCH_MIN_AGE).await;
        };
        tokio::select! {
            () = until_online => {}
            () = tokio::time::sleep(timeout) => {}
            () = shutdown.cancelled() => {}
            () = tx.closed() => {}
        }
        drop(tx);
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.watch_content_type()),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::proxy::fake::{self, DropHidden, pod};

    fn event(kind: &str, name: &str) -> Vec<u8> {
        let mut line =
            serde_json::to_vec(&serde_json::json!({"type": kind, "object": pod(name, "4")}))
                .unwrap();
        line.push(b'\n');
        line
    }

    fn events(bytes: &[u8]) -> Vec<(String, String)> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                (
                    v["type"].as_str().unwrap().to_owned(),
                    v["object"]["metadata"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_filtered_out_event_becomes_a_deletion_and_others_keep_their_bytes() {
        let filters = Filters::new(vec![Box::new(DropHidden)]);
        let gvr = Gvr::new("", "v1", "pods");
        let mut decoder = WatchDecoder::new(Format::Json);
        let a = event("ADDED", "a");
        let mut chunk = a.clone();
        chunk.extend(event("MODIFIED", "hidden"));
        let (first, rest) = chunk.split_at(a.len() + 5);
        let out =
            filter_events(&filters, "kubelet", &gvr, Format::Json, &mut decoder, first).unwrap();
        assert_eq!(
            out, a,
            "a complete event passes as it came; the partial one waits"
        );
        let out =
            filter_events(&filters, "kubelet", &gvr, Format::Json, &mut decoder, rest).unwrap();
        assert_eq!(events(&out), [("DELETED".to_owned(), "hidden".to_owned())]);
        assert!(
            filter_events(
                &filters,
                "kubelet",
                &gvr,
                Format::Json,
                &mut decoder,
                b"not json\n"
            )
            .is_none()
        );
    }

    #[tokio::test]
    async fn two_identical_node_watches_open_one_upstream_watch() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let streams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = streams.clone();
        let server = fake::FakeServer::new(move |_| {
            let (tx, body) = body::channel(8);
            kept.lock().unwrap().push(tx);
            let mut resp = http::Response::new(body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        });
        let online = fake::FakeUpstream(Some(server.clone()));
        let uri = "/api/v1/services?allowWatchBookmarks=true&resourceVersion=10&watch=true";
        let kubelet = fake::send(
            &hub,
            &online,
            crate::proxy::Origin::Local,
            fake::request("GET", uri, &[fake::KUBELET], b""),
        )
        .await;
        let proxy = fake::send(
            &hub,
            &online,
            crate::proxy::Origin::Local,
            fake::request("GET", uri, &[("user-agent", "kube-proxy/v1.20.2")], b""),
        )
        .await;
        assert_eq!(
            (kubelet.status().as_u16(), proxy.status().as_u16()),
            (200, 200)
        );
        assert_eq!(server.requests().len(), 1, "one upstream watch for both");
    }

    #[tokio::test]
    async fn pump_streams_filtered_events_until_the_upstream_ends() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::new(vec![Box::new(DropHidden)]));
        let (tx, upstream) = body::channel(4);
        let r = match crate::request::RequestInfo::parse(
            &http::Method::GET,
            "/api/v1/pods",
            Some("watch=1"),
        ) {
            crate::request::RequestInfo::Resource(r) => r,
            other => panic!("{other:?}"),
        };
        let out = pump(hub, None, "kubelet".into(), r, Format::Json, true, upstream);
        tx.send(Ok(Bytes::from(event("ADDED", "a")))).await.unwrap();
        tx.send(Ok(Bytes::from(event("ADDED", "hidden"))))
            .await
            .unwrap();
        drop(tx);
        let bytes = tokio::time::timeout(fake::WAIT, out.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(
            events(&bytes),
            [
                ("ADDED".to_owned(), "a".to_owned()),
                ("DELETED".to_owned(), "hidden".to_owned())
            ]
        );
    }
}
