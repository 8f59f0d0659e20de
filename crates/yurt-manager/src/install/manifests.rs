//! `yurt manager manifests`: what `kubectl apply -f -` needs to run the manager as a
//! Deployment in a cluster OpenYurt did not create: the CRDs, a ServiceAccount bound to
//! the manager's rights ([`super::rbac`]), the webhook Service and the Deployment.
//!
//! The webhook configurations are not printed: the manager applies them at start with
//! the CA it keeps in its Secret (`webhook/register.rs`), as it does the NodePool CRD's
//! conversion webhook. Printed ones would carry no CA, so until the manager ran, every
//! Node, Endpoints or NodePool write they cover would be refused or delayed by a webhook
//! nobody serves.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::rbac::{Grant, HUB_CONFIGMAP, HUB_GROUP, HUB_ROLE_NAME};
use crate::webhook::certs::SERVICE_NAME;

/// Name of the Deployment, its ServiceAccount and the pods' `app.kubernetes.io/name`.
pub const NAME: &str = "yurt-manager";
/// Where the `yurt` binary sits in the manager's image (`yurt image build --with-yurt`).
pub const BINARY_IN_IMAGE: &str = "/usr/local/bin/yurt";
/// The hubs' namespace (their `--namespace`, as conversions and joins start them),
/// where their ConfigMap is.
pub const HUB_NAMESPACE: &str = "kube-system";
/// The webhook server's port in the pod (`--webhook-port`'s default).
pub const WEBHOOK_PORT: u16 = 10273;
/// The metrics port (`--metrics-addr`'s default).
pub const METRICS_PORT: u16 = 10271;
/// The health-probe port (`--health-probe-addr`'s default).
pub const HEALTH_PORT: u16 = 10272;

/// What to install.
#[derive(Debug, Clone)]
pub struct Options {
    /// The image holding `yurt` at [`BINARY_IN_IMAGE`].
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// The working namespace: the Deployment, Service, ServiceAccount, Lease and webhook
    /// Secret (the conversion Jobs run in kube-system, as OpenYurt's do).
    pub namespace: String,
    /// Replicas (one leads, every one serves the webhooks).
    pub replicas: u16,
    /// Where the pods may run (the Deployment's `nodeSelector`).
    pub node_selector: BTreeMap<String, String>,
    /// More `yurt manager` flags, as given.
    pub extra_args: Vec<String>,
}

/// The user the API server authenticates the manager's pods as.
pub fn service_account_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{NAME}")
}

/// The `yurt manager` arguments the Deployment runs (after [`BINARY_IN_IMAGE`]).
pub fn manager_args(options: &Options) -> Vec<String> {
    let mut args = vec![
        "manager".to_owned(),
        format!("--working-namespace={}", options.namespace),
        format!(
            "--manager-username={}",
            service_account_user(&options.namespace)
        ),
    ];
    // The image holds `yurt` and busybox: all a conversion Job or a static pod
    // upgrade worker needs, unless the flags name another.
    if !options
        .extra_args
        .iter()
        .any(|a| a.starts_with("--node-servant-image"))
    {
        args.push(format!("--node-servant-image={}", options.image));
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

/// The control-plane node labels of kubeadm clusters (1.20 sets both): without a
/// `--node-selector`, the pods run only on such nodes, which the API server reaches
/// and no edge outage cuts off.
pub const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/control-plane",
];

/// Every object, in the order `kubectl apply` needs them (a Namespace first when it is
/// not one every cluster has).
pub fn objects(options: &Options) -> Vec<Value> {
    let ns = options.namespace.as_str();
    let labels = json!({"app.kubernetes.io/name": NAME});
    let mut objects = Vec::new();
    if !matches!(ns, "default" | "kube-system" | "kube-public") {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    for crd in yurt_api::crds::all() {
        let mut crd = serde_json::to_value(crd).unwrap_or(Value::Null);
        if let Some(o) = crd.as_object_mut() {
            o.insert("apiVersion".into(), "apiextensions.k8s.io/v1".into());
            o.insert("kind".into(), "CustomResourceDefinition".into());
        }
        objects.push(crd);
    }
    objects.push(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels},
    }));
    let subject = json!({"kind": "ServiceAccount", "name": NAME, "namespace": ns});
    // Not `yurt up`'s names: applied to such a fleet, they must not rebind its
    // manager's rights to the service account.
    objects.extend(Grant::manager(NAME, subject, ns).objects());
    // What the device agents PlatformAdmins run may do (bound per PlatformAdmin).
    objects.extend(crate::install::rbac::iot_agent_roles());
    // The hubs the conversions install: what kubelet, kube-proxy and the hubs' filters
    // read beyond the Node authorizer's grants (NodePools, their ConfigMap, the
    // service-account issuer's keys that prove pods' tokens offline), bound to the group
    // of the hubs' own certificates. The same objects as `yurt up`'s.
    objects.extend(Grant::hub(HUB_ROLE_NAME, HUB_GROUP, HUB_NAMESPACE).objects());
    // Without data: applying the manifests again (an upgrade) keeps what operators set
    // there (`cache_agents`: more clients whose reads the hubs cache, `*` for all;
    // `servicetopology` and the other filters' names: more clients they apply to).
    objects.push(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": HUB_CONFIGMAP, "namespace": HUB_NAMESPACE},
    }));
    objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": ns, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [{"name": "https", "port": 443, "targetPort": WEBHOOK_PORT, "protocol": "TCP"}],
        },
    }));
    let http_probe = |path: &str| json!({"httpGet": {"path": path, "port": HEALTH_PORT}, "periodSeconds": 10, "timeoutSeconds": 5});
    let mut pod_spec = json!({
        "serviceAccountName": NAME,
        "tolerations": [
            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "containers": [{
            "name": NAME,
            "image": options.image,
            "imagePullPolicy": options.image_pull_policy,
            "command": [BINARY_IN_IMAGE],
            "args": manager_args(options),
            "ports": [
                {"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"},
                {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            ],
            "readinessProbe": http_probe("/readyz"),
            "livenessProbe": http_probe("/healthz"),
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
        }],
    });
    // Generous: a slow API server at start must not get the manager killed.
    pod_spec["containers"][0]["livenessProbe"]["initialDelaySeconds"] = json!(30);
    pod_spec["containers"][0]["livenessProbe"]["failureThreshold"] = json!(6);
    if options.node_selector.is_empty() {
        let terms: Vec<Value> = CONTROL_PLANE_LABELS
            .iter()
            .map(|key| json!({"matchExpressions": [{"key": key, "operator": "Exists"}]}))
            .collect();
        pod_spec["affinity"] = json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
        }});
    } else {
        pod_spec["nodeSelector"] = json!(options.node_selector);
    }
    if ns == "kube-system" {
        // Only kube-system may use the system priority classes by default.
        pod_spec["priorityClassName"] = json!("system-cluster-critical");
    }
    objects.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }));
    objects
}

/// [`objects`] as one multi-document YAML stream for `kubectl apply -f -`.
pub fn to_yaml(options: &Options) -> String {
    let mut out = String::new();
    for object in objects(options) {
        out.push_str("---\n");
        // JSON values always have a YAML form.
        out.push_str(&serde_yaml::to_string(&object).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn options(namespace: &str) -> Options {
        Options {
            image: "yurt.local/yurt:1".to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            namespace: namespace.to_owned(),
            replicas: 2,
            node_selector: BTreeMap::from([(
                "kubernetes.io/hostname".to_owned(),
                "cloud-w1".to_owned(),
            )]),
            extra_args: vec!["--node-conversion-timeout=900".to_owned()],
        }
    }

    fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
        objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    #[test]
    fn the_stream_holds_typed_objects_that_fit_together() {
        let objects = objects(&options("kube-system"));
        assert!(of_kind(&objects, "Namespace").is_empty());
        let crds: Vec<CustomResourceDefinition> = of_kind(&objects, "CustomResourceDefinition")
            .into_iter()
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .collect();
        assert_eq!(crds.len(), yurt_api::crds::all().len());
        let account: ServiceAccount =
            serde_json::from_value(of_kind(&objects, "ServiceAccount")[0].clone()).unwrap();
        let service: Service =
            serde_json::from_value(of_kind(&objects, "Service")[0].clone()).unwrap();
        let deployment: Deployment =
            serde_json::from_value(of_kind(&objects, "Deployment")[0].clone()).unwrap();

        let spec = deployment.spec.unwrap();
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(spec.selector.match_labels.as_ref(), Some(&pod_labels));
        assert_eq!(spec.replicas, Some(2));
        // The Service the webhook configurations name reaches the pods' webhook port.
        let service_spec = service.spec.unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some(SERVICE_NAME));
        assert_eq!(service_spec.selector.as_ref(), Some(&pod_labels));
        let port = &service_spec.ports.unwrap()[0];
        assert_eq!(port.port, 443);
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name, account.metadata.name);
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-cluster-critical")
        );
        assert_eq!(
            pod.node_selector.unwrap()["kubernetes.io/hostname"],
            "cloud-w1"
        );
        let container = &pod.containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&[BINARY_IN_IMAGE.to_owned()][..])
        );
        let args = container.args.clone().unwrap();
        assert!(args.contains(
            &"--manager-username=system:serviceaccount:kube-system:yurt-manager".to_owned()
        ));
        assert!(
            args.contains(&"--node-servant-image=yurt.local/yurt:1".to_owned()),
            "the conversion Jobs run the manager's own image: {args:?}"
        );
        assert!(
            pod.affinity.is_none(),
            "a node selector replaces the default"
        );
        assert_eq!(
            args.last().map(String::as_str),
            Some("--node-conversion-timeout=900")
        );
        let ports = container.ports.clone().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.container_port == i32::from(WEBHOOK_PORT))
        );
        assert_eq!(
            port.target_port,
            Some(IntOrString::Int(i32::from(WEBHOOK_PORT)))
        );
        assert_eq!(
            container
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );

        // The manager's bindings name the pods' service account, the hubs' the group of
        // their certificates; nothing else is bound.
        let bindings: Vec<&Value> = of_kind(&objects, "ClusterRoleBinding")
            .into_iter()
            .chain(of_kind(&objects, "RoleBinding"))
            .collect();
        for binding in &bindings {
            let subject = &binding["subjects"][0];
            if binding["metadata"]["name"] == NAME {
                assert_eq!(subject["kind"], "ServiceAccount");
                assert_eq!(subject["name"], NAME);
                assert_eq!(subject["namespace"], "kube-system");
            } else {
                assert_eq!(binding["metadata"]["name"], HUB_ROLE_NAME);
                assert_eq!(subject["kind"], "Group");
                assert_eq!(subject["name"], "openyurt:yurthub");
            }
        }
        assert_eq!(
            bindings
                .iter()
                .filter(|b| b["metadata"]["name"] == HUB_ROLE_NAME)
                .count(),
            2,
            "the hubs' cluster and namespace bindings"
        );
        let config = of_kind(&objects, "ConfigMap");
        assert_eq!(config.len(), 1);
        assert_eq!(config[0]["metadata"]["name"], "yurt-hub-cfg");
        assert_eq!(config[0]["metadata"]["namespace"], HUB_NAMESPACE);
        assert!(
            config[0].get("data").is_none(),
            "applying the manifests again keeps what operators set"
        );
    }

    #[test]
    fn without_a_node_selector_the_pods_run_on_control_plane_nodes() {
        let mut options = options("kube-system");
        options.node_selector.clear();
        options.extra_args = vec!["--node-servant-image=busybox:1".to_owned()];
        let objects = objects(&options);
        let deployment: Deployment =
            serde_json::from_value(of_kind(&objects, "Deployment")[0].clone()).unwrap();
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert!(pod.node_selector.is_none());
        let terms = pod
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .expect("a required node affinity")
            .node_selector_terms;
        let keys: Vec<_> = terms
            .iter()
            .flat_map(|t| t.match_expressions.iter().flatten())
            .map(|e| (e.key.as_str(), e.operator.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("node-role.kubernetes.io/master", "Exists"),
                ("node-role.kubernetes.io/control-plane", "Exists")
            ],
            "either label will do (terms are ORed)"
        );
        assert_eq!(terms.len(), 2);
        let args = pod.containers[0].args.clone().unwrap();
        let servant: Vec<_> = args
            .iter()
            .filter(|a| a.starts_with("--node-servant-image"))
            .collect();
        assert_eq!(
            servant,
            ["--node-servant-image=busybox:1"],
            "the given one only"
        );
    }

    #[test]
    fn another_namespace_comes_first_and_holds_everything_namespaced() {
        let objects = objects(&options("openyurt-system"));
        assert_eq!(objects[0]["kind"], "Namespace");
        assert_eq!(objects[0]["metadata"]["name"], "openyurt-system");
        for kind in ["ServiceAccount", "Service", "Deployment"] {
            assert_eq!(
                of_kind(&objects, kind)[0]["metadata"]["namespace"],
                "openyurt-system"
            );
        }
        let deployment = of_kind(&objects, "Deployment")[0];
        assert!(
            deployment["spec"]["template"]["spec"]
                .get("priorityClassName")
                .is_none()
        );
        let roles: Vec<(&str, &str)> = of_kind(&objects, "Role")
            .iter()
            .map(|r| {
                (
                    r["metadata"]["name"].as_str().unwrap(),
                    r["metadata"]["namespace"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            roles,
            [
                (NAME, "openyurt-system"),
                (NAME, "kube-system"),
                (NAME, "default"),
                (HUB_ROLE_NAME, "kube-system"),
            ],
            "the hubs' ConfigMap stays where the hubs look for it"
        );
        assert_eq!(
            of_kind(&objects, "ConfigMap")[0]["metadata"]["namespace"],
            "kube-system"
        );
    }

    #[test]
    fn the_yaml_stream_reads_back_as_the_objects() {
        let options = options("kube-system");
        let yaml = to_yaml(&options);
        let back: Vec<Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        assert_eq!(back, objects(&options));
    }
}
