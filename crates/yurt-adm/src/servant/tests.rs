use super::containers::{container_of, running_tasks};
use super::*;
use crate::join::HostFiles;

/// A host folder whose kubelet holds `cn`'s certificate, and (if `unit`) a kubelet unit
/// and kubeconfig naming `server`.
fn joined_host(cn: &str, unit: bool, server: Option<&str>) -> (tempfile::TempDir, HostFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = HostFiles::new(dir.path());
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(files.kubelet_pki()).unwrap();
    std::fs::write(
        files.kubelet_client_pem(),
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )
    .unwrap();
    if unit {
        std::fs::create_dir_all(files.unit("kubelet").parent().unwrap()).unwrap();
        std::fs::write(files.unit("kubelet"), "").unwrap();
    }
    if let Some(server) = server {
        std::fs::create_dir_all(files.kubernetes()).unwrap();
        std::fs::write(
            files.kubelet_kubeconfig(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: {server}\n"
            ),
        )
        .unwrap();
    }
    (dir, files)
}

#[test]
fn the_servant_runs_only_on_the_joined_node_it_is_told_of() {
    let node: NodeName = "edge-x".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = preflight(&HostFiles::new(dir.path()), &node)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a joined node") && err.contains("yurt adm join"),
        "{err}"
    );

    let (_d, files) = joined_host("system:node:edge-y", true, Some("https://10.10.0.1:6443"));
    let err = preflight(&files, &node).unwrap_err().to_string();
    assert!(
        err.contains("system:node:edge-y, not system:node:edge-x"),
        "{err}"
    );

    let (_d, files) = joined_host("system:node:edge-x", false, Some("https://10.10.0.1:6443"));
    let err = preflight(&files, &node).unwrap_err().to_string();
    assert!(err.contains("no kubelet unit"), "{err}");

    let (_d, files) = joined_host("system:node:edge-x", true, None);
    let err = preflight(&files, &node).unwrap_err().to_string();
    assert!(
        err.contains("kubelet's kubeconfig") && err.contains("kubelet.conf"),
        "{err}"
    );

    let (_d, files) = joined_host("system:node:edge-x", true, Some("https://10.10.0.1:6443"));
    assert_eq!(preflight(&files, &node).unwrap(), "https://10.10.0.1:6443");
}

#[test]
fn only_running_tasks_are_restarted() {
    let table = "TASK    PID     STATUS\n\
                 aaa     101     RUNNING\n\
                 bbb     0       STOPPED\n\
                 ccc     303     RUNNING\n\
                 garbage\n";
    assert_eq!(running_tasks(table), vec!["aaa", "ccc"]);
    assert!(running_tasks("").is_empty());
}

#[test]
fn containers_are_named_by_their_pod_labels_and_others_are_refused() {
    let info = r#"{"ID":"abc","Labels":{"io.cri-containerd.kind":"container","io.kubernetes.container.name":"web","io.kubernetes.pod.name":"web-1","io.kubernetes.pod.namespace":"default"}}"#;
    let c = container_of("abc", info).unwrap();
    assert_eq!(c.to_string(), "default/web-1:web");
    assert_eq!(c.id, "abc");
    let err = container_of("abc", r#"{"Labels":{}}"#).unwrap_err();
    assert!(err.contains("not a pod's container"), "{err}");
    let err = container_of("abc", "not json").unwrap_err();
    assert!(err.contains("not JSON"), "{err}");
}

#[test]
fn the_conversion_record_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let files = HostFiles::new(dir.path());
    assert_eq!(read_state(&files), None);
    write_state(&files, "convert restarting containers").unwrap();
    assert_eq!(
        read_state(&files).as_deref(),
        Some("convert restarting containers")
    );
}

#[test]
fn a_runtime_endpoint_names_its_socket() {
    let r = Runtime::new("unix:///run/containerd/containerd.sock");
    assert_eq!(
        format!("{r:?}"),
        format!("{:?}", Runtime::new("/run/containerd/containerd.sock"))
    );
}

/// A host whose service manager only records what it is asked.
struct RecordingHost {
    files: HostFiles,
    facts: yurt_core::host::HostFacts,
    asked: std::sync::Mutex<Vec<ServiceRequest>>,
}

impl Host for RecordingHost {
    fn files(&self) -> &HostFiles {
        &self.files
    }

    fn facts(&self) -> &yurt_core::host::HostFacts {
        &self.facts
    }

    async fn request(&self, request: ServiceRequest) -> Result<(), String> {
        self.asked.lock().unwrap().push(request);
        Ok(())
    }
}

#[tokio::test]
async fn an_interrupted_convert_restores_the_host_before_it_reports() {
    // In a network namespace of its own (this test's thread, and the `ip` it runs): the
    // restore deletes the hub's dummy interface, which must not be this machine's, and
    // nothing answers as the hub there, so the convert waits for its readiness until
    // told to stop, as a servant does when its Job's deadline passes.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let (_dir, files) = joined_host("system:node:edge-z", true, Some("https://127.0.0.1:1"));
    std::fs::write(
        files.kubelet_kubeconfig(),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: default\n  context:\n    cluster: default\n    user: default\ncurrent-context: default\nusers:\n- name: default\n  user: {}\n",
    )
    .unwrap();
    let kubelet_unit = std::fs::read(files.unit("kubelet")).unwrap();
    let host = RecordingHost {
        files,
        facts: crate::join::tests::facts(),
        asked: std::sync::Mutex::default(),
    };
    let options = ServantOptions {
        node: "edge-z".parse().unwrap(),
        pool: Some("pool-a".parse().unwrap()),
        timeout: Duration::from_secs(600),
        container_stop_timeout: Duration::from_secs(1),
        own_pod: None,
        interrupt: CancellationToken::new(),
    };
    let interrupt = options.interrupt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        interrupt.cancel();
    });
    let runtime = Runtime::new("unix:///nonexistent/containerd.sock");
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        convert(&host, &runtime, &options, &|_| {}),
    )
    .await
    .expect("the interrupt ends the convert, not its ten-minute timeout")
    .unwrap_err();
    assert!(
        matches!(&err, ServantError::Restored { cause } if matches!(**cause, ServantError::Interrupted)),
        "{err}"
    );
    assert!(
        err.to_string().contains("interrupted (SIGTERM or SIGINT)"),
        "{err}"
    );
    // The hub it started is stopped and its files are gone; kubelet never moved.
    assert_eq!(
        *host.asked.lock().unwrap(),
        [
            ServiceRequest::RestartNoBlock("yurt-hub".into()),
            ServiceRequest::Stop("yurt-hub".into()),
        ]
    );
    assert!(!host.files.unit("yurt-hub").exists());
    assert!(!host.files.yurthub().exists());
    assert_eq!(
        std::fs::read(host.files.unit("kubelet")).unwrap(),
        kubelet_unit
    );
    assert_eq!(read_state(&host.files), None);
}

#[tokio::test]
async fn the_pods_are_listed_again_when_a_read_fails_within_the_deadline() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // An API server whose first connection is dropped unanswered (a link blip) and
    // which then answers the node's pod list.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (first, _) = listener.accept().await.unwrap();
        drop(first);
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 4096];
        let n = conn.read(&mut request).await.unwrap();
        let request = String::from_utf8_lossy(&request[..n]).into_owned();
        let body = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":"web","namespace":"default"},"spec":{"containers":[],"restartPolicy":"Never","terminationGracePeriodSeconds":7}}]}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(answer.as_bytes()).await.unwrap();
        request
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let node: NodeName = "edge-z".parse().unwrap();
    let pods = pods_of(&client, &node, Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    let web = &pods[&("default".to_owned(), "web".to_owned())];
    assert!(!web.always_restarts);
    assert_eq!(web.grace, Duration::from_secs(7));
    let request = server.await.unwrap();
    assert!(
        request.contains("fieldSelector=spec.nodeName%3Dedge-z"),
        "{request}"
    );

    // Past the deadline the failure is reported.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{gone}").parse().unwrap()))
            .unwrap();
    let err = pods_of(&client, &node, Instant::now() + Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.starts_with("listing the node's pods"), "{err}");
}

#[tokio::test]
async fn one_servant_at_a_time_on_a_host() {
    let (_dir, files) = joined_host("system:node:edge-z", true, Some("https://127.0.0.1:1"));
    let host = RecordingHost {
        files,
        facts: crate::join::tests::facts(),
        asked: std::sync::Mutex::default(),
    };
    // Another servant (a replaced Job's, still restoring) holds the host.
    std::fs::create_dir_all(lock_file(&host.files).parent().unwrap()).unwrap();
    let held = std::fs::File::create(lock_file(&host.files)).unwrap();
    held.lock().unwrap();
    let options = ServantOptions {
        node: "edge-z".parse().unwrap(),
        pool: None,
        timeout: Duration::from_millis(1500),
        container_stop_timeout: Duration::from_secs(1),
        own_pod: None,
        interrupt: CancellationToken::new(),
    };
    let runtime = Runtime::new("unix:///nonexistent/containerd.sock");
    let said = std::sync::Mutex::new(Vec::new());
    let progress = |s: &str| said.lock().unwrap().push(s.to_owned());
    let err = revert(&host, &runtime, &options, &progress)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("waiting for another node-servant on this host:"),
        "{err}"
    );
    assert!(host.asked.lock().unwrap().is_empty(), "nothing was touched");
    assert_eq!(
        said.lock().unwrap().as_slice(),
        ["waiting for another node-servant on this host to finish"]
    );

    // Told to stop while it waits: it stops at once.
    let interrupted = ServantOptions {
        timeout: Duration::from_secs(600),
        ..options.clone()
    };
    let stop = interrupted.interrupt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
    });
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        revert(&host, &runtime, &interrupted, &|_| {}),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, ServantError::Interrupted), "{err}");

    // Once the other is done, the lock is free for the next servant.
    held.unlock().unwrap();
    let file = lock_host(&host.files, &options, &|_| {}).await.unwrap();
    drop(file);
}
