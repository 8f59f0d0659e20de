//! Well-known OpenYurt labels, annotations, taints and condition types
//! (shared/reference/openyurt.md §4). Each constant names the object it goes on.

// === nodes and node pools ===

/// Node label naming the node's pool (`apps.openyurt.io/nodepool=<pool>`). It may be added
/// or removed, not changed in place.
pub const NODE_POOL: &str = "apps.openyurt.io/nodepool";

/// Node label marking an edge node (`openyurt.io/is-edge-worker=true`); cloud nodes
/// carry `false`.
pub const IS_EDGE_WORKER: &str = "openyurt.io/is-edge-worker";

/// Legacy node label naming the wanted pool; the node webhook copies it into [`NODE_POOL`].
pub const DESIRED_NODEPOOL: &str = "apps.openyurt.io/desired-nodepool";

/// Node label `true` on nodes of a `hostNetwork` pool; immutable once set.
pub const HOSTNETWORK: &str = "nodepool.openyurt.io/hostnetwork";

/// NodePool label with the pool's type in lower case (`edge` or `cloud`), set by the
/// NodePool webhook.
pub const NODEPOOL_TYPE: &str = "nodepool.openyurt.io/type";

/// Node annotation holding the JSON `{labels, annotations, taints}` last applied from the
/// pool, so they can be removed cleanly.
pub const PREVIOUS_ATTRIBUTES: &str = "nodepool.openyurt.io/previous-attributes";

/// Node label set to the pool name on conversion when absent, used by native
/// topology-aware routing.
pub const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

// === autonomy ===

/// Node annotation making a node autonomous: how long its pods stay bound to it while
/// it is unreachable (a Go duration; `0` means forever).
pub const AUTONOMY_DURATION: &str = "node.openyurt.io/autonomy-duration";

/// The older autonomy annotation (`"true"` means autonomous, pods never evicted).
pub const AUTONOMY_LEGACY: &str = "node.beta.openyurt.io/autonomy";

/// Deprecated node annotation with the same meaning as [`AUTONOMY_LEGACY`] (`"true"`).
pub const BINDING: &str = "apps.openyurt.io/binding";

/// Pod annotation saving the original `tolerationSeconds` of its not-ready toleration.
pub const ORIGINAL_NOT_READY_TOLERATION_DURATION: &str =
    "apps.openyurt.io/original-not-ready-toleration-duration";

/// Pod annotation saving the original `tolerationSeconds` of its unreachable toleration.
pub const ORIGINAL_UNREACHABLE_TOLERATION_DURATION: &str =
    "apps.openyurt.io/original-unreachable-toleration-duration";

/// The Node condition type the hub keeps: whether the node can work offline.
pub const AUTONOMY_CONDITION: &str = "Autonomy";

/// Lease annotation `true` when a node's heartbeat was delegated (legacy).
pub const DELEGATE_HEARTBEAT: &str = "openyurt.io/delegate-heartbeat";

/// NoSchedule taint key put on nodes whose heartbeat is delegated (legacy).
pub const UNSCHEDULABLE_TAINT: &str = "node.openyurt.io/unschedulable";

// === services and traffic ===

/// Service annotation choosing the topology its endpoints are filtered by at the edge:
/// `kubernetes.io/hostname`, `openyurt.io/nodepool` or `kubernetes.io/zone`.
pub const TOPOLOGY_KEYS: &str = "openyurt.io/topologyKeys";

/// Endpoints/EndpointSlice annotation holding a unix time, bumped to make edge clients
/// receive freshly filtered data.
pub const UPDATE_TRIGGER: &str = "openyurt.io/update-trigger";

/// LoadBalancer Service annotation `true`: hide the Service from edge kube-proxies.
pub const SERVICE_DISCARD: &str = "svc.openyurt.io/discard";

/// Service annotation listing the pools whose nodes listen on its NodePorts (`pool`,
/// `-pool` to exclude, `*` for all).
pub const NODEPORT_LISTEN: &str = "nodeport.openyurt.io/listen";

/// LoadBalancer Service annotation with a NodePool label selector (JSON); one PoolService
/// is created per matching pool.
pub const NODEPOOL_LABEL_SELECTOR: &str = "service.openyurt.io/nodepool-labelselector";

/// PoolService label naming its Service.
pub const SERVICE_NAME: &str = "openyurt.io/service-name";

/// PoolService label naming the controller that manages it.
pub const POOLSERVICE_MANAGED_BY: &str = "poolservice.openyurt.io/managed-by";

// === hub configuration ===

/// ConfigMap label the hub's informer selects on (`yurt-hub-cfg`, `leader-hub-<pool>`).
pub const CONFIGMAP_NAME: &str = "openyurt.io/configmap-name";

/// NodeBucket and PoolService label naming their pool.
pub const OPENYURT_POOL_NAME: &str = "openyurt.io/pool-name";

// === workloads ===

/// Label on a YurtAppSet's workloads and their pod templates (and pod selector) naming the
/// pool the workload runs in.
pub const POOL_NAME: &str = "apps.openyurt.io/pool-name";

/// Label on a workload naming the YurtAppSet that owns it.
pub const REF_YURTAPPSET: &str = "apps.openyurt.io/ref-yurtappset";

/// Label on a YurtAppSet's workloads and pods with the set's revision.
pub const CONTROLLER_REVISION_HASH: &str = "apps.openyurt.io/controller-revision-hash";

/// Annotation on a YurtAppSet's workload naming its pool.
pub const REF_NODEPOOL: &str = "apps.openyurt.io/ref-nodepool";

/// Annotation on a `v1alpha1` YurtAppSet workload holding its pool's patch (legacy).
pub const PATCH: &str = "apps.openyurt.io/patch";

/// Pod annotation `true`: keep the pod off `hostNetwork` pools (the pod webhook adds a
/// NotIn affinity on [`HOSTNETWORK`]).
pub const EXCLUDE_HOST_NETWORK_POOL: &str = "apps.openyurt.io/exclude-host-network-pool";

/// DaemonSet annotation choosing `OTA` or `AdvancedRollingUpdate` (the DaemonSet's own
/// strategy must be `OnDelete`).
pub const UPDATE_STRATEGY: &str = "apps.openyurt.io/update-strategy";

/// DaemonSet annotation: pods that may be unavailable at once under
/// `AdvancedRollingUpdate` (int or percentage, default `10%`).
pub const MAX_UNAVAILABLE: &str = "apps.openyurt.io/max-unavailable";

/// Annotation on static pods, upgrade worker pods and ConfigMaps of a YurtStaticSet with
/// the template hash.
pub const STATIC_POD_HASH: &str = "openyurt.io/static-pod-hash";

/// Pod condition type: a newer version is waiting for the node to take it (OTA).
pub const POD_NEED_UPGRADE: &str = "PodNeedUpgrade";

/// Pod condition type: the image of the pending upgrade is pulled.
pub const POD_IMAGE_READY: &str = "PodImageReady";

// === raven ===

/// Node label naming the raven Gateway the node belongs to.
pub const RAVEN_GATEWAY: &str = "raven.openyurt.io/gateway";

/// Label on raven's Services and Endpoints: which gateway role they serve.
pub const RAVEN_GATEWAY_TYPE: &str = "raven.openyurt.io/gateway-type";

/// Label on raven's Services naming their Endpoints.
pub const RAVEN_ENDPOINTS_NAME: &str = "raven.openyurt.io/endpoints-name";

/// Gateway annotation with extra CIDRs routed through the tunnel (appended to the tunnel
/// node's `status.nodes[].subnets`).
pub const RAVEN_EXTRA_ALLOWED_SOURCE_CIDRS: &str = "raven.openyurt.io/extra-allowed-source-cidrs";

// === node conversion and legacy ===

/// Label on a conversion Job and its pod naming the node being converted.
pub const CONVERSION_NODE: &str = "openyurt.io/conversion-node";

/// Node condition type the conversion controller sets (reasons `Converting`, `Converted`,
/// `Reverting`, `Reverted` with status False; `ConvertFailed`, `RevertFailed` with True).
pub const NODE_CONVERSION_FAILED_CONDITION: &str = "YurtNodeConversionFailed";

/// Node label placing the legacy yurt-tunnel agent.
pub const EDGE_ENABLE_REVERSE_TUNNEL_CLIENT: &str = "openyurt.io/edge-enable-reverseTunnel-client";

/// Marker on resources a PlatformAdmin created.
pub const IOT_GENERATE: &str = "iot.openyurt.io/generate";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every label or annotation key (everything but condition types and the zone label).
    const KEYS: &[&str] = &[
        NODE_POOL,
        IS_EDGE_WORKER,
        DESIRED_NODEPOOL,
        HOSTNETWORK,
        NODEPOOL_TYPE,
        PREVIOUS_ATTRIBUTES,
        AUTONOMY_DURATION,
        AUTONOMY_LEGACY,
        BINDING,
        ORIGINAL_NOT_READY_TOLERATION_DURATION,
        ORIGINAL_UNREACHABLE_TOLERATION_DURATION,
        DELEGATE_HEARTBEAT,
        UNSCHEDULABLE_TAINT,
        TOPOLOGY_KEYS,
        UPDATE_TRIGGER,
        SERVICE_DISCARD,
        NODEPORT_LISTEN,
        NODEPOOL_LABEL_SELECTOR,
        SERVICE_NAME,
        POOLSERVICE_MANAGED_BY,
        CONFIGMAP_NAME,
        OPENYURT_POOL_NAME,
        POOL_NAME,
        REF_YURTAPPSET,
        CONTROLLER_REVISION_HASH,
        REF_NODEPOOL,
        PATCH,
        EXCLUDE_HOST_NETWORK_POOL,
        UPDATE_STRATEGY,
        MAX_UNAVAILABLE,
        STATIC_POD_HASH,
        RAVEN_GATEWAY,
        RAVEN_GATEWAY_TYPE,
        RAVEN_ENDPOINTS_NAME,
        RAVEN_EXTRA_ALLOWED_SOURCE_CIDRS,
        CONVERSION_NODE,
        EDGE_ENABLE_REVERSE_TUNNEL_CLIENT,
        IOT_GENERATE,
    ];

    #[test]
    fn labels_match_upstream_spelling() {
        assert_eq!(NODE_POOL, "apps.openyurt.io/nodepool");
        assert_eq!(IS_EDGE_WORKER, "openyurt.io/is-edge-worker");
        assert_eq!(AUTONOMY_DURATION, "node.openyurt.io/autonomy-duration");
        assert_eq!(AUTONOMY_LEGACY, "node.beta.openyurt.io/autonomy");
        // The two pool-name labels are easy to mix up: they differ in prefix only.
        assert_eq!(POOL_NAME, "apps.openyurt.io/pool-name");
        assert_eq!(OPENYURT_POOL_NAME, "openyurt.io/pool-name");
        assert_eq!(TOPOLOGY_KEYS, "openyurt.io/topologyKeys");
    }

    #[test]
    fn keys_are_prefixed_qualified_names_and_distinct() {
        for key in KEYS {
            let (prefix, name) = key
                .split_once('/')
                .unwrap_or_else(|| panic!("{key}: no prefix"));
            assert!(
                prefix.ends_with(".io"),
                "{key}: prefix {prefix} is not a domain"
            );
            assert!(
                !name.is_empty() && name.len() <= 63,
                "{key}: bad name length"
            );
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "{key}: name has characters a label key cannot have"
            );
        }
        let mut sorted = KEYS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), KEYS.len(), "two constants share a key");
    }
}
