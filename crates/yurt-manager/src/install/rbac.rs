//! The manager's rights: exactly the calls its controllers and webhooks make (the file
//! under yurt-manager/src that makes each is named beside its rule), as one ClusterRole
//! and a Role in each namespace it writes to, with their bindings, all of one name
//! ([`ROLE_NAME`] for the manager `yurt up` runs).

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use crate::controllers::csrapprover;
use crate::controllers::platformadmin::{AGENT_ROLE, VIRTUAL_DEVICES_ROLE};
use crate::webhook::certs::SECRET_NAME;
use crate::webhook::register::{MUTATING, VALIDATING};

/// Name of the ClusterRole, Roles and bindings of the manager `yurt up` runs (user
/// `openyurt:yurt-manager`).
pub const ROLE_NAME: &str = "openyurt:yurt-manager";
/// The leader-election Lease, in the working namespace (`leader.rs`).
pub const LEASE_NAME: &str = "yurt-manager";
/// Where the csrapprover writes its Events (core/v1 Events about cluster-scoped
/// objects go to `default`, as client-go's recorder does).
pub const EVENT_NAMESPACE: &str = "default";

const RBAC_API: &str = "rbac.authorization.k8s.io/v1";

/// What the manager may do cluster-wide. Server-side apply authorizes the create of a
/// missing object with its name, so `resourceNames` confine `create` too where the
/// manager only applies (CRDs, webhook configurations); a plain POST cannot be confined
/// by name.
pub fn cluster_rules() -> Value {
    let crds: Vec<String> = yurt_api::crds::all()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    json!([
        // webhook/register.rs: server-side apply of our CRDs (NodePool's conversion
        // webhook) and of our two webhook configurations, nothing else.
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "resourceNames": crds, "verbs": ["create", "patch"]},
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], "resourceNames": [MUTATING, VALIDATING], "verbs": ["create", "patch"]},
        // lib.rs: the node feed (webhooks and every controller); controllers/nodepool.rs
        // patches node labels, annotations and taints from the pool; webhook/node.rs
        // reads a Node its view has not caught up with.
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        // controllers/nodeconversion: the YurtNodeConversionFailed condition.
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        // lib.rs: the pod feed; daemonpodupdater.rs and yurtstaticset.rs list a set's
        // pods; webhook/endpoints.rs gets a pod; podbinding.rs patches tolerations;
        // yurtstaticset.rs creates and deletes upgrade workers; daemonpodupdater.rs
        // deletes old pods in an AdvancedRollingUpdate.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        // daemonpodupdater.rs, yurtstaticset.rs: the PodNeedUpgrade condition.
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
        // servicetopology.rs: watches Services, bumps a trigger annotation on their
        // Endpoints and EndpointSlices.
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["patch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "patch"]},
        // yurtstaticset.rs: server-side apply of `yurt-static-set-<name>` in the set's
        // namespace (deleted through its owner reference).
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch"]},
        // daemonpodupdater.rs: DaemonSets and their ControllerRevisions.
        {"apiGroups": ["apps"], "resources": ["daemonsets", "controllerrevisions"], "verbs": ["list", "watch"]},
        // yurtappset.rs (YurtAppSet and YurtAppDaemon): one workload per pool.
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["list", "watch", "create", "patch", "delete"]},
        // lib.rs: the NodePool feed; servicetopology.rs watches pools;
        // yurtappset.rs, yurtappdaemon.rs, yurtstaticset.rs watch their kinds.
        {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools", "yurtappsets", "yurtappdaemons", "yurtstaticsets"], "verbs": ["list", "watch"]},
        // controllers/platformadmin: server-side apply of each PlatformAdmin's agents'
        // YurtAppSet (deleted through its owner reference).
        {"apiGroups": ["apps.openyurt.io"], "resources": ["yurtappsets"], "verbs": ["create", "patch"]},
        // nodepool.rs, yurtappset.rs, yurtappdaemon.rs, yurtstaticset.rs: status.
        {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools/status", "yurtappsets/status", "yurtappdaemons/status", "yurtstaticsets/status"], "verbs": ["patch"]},
        // The workloads and ConfigMaps those write carry blockOwnerDeletion owner
        // references, which OwnerReferencesPermissionEnforcement checks against this.
        {"apiGroups": ["apps.openyurt.io"], "resources": ["yurtappsets/finalizers", "yurtappdaemons/finalizers", "yurtstaticsets/finalizers"], "verbs": ["update"]},
        // webhook/platformadmin.rs: one platform per pool, checked against every
        // PlatformAdmin; controllers/platformadmin: watches them, puts on and takes off
        // their finalizer, writes their status.
        {"apiGroups": ["iot.openyurt.io"], "resources": ["platformadmins"], "verbs": ["list", "watch", "patch"]},
        {"apiGroups": ["iot.openyurt.io"], "resources": ["platformadmins/status"], "verbs": ["patch"]},
        {"apiGroups": ["iot.openyurt.io"], "resources": ["platformadmins/finalizers"], "verbs": ["update"]},
        // controllers/platformadmin: each PlatformAdmin's agent in each pool gets a
        // ServiceAccount and RoleBindings to the agents' ClusterRoles, which the manager
        // may bind but does not hold (so it cannot write Devices itself).
        // A name taken by an object of a deleted PlatformAdmin is read to wait for it.
        // webhook/device: watches the agents' accounts (by label) to confine each to
        // its pool.
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "watch", "create"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["get", "create"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": [AGENT_ROLE, VIRTUAL_DEVICES_ROLE], "verbs": ["bind"]},
        // webhook/device: a Device's profile and service, looked up in its namespace.
        {"apiGroups": ["iot.openyurt.io"], "resources": ["deviceprofiles", "deviceservices"], "verbs": ["list"]},
        // controllers/csrapprover.rs: watches CSRs, approves hub and tunnel ones.
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["list", "watch"]},
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval"], "verbs": ["update"]},
        {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "resourceNames": ["kubernetes.io/kube-apiserver-client", "kubernetes.io/kubelet-serving"], "verbs": ["approve"]},
    ])
}

/// What the manager may do in its working namespace: keep its webhook certificate
/// Secret and its leader Lease, and run the conversion Jobs. `create` cannot be
/// confined by name (a POST carries none), so it may create Secrets and Leases there but
/// read or change only its own.
pub fn working_namespace_rules() -> Value {
    json!([
        // webhook/certs.rs: reads the Secret, creates it on first start, replaces an
        // unusable one.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET_NAME], "verbs": ["get", "update"]},
        // leader.rs: reads, creates and renews (replaces) the Lease.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEASE_NAME], "verbs": ["get", "update"]},
    ])
}

/// What the manager may do in the conversion Jobs' namespace
/// ([`crate::controllers::nodeconversion::NAMESPACE`], where OpenYurt runs them whatever
/// the working namespace).
pub fn conversion_job_rules() -> Value {
    json!([
        // controllers/nodeconversion: the servant's Jobs, watched, made, deleted once done.
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "create", "delete"]},
    ])
}

/// What the manager may do in [`EVENT_NAMESPACE`]: the csrapprover's Warning Events on
/// requests it leaves pending, looked up first so each is written once.
pub fn event_rules() -> Value {
    json!([
        // controllers/csrapprover.rs: lists the refusal Events of a request, creates one.
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "create"]},
    ])
}

// === the device agents ===

/// What a PlatformAdmin's device agents may do in its namespace (the ClusterRole
/// [`AGENT_ROLE`], bound there by the platformadmin controller): read devices, profiles
/// and services, write devices' status. They change no spec: an edge node cannot
/// rewrite what another pool's agent drives.
pub fn iot_agent_rules() -> Value {
    json!([
        {"apiGroups": ["iot.openyurt.io"], "resources": ["devices", "deviceprofiles", "deviceservices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["iot.openyurt.io"], "resources": ["devices/status"], "verbs": ["patch"]},
    ])
}

/// What the agents of a PlatformAdmin with `edgex-device-virtual` may do besides
/// (ClusterRole [`VIRTUAL_DEVICES_ROLE`], bound only then): create the virtual devices,
/// their profiles and service.
pub fn iot_virtual_devices_rules() -> Value {
    json!([
        {"apiGroups": ["iot.openyurt.io"], "resources": ["devices", "deviceprofiles", "deviceservices"], "verbs": ["create"]},
    ])
}

/// The device agents' ClusterRoles, installed with the manager.
pub fn iot_agent_roles() -> Vec<Value> {
    vec![
        json!({"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": {"name": AGENT_ROLE}, "rules": iot_agent_rules()}),
        json!({"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": {"name": VIRTUAL_DEVICES_ROLE}, "rules": iot_virtual_devices_rules()}),
    ]
}

// === the hubs ===

/// Name of the hubs' ClusterRole, Role and bindings.
pub const HUB_ROLE_NAME: &str = "openyurt:yurthub";
/// The group of the hubs' own client certificates (`system:node:<node>` in
/// `system:nodes` and this: yurt-hub `certificate/csr.rs`), which the csrapprover
/// approves only for the node itself (`controllers/csrapprover.rs`).
pub const HUB_GROUP: &str = csrapprover::HUB_GROUP;
/// The hubs' settings ConfigMap (yurt-hub `filter/view/mod.rs`), in the hubs'
/// `--namespace`.
pub const HUB_CONFIGMAP: &str = "yurt-hub-cfg";

/// What the hubs may do cluster-wide beyond what the Node authorizer grants their node.
/// kubelet, kube-proxy and host-network processes reach the API server through the hub
/// with its certificate, so this covers them too.
pub fn hub_cluster_rules() -> Value {
    json!([
        // kube-proxy lists and watches Services, Endpoints and EndpointSlices and gets
        // its Node; kubelet reads Services and Nodes; the hub's filters watch Services
        // and Nodes (yurt-hub filter/view/) and rewrite Endpoints and EndpointSlices.
        {"apiGroups": [""], "resources": ["services", "endpoints", "nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        // Events of kubelet and kube-proxy (core and events.k8s.io).
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
        // NodePools for the pool-scoped filters: the hub reads its pool's members from
        // its NodePool's status.nodes (yurt-hub filter/view/pool.rs), as upstream's does.
        {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools"], "verbs": ["get", "list", "watch"]},
        // OTA upgrades of static pods: the hub renders the manifest from the
        // YurtStaticSet itself (yurt-hub ota.rs), so it needs no ConfigMap but its own.
        {"apiGroups": ["apps.openyurt.io"], "resources": ["yurtstaticsets"], "verbs": ["get"]},
        // The service-account issuer's public keys, to prove pods' tokens offline
        // (yurt-hub identity/keys.rs). 1.20 binds its discovery role to no one.
        {"nonResourceURLs": ["/openid/v1/jwks", "/.well-known/openid-configuration"], "verbs": ["get"]},
    ])
}

/// What the hubs may do in their namespace: read their own ConfigMap and nothing else
/// there. The hub watches it with `fieldSelector=metadata.name=yurt-hub-cfg`, the only
/// way RBAC lets a list or watch through `resourceNames`.
pub fn hub_namespace_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [HUB_CONFIGMAP], "verbs": ["get", "list", "watch"]},
    ])
}

/// The rules among `rules` that grant `verb` on `group`/`resource`, whatever their
/// names (wildcards count): for checking what a grant allows.
pub fn granting<'a>(
    rules: &'a [PolicyRule],
    group: &str,
    resource: &str,
    verb: &str,
) -> Vec<&'a PolicyRule> {
    let has = |v: &Option<Vec<String>>, x: &str| {
        v.as_ref()
            .is_some_and(|v| v.iter().any(|s| s == x || s == "*"))
    };
    rules
        .iter()
        .filter(|r| has(&r.api_groups, group) && has(&r.resources, resource))
        .filter(|r| r.verbs.iter().any(|v| v == verb || v == "*"))
        .collect()
}

/// The rules among `rules` with a `*` in their groups, resources, names or verbs.
pub fn with_wildcards(rules: &[PolicyRule]) -> Vec<&PolicyRule> {
    rules
        .iter()
        .filter(|r| {
            [&r.api_groups, &r.resources, &r.resource_names]
                .into_iter()
                .flatten()
                .flatten()
                .chain(&r.verbs)
                .any(|s| s == "*")
        })
        .collect()
}

/// One identity's rights: a ClusterRole and one Role per namespace, each bound to
/// `subject` under the same name.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Name of the ClusterRole, the Roles and every binding.
    pub name: String,
    /// The RBAC subject (`{"kind": "User", ...}`, a Group or a ServiceAccount).
    pub subject: Value,
    /// The ClusterRole's rules.
    pub cluster_rules: Value,
    /// `(namespace, rules)` of each Role.
    pub roles: Vec<(String, Value)>,
}

impl Grant {
    /// The manager's rights under `name`, bound to `subject`: its working namespace's
    /// Role in `namespace`, the conversion Jobs' in theirs, the Events' in
    /// [`EVENT_NAMESPACE`] (one Role per namespace: rules meeting in one are merged).
    pub fn manager(name: &str, subject: Value, namespace: &str) -> Self {
        let mut roles: Vec<(String, Value)> = Vec::new();
        for (ns, rules) in [
            (namespace, working_namespace_rules()),
            (
                crate::controllers::nodeconversion::NAMESPACE,
                conversion_job_rules(),
            ),
            (EVENT_NAMESPACE, event_rules()),
        ] {
            let extra = rules.as_array().cloned().unwrap_or_default();
            match roles.iter_mut().find(|(n, _)| n == ns) {
                Some((_, existing)) => {
                    if let Some(existing) = existing.as_array_mut() {
                        existing.extend(extra);
                    }
                }
                None => roles.push((ns.to_owned(), Value::Array(extra))),
            }
        }
        Self {
            name: name.to_owned(),
            subject,
            cluster_rules: cluster_rules(),
            roles,
        }
    }

    /// The hubs' rights under `name`, bound to the group `group` (their certificates'),
    /// their ConfigMap's Role in `namespace` (the hubs' `--namespace`).
    pub fn hub(name: &str, group: &str, namespace: &str) -> Self {
        Self {
            name: name.to_owned(),
            subject: json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}),
            cluster_rules: hub_cluster_rules(),
            roles: vec![(namespace.to_owned(), hub_namespace_rules())],
        }
    }

    /// The ClusterRole and its binding, then each Role and its binding, as objects for
    /// server-side apply or `kubectl apply`.
    pub fn objects(&self) -> Vec<Value> {
        let name = &self.name;
        let role_ref = |kind: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name});
        let mut objects = vec![
            json!({"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": {"name": name}, "rules": self.cluster_rules}),
            json!({"apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": {"name": name}, "roleRef": role_ref("ClusterRole"), "subjects": [self.subject]}),
        ];
        for (namespace, rules) in &self.roles {
            let metadata = json!({"name": name, "namespace": namespace});
            objects.push(json!({"apiVersion": RBAC_API, "kind": "Role", "metadata": metadata, "rules": rules}));
            objects.push(json!({"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": metadata, "roleRef": role_ref("Role"), "subjects": [self.subject]}));
        }
        objects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(v: Value) -> Vec<PolicyRule> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn no_rule_uses_a_wildcard() {
        for set in [
            cluster_rules(),
            working_namespace_rules(),
            event_rules(),
            hub_cluster_rules(),
            hub_namespace_rules(),
        ] {
            let set = rules(set);
            assert!(with_wildcards(&set).is_empty(), "{set:?}");
        }
    }

    #[test]
    fn the_manager_keeps_secrets_and_leases_to_its_own_namespace_and_names() {
        let cluster = rules(cluster_rules());
        for resource in ["secrets", "leases"] {
            for group in ["", "coordination.k8s.io"] {
                assert!(granting(&cluster, group, resource, "get").is_empty());
                assert!(granting(&cluster, group, resource, "create").is_empty());
            }
        }
        let system = rules(working_namespace_rules());
        for (group, resource, name) in [
            ("", "secrets", SECRET_NAME),
            ("coordination.k8s.io", "leases", LEASE_NAME),
        ] {
            for verb in ["get", "update"] {
                let g = granting(&system, group, resource, verb);
                assert_eq!(g.len(), 1, "{verb} {resource}");
                assert_eq!(g[0].resource_names, Some(vec![name.to_owned()]));
            }
            assert!(granting(&system, group, resource, "delete").is_empty());
            assert!(granting(&system, group, resource, "list").is_empty());
        }
    }

    #[test]
    fn the_manager_writes_only_its_own_crds_and_webhook_configurations() {
        let cluster = rules(cluster_rules());
        let crds: Vec<String> = yurt_api::crds::all()
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        for verb in ["create", "patch"] {
            let g = granting(
                &cluster,
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                verb,
            );
            assert_eq!(g.len(), 1);
            assert_eq!(g[0].resource_names.as_ref(), Some(&crds));
            for kind in [
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
            ] {
                let g = granting(&cluster, "admissionregistration.k8s.io", kind, verb);
                assert_eq!(g.len(), 1);
                assert_eq!(g[0].resource_names.as_ref().map(Vec::len), Some(2));
            }
        }
        for verb in ["delete", "update", "get", "list"] {
            assert!(
                granting(
                    &cluster,
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    verb
                )
                .is_empty()
            );
        }
        assert!(
            cluster
                .iter()
                .all(|r| r.api_groups.as_ref().is_some_and(|g| !g
                    .iter()
                    .any(|g| g == "raven.openyurt.io" || g == "network.openyurt.io")))
        );
        // RBAC: it may bind the device agents' role (a RoleBinding per PlatformAdmin)
        // and nothing else: no role of its own making, no other role bound.
        let rbac: Vec<&PolicyRule> = cluster
            .iter()
            .filter(|r| {
                r.api_groups
                    .as_ref()
                    .is_some_and(|g| g.iter().any(|g| g == "rbac.authorization.k8s.io"))
            })
            .collect();
        assert_eq!(rbac.len(), 2, "{rbac:?}");
        let rbac_group = "rbac.authorization.k8s.io";
        for kind in ["roles", "clusterroles", "clusterrolebindings"] {
            for verb in ["create", "patch", "update", "escalate"] {
                assert!(
                    granting(&cluster, rbac_group, kind, verb).is_empty(),
                    "{verb} {kind}"
                );
            }
        }
        let bind = granting(&cluster, rbac_group, "clusterroles", "bind");
        assert_eq!(bind.len(), 1);
        assert_eq!(
            bind[0].resource_names,
            Some(vec![AGENT_ROLE.to_owned(), VIRTUAL_DEVICES_ROLE.to_owned()])
        );
        assert!(granting(&cluster, rbac_group, "roles", "bind").is_empty());
        // The agents' rights are not the manager's.
        for verb in ["create", "patch", "update", "delete"] {
            assert!(
                granting(&cluster, "iot.openyurt.io", "devices", verb).is_empty(),
                "{verb}"
            );
        }
    }

    #[test]
    fn device_agents_read_and_report_but_change_no_spec() {
        let agent = rules(iot_agent_rules());
        assert!(with_wildcards(&agent).is_empty());
        for kind in ["devices", "deviceprofiles", "deviceservices"] {
            for verb in ["get", "list", "watch"] {
                assert_eq!(
                    granting(&agent, "iot.openyurt.io", kind, verb).len(),
                    1,
                    "{verb} {kind}"
                );
            }
            for verb in ["create", "patch", "update", "delete"] {
                assert!(
                    granting(&agent, "iot.openyurt.io", kind, verb).is_empty(),
                    "{verb} {kind}"
                );
            }
        }
        assert_eq!(
            granting(&agent, "iot.openyurt.io", "devices/status", "patch").len(),
            1
        );
        let virtual_devices = rules(iot_virtual_devices_rules());
        for kind in ["devices", "deviceprofiles", "deviceservices"] {
            assert_eq!(
                granting(&virtual_devices, "iot.openyurt.io", kind, "create").len(),
                1
            );
            assert!(granting(&virtual_devices, "iot.openyurt.io", kind, "patch").is_empty());
        }
        assert!(granting(&agent, "iot.openyurt.io", "platformadmins", "get").is_empty());
        assert!(granting(&agent, "", "secrets", "get").is_empty());
    }

    #[test]
    fn a_grant_binds_each_role_to_its_subject_in_its_namespace() {
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
        let subject = json!({"kind": "ServiceAccount", "name": "yurt-manager", "namespace": "openyurt-system"});
        let objects = Grant::manager("yurt-manager", subject.clone(), "openyurt-system").objects();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Role",
                "RoleBinding",
                "Role",
                "RoleBinding"
            ]
        );
        let _: ClusterRole = serde_json::from_value(objects[0].clone()).unwrap();
        let binding: ClusterRoleBinding = serde_json::from_value(objects[1].clone()).unwrap();
        assert_eq!(binding.role_ref.name, "yurt-manager");
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].namespace.as_deref(), Some("openyurt-system"));
        let role_in = |ns: &str| -> Vec<PolicyRule> {
            let role = objects
                .iter()
                .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == ns)
                .unwrap();
            let role: Role = serde_json::from_value(role.clone()).unwrap();
            role.rules.unwrap_or_default()
        };
        // Secrets and the Lease where it works; Jobs where the controller runs them,
        // whatever the working namespace; Events in default.
        let working = role_in("openyurt-system");
        assert!(!granting(&working, "", "secrets", "create").is_empty());
        assert!(granting(&working, "batch", "jobs", "create").is_empty());
        let jobs = role_in(crate::controllers::nodeconversion::NAMESPACE);
        for verb in ["list", "watch", "create", "delete"] {
            assert_eq!(granting(&jobs, "batch", "jobs", verb).len(), 1, "{verb}");
        }
        assert!(granting(&jobs, "", "secrets", "get").is_empty());
        let events = role_in(EVENT_NAMESPACE);
        assert!(!granting(&events, "", "events", "create").is_empty());
        let binding: RoleBinding = serde_json::from_value(objects[7].clone()).unwrap();
        assert_eq!(binding.role_ref.kind, "Role");

        // Working in kube-system (as `yurt up`'s manager): one Role there holds the
        // working and the Job rules.
        let objects = Grant::manager(ROLE_NAME, subject, "kube-system").objects();
        assert_eq!(objects.len(), 6);
        let both = rules(objects[2]["rules"].clone());
        assert!(!granting(&both, "", "secrets", "create").is_empty());
        assert!(!granting(&both, "batch", "jobs", "create").is_empty());
    }

    #[test]
    fn hubs_read_only_their_own_config_map_and_the_issuer_keys() {
        let cluster = rules(hub_cluster_rules());
        assert!(granting(&cluster, "", "configmaps", "get").is_empty());
        assert!(granting(&cluster, "", "secrets", "get").is_empty());
        let own = rules(hub_namespace_rules());
        for verb in ["get", "list", "watch"] {
            let g = granting(&own, "", "configmaps", verb);
            assert_eq!(g.len(), 1, "{verb}");
            assert_eq!(g[0].resource_names, Some(vec![HUB_CONFIGMAP.to_owned()]));
        }
        assert!(granting(&own, "", "configmaps", "update").is_empty());
        for url in ["/openid/v1/jwks", "/.well-known/openid-configuration"] {
            assert!(
                cluster.iter().any(|r| r
                    .non_resource_urls
                    .as_ref()
                    .is_some_and(|u| u.iter().any(|u| u == url))),
                "{url}"
            );
        }
    }

    #[test]
    fn the_hub_grant_binds_the_hub_group_in_its_namespace() {
        let objects = Grant::hub(HUB_ROLE_NAME, HUB_GROUP, "kube-system").objects();
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
        );
        for binding in [&objects[1], &objects[3]] {
            assert_eq!(
                binding["subjects"],
                json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "openyurt:yurthub"}])
            );
        }
        assert_eq!(objects[2]["metadata"]["namespace"], "kube-system");
    }
}
