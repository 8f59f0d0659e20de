use std::time::Duration;

use yurt_core::host::HostFacts;
use yurt_core::units::Unit;

use super::files::{HostFiles, KubeletApi};
use super::*;
use crate::discovery::{CaVerification, ClusterInfo, Discovery};

pub(crate) fn facts() -> HostFacts {
    HostFacts {
        name: "edge-x".into(),
        address: "10.20.0.100".parse().unwrap(),
        kubelet: "/k/kubelet".into(),
        kube_proxy: "/k/kube-proxy".into(),
        yurt: "/y/yurt".into(),
        container_runtime_endpoint: "unix:///h/run/containerd.sock".into(),
        cgroup_root: "/yurt-0/edge-x".into(),
        pause_image: "yurt.local/pause:1".into(),
        cni_config_dir: "/h/cni".into(),
        cni_state_dirs: vec!["/h/cni-ipam".into()],
    }
}

fn options(node_type: NodeType) -> JoinOptions {
    JoinOptions {
        discovery: Discovery {
            server: "https://10.10.0.1:6443".parse().unwrap(),
            token: "abcdef.0123456789abcdef".parse().unwrap(),
            ca: CaVerification::UnsafeSkip,
            timeout: Duration::from_secs(1),
            retry_interval: Duration::from_secs(1),
        },
        node: "edge-x".parse().unwrap(),
        pool: Some("pool-a".parse().unwrap()),
        node_type,
        timeout: Duration::from_secs(1),
    }
}

fn cluster() -> ClusterInfo {
    ClusterInfo {
        server: "https://10.10.0.1:6443".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        kubeconfig: String::new(),
    }
}

fn exec_of(files: &HostFiles, process: &str) -> Vec<String> {
    Unit::load(&files.unit(process)).unwrap().exec
}

#[test]
fn node_types_parse() {
    assert_eq!("edge".parse::<NodeType>().unwrap(), NodeType::Edge);
    assert_eq!("plain".parse::<NodeType>().unwrap(), NodeType::Plain);
    let err = "Edge".parse::<NodeType>().unwrap_err().to_string();
    assert!(err.contains("edge or plain"), "{err}");
}

#[test]
fn kubelet_bootstraps_directly_then_goes_through_the_hub_and_rewrites_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = HostFiles::new(dir.path());
    let (facts, opts) = (facts(), options(NodeType::Edge));
    files.write_ca(&cluster()).unwrap();
    files
        .write_bootstrap_kubeconfig(&cluster(), "abcdef.0123456789abcdef")
        .unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(files.bootstrap_kubeconfig())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token is readable by root only");
    assert!(
        files
            .write_kubelet(&facts, &opts.role(), KubeletApi::Bootstrap, true)
            .unwrap()
    );
    assert!(
        !files
            .write_kubelet(&facts, &opts.role(), KubeletApi::Bootstrap, true)
            .unwrap(),
        "unchanged"
    );
    let exec = exec_of(&files, "kubelet");
    assert_eq!(exec[0], "/k/kubelet");
    assert!(
        exec.iter()
            .any(|a| a.starts_with("--bootstrap-kubeconfig="))
    );
    assert!(
        exec.iter()
            .any(|a| a.ends_with("etc/kubernetes/kubelet.conf"))
    );
    assert_eq!(
        exec.last().map(String::as_str),
        Some("$KUBELET_KUBEADM_ARGS")
    );
    let line = Unit::load(&files.unit("kubelet"))
        .unwrap()
        .command_line()
        .unwrap();
    let args: Vec<String> = line
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        args.contains(&"--node-ip=10.20.0.100".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(
            &"--node-labels=apps.openyurt.io/nodepool=pool-a,openyurt.io/is-edge-worker=true"
                .to_owned()
        ),
        "{args:?}"
    );

    assert!(!files.kubelet_bootstrapped());
    std::fs::create_dir_all(files.kubelet_pki()).unwrap();
    std::fs::write(files.kubelet_client_pem(), "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(
        files.kubelet_kubeconfig(),
        format!(
            "client-certificate: {}\n",
            files.kubelet_client_pem().display()
        ),
    )
    .unwrap();
    assert!(files.kubelet_bootstrapped());

    assert!(
        files
            .write_kubelet(&facts, &opts.role(), KubeletApi::ThroughHub, true)
            .unwrap()
    );
    let exec = exec_of(&files, "kubelet");
    assert!(
        !exec
            .iter()
            .any(|a| a.starts_with("--bootstrap-kubeconfig=")),
        "{exec:?}"
    );
    assert!(
        exec.iter().any(|a| a.ends_with("kubelet-through-hub.conf")),
        "{exec:?}"
    );
    let hub_conf = std::fs::read_to_string(files.hub_kubeconfig()).unwrap();
    assert!(hub_conf.contains("http://127.0.0.1:10261"), "{hub_conf}");

    assert!(
        files
            .write_hub(&facts, &cluster().server, &opts.role())
            .unwrap()
    );
    let hub = exec_of(&files, "yurt-hub");
    let client = format!("--client-cert={}", files.kubelet_client_pem().display());
    for want in [
        "hub",
        "--node-name=edge-x",
        "--nodepool-name=pool-a",
        "--server-addr=https://10.10.0.1:6443",
        "--request-client-certificate",
        client.as_str(),
    ] {
        assert!(hub.iter().any(|a| a == want), "{want} in {hub:?}");
    }
    assert!(files.write_kube_proxy(&facts, &opts.role()).unwrap());
    let config =
        std::fs::read_to_string(dir.path().join("var/lib/kube-proxy/config.yaml")).unwrap();
    assert!(config.contains("kubelet-through-hub.conf"), "{config}");

    assert!(!files.joined_marker().exists());
    files.mark_joined("edge-x").unwrap();
    assert_eq!(
        std::fs::read_to_string(files.joined_marker()).unwrap(),
        "edge-x\n"
    );
}

#[test]
fn a_plain_node_says_it_is_no_edge_worker() {
    let dir = tempfile::tempdir().unwrap();
    let files = HostFiles::new(dir.path());
    let mut opts = options(NodeType::Plain);
    opts.pool = None;
    files
        .write_kubelet(&facts(), &opts.role(), KubeletApi::Bootstrap, false)
        .unwrap();
    let flags =
        std::fs::read_to_string(dir.path().join("var/lib/kubelet/kubeadm-flags.env")).unwrap();
    assert!(
        flags.contains("--node-labels=openyurt.io/is-edge-worker=false\""),
        "{flags}"
    );
    // No hub: kube-proxy reads the API server with kubelet's credentials.
    assert!(files.write_kube_proxy(&facts(), &opts.role()).unwrap());
    let config =
        std::fs::read_to_string(dir.path().join("var/lib/kube-proxy/config.yaml")).unwrap();
    assert!(
        config.contains(&files.kubelet_kubeconfig().display().to_string())
            && !config.contains("through-hub"),
        "{config}"
    );
}

#[test]
fn kubelets_configuration_names_the_hosts_cgroup_root_and_client_ca_and_asks_an_edge_nodes_serving_certificate()
 {
    let dir = tempfile::tempdir().unwrap();
    let text = kubelet_config(
        &facts(),
        std::path::Path::new("/h/ca.crt"),
        dir.path(),
        true,
    );
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["cgroupRoot"], "/yurt-0/edge-x");
    assert_eq!(
        config["authentication"]["x509"]["clientCAFile"],
        "/h/ca.crt"
    );
    assert_eq!(config["authentication"]["anonymous"]["enabled"], false);
    assert_eq!(config["rotateCertificates"], true);
    assert_eq!(config["serverTLSBootstrap"], true);
    // A plain node's kubelet makes its own (kubeadm's default): nothing may approve a
    // CSR on a cluster without OpenYurt's manager.
    let plain = kubelet_config(
        &facts(),
        std::path::Path::new("/h/ca.crt"),
        dir.path(),
        false,
    );
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(plain["serverTLSBootstrap"], false);
}

#[test]
fn a_refusal_is_final_and_a_lost_connection_or_overload_is_tried_again() {
    let status = |code: u16| {
        kube::Error::Api(
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed(),
        )
    };
    for code in [500, 503, 504, 429] {
        assert!(is_transient(&status(code)), "{code}");
    }
    for code in [401, 403, 404, 422] {
        assert!(!is_transient(&status(code)), "{code}");
    }
    let serde = serde_json::from_str::<u8>("x").unwrap_err();
    assert!(!is_transient(&kube::Error::SerdeError(serde)));
}

#[tokio::test]
async fn reads_are_retried_through_an_outage_until_the_deadline() {
    let tries = std::sync::atomic::AtomicU32::new(0);
    let unavailable = || {
        kube::Error::Api(
            kube::core::Status::failure("down", "ServiceUnavailable")
                .with_code(503)
                .boxed(),
        )
    };
    let got = read_through(Instant::now() + Duration::from_secs(30), || async {
        if tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Err(unavailable())
        } else {
            Ok(7)
        }
    })
    .await;
    assert_eq!(got.unwrap(), 7);
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Past the deadline the last failure is the answer.
    let started = Instant::now();
    let got: Result<u8, _> = read_through(Instant::now() + Duration::from_millis(700), || async {
        Err(unavailable())
    })
    .await;
    assert!(got.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_rolled_back_join_says_what_failed_and_what_was_undone() {
    let cause = JoinError::Phase {
        phase: "hub",
        reason: "its CSRs csr-abc are still pending".into(),
    };
    let said = JoinError::RolledBack {
        cause: Box::new(cause),
        node: Some("edge-x".into()),
        node_left: None,
    }
    .to_string();
    assert!(
        said.starts_with("hub: its CSRs csr-abc are still pending; the join was rolled back")
            && said.contains("Node edge-x deleted"),
        "{said}"
    );
    let said = JoinError::RolledBack {
        cause: Box::new(JoinError::Preflight("x".into())),
        node: None,
        node_left: Some("the API server did not answer within 20s".into()),
    }
    .to_string();
    assert!(
        !said.contains("deleted")
            && said.contains("the Node it made is left, delete it with kubectl"),
        "{said}"
    );
    let said = JoinError::RollbackFailed {
        cause: Box::new(JoinError::Preflight("x".into())),
        reset: "killing the pods: no".into(),
    }
    .to_string();
    assert!(said.contains("run `yurt adm reset`"), "{said}");
}

#[test]
fn only_a_node_the_first_run_found_missing_counts_as_made_by_the_join() {
    let dir = tempfile::tempdir().unwrap();
    let files = HostFiles::new(dir.path());
    assert!(!files.join_made_node("edge-x"), "no record: not made");
    files.record_node_origin("edge-x", false, false).unwrap();
    assert!(files.join_made_node("edge-x"));
    assert!(!files.join_made_node("edge-y"), "another name");
    // A resumed run, which finds its own Node, keeps the first run's answer.
    files.record_node_origin("edge-x", true, true).unwrap();
    assert!(files.join_made_node("edge-x"));
    // A new run (a killed one's kubelet never got its certificate) writes its own.
    files.record_node_origin("edge-y", true, false).unwrap();
    assert!(!files.join_made_node("edge-x") && !files.join_made_node("edge-y"));

    let dir = tempfile::tempdir().unwrap();
    let files = HostFiles::new(dir.path());
    files.record_node_origin("edge-x", true, false).unwrap();
    assert!(
        !files.join_made_node("edge-x"),
        "a Node that was there is never deleted"
    );
    assert!(
        files.written().iter().any(|p| dir
            .path()
            .join("etc/yurt/node-existed-before-join")
            .starts_with(p)),
        "reset removes the record"
    );
}

fn csr(
    signer: &str,
    cn: &str,
    ips: &[&str],
) -> k8s_openapi::api::certificates::v1::CertificateSigningRequest {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .subject_alt_names
        .push(rcgen::SanType::DnsName("edge-x".try_into().unwrap()));
    for ip in ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    k8s_openapi::api::certificates::v1::CertificateSigningRequest {
        spec: k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec {
            signer_name: signer.to_owned(),
            request: k8s_openapi::ByteString(pem.into_bytes()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn the_hubs_serving_csr_is_told_from_kubelets_by_the_hubs_pod_address() {
    let hub = csr(
        SERVING_SIGNER,
        "system:node:edge-x",
        &["10.20.0.100", "169.254.2.1"],
    );
    let kubelet = csr(SERVING_SIGNER, "system:node:edge-x", &["10.20.0.100"]);
    let client = csr(
        "kubernetes.io/kube-apiserver-client",
        "system:node:edge-x",
        &[],
    );
    assert!(is_hub_csr(&hub));
    assert!(!is_hub_csr(&kubelet));
    assert!(is_hub_csr(&client));
    assert_eq!(csr_subject(&kubelet).as_deref(), Some("system:node:edge-x"));
    let (_, ips) = csr_request(&hub).unwrap();
    assert_eq!(
        ips,
        [
            "10.20.0.100".parse::<std::net::IpAddr>().unwrap(),
            HUB_POD_ADDRESS
        ]
    );
}

#[test]
fn the_clusters_kubelet_configuration_is_found_by_version_and_says_how_kubelet_serves() {
    assert_eq!(kubelet_config_map("1", "20"), "kubelet-config-1.20");
    assert_eq!(kubelet_config_map("1", "20+"), "kubelet-config-1.20");
    let config = |rest: &str| {
        format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{rest}")
    };
    assert_eq!(
        serves_by_csr(&config("serverTLSBootstrap: true\n")),
        Ok(true)
    );
    assert_eq!(
        serves_by_csr(&config("serverTLSBootstrap: false\n")),
        Ok(false)
    );
    assert_eq!(
        serves_by_csr(&config("rotateCertificates: true\n")),
        Ok(false)
    );
    // kubeadm writes YAML; JSON is YAML too.
    assert_eq!(
        serves_by_csr(r#"{"kind":"KubeletConfiguration","serverTLSBootstrap":true}"#),
        Ok(true)
    );
    for bad in [
        config("serverTLSBootstrap: \"yes please\"\n"),
        "kind: ConfigMap\nserverTLSBootstrap: true\n".to_owned(),
        "{{{".to_owned(),
    ] {
        assert!(serves_by_csr(&bad).is_err(), "{bad}");
    }
}

#[test]
fn the_hosts_kubelet_configuration_says_how_kubelet_serves_now() {
    let dir = tempfile::tempdir().unwrap();
    let files = HostFiles::new(dir.path());
    let opts = options(NodeType::Plain);
    assert!(!files.kubelet_serves_by_csr(), "no configuration yet");
    for serving in [true, false] {
        files
            .write_kubelet(&facts(), &opts.role(), KubeletApi::Direct, serving)
            .unwrap();
        assert_eq!(files.kubelet_serves_by_csr(), serving);
    }
}

#[test]
fn ready_counts_after_kubelets_restart_only_when_reported_since() {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let at = |s: &str| s.parse::<jiff::Timestamp>().expect("time");
    let node = |status: &str, heartbeat: &str| Node {
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: status.into(),
                last_heartbeat_time: Some(Time(at(heartbeat))),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    let restarted = Some(at("2026-12-04T10:00:00.600Z"));
    // The kubelet before the restart reported Ready a while ago: not this one's.
    assert!(!ready_since(
        &node("True", "2026-12-04T09:59:50Z"),
        restarted
    ));
    assert!(ready_since(&node("True", "2026-12-04T09:59:50Z"), None));
    // Heartbeats are whole seconds: one in the restart's second (or the one before) counts.
    assert!(ready_since(
        &node("True", "2026-12-04T10:00:00Z"),
        restarted
    ));
    assert!(ready_since(
        &node("True", "2026-12-04T10:00:03Z"),
        restarted
    ));
    assert!(!ready_since(
        &node("False", "2026-12-04T10:00:03Z"),
        restarted
    ));
    assert!(!ready_since(&Node::default(), None));
}
