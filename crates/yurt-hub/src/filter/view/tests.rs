use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::fake_api::{FakeApi, SeenRequest, node, service};
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
    }
    drop(running.stop);
}

#[tokio::test]
async fn when_its_own_node_moves_to_another_pool_the_view_and_the_filters_follow() {
    let api = fleet();
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
    assert!(
        node_requests(&api).iter().any(|r| r.is_watch()
            && r.metadata_only()
            && r.param("labelSelector") == Some(pool_selector("pool-b").as_str())),
        "it watches pool-b now"
    );
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
    let api = fleet();
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
