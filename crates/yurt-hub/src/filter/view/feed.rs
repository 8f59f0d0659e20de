//! A list-then-watch of one collection through the hub, asked for the way kubelet asks
//! (protobuf first), so the hub's own watch of Services and of its own Node joins the
//! upstream watch kubelet already has open ([`crate::proxy::shared_watch`]) instead of
//! opening one more in JSON, whose bytes the API server would send again.
//!
//! Hand-rolled rather than `kube::runtime::watcher`: kube-rs speaks JSON only, and the
//! point is to share kubelet's protobuf stream. The hub's own [`crate::codec`] decodes
//! both formats; a server that answers JSON (a fake, or a resource without protobuf) is
//! read as JSON.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use kube::client::Body;

use crate::codec::{self, Format, RawObject, WatchDecoder};

/// The `Accept` of kubelet's and kube-proxy's clients (client-go with protobuf).
pub(super) const ACCEPT: &str = "application/vnd.kubernetes.protobuf, */*";

/// Waits after a failed list or watch before the next try: from the first to the last,
/// doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// What a feed tells its consumer.
#[derive(Debug)]
pub(super) enum FeedEvent {
    /// The whole collection, after a (re)list: anything not in it is gone.
    Listed(Vec<RawObject>),
    /// An object added or changed.
    Applied(RawObject),
    /// An object deleted.
    Deleted(RawObject),
}

/// One collection to follow.
#[derive(Debug, Clone)]
pub(super) struct Collection {
    /// Its path: `/api/v1/services`.
    pub path: String,
    /// A field selector, unencoded (`metadata.name=edge-a1`).
    pub field_selector: Option<String>,
}

impl Collection {
    fn query(&self, params: &[(&str, &str)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(f) = &self.field_selector {
            q.append_pair("fieldSelector", f);
        }
        format!("{}?{}", self.path, q.finish())
    }

    /// The list: from the API server's watch cache (`resourceVersion=0`), as reflectors do.
    pub(super) fn list_uri(&self) -> String {
        self.query(&[("resourceVersion", "0")])
    }

    /// The watch from `rv`, ending after `timeout_seconds` (client-go's parameters, so the
    /// hub can share it).
    pub(super) fn watch_uri(&self, rv: &str, timeout_seconds: u64) -> String {
        self.query(&[
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", rv),
            ("timeoutSeconds", &timeout_seconds.to_string()),
            ("watch", "true"),
        ])
    }
}

/// Why a list or watch stopped.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("request: {0}")]
    Request(#[from] kube::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("watch ended with an ERROR event (resourceVersion too old)")]
    Expired,
}

/// Follows `collection` through `client` until the task is dropped: lists, watches from
/// the list's resourceVersion, watches again from the last one seen when a watch ends,
/// and lists again after an ERROR event or a failure.
pub(super) async fn follow(
    client: kube::Client,
    collection: Collection,
    mut on: impl FnMut(FeedEvent),
) {
    let mut backoff = BACKOFF.0;
    loop {
        let mut rv = match list(&client, &collection).await {
            Ok((items, rv)) => {
                on(FeedEvent::Listed(items));
                rv
            }
            Err(e) => {
                tracing::debug!(path = %collection.path, error = %e, "view list");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        loop {
            let started = tokio::time::Instant::now();
            match watch(&client, &collection, &mut rv, &mut on).await {
                // A watch that ends at its timeout, or after events, is opened again at
                // once; one that ends at once with nothing is backed off.
                Ok(events) if events > 0 || started.elapsed() >= BACKOFF.0 => {
                    backoff = BACKOFF.0;
                }
                Ok(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
                Err(e) => {
                    tracing::debug!(path = %collection.path, error = %e, "view watch");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    break;
                }
            }
        }
    }
}

async fn get(client: &kube::Client, uri: &str) -> Result<(Format, Body), FeedError> {
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, ACCEPT)
        .body(Body::empty())
        .map_err(|e| FeedError::Body(e.to_string()))?;
    let response = client.send(request).await?;
    if !response.status().is_success() {
        return Err(FeedError::Status(response.status()));
    }
    let format = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::of_content_type)
        .unwrap_or(Format::Json);
    Ok((format, response.into_body()))
}

async fn list(
    client: &kube::Client,
    collection: &Collection,
) -> Result<(Vec<RawObject>, String), FeedError> {
    let (format, body) = get(client, &collection.list_uri()).await?;
    let bytes: Bytes = body
        .collect()
        .await
        .map_err(|e| FeedError::Body(e.to_string()))?
        .to_bytes();
    let list = codec::decode_list(format, &bytes)?;
    Ok((list.items, list.resource_version))
}

/// One watch from `rv`, which follows every event and bookmark. The number of events
/// when it ended cleanly.
async fn watch(
    client: &kube::Client,
    collection: &Collection,
    rv: &mut String,
    on: &mut impl FnMut(FeedEvent),
) -> Result<usize, FeedError> {
    let (format, mut body) = get(client, &collection.watch_uri(rv, timeout_seconds())).await?;
    let mut decoder = WatchDecoder::new(format);
    let mut events = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FeedError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for (event, _) in decoder.push(&data)? {
            events += 1;
            let object = event.object;
            match event.event_type.as_str() {
                "ERROR" => return Err(FeedError::Expired),
                "BOOKMARK" => {}
                "DELETED" => {
                    rv.clone_from(&object.info.resource_version);
                    on(FeedEvent::Deleted(object));
                    continue;
                }
                _ => {
                    rv.clone_from(&object.info.resource_version);
                    on(FeedEvent::Applied(object));
                    continue;
                }
            }
            rv.clone_from(&object.info.resource_version);
        }
    }
    Ok(events)
}

/// A watch's timeout, spread over [5, 10) minutes like client-go's reflectors, so the
/// watches of many hubs do not all end together.
fn timeout_seconds() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    300 + nanos % 300
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use serde_json::json;

    use super::*;

    type Answer = http::Response<UnsyncBoxBody<Bytes, Infallible>>;

    /// A server answering lists and watches from scripts, in order; a watch past its
    /// script stays open without events. Records every request URI.
    #[derive(Clone, Default)]
    struct Scripted {
        lists: Arc<Mutex<VecDeque<Bytes>>>,
        watches: Arc<Mutex<VecDeque<Bytes>>>,
        uris: Arc<Mutex<Vec<String>>>,
    }

    impl Scripted {
        fn answer(&self, uri: &str) -> Answer {
            self.uris.lock().unwrap().push(uri.to_owned());
            let body = if uri.contains("watch=true") {
                match self.watches.lock().unwrap().pop_front() {
                    Some(b) => Full::new(b).boxed_unsync(),
                    None => StreamBody::new(futures_util::stream::pending::<
                        Result<Frame<Bytes>, Infallible>,
                    >())
                    .boxed_unsync(),
                }
            } else {
                Full::new(self.lists.lock().unwrap().pop_front().unwrap_or_default()).boxed_unsync()
            };
            let mut resp = http::Response::new(body);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }

        fn client(&self) -> kube::Client {
            let me = self.clone();
            let service = tower::service_fn(move |req: http::Request<Body>| {
                let me = me.clone();
                async move { Ok::<_, Infallible>(me.answer(&req.uri().to_string())) }
            });
            kube::Client::new(service, "default")
        }

        fn uris(&self) -> Vec<String> {
            self.uris.lock().unwrap().clone()
        }
    }

    fn service(name: &str, rv: u64) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "d", "resourceVersion": rv.to_string()}})
    }

    fn list(rv: u64, names: &[&str]) -> Bytes {
        let items: Vec<_> = names.iter().map(|n| service(n, rv)).collect();
        Bytes::from(
            json!({"apiVersion": "v1", "kind": "ServiceList",
                   "metadata": {"resourceVersion": rv.to_string()}, "items": items})
            .to_string(),
        )
    }

    fn events(lines: &[serde_json::Value]) -> Bytes {
        Bytes::from(lines.iter().map(|l| format!("{l}\n")).collect::<String>())
    }

    fn follow_into(server: &Scripted) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        let collection = Collection {
            path: "/api/v1/services".into(),
            field_selector: Some("metadata.name=a".into()),
        };
        let task = tokio::spawn(follow(server.client(), collection, move |e| {
            let line = match e {
                FeedEvent::Listed(items) => {
                    let names: Vec<_> = items.iter().map(|o| o.info.name.as_str()).collect();
                    format!("listed {}", names.join(","))
                }
                FeedEvent::Applied(o) => format!("applied {}", o.info.name),
                FeedEvent::Deleted(o) => format!("deleted {}", o.info.name),
            };
            kept.lock().unwrap().push(line);
        }));
        (seen, task)
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never: {what}");
    }

    fn param<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
        uri.split_once('?')?
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    #[tokio::test]
    async fn an_ended_watch_is_opened_again_from_the_last_version_without_a_relist() {
        let server = Scripted::default();
        server.lists.lock().unwrap().push_back(list(5, &["a"]));
        server.watches.lock().unwrap().push_back(events(&[
            json!({"type": "MODIFIED", "object": service("a", 6)}),
            json!({"type": "BOOKMARK", "object": service("", 8)}),
        ]));
        let (seen, task) = follow_into(&server);
        until("a second watch", || server.uris().len() == 3).await;
        task.abort();
        let uris = server.uris();
        assert_eq!(param(&uris[0], "resourceVersion"), Some("0"), "{uris:?}");
        assert_eq!(param(&uris[0], "watch"), None);
        assert_eq!(param(&uris[1], "resourceVersion"), Some("5"));
        assert_eq!(
            param(&uris[2], "resourceVersion"),
            Some("8"),
            "from the bookmark"
        );
        for u in &uris {
            assert_eq!(param(u, "fieldSelector"), Some("metadata.name%3Da"), "{u}");
        }
        for w in &uris[1..] {
            assert_eq!(param(w, "allowWatchBookmarks"), Some("true"));
            let timeout: u64 = param(w, "timeoutSeconds").unwrap().parse().unwrap();
            assert!((300..600).contains(&timeout), "{timeout}");
        }
        assert_eq!(*seen.lock().unwrap(), ["listed a", "applied a"]);
    }

    #[tokio::test]
    async fn an_error_event_relists_and_the_new_list_replaces_everything() {
        let server = Scripted::default();
        server
            .lists
            .lock()
            .unwrap()
            .extend([list(5, &["a"]), list(9, &["b"])]);
        server.watches.lock().unwrap().push_back(events(&[
            json!({"type": "DELETED", "object": service("a", 6)}),
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                   "metadata": {}, "code": 410, "reason": "Expired"}}),
        ]));
        let (seen, task) = follow_into(&server);
        until("a watch after the relist", || server.uris().len() == 4).await;
        task.abort();
        let uris = server.uris();
        assert_eq!(param(&uris[2], "watch"), None, "a list: {uris:?}");
        assert_eq!(param(&uris[3], "resourceVersion"), Some("9"));
        assert_eq!(*seen.lock().unwrap(), ["listed a", "deleted a", "listed b"]);
    }

    #[tokio::test]
    async fn an_unreadable_list_is_tried_again_and_nothing_is_reported() {
        let server = Scripted::default();
        server
            .lists
            .lock()
            .unwrap()
            .extend([Bytes::from_static(b"{not json"), list(3, &["a"])]);
        let (seen, task) = follow_into(&server);
        until("a watch after the second list", || server.uris().len() == 3).await;
        task.abort();
        assert_eq!(*seen.lock().unwrap(), ["listed a"]);
    }
}
