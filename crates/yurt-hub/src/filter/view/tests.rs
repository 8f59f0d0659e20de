use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::fake_api::{FakeApi, NODEPOOLS, SeenRequest, node, nodepool, service};
use super::*;
use crate::codec::{self, RawObject};
use crate::filter::Filter as _;
use crate::filter::builtin::{NodeContext, ServiceTopology, TOPOLOGY_KEYS};

/// Bounds every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// Waits until `done` holds, at most [`WAIT`].
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A view kept by `run` against `api` until the returned token is cancelled (on drop).
struct Running {
    view: Arc<ClusterView>,
    stop: tokio_util::sync::DropGuard,
}

fn start(api: &FakeApi, configured_pool: Option<&str>) -> Running {
    start_with(api.client(), configured_pool)
}

fn start_with(client: kube::Client, configured_pool: Option<&str>) -> Running {
    let view = Arc::new(ClusterView::default());
    let agents = Arc::new(Agents::new("edge-a1", &[]));
    let token = CancellationToken::new();
    tokio::spawn(run(
        view.clone(),
        agents,
        client,
        Scope {
            node: "edge-a1".into(),
            configured_pool: configured_pool.map(str::to_owned),
            namespace: "kube-system".into(),
        },
        token.clone(),
    ));
    Running {
        view,
        stop: token.drop_guard(),
    }
}

fn fleet() -> FakeApi {
    FakeApi::new([
        node("edge-a1", Some("pool-a"), "10.244.1.0/24"),
        node("edge-a2", Some("pool-a"), "10.244.2.0/24"),
        node("edge-b1", Some("pool-b"), "10.244.3.0/24"),
        service("by-pool", json!({TOPOLOGY_KEYS: "openyurt.io/nodepool"})),
    ])
}

/// [`fleet`] with a NodePool for each pool, as yurt-manager keeps them.
fn pooled_fleet() -> FakeApi {
    let api = fleet();
    api.put(nodepool("pool-a", &["edge-a1", "edge-a2"]));
    api.put(nodepool("pool-b", &["edge-b1"]));
    api
}

fn nodepool_requests(api: &FakeApi) -> Vec<SeenRequest> {
    api.seen()
        .into_iter()
        .filter(|r| r.path == NODEPOOLS)
        .collect()
}

/// Whether everything listed so far is being watched (the same path and selectors).
fn watching_all_it_listed(api: &FakeApi) -> bool {
    let seen = api.seen();
    let shape = |r: &SeenRequest| {
        (
            r.path.clone(),
            r.param("labelSelector").map(str::to_owned),
            r.param("fieldSelector").map(str::to_owned),
        )
    };
    seen.iter()
        .filter(|r| !r.is_watch())
        .all(|list| seen.iter().any(|w| w.is_watch() && shape(w) == shape(list)))
}

fn node_requests(api: &FakeApi) -> Vec<SeenRequest> {
    api.seen()
        .into_iter()
        .filter(|r| r.path == "/api/v1/nodes")
        .collect()
}

fn pool_selector(pool: &str) -> String {
    format!("{POOL_LABEL}={pool}")
}

/// `default/by-pool` Endpoints with one address on each node.
fn endpoints() -> RawObject {
    let address = |ip: &str, node: &str| json!({"ip": ip, "nodeName": node});
    codec::json_from_value(json!({
        "kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": "by-pool", "namespace": "default", "resourceVersion": "7"},
        "subsets": [{"addresses": [
            address("10.244.1.2", "edge-a1"),
            address("10.244.2.2", "edge-a2"),
            address("10.244.3.2", "edge-b1"),
        ]}],
    }))
    .expect("JSON object")
}

fn kept_nodes(filter: &ServiceTopology) -> Vec<String> {
    let out = filter.apply(endpoints()).expect("kept");
    let v: Value = serde_json::from_slice(&out.data).expect("JSON");
    v["subsets"][0]["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| a["nodeName"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn the_view_asks_for_its_pools_nodes_as_metadata_and_for_its_own_node_by_name() {
    let api = fleet();
    let running = start(&api, None);
    let view = &running.view;
    eventually("edge-a2 is seen in pool-a", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
    })
    .await;
    eventually("its own pod CIDRs are known", || {
        !view.pod_cidrs_of("edge-a1").is_empty()
    })
    .await;
    assert_eq!(
        view.pool_of("edge-b1"),
        None,
        "another pool's node is never seen"
    );

    let requests = node_requests(&api);
    let in_pool: Vec<&SeenRequest> = requests
        .iter()
        .filter(|r| r.param("labelSelector") == Some(pool_selector("pool-a").as_str()))
        .collect();
    assert!(
        in_pool.iter().any(|r| !r.is_watch()) && in_pool.iter().any(|r| r.is_watch()),
        "its pool's Nodes are listed and watched: {requests:#?}"
    );
    for r in &in_pool {
        let wanted = if r.is_watch() {
            "as=PartialObjectMetadata;"
        } else {
            "as=PartialObjectMetadataList;"
        };
        assert!(r.accept.contains(wanted), "metadata only: {r:?}");
    }
    for r in &requests {
        let own = r.param("fieldSelector") == Some("metadata.name=edge-a1")
            && r.param("labelSelector").is_none();
        assert!(
            own || in_pool.iter().any(|p| std::ptr::eq(*p, r)),
            "a Node request neither for its pool nor for its own node: {r:?}"
        );
        assert!(
            !own || r.protobuf_first(),
            "its own Node is asked for as kubelet asks, protobuf first: {r:?}"
        );
    }
    let services: Vec<SeenRequest> = api
        .seen()
        .into_iter()
        .filter(|r| r.path == "/api/v1/services")
        .collect();
    assert!(
        services.iter().any(SeenRequest::is_watch)
            && services.iter().all(SeenRequest::protobuf_first),
        "Services are listed and watched protobuf first: {services:#?}"
    );
    drop(running.stop);
}

/// kubelet's watch of `uri` through `hub` (the node-local port, its own User-Agent,
/// protobuf first), as a body to read.
async fn kubelet_watch(
    hub: &Arc<crate::proxy::Hub>,
    upstream: &crate::proxy::fake::FakeUpstream,
    uri: &str,
) -> crate::body::ResponseBody {
    let req = crate::proxy::fake::request(
        "GET",
        uri,
        &[
            crate::proxy::fake::KUBELET,
            ("accept", "application/vnd.kubernetes.protobuf, */*"),
        ],
        b"",
    );
    let resp = crate::proxy::fake::send(hub, upstream, crate::proxy::Origin::Local, req).await;
    assert_eq!(resp.status(), http::StatusCode::OK, "{uri}");
    resp.into_body()
}

#[tokio::test]
async fn the_hub_shares_kubelets_services_and_own_node_watches_with_the_view() {
    use http_body_util::BodyExt as _;
    let api = fleet();
    let (hub, _dir) = crate::proxy::fake::hub(
        crate::config::Limits::default(),
        crate::filter::Filters::none(),
    );
    let upstream = crate::proxy::fake::FakeUpstream(Some(api.as_upstream()));
    let running = start_with(FakeApi::hub_client(&hub, upstream.clone()), None);
    let view = running.view.clone();
    let watches = |path: &str, field: Option<&str>| {
        api.seen()
            .iter()
            .filter(|r| r.path == path && r.is_watch() && r.param("fieldSelector") == field)
            .count()
    };
    eventually("the view watches Services and its own Node", || {
        view.services_synced()
            && watches("/api/v1/services", None) == 1
            && watches("/api/v1/nodes", Some("metadata.name=edge-a1")) == 1
    })
    .await;

    // kubelet watches both from what it listed (now), as kubelet does.
    let now = {
        let list = crate::proxy::fake::send(
            &hub,
            &upstream,
            crate::proxy::Origin::Local,
            crate::proxy::fake::request(
                "GET",
                "/api/v1/services",
                &[crate::proxy::fake::KUBELET, ("accept", "application/json")],
                b"",
            ),
        )
        .await;
        let body = list.into_body().collect().await.expect("list").to_bytes();
        codec::decode_list(codec::Format::Json, &body)
            .expect("a list")
            .resource_version
    };
    let mut services = kubelet_watch(
        &hub,
        &upstream,
        &format!("/api/v1/services?allowWatchBookmarks=true&resourceVersion={now}&timeoutSeconds=400&watch=true"),
    )
    .await;
    let _own = kubelet_watch(
        &hub,
        &upstream,
        &format!("/api/v1/nodes?allowWatchBookmarks=true&fieldSelector=metadata.name%3Dedge-a1&resourceVersion={now}&timeoutSeconds=400&watch=true"),
    )
    .await;
    api.put(service("shared", json!({"a": "b"})));
    eventually("the view sees the new Service", || {
        view.service_annotations("default", "shared")
            .is_some_and(|a| a.get("a").map(String::as_str) == Some("b"))
    })
    .await;
    let mut decoder = codec::WatchDecoder::new(codec::Format::Protobuf);
    let mut seen = Vec::new();
    while seen.is_empty() {
        let frame = tokio::time::timeout(WAIT, services.frame())
            .await
            .expect("kubelet gets the event")
            .expect("a frame")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            seen.extend(decoder.push(&data).expect("protobuf events"));
        }
    }
    assert_eq!(seen[0].0.event_type, "ADDED");
    assert_eq!(seen[0].0.object.info.name, "shared");
    assert_eq!(
        (
            watches("/api/v1/services", None),
            watches("/api/v1/nodes", Some("metadata.name=edge-a1"))
        ),
        (1, 1),
        "kubelet's watches joined the view's: one upstream watch each"
    );
    drop(running.stop);
}

#[tokio::test]
async fn when_its_own_node_moves_to_another_pool_the_view_and_the_filters_follow() {
    moves_with_its_node(fleet(), false).await;
}

#[tokio::test]
async fn when_its_own_node_moves_to_another_pool_the_view_follows_that_pools_nodepool() {
    moves_with_its_node(pooled_fleet(), true).await;
}

/// Moves `edge-a1` from pool-a to pool-b; `nodepools` says whether `api` has NodePools.
async fn moves_with_its_node(api: FakeApi, nodepools: bool) {
    let running = start(&api, None);
    let view = running.view.clone();
    eventually("pool-a and the Service are known", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
            && view.service_annotations("default", "by-pool").is_some()
    })
    .await;
    let topology = ServiceTopology(NodeContext {
        node: "edge-a1".into(),
        pool: None,
        hub_ip: "169.254.2.1".parse().expect("address"),
        hub_port: 10268,
        view: view.clone(),
    });
    assert_eq!(kept_nodes(&topology), ["edge-a1", "edge-a2"]);

    api.put(node("edge-a1", Some("pool-b"), "10.244.1.0/24"));
    eventually("the view holds pool-b instead of pool-a", || {
        view.pool_of("edge-b1").as_deref() == Some("pool-b") && view.pool_of("edge-a2").is_none()
    })
    .await;
    assert_eq!(kept_nodes(&topology), ["edge-a1", "edge-b1"]);
    if nodepools {
        assert!(
            nodepool_requests(&api)
                .iter()
                .any(|r| r.is_watch() && r.param("fieldSelector") == Some("metadata.name=pool-b")),
            "it watches pool-b's NodePool now"
        );
        assert!(
            node_requests(&api)
                .iter()
                .all(|r| r.param("labelSelector").is_none()),
            "and never a pool's Nodes"
        );
    } else {
        assert!(
            node_requests(&api).iter().any(|r| r.is_watch()
                && r.metadata_only()
                && r.param("labelSelector") == Some(pool_selector("pool-b").as_str())),
            "it watches pool-b now"
        );
    }
    drop(running.stop);
}

#[tokio::test]
async fn a_configured_pool_is_watched_whatever_its_own_nodes_label_says() {
    // The filters take the configured pool over the label (NodeContext::pool): the view
    // holds that pool's Nodes, and a relabelled node does not move it.
    let api = fleet();
    let running = start(&api, Some("pool-b"));
    let view = running.view.clone();
    eventually("pool-b's Nodes are known", || {
        view.pool_of("edge-b1").as_deref() == Some("pool-b")
    })
    .await;
    assert_eq!(view.pool_of("edge-a2"), None);
    eventually("its own label is known", || {
        view.pool_of("edge-a1").as_deref() == Some("pool-a")
    })
    .await;
    api.put(node("edge-a1", None, "10.244.1.0/24"));
    eventually("its own label is gone", || {
        view.pool_of("edge-a1").is_none()
    })
    .await;
    assert_eq!(view.pool_of("edge-b1").as_deref(), Some("pool-b"));
    assert!(
        node_requests(&api)
            .iter()
            .filter(|r| r.param("labelSelector").is_some())
            .all(|r| r.param("labelSelector") == Some(pool_selector("pool-b").as_str())),
        "only pool-b is ever asked for"
    );
    drop(running.stop);
}

#[tokio::test]
async fn after_an_offline_restart_the_view_comes_back_from_the_hubs_cache() {
    // The view talks through the hub (as in lib.rs), which caches its own Node whole and
    // its pool's Nodes as metadata: offline, a new view gets both back, each as it was read.
    comes_back_offline(fleet()).await;
}

#[tokio::test]
async fn after_an_offline_restart_the_view_comes_back_from_the_cached_nodepool() {
    // Here the hub has cached its own Node and its pool's NodePool, and never the pool's
    // Nodes: offline, the members come back from the NodePool.
    let api = pooled_fleet();
    comes_back_offline(api.clone()).await;
    assert!(
        node_requests(&api)
            .iter()
            .all(|r| r.param("labelSelector").is_none()),
        "the pool's Nodes were never asked for"
    );
    assert!(
        nodepool_requests(&api).iter().any(|r| !r.is_watch()),
        "its NodePool was"
    );
}

/// Runs a view through a hub against `api`, then another with the hub offline.
async fn comes_back_offline(api: FakeApi) {
    let (hub, _dir) = crate::proxy::fake::hub(
        crate::config::Limits::default(),
        crate::filter::Filters::none(),
    );
    let online = crate::proxy::fake::FakeUpstream(Some(api.as_upstream()));
    let running = start_with(FakeApi::hub_client(&hub, online), None);
    let view = running.view.clone();
    eventually("pool-a and its own pod CIDRs are known online", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
            && !view.pod_cidrs_of("edge-a1").is_empty()
    })
    .await;
    drop(running);

    let offline = crate::proxy::fake::FakeUpstream(None);
    let running = start_with(FakeApi::hub_client(&hub, offline), None);
    let view = running.view.clone();
    eventually("pool-a and its own pod CIDRs are known offline", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
            && view.pod_cidrs_of("edge-a1")
                == ["10.244.1.0/24".parse::<ipnet::IpNet>().expect("CIDR")]
    })
    .await;
    assert_eq!(view.pool_of("edge-b1"), None);
    assert_eq!(view.pool_of("edge-a1").as_deref(), Some("pool-a"));
    drop(running);
}

#[tokio::test]
async fn with_its_nodepool_the_view_takes_the_pools_members_from_it_and_watches_no_pool_nodes() {
    let api = pooled_fleet();
    let running = start(&api, None);
    let view = &running.view;
    eventually("edge-a2 is seen in pool-a, and its own pod CIDRs", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
            && !view.pod_cidrs_of("edge-a1").is_empty()
    })
    .await;
    assert_eq!(
        view.pool_of("edge-b1"),
        None,
        "another pool's node is never seen"
    );

    let pools = nodepool_requests(&api);
    assert!(
        pools.iter().any(|r| !r.is_watch()) && pools.iter().any(SeenRequest::is_watch),
        "its NodePool is listed and watched: {pools:#?}"
    );
    for r in &pools {
        assert_eq!(
            r.param("fieldSelector"),
            Some("metadata.name=pool-a"),
            "only its own pool's NodePool: {r:?}"
        );
    }
    for r in &node_requests(&api) {
        assert!(
            r.param("fieldSelector") == Some("metadata.name=edge-a1")
                && r.param("labelSelector").is_none(),
            "a Node request for other than its own node: {r:?}"
        );
    }
    drop(running.stop);
}

#[tokio::test]
async fn the_pools_members_follow_the_nodepools_status_nodes() {
    let api = pooled_fleet();
    let running = start(&api, None);
    let view = running.view.clone();
    eventually("pool-a and the Service are known", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
            && view.service_annotations("default", "by-pool").is_some()
    })
    .await;
    let topology = ServiceTopology(NodeContext {
        node: "edge-a1".into(),
        pool: None,
        hub_ip: "169.254.2.1".parse().expect("address"),
        hub_port: 10268,
        view: view.clone(),
    });
    assert_eq!(kept_nodes(&topology), ["edge-a1", "edge-a2"]);

    // edge-a2 leaves the pool (yurt-manager has seen its label go).
    api.put(nodepool("pool-a", &["edge-a1"]));
    eventually("edge-a2 is out of pool-a", || {
        view.pool_of("edge-a2").is_none()
    })
    .await;
    assert_eq!(kept_nodes(&topology), ["edge-a1"]);

    // edge-b1 joins it: the NodePool is what counts, not the label the view never reads.
    api.put(nodepool("pool-a", &["edge-a1", "edge-b1"]));
    eventually("edge-b1 is in pool-a", || {
        view.pool_of("edge-b1").as_deref() == Some("pool-a")
    })
    .await;
    assert_eq!(kept_nodes(&topology), ["edge-a1", "edge-b1"]);
    drop(running.stop);
}

#[tokio::test]
async fn a_status_change_of_a_pool_member_sends_the_hub_nothing() {
    let api = pooled_fleet();
    let running = start(&api, None);
    let view = running.view.clone();
    eventually("pool-a is known and all it listed is watched", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a") && watching_all_it_listed(&api)
    })
    .await;
    let (nodes_before, pools_before) = (
        api.watch_events_sent("nodes"),
        api.watch_events_sent("nodepools"),
    );

    // A kubelet status update of another member (changes are queued to every watch that
    // sees them before `put` returns).
    let mut heartbeat = node("edge-a2", Some("pool-a"), "10.244.2.0/24");
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-12-01T00:00:10Z");
    api.put(heartbeat);
    assert_eq!(
        (
            api.watch_events_sent("nodes"),
            api.watch_events_sent("nodepools")
        ),
        (nodes_before, pools_before),
        "a pool member's status update reached the view's watches"
    );
    assert_eq!(view.pool_of("edge-a2").as_deref(), Some("pool-a"));
    drop(running.stop);
}

#[tokio::test]
async fn without_the_nodepool_api_the_view_watches_its_pools_nodes_by_label() {
    let api = pooled_fleet().without_nodepool_api();
    let running = start(&api, None);
    let view = running.view.clone();
    eventually("edge-a2 is seen in pool-a", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
    })
    .await;
    assert_eq!(view.pool_of("edge-b1"), None);
    assert!(
        !nodepool_requests(&api).is_empty(),
        "it looked for the NodePool first"
    );
    assert!(
        node_requests(&api).iter().any(|r| r.is_watch()
            && r.metadata_only()
            && r.param("labelSelector") == Some(pool_selector("pool-a").as_str())),
        "its pool's Nodes are watched by label, as metadata"
    );
    drop(running.stop);
}

#[tokio::test]
async fn the_view_takes_up_a_nodepool_that_appears_and_falls_back_when_it_goes() {
    // The NodePool API is served, but pool-a has no NodePool yet: the label says.
    let api = fleet();
    let running = start(&api, None);
    let view = running.view.clone();
    eventually("edge-a2 is seen in pool-a by its label", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
    })
    .await;

    // yurt-manager creates it (its status lags: only edge-a1 so far).
    api.put(nodepool("pool-a", &["edge-a1"]));
    eventually("the NodePool's members replace the label's", || {
        view.pool_of("edge-a2").is_none()
    })
    .await;
    assert!(
        nodepool_requests(&api).iter().any(SeenRequest::is_watch),
        "the NodePool is watched"
    );

    api.delete("NodePool", "pool-a");
    eventually("the label counts again", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
    })
    .await;
    drop(running.stop);
}

#[tokio::test]
async fn a_nodepool_that_lists_no_nodes_leaves_the_pool_to_the_label_until_it_does() {
    // A NodePool no controller keeps (created, with no yurt-manager running) has no
    // `status.nodes`: taken at its word, it would scope the filters to this node alone.
    let api = fleet();
    api.put(nodepool("pool-a", &[]));
    let running = start(&api, None);
    let view = running.view.clone();
    eventually("edge-a2 is seen in pool-a by its label", || {
        view.pool_of("edge-a2").as_deref() == Some("pool-a")
    })
    .await;
    assert!(
        node_requests(&api)
            .iter()
            .any(|r| r.is_watch()
                && r.param("labelSelector") == Some(pool_selector("pool-a").as_str())),
        "its pool's Nodes are watched by label"
    );
    // yurt-manager may fill the status a moment later (a hub starting with its
    // cluster): the view watches the NodePool meanwhile rather than looking now and then.
    eventually("the NodePool is watched for its status", || {
        nodepool_requests(&api).iter().any(SeenRequest::is_watch)
    })
    .await;

    api.put(nodepool("pool-a", &["edge-a1"]));
    eventually("the NodePool's members count once it lists them", || {
        view.pool_of("edge-a2").is_none()
    })
    .await;
    drop(running.stop);
}
