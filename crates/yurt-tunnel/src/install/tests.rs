use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize as _;
use serde::de::DeserializeOwned;

use super::*;

fn options() -> Options {
    Options {
        image: "registry.local/yurt:v1".to_owned(),
        image_pull_policy: "IfNotPresent".to_owned(),
        ca_file: "/etc/kubernetes/pki/ca.crt".into(),
        cert_file: "/etc/kubernetes/pki/apiserver.crt".into(),
        key_file: "/etc/kubernetes/pki/apiserver.key".into(),
        egress_socket: "/etc/kubernetes/yurt-tunnel-server/egress.sock".into(),
        agent_port: 10262,
        node_selector: BTreeMap::new(),
    }
}

/// The one object of `kind`, as the typed object the API server would read.
fn one<T: DeserializeOwned + serde::Serialize>(objects: &[Value], kind: &str) -> T {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    let typed: T =
        serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
    // Every field known to the API (typed objects drop what they do not know).
    assert_eq!(
        &serde_json::to_value(&typed).unwrap(),
        found[0],
        "{kind} has a field the API does not"
    );
    typed
}

#[test]
fn every_object_is_a_valid_kubernetes_object_and_the_yaml_reads_back() {
    let objects = objects(&options()).unwrap();
    let _: ServiceAccount = one(&objects, "ServiceAccount");
    let _: ClusterRole = one(&objects, "ClusterRole");
    let _: ClusterRoleBinding = one(&objects, "ClusterRoleBinding");
    let _: Service = one(&objects, "Service");
    let _: DaemonSet = one(&objects, "DaemonSet");
    let yaml = to_yaml(&objects);
    let read: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect();
    assert_eq!(read, objects);
}

#[test]
fn the_server_may_only_watch_nodes() {
    let objects = objects(&options()).unwrap();
    let role: ClusterRole = one(&objects, "ClusterRole");
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["nodes".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["list", "watch"]);
    let binding: ClusterRoleBinding = one(&objects, "ClusterRoleBinding");
    let subjects = binding.subjects.unwrap();
    assert_eq!(
        format!(
            "system:serviceaccount:{}:{}",
            subjects[0].namespace.as_deref().unwrap(),
            subjects[0].name
        ),
        service_account_user()
    );
    assert_eq!(binding.role_ref.name, NAME);
    // Not `yurt up`'s grant: applying these to a fleet must not rebind its servers'.
    assert_ne!(
        binding.metadata.name.as_deref(),
        Some("openyurt:yurt-tunnel-server")
    );

    // Nodes get the Service's Endpoints by the Node authorizer's own rules: no grant.
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding")
    );
}

#[test]
fn the_service_selects_the_servers_pods_on_the_agent_port() {
    let objects = objects(&options()).unwrap();
    let service: Service = one(&objects, "Service");
    let daemon_set: DaemonSet = one(&objects, "DaemonSet");
    assert_eq!(service.metadata.name.as_deref(), Some(DISCOVERY_SERVICE));
    assert_eq!(service.metadata.namespace.as_deref(), Some(NAMESPACE));
    let spec = service.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let selector = spec.selector.unwrap();
    let pod_labels = daemon_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(!selector.is_empty());
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 10262);
}

#[test]
fn the_server_runs_on_control_plane_hosts_with_their_files_at_their_own_paths() {
    let options = options();
    let objects = objects(&options).unwrap();
    let daemon_set: DaemonSet = one(&objects, "DaemonSet");
    let pod = daemon_set.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    let terms = pod
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    let keys: Vec<_> = terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten().map(|e| e.key.as_str()))
        .collect();
    assert_eq!(keys, CONTROL_PLANE_LABELS);
    let tolerated: Vec<_> = pod
        .tolerations
        .unwrap()
        .into_iter()
        .filter_map(|t| t.key)
        .collect();
    assert_eq!(tolerated, CONTROL_PLANE_LABELS);

    let container = &pod.containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&[BINARY_IN_IMAGE.to_owned()][..])
    );
    let args = container.args.clone().unwrap();
    assert_eq!(args, server_args(&options));
    for flag in [
        "--egress-socket=/etc/kubernetes/yurt-tunnel-server/egress.sock",
        "--agent-bind-address=0.0.0.0:10262",
        "--ca-file=/etc/kubernetes/pki/ca.crt",
        "--cert-file=/etc/kubernetes/pki/apiserver.crt",
        "--key-file=/etc/kubernetes/pki/apiserver.key",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    // Each host file and the socket's folder at the same path inside, read-only but
    // the socket's folder.
    let volumes = pod.volumes.unwrap();
    let mounts = container.volume_mounts.clone().unwrap();
    for (path, read_only) in [
        ("/etc/kubernetes/pki/ca.crt", true),
        ("/etc/kubernetes/pki/apiserver.crt", true),
        ("/etc/kubernetes/pki/apiserver.key", true),
        ("/etc/kubernetes/yurt-tunnel-server", false),
    ] {
        let mount = mounts.iter().find(|m| m.mount_path == path).unwrap();
        assert_eq!(mount.read_only.unwrap_or(false), read_only, "{path}");
        let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
        assert_eq!(volume.host_path.as_ref().unwrap().path, path);
    }
    // The probes reach the admin port on the host's loopback.
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(ADMIN_PORT.into())
        );
    }
    assert!(args.contains(&format!("--admin-address=127.0.0.1:{ADMIN_PORT}")));
}

#[test]
fn a_node_selector_replaces_the_control_plane_affinity() {
    let mut options = options();
    options
        .node_selector
        .insert("example.com/api".to_owned(), "yes".to_owned());
    let objects = objects(&options).unwrap();
    let daemon_set: DaemonSet = one(&objects, "DaemonSet");
    let pod = daemon_set.spec.unwrap().template.spec.unwrap();
    assert!(pod.affinity.is_none());
    assert_eq!(pod.node_selector.unwrap()["example.com/api"], "yes");
}

#[test]
fn options_no_pod_could_run_with_are_refused_with_the_flag_named() {
    let refused = |change: &dyn Fn(&mut Options)| {
        let mut options = options();
        change(&mut options);
        objects(&options).unwrap_err().to_string()
    };
    assert!(refused(&|o| o.ca_file = "pki/ca.crt".into()).starts_with("--ca-file:"));
    assert!(refused(&|o| o.cert_file = "apiserver.crt".into()).starts_with("--cert-file:"));
    assert!(refused(&|o| o.key_file = "apiserver.key".into()).starts_with("--key-file:"));
    assert!(refused(&|o| o.egress_socket = "egress.sock".into()).starts_with("--egress-socket:"));
    assert!(refused(&|o| o.egress_socket = "/egress.sock".into()).contains("no folder"));
    assert!(refused(&|o| o.egress_socket = "/".into()).starts_with("--egress-socket:"));
    // Folders that hold more than the socket: refused.
    for socket in [
        "/etc/kubernetes/egress.sock",
        "/etc/kubernetes/pki/egress.sock",
        "/run/egress.sock",
        "/var/lib/kubelet/egress.sock",
    ] {
        let said = refused(&|o| o.egress_socket = socket.into());
        assert!(said.contains("a folder of its own"), "{socket}: {said}");
    }
    let said = refused(&|o| {
        o.ca_file = "/srv/tunnel/ca.crt".into();
        o.egress_socket = "/srv/tunnel/egress.sock".into();
    });
    assert!(said.contains("a folder of its own"), "{said}");
    assert!(refused(&|o| o.agent_port = 0).starts_with("--agent-port:"));
    assert!(refused(&|o| o.agent_port = ADMIN_PORT).starts_with("--agent-port:"));
    assert!(refused(&|o| o.image = " ".into()).starts_with("--image:"));
}

#[test]
fn the_egress_configuration_sends_cluster_traffic_to_the_socket() {
    let config = egress_selector_configuration(Path::new("/run/t/egress.sock"));
    assert_eq!(config["kind"], "EgressSelectorConfiguration");
    assert_eq!(config["apiVersion"], "apiserver.k8s.io/v1beta1");
    let selections = config["egressSelections"].as_array().unwrap();
    assert_eq!(selections.len(), 1);
    assert_eq!(selections[0]["name"], "cluster");
    assert_eq!(selections[0]["connection"]["proxyProtocol"], "HTTPConnect");
    assert_eq!(
        selections[0]["connection"]["transport"]["uds"]["udsName"],
        "/run/t/egress.sock"
    );
}
