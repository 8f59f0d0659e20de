//! OpenYurt's response filters, for JSON and protobuf alike:
//!
//! | filter | clients | resources | effect |
//! |---|---|---|---|
//! | servicetopology | kube-proxy, coredns, nginx-ingress-controller | endpoints, endpointslices | keep only endpoints on this node or pool, per the Service's `openyurt.io/topologyKeys` |
//! | masterservice | kubelet | services | `default/kubernetes` points at the hub's pod-facing address |
//! | discardcloudservice | kube-proxy | services | drops LoadBalancer services marked `svc.openyurt.io/discard` and the tunnel server's internal service |
//! | inclusterconfig | kubelet | configmaps | comments out `kubeconfig:` in `kube-system/kube-proxy` so kube-proxy uses in-cluster config |
//! | nodeportisolation | kube-proxy | services | NodePort/LoadBalancer services listen only in the pools `nodeport.openyurt.io/listen` names |

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::discovery::v1 as discovery;
use prost::Message;
use serde_json::Value;

use super::Filter;
use super::view::ClusterView;
use crate::codec::{self, Format, RawObject};
use crate::request::Gvr;

/// The annotation that turns service topology on.
pub const TOPOLOGY_KEYS: &str = "openyurt.io/topologyKeys";
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
const POOL_KEYS: &[&str] = &["openyurt.io/nodepool", "kubernetes.io/zone"];
const DISCARD: &str = "svc.openyurt.io/discard";
const NODEPORT_LISTEN: &str = "nodeport.openyurt.io/listen";
const TUNNEL_SERVICE: (&str, &str) = ("kube-system", "x-tunnel-server-internal-svc");

/// What the filters need to know about this node.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// This node.
    pub node: String,
    /// This node's pool (from the hub's flags).
    pub pool: Option<String>,
    /// The hub's pod-facing address.
    pub hub_ip: IpAddr,
    /// The hub's pod-facing HTTPS port.
    pub hub_port: u16,
    /// The cluster, as watched.
    pub view: Arc<ClusterView>,
}

impl NodeContext {
    fn pool(&self) -> Option<String> {
        self.pool.clone().or_else(|| self.view.pool_of(&self.node))
    }
}

enum Outcome {
    Keep,
    Changed,
    Drop,
}

fn map_json(obj: RawObject, f: impl FnOnce(&mut Value) -> Outcome) -> Option<RawObject> {
    let Ok(mut v) = serde_json::from_slice::<Value>(&obj.data) else {
        return Some(obj);
    };
    match f(&mut v) {
        Outcome::Keep => Some(obj),
        Outcome::Drop => None,
        Outcome::Changed => codec::json_from_value(v).ok().or(Some(obj)),
    }
}

fn map_proto<M: Message + Default>(
    obj: RawObject,
    f: impl FnOnce(&mut M) -> Outcome,
) -> Option<RawObject> {
    let Ok(mut m) = M::decode(obj.data.as_ref()) else {
        return Some(obj);
    };
    match f(&mut m) {
        Outcome::Keep => Some(obj),
        Outcome::Drop => None,
        Outcome::Changed => {
            codec::proto_from_message(&obj.api_version, &obj.kind, Bytes::from(m.encode_to_vec()))
                .ok()
                .or(Some(obj))
        }
    }
}

fn for_clients(component: &str, defaults: &[&str], extra: &ClusterView, name: &str) -> bool {
    defaults.contains(&component) || extra.extra_clients(name, component)
}

// === servicetopology ===

/// Keeps only the endpoints a client on this node should use.
pub struct ServiceTopology(pub NodeContext);

enum Scope {
    Node,
    Pool(String),
}

impl ServiceTopology {
    /// The topology the Service asks for, if any.
    fn scope(&self, namespace: &str, service: &str) -> Option<Scope> {
        let annotations = self.0.view.service_annotations(namespace, service)?;
        let keys = annotations.get(TOPOLOGY_KEYS)?;
        let keys: Vec<&str> = keys.split(',').map(str::trim).collect();
        if keys.iter().any(|k| POOL_KEYS.contains(k)) {
            return Some(match self.0.pool() {
                Some(p) => Scope::Pool(p),
                None => Scope::Node,
            });
        }
        keys.contains(&HOSTNAME_KEY).then_some(Scope::Node)
    }

    fn keeps(&self, scope: &Scope, node: Option<&str>) -> bool {
        match (scope, node) {
            (_, None) => false,
            (Scope::Node, Some(n)) => n == self.0.node,
            (Scope::Pool(p), Some(n)) => {
                n == self.0.node || self.0.view.pool_of(n).as_deref() == Some(p)
            }
        }
    }
}

fn slice_service(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get("kubernetes.io/service-name").map(String::as_str)
}

impl Filter for ServiceTopology {
    fn name(&self) -> &'static str {
        "servicetopology"
    }

    fn applies(&self, component: &str, gvr: &Gvr) -> bool {
        matches!(gvr.resource.as_str(), "endpoints" | "endpointslices")
            && for_clients(
                component,
                &["kube-proxy", "coredns", "nginx-ingress-controller"],
                &self.0.view,
                self.name(),
            )
    }

    fn apply(&self, obj: RawObject) -> Option<RawObject> {
        let ns = obj.info.namespace.clone();
        let service = match obj.kind.as_str() {
            "EndpointSlice" => slice_service(&obj.info.labels)?.to_owned(),
            _ => obj.info.name.clone(),
        };
        let Some(scope) = self.scope(&ns, &service) else {
            return Some(obj);
        };
        match (obj.kind.as_str(), obj.format) {
            ("EndpointSlice", Format::Json) => map_json(obj, |v| {
                if let Some(eps) = v["endpoints"].as_array_mut() {
                    eps.retain(|e| {
                        let node = e["nodeName"]
                            .as_str()
                            .or_else(|| e["topology"][HOSTNAME_KEY].as_str())
                            .or_else(|| e["deprecatedTopology"][HOSTNAME_KEY].as_str());
                        self.keeps(&scope, node)
                    });
                }
                Outcome::Changed
            }),
            ("EndpointSlice", Format::Protobuf) => {
                map_proto::<discovery::EndpointSlice>(obj, |s| {
                    // v1beta1 and v1 share these field numbers (topology = deprecatedTopology).
                    s.endpoints.retain(|e| {
                        let node = e.node_name.as_deref().or_else(|| {
                            e.deprecated_topology.get(HOSTNAME_KEY).map(String::as_str)
                        });
                        self.keeps(&scope, node)
                    });
                    Outcome::Changed
                })
            }
            ("Endpoints", Format::Json) => map_json(obj, |v| {
                if let Some(subsets) = v["subsets"].as_array_mut() {
                    for s in subsets.iter_mut() {
                        for field in ["addresses", "notReadyAddresses"] {
                            if let Some(a) = s[field].as_array_mut() {
                                a.retain(|a| self.keeps(&scope, a["nodeName"].as_str()));
                            }
                        }
                    }
                }
                Outcome::Changed
            }),
            ("Endpoints", Format::Protobuf) => map_proto::<core::Endpoints>(obj, |e| {
                for s in &mut e.subsets {
                    s.addresses
                        .retain(|a| self.keeps(&scope, a.node_name.as_deref()));
                    s.not_ready_addresses
                        .retain(|a| self.keeps(&scope, a.node_name.as_deref()));
                }
                Outcome::Changed
            }),
            _ => Some(obj),
        }
    }
}

// === masterservice ===

/// Points `default/kubernetes` at the hub, so kubelet gives pods the hub's address.
pub struct MasterService(pub NodeContext);

impl Filter for MasterService {
    fn name(&self) -> &'static str {
        "masterservice"
    }

    fn applies(&self, component: &str, gvr: &Gvr) -> bool {
        gvr.resource == "services"
            && for_clients(component, &["kubelet"], &self.0.view, self.name())
    }

    fn apply(&self, obj: RawObject) -> Option<RawObject> {
        if obj.info.namespace != "default" || obj.info.name != "kubernetes" {
            return Some(obj);
        }
        let ip = self.0.hub_ip.to_string();
        let port = i32::from(self.0.hub_port);
        match obj.format {
            Format::Json => map_json(obj, |v| {
                v["spec"]["clusterIP"] = Value::String(ip.clone());
                if v["spec"].get("clusterIPs").is_some() {
                    v["spec"]["clusterIPs"] = serde_json::json!([ip]);
                }
                if let Some(ports) = v["spec"]["ports"].as_array_mut() {
                    for p in ports.iter_mut().filter(|p| p["name"] == "https") {
                        p["port"] = Value::from(port);
                    }
                }
                Outcome::Changed
            }),
            Format::Protobuf => map_proto::<core::Service>(obj, |s| {
                if let Some(spec) = s.spec.as_mut() {
                    spec.cluster_ip = Some(ip.clone());
                    if !spec.cluster_ips.is_empty() {
                        spec.cluster_ips = vec![ip.clone()];
                    }
                    for p in spec
                        .ports
                        .iter_mut()
                        .filter(|p| p.name.as_deref() == Some("https"))
                    {
                        p.port = Some(port);
                    }
                }
                Outcome::Changed
            }),
        }
    }
}

// === discardcloudservice ===

/// Drops services that only make sense in the cloud.
pub struct DiscardCloudService(pub NodeContext);

fn discard(
    namespace: &str,
    name: &str,
    service_type: Option<&str>,
    annotations: &BTreeMap<String, String>,
) -> bool {
    (namespace, name) == TUNNEL_SERVICE
        || (service_type == Some("LoadBalancer")
            && annotations.get(DISCARD).map(String::as_str) == Some("true"))
}

impl Filter for DiscardCloudService {
    fn name(&self) -> &'static str {
        "discardcloudservice"
    }

    fn applies(&self, component: &str, gvr: &Gvr) -> bool {
        gvr.resource == "services"
            && for_clients(component, &["kube-proxy"], &self.0.view, self.name())
    }

    fn apply(&self, obj: RawObject) -> Option<RawObject> {
        let (ns, name) = (obj.info.namespace.clone(), obj.info.name.clone());
        match obj.format {
            Format::Json => map_json(obj, |v| {
                let annotations = json_map(&v["metadata"]["annotations"]);
                if discard(&ns, &name, v["spec"]["type"].as_str(), &annotations) {
                    Outcome::Drop
                } else {
                    Outcome::Keep
                }
            }),
            Format::Protobuf => map_proto::<core::Service>(obj, |s| {
                let annotations = s
                    .metadata
                    .as_ref()
                    .map(|m| m.annotations.clone())
                    .unwrap_or_default();
                let ty = s.spec.as_ref().and_then(|s| s.r#type.clone());
                if discard(&ns, &name, ty.as_deref(), &annotations) {
                    Outcome::Drop
                } else {
                    Outcome::Keep
                }
            }),
        }
    }
}

fn json_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

// === nodeportisolation ===

/// Lets a NodePort/LoadBalancer service listen only in the pools it names.
pub struct NodePortIsolation(pub NodeContext);

/// Whether a service with `listen` (`"pool-a,-pool-b"`, `"*"`) listens in `pool`.
pub fn listens_in(listen: &str, pool: &str) -> bool {
    let entries: Vec<&str> = listen
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.iter().any(|e| e.strip_prefix('-') == Some(pool)) {
        return false;
    }
    entries.iter().any(|e| *e == pool || *e == "*")
}

impl Filter for NodePortIsolation {
    fn name(&self) -> &'static str {
        "nodeportisolation"
    }

    fn applies(&self, component: &str, gvr: &Gvr) -> bool {
        gvr.resource == "services"
            && for_clients(component, &["kube-proxy"], &self.0.view, self.name())
    }

    fn apply(&self, obj: RawObject) -> Option<RawObject> {
        let Some(pool) = self.0.pool() else {
            return Some(obj);
        };
        let decide = |ty: Option<&str>, annotations: &BTreeMap<String, String>| match (
            ty,
            annotations.get(NODEPORT_LISTEN),
        ) {
            (Some("NodePort" | "LoadBalancer"), Some(listen)) if !listens_in(listen, &pool) => {
                Outcome::Drop
            }
            _ => Outcome::Keep,
        };
        match obj.format {
            Format::Json => map_json(obj, |v| {
                decide(
                    v["spec"]["type"].as_str(),
                    &json_map(&v["metadata"]["annotations"]),
                )
            }),
            Format::Protobuf => map_proto::<core::Service>(obj, |s| {
                let annotations = s
                    .metadata
                    .as_ref()
                    .map(|m| m.annotations.clone())
                    .unwrap_or_default();
                decide(
                    s.spec.as_ref().and_then(|s| s.r#type.as_deref()),
                    &annotations,
                )
            }),
        }
    }
}

// === inclusterconfig ===

/// Makes kube-proxy use in-cluster config (which kubelet points at the hub).
pub struct InClusterConfig(pub NodeContext);

/// Comments out the `kubeconfig:` line of a kube-proxy configuration.
pub fn comment_out_kubeconfig(conf: &str) -> String {
    conf.lines()
        .map(|l| {
            if l.trim_start().starts_with("kubeconfig:") {
                format!("#{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Filter for InClusterConfig {
    fn name(&self) -> &'static str {
        "inclusterconfig"
    }

    fn applies(&self, component: &str, gvr: &Gvr) -> bool {
        gvr.resource == "configmaps"
            && for_clients(component, &["kubelet"], &self.0.view, self.name())
    }

    fn apply(&self, obj: RawObject) -> Option<RawObject> {
        if (obj.info.namespace.as_str(), obj.info.name.as_str()) != ("kube-system", "kube-proxy") {
            return Some(obj);
        }
        match obj.format {
            Format::Json => map_json(obj, |v| {
                match v["data"]["config.conf"]
                    .as_str()
                    .map(comment_out_kubeconfig)
                {
                    Some(c) => {
                        v["data"]["config.conf"] = Value::String(c);
                        Outcome::Changed
                    }
                    None => Outcome::Keep,
                }
            }),
            Format::Protobuf => map_proto::<core::ConfigMap>(obj, |c| {
                match c.data.get("config.conf").map(|s| comment_out_kubeconfig(s)) {
                    Some(conf) => {
                        c.data.insert("config.conf".into(), conf);
                        Outcome::Changed
                    }
                    None => Outcome::Keep,
                }
            }),
        }
    }
}

/// OpenYurt's filters for a node.
pub fn all(ctx: &NodeContext) -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(MasterService(ctx.clone())),
        Box::new(ServiceTopology(ctx.clone())),
        Box::new(DiscardCloudService(ctx.clone())),
        Box::new(InClusterConfig(ctx.clone())),
        Box::new(NodePortIsolation(ctx.clone())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_object, encode_object};
    use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ctx() -> NodeContext {
        let view = Arc::new(ClusterView::default());
        view.set_node_pool("edge-a1", Some("pool-a"));
        view.set_node_pool("edge-a2", Some("pool-a"));
        view.set_node_pool("edge-b1", Some("pool-b"));
        NodeContext {
            node: "edge-a1".into(),
            pool: Some("pool-a".into()),
            hub_ip: "169.254.2.1".parse().unwrap(),
            hub_port: 10268,
            view,
        }
    }

    fn slice_json(service: &str) -> RawObject {
        codec::json_from_value(serde_json::json!({
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1beta1",
            "metadata": {"name": format!("{service}-x"), "namespace": "default", "resourceVersion": "3",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.2"], "topology": {"kubernetes.io/hostname": "edge-a1"}},
                {"addresses": ["10.244.2.2"], "topology": {"kubernetes.io/hostname": "edge-a2"}},
                {"addresses": ["10.244.3.2"], "topology": {"kubernetes.io/hostname": "edge-b1"}},
                {"addresses": ["10.244.9.9"]},
            ]
        }))
        .unwrap()
    }

    fn slice_proto(service: &str) -> RawObject {
        let ep = |ip: &str, node: &str| discovery::Endpoint {
            addresses: vec![ip.into()],
            deprecated_topology: [(HOSTNAME_KEY.to_owned(), node.to_owned())].into(),
            ..Default::default()
        };
        let s = discovery::EndpointSlice {
            metadata: Some(ObjectMeta {
                name: Some(format!("{service}-x")),
                namespace: Some("default".into()),
                labels: [("kubernetes.io/service-name".to_owned(), service.to_owned())].into(),
                ..Default::default()
            }),
            address_type: Some("IPv4".into()),
            endpoints: vec![
                ep("10.244.1.2", "edge-a1"),
                ep("10.244.2.2", "edge-a2"),
                ep("10.244.3.2", "edge-b1"),
            ],
            ports: vec![],
        };
        codec::proto_from_message(
            "discovery.k8s.io/v1beta1",
            "EndpointSlice",
            Bytes::from(s.encode_to_vec()),
        )
        .unwrap()
    }

    fn endpoint_ips(obj: &RawObject) -> Vec<String> {
        match obj.format {
            Format::Json => {
                let v: Value = serde_json::from_slice(&obj.data).unwrap();
                v["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["addresses"][0].as_str().unwrap().to_owned())
                    .collect()
            }
            Format::Protobuf => discovery::EndpointSlice::decode(obj.data.as_ref())
                .unwrap()
                .endpoints
                .into_iter()
                .map(|e| e.addresses[0].clone())
                .collect(),
        }
    }

    #[test]
    fn service_topology_keeps_pool_or_node_endpoints_in_both_formats() {
        let c = ctx();
        c.view.set_service(
            "default",
            "by-pool",
            [(TOPOLOGY_KEYS.to_owned(), "openyurt.io/nodepool".to_owned())].into(),
        );
        c.view.set_service(
            "default",
            "by-node",
            [(TOPOLOGY_KEYS.to_owned(), HOSTNAME_KEY.to_owned())].into(),
        );
        c.view.set_service("default", "plain", BTreeMap::new());
        let f = ServiceTopology(c);
        let gvr = Gvr::new("discovery.k8s.io", "v1beta1", "endpointslices");
        assert!(f.applies("kube-proxy", &gvr));
        assert!(!f.applies("kubelet", &gvr));
        for make in [slice_json as fn(&str) -> RawObject, slice_proto] {
            assert_eq!(
                endpoint_ips(&f.apply(make("by-pool")).unwrap()),
                ["10.244.1.2", "10.244.2.2"]
            );
            assert_eq!(
                endpoint_ips(&f.apply(make("by-node")).unwrap()),
                ["10.244.1.2"]
            );
            let plain = make("plain");
            assert_eq!(
                f.apply(plain.clone()).unwrap(),
                plain,
                "no annotation: untouched"
            );
        }
    }

    #[test]
    fn master_service_points_kubelet_at_the_hub_in_both_formats() {
        let f = MasterService(ctx());
        let json = codec::json_from_value(serde_json::json!({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "ports": [{"name": "https", "port": 443}]}
        }))
        .unwrap();
        let v: Value = serde_json::from_slice(&f.apply(json).unwrap().data).unwrap();
        assert_eq!(
            (
                v["spec"]["clusterIP"].as_str(),
                v["spec"]["ports"][0]["port"].as_i64()
            ),
            (Some("169.254.2.1"), Some(10268))
        );
        assert_eq!(v["spec"]["clusterIPs"][0], "169.254.2.1");

        let pb = core::Service {
            metadata: Some(ObjectMeta {
                name: Some("kubernetes".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            spec: Some(core::ServiceSpec {
                cluster_ip: Some("10.96.0.1".into()),
                ports: vec![core::ServicePort {
                    name: Some("https".into()),
                    port: Some(443),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let obj =
            codec::proto_from_message("v1", "Service", Bytes::from(pb.encode_to_vec())).unwrap();
        let out = f.apply(obj).unwrap();
        let back = decode_object(Format::Protobuf, &encode_object(&out)).unwrap();
        let s = core::Service::decode(back.data.as_ref())
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(
            (s.cluster_ip.as_deref(), s.ports[0].port),
            (Some("169.254.2.1"), Some(10268))
        );
    }

    #[test]
    fn cloud_services_are_discarded_and_node_ports_isolated() {
        let d = DiscardCloudService(ctx());
        let svc = |name: &str, ty: &str, annotations: Value| {
            codec::json_from_value(serde_json::json!({
                "kind": "Service", "apiVersion": "v1",
                "metadata": {"name": name, "namespace": "kube-system", "annotations": annotations, "resourceVersion": "1"},
                "spec": {"type": ty}
            }))
            .unwrap()
        };
        assert!(
            d.apply(svc(
                "lb",
                "LoadBalancer",
                serde_json::json!({DISCARD: "true"})
            ))
            .is_none()
        );
        assert!(
            d.apply(svc("lb", "LoadBalancer", serde_json::json!({})))
                .is_some()
        );
        assert!(
            d.apply(svc(
                "x-tunnel-server-internal-svc",
                "ClusterIP",
                serde_json::json!({})
            ))
            .is_none()
        );

        let n = NodePortIsolation(ctx());
        assert!(
            n.apply(svc(
                "np",
                "NodePort",
                serde_json::json!({NODEPORT_LISTEN: "pool-b"})
            ))
            .is_none()
        );
        assert!(
            n.apply(svc(
                "np",
                "NodePort",
                serde_json::json!({NODEPORT_LISTEN: "pool-a,pool-b"})
            ))
            .is_some()
        );
        assert!(
            n.apply(svc(
                "np",
                "NodePort",
                serde_json::json!({NODEPORT_LISTEN: "*,-pool-a"})
            ))
            .is_none()
        );
        assert!(
            n.apply(svc(
                "np",
                "ClusterIP",
                serde_json::json!({NODEPORT_LISTEN: "pool-b"})
            ))
            .is_some()
        );
        assert!(listens_in("*", "pool-x") && !listens_in("", "pool-x"));
    }

    #[test]
    fn kube_proxy_config_uses_in_cluster_config() {
        assert_eq!(
            comment_out_kubeconfig(
                "clientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\nmode: iptables"
            ),
            "clientConnection:\n#  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\nmode: iptables"
        );
        let f = InClusterConfig(ctx());
        let cm = codec::json_from_value(serde_json::json!({
            "kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "resourceVersion": "1"},
            "data": {"config.conf": "kubeconfig: /x"}
        }))
        .unwrap();
        let v: Value = serde_json::from_slice(&f.apply(cm).unwrap().data).unwrap();
        assert_eq!(v["data"]["config.conf"], "#kubeconfig: /x");
    }
}
