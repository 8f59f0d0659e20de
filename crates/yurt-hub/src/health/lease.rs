//! The node's Lease as the hub renews it upstream for kubelet, the way kubelet's own
//! lease controller does (k8s.io/component-helpers/apimachinery/lease, 1.20): it keeps
//! the Lease the server last returned and renews by a PUT of that copy with a new
//! renewTime, one request per interval. It reads the Lease (or creates it) only when it
//! holds no copy: at start, after a conflict (someone else wrote it, e.g. a pool
//! leader's delegated heartbeat: then it retries the PUT once with the fresh copy),
//! after the Lease was deleted, or after the server refused the copy itself.
//!
//! Like kubelet's, a Lease without an owner gets the node's Node as its owner (one read
//! of the Node's metadata per renewal until it has one; none while the Node is not
//! registered yet, as when a joining node's hub starts before kubelet registers): deleting
//! the Node then deletes its Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, ObjectMeta, PostParams};

use super::LEASE_NAMESPACE;

/// The annotation a pool leader sets while it renews a node's Lease for it; the node's
/// own renewal takes it off.
const DELEGATE_HEARTBEAT: &str = "openyurt.io/delegate-heartbeat";

/// Renews one node's Lease.
#[derive(Debug)]
pub(super) struct LeaseRenewer {
    node: String,
    duration_seconds: i32,
    /// The Lease as the server last returned it (kubelet's `latestLease`); `None` until
    /// the first read or create, and after a conflict.
    latest: Option<Lease>,
}

impl LeaseRenewer {
    /// Renews `node`'s Lease with a duration of `grace`.
    pub(super) fn new(node: &str, grace: Duration) -> Self {
        Self {
            node: node.to_owned(),
            duration_seconds: i32::try_from(grace.as_secs()).unwrap_or(40),
            latest: None,
        }
    }

    /// One renewal through `client`: a PUT of the last Lease the server returned; a GET
    /// (or a create) first when there is none; after a conflict one GET and one more PUT.
    ///
    /// Cancel-safe: a renewal cut off after its PUT reached the server leaves the older
    /// copy, whose next PUT conflicts and is read again.
    ///
    /// # Errors
    /// The API server's refusal or the transport's failure of the last request made.
    pub(super) async fn renew(&mut self, client: &kube::Client) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        let nodes: Api<Node> = Api::all(client.clone());
        let base = match self.latest.clone() {
            Some(lease) => lease,
            None => match self.ensure(&api, &nodes).await? {
                Some(lease) => lease,
                None => return Ok(()),
            },
        };
        match self.put(&api, &nodes, base).await {
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                tracing::debug!(node = %self.node, code = s.code, "lease changed upstream: reading it again");
                match self.ensure(&api, &nodes).await? {
                    Some(fresh) => self.put(&api, &nodes, fresh).await,
                    None => Ok(()),
                }
            }
            other => other,
        }
    }

    /// Reads the Lease: `Some` to renew; `None` when there was none and the hub created
    /// it (renewed by its creation).
    async fn ensure(
        &mut self,
        api: &Api<Lease>,
        nodes: &Api<Node>,
    ) -> Result<Option<Lease>, kube::Error> {
        self.latest = None;
        if let Some(lease) = api.get_opt(&self.node).await? {
            self.latest = Some(lease.clone());
            return Ok(Some(lease));
        }
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.node.clone()),
                namespace: Some(LEASE_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node.clone()),
                lease_duration_seconds: Some(self.duration_seconds),
                renew_time: Some(MicroTime(jiff::Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        self.own(nodes, &mut lease).await;
        self.latest = Some(api.create(&PostParams::default(), &lease).await?);
        Ok(None)
    }

    /// Makes the node's Node the owner of `lease` if it has none and the Node can be read
    /// (kubelet's `setNodeOwnerFunc`); otherwise leaves it as it is.
    async fn own(&self, nodes: &Api<Node>, lease: &mut Lease) {
        if lease
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| !o.is_empty())
        {
            return;
        }
        match nodes.get_metadata_opt(&self.node).await {
            Ok(Some(node)) => {
                if let Some(uid) = node.metadata.uid {
                    lease.metadata.owner_references = Some(vec![OwnerReference {
                        api_version: "v1".to_owned(),
                        kind: "Node".to_owned(),
                        name: self.node.clone(),
                        uid,
                        ..OwnerReference::default()
                    }]);
                }
            }
            Ok(None) => {
                tracing::debug!(node = %self.node, "no Node yet to own the node's Lease");
            }
            Err(e) => {
                tracing::debug!(node = %self.node, error = %e, "reading the Node to own the node's Lease");
            }
        }
    }

    /// PUTs `base` renewed now, and keeps what the server returns.
    async fn put(
        &mut self,
        api: &Api<Lease>,
        nodes: &Api<Node>,
        mut base: Lease,
    ) -> Result<(), kube::Error> {
        self.own(nodes, &mut base).await;
        let spec = base.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        spec.holder_identity = Some(self.node.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds);
        if let Some(a) = base.metadata.annotations.as_mut() {
            a.remove(DELEGATE_HEARTBEAT);
        }
        match api.replace(&self.node, &PostParams::default(), &base).await {
            Ok(lease) => {
                self.latest = Some(lease);
                Ok(())
            }
            Err(e) => {
                // A copy the server refuses for what it is (not for being busy or
                // unreachable) is read again next time rather than sent again.
                if let kube::Error::Api(s) = &e
                    && (400..500).contains(&s.code)
                    && s.code != 429
                {
                    self.latest = None;
                }
                Err(e)
            }
        }
    }
}

/// A scripted API server holding one Lease, for the prober's tests: it keeps the
/// Lease's resourceVersion as a real one does (409 on a stale PUT) and records every
/// request.
#[cfg(test)]
pub(super) mod fake {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use serde_json::{Value, json};

    use super::LEASE_NAMESPACE;

    struct State {
        lease: Option<Value>,
        /// The uid of the node's Node, once it exists.
        node_uid: Option<String>,
        rv: u64,
        requests: Vec<(Method, String)>,
        /// Answers to give the next requests instead of serving them.
        failures: Vec<StatusCode>,
    }

    /// The fake server; clones share it.
    #[derive(Clone)]
    pub(in crate::health) struct FakeLeases {
        state: Arc<Mutex<State>>,
        /// Counts the PUTs of the Lease, for tests to wait on.
        puts: Arc<tokio::sync::watch::Sender<usize>>,
    }

    impl Default for FakeLeases {
        fn default() -> Self {
            Self {
                state: Arc::new(Mutex::new(State {
                    lease: None,
                    node_uid: None,
                    rv: 0,
                    requests: Vec::new(),
                    failures: Vec::new(),
                })),
                puts: Arc::new(tokio::sync::watch::channel(0).0),
            }
        }
    }

    fn status(code: StatusCode, reason: &str) -> Response<Full<Bytes>> {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "code": code.as_u16(),
            "message": reason,
        });
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = code;
        r
    }

    fn ok(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = code;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }

    impl FakeLeases {
        /// A server that holds `node`'s Lease at resourceVersion 1.
        pub(in crate::health) fn with_lease(node: &str) -> Self {
            let fake = Self::default();
            fake.other_writer(node, None);
            fake
        }

        /// Another writer replaces the Lease (a new resourceVersion), with `annotation`.
        pub(in crate::health) fn other_writer(&self, node: &str, annotation: Option<&str>) {
            let mut s = self.state.lock().expect("not poisoned");
            s.rv += 1;
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": LEASE_NAMESPACE,
                             "resourceVersion": s.rv.to_string()},
                "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 40},
            });
            if let Some(a) = annotation {
                lease["metadata"]["annotations"] = json!({ a: "true" });
            }
            s.lease = Some(lease);
        }

        /// The next requests are answered with `codes`, in order.
        pub(in crate::health) fn fail_next(&self, codes: &[StatusCode]) {
            let mut s = self.state.lock().expect("not poisoned");
            s.failures = codes.iter().rev().copied().collect();
        }

        /// The node's Node is registered, with `uid`.
        pub(in crate::health) fn register_node(&self, uid: &str) {
            self.state.lock().expect("not poisoned").node_uid = Some(uid.to_owned());
        }

        /// How many reads of a Node the server saw.
        pub(in crate::health) fn node_reads(&self) -> usize {
            self.state
                .lock()
                .expect("not poisoned")
                .requests
                .iter()
                .filter(|(m, p)| m == Method::GET && p.starts_with("/api/v1/nodes/"))
                .count()
        }

        /// Someone deletes the Lease.
        pub(in crate::health) fn delete(&self) {
            self.state.lock().expect("not poisoned").lease = None;
        }

        /// The Lease as the server holds it.
        pub(in crate::health) fn lease(&self) -> Option<Value> {
            self.state.lock().expect("not poisoned").lease.clone()
        }

        /// How many requests with `method` to a Lease the server saw.
        pub(in crate::health) fn count(&self, method: &Method) -> usize {
            self.state
                .lock()
                .expect("not poisoned")
                .requests
                .iter()
                .filter(|(m, p)| m == method && p.contains("/leases"))
                .count()
        }

        /// Waits (at most 10 s) until the server has seen `n` PUTs of the Lease.
        pub(in crate::health) async fn wait_for_puts(&self, n: usize) {
            let mut rx = self.puts.subscribe();
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(|p| *p >= n))
                .await
                .expect("the PUTs arrive in time")
                .expect("the fake server lives");
        }

        /// A typed client talking to this server (no socket).
        pub(in crate::health) fn client(&self) -> kube::Client {
            let fake = self.clone();
            let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
                let fake = fake.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(fake.answer(&parts.method, parts.uri.path(), &body))
                }
            });
            kube::Client::new(svc, "default")
        }

        fn answer(&self, method: &Method, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
            let mut s = self.state.lock().expect("not poisoned");
            s.requests.push((method.clone(), path.to_owned()));
            if method == Method::PUT {
                self.puts.send_modify(|n| *n += 1);
            }
            // The Node (for the Lease's owner) is answered apart: injected failures are
            // for the Lease's requests.
            if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
                return match &s.node_uid {
                    Some(uid) if *method == Method::GET => ok(
                        StatusCode::OK,
                        &json!({"apiVersion": "v1", "kind": "Node",
                                "metadata": {"name": name, "uid": uid}}),
                    ),
                    _ => status(StatusCode::NOT_FOUND, "NotFound"),
                };
            }
            if let Some(code) = s.failures.pop() {
                return status(code, "Injected");
            }
            if path == "/readyz" {
                return Response::new(Full::new(Bytes::from_static(b"ok")));
            }
            let collection =
                format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases");
            let sent: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            match *method {
                Method::GET if path.starts_with(&collection) => match &s.lease {
                    Some(l) => ok(StatusCode::OK, l),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                },
                Method::POST if path == collection => {
                    if s.lease.is_some() {
                        return status(StatusCode::CONFLICT, "AlreadyExists");
                    }
                    s.rv += 1;
                    let mut lease = sent;
                    lease["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    s.lease = Some(lease.clone());
                    ok(StatusCode::CREATED, &lease)
                }
                Method::PUT if path.starts_with(&collection) => {
                    let Some(current) = &s.lease else {
                        return status(StatusCode::NOT_FOUND, "NotFound");
                    };
                    if sent["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
                    {
                        return status(StatusCode::CONFLICT, "Conflict");
                    }
                    s.rv += 1;
                    let mut lease = sent;
                    lease["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    s.lease = Some(lease.clone());
                    ok(StatusCode::OK, &lease)
                }
                _ => status(StatusCode::NOT_FOUND, "NotFound"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};

    use super::LeaseRenewer;
    use super::fake::FakeLeases;
    use crate::config::HealthConfig;

    const NODE: &str = "edge-a1";

    /// One interval's probe, as the prober makes it, bounded.
    async fn probe(client: &kube::Client, lease: &mut LeaseRenewer) -> bool {
        let cfg = HealthConfig {
            timeout: Duration::from_secs(5),
            ..HealthConfig::default()
        };
        let url: http::Uri = "https://api.test:6443".parse().expect("url");
        tokio::time::timeout(
            Duration::from_secs(30),
            super::super::probe(client, &url, lease, &cfg, true),
        )
        .await
        .expect("the probe ends in time")
    }

    fn counts(fake: &FakeLeases) -> (usize, usize, usize) {
        (
            fake.count(&Method::GET),
            fake.count(&Method::POST),
            fake.count(&Method::PUT),
        )
    }

    #[tokio::test]
    async fn renewals_put_from_the_last_lease_and_get_it_only_once() {
        let fake = FakeLeases::with_lease(NODE);
        let client = fake.client();
        let mut lease = LeaseRenewer::new(NODE, Duration::from_secs(40));
        for _ in 0..5 {
            assert!(probe(&client, &mut lease).await);
        }
        assert_eq!(
            counts(&fake),
            (1, 0, 5),
            "(GET, POST, PUT): 5 renewals are 5 PUTs after one GET"
        );
        let stored = fake.lease().expect("the lease");
        assert_eq!(stored["spec"]["holderIdentity"], NODE);
        assert_eq!(stored["spec"]["leaseDurationSeconds"], 40);
        assert!(stored["spec"]["renewTime"].is_string());
        assert_eq!(stored["metadata"]["resourceVersion"], "6");
    }

    #[tokio::test]
    async fn a_conflict_gets_the_lease_again_and_retries_the_put_once() {
        let fake = FakeLeases::with_lease(NODE);
        let client = fake.client();
        let mut lease = LeaseRenewer::new(NODE, Duration::from_secs(40));
        assert!(probe(&client, &mut lease).await);
        assert!(probe(&client, &mut lease).await);
        assert_eq!(counts(&fake), (1, 0, 2));
        // The pool's leader renews it for us meanwhile, as OpenYurt's delegation does.
        fake.other_writer(NODE, Some("openyurt.io/delegate-heartbeat"));
        assert!(probe(&client, &mut lease).await);
        assert_eq!(
            counts(&fake),
            (2, 0, 4),
            "(GET, POST, PUT): the stale PUT, one GET, the retried PUT"
        );
        let stored = fake.lease().expect("the lease");
        assert_eq!(stored["spec"]["holderIdentity"], NODE);
        assert!(
            stored["metadata"]["annotations"]
                .get("openyurt.io/delegate-heartbeat")
                .is_none(),
            "the delegation mark is taken off: {stored}"
        );
        assert!(probe(&client, &mut lease).await);
        assert_eq!(counts(&fake), (2, 0, 5), "back to PUTs only");
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_then_renewed_by_put() {
        let fake = FakeLeases::default();
        let client = fake.client();
        let mut lease = LeaseRenewer::new(NODE, Duration::from_secs(40));
        for _ in 0..3 {
            assert!(probe(&client, &mut lease).await);
        }
        assert_eq!(
            counts(&fake),
            (1, 1, 2),
            "(GET, POST, PUT): a GET that finds none, the create, then PUTs"
        );
        fake.delete();
        assert!(probe(&client, &mut lease).await);
        assert_eq!(
            counts(&fake),
            (2, 2, 3),
            "a Lease deleted meanwhile: the PUT finds none, one GET, one create"
        );
        assert_eq!(
            fake.lease().expect("the lease")["spec"]["holderIdentity"],
            NODE
        );
    }

    #[tokio::test]
    async fn the_lease_gets_its_node_as_owner_once_the_node_is_registered() {
        // A joining node's hub renews (here: creates) the Lease before kubelet has
        // registered the Node.
        let fake = FakeLeases::default();
        let client = fake.client();
        let mut lease = LeaseRenewer::new(NODE, Duration::from_secs(40));
        assert!(probe(&client, &mut lease).await);
        assert!(probe(&client, &mut lease).await);
        let owners = |fake: &FakeLeases| {
            fake.lease().expect("the lease")["metadata"]["ownerReferences"].clone()
        };
        assert_eq!(owners(&fake), serde_json::Value::Null, "no Node, no owner");
        assert_eq!(
            fake.node_reads(),
            2,
            "the Node is looked for at each renewal"
        );
        fake.register_node("uid-1");
        assert!(probe(&client, &mut lease).await);
        assert_eq!(
            owners(&fake),
            serde_json::json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "uid-1"}]),
            "deleting the Node deletes its Lease"
        );
        for _ in 0..3 {
            assert!(probe(&client, &mut lease).await);
        }
        assert_eq!(
            fake.node_reads(),
            3,
            "an owned Lease is renewed without reading the Node"
        );
        assert_eq!(
            counts(&fake),
            (1, 1, 5),
            "(GET, POST, PUT) of the Lease, as before"
        );
        // Deleted with its Node (collected), then made again for the new Node.
        fake.delete();
        fake.register_node("uid-2");
        assert!(probe(&client, &mut lease).await);
        assert_eq!(owners(&fake)[0]["uid"], "uid-2");
    }

    #[tokio::test]
    async fn a_failed_put_is_retried_from_the_same_lease_without_a_get() {
        let fake = FakeLeases::with_lease(NODE);
        let client = fake.client();
        let mut lease = LeaseRenewer::new(NODE, Duration::from_secs(40));
        assert!(probe(&client, &mut lease).await);
        fake.fail_next(&[StatusCode::SERVICE_UNAVAILABLE]);
        assert!(
            probe(&client, &mut lease).await,
            "the probe's next attempt succeeds"
        );
        assert_eq!(
            counts(&fake),
            (1, 0, 3),
            "(GET, POST, PUT): the failed PUT and its retry, no GET"
        );
    }

    #[tokio::test]
    async fn a_copy_the_server_refuses_is_read_again() {
        let fake = FakeLeases::with_lease(NODE);
        let client = fake.client();
        let mut lease = LeaseRenewer::new(NODE, Duration::from_secs(40));
        assert!(probe(&client, &mut lease).await);
        fake.fail_next(&[StatusCode::UNPROCESSABLE_ENTITY]);
        assert!(probe(&client, &mut lease).await);
        assert_eq!(
            counts(&fake),
            (2, 0, 3),
            "(GET, POST, PUT): the refused PUT, then a GET and a PUT"
        );
    }
}
