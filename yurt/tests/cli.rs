//! The `yurt` command line as a user meets it: bad input gets one clear line and a
//! non-zero exit; a data folder held by a running `yurt up` is refused; a `yurt up`
//! killed with SIGKILL is cleaned up by `yurt down`; `yurt up --detach` leaves a
//! supervisor that restarts crashed processes until `yurt down`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: `YURT_BINARY` if set (a copy that a concurrent build of the
/// shared target folder cannot replace mid-test), else the one cargo built.
fn yurt_binary() -> String {
    std::env::var("YURT_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_yurt").to_owned())
}

fn yurt(args: &[&str]) -> Output {
    Command::new(yurt_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run yurt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_flag_is_refused_with_a_usage_error() {
    let out = yurt(&["up", "--edge-nodez", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: unexpected argument '--edge-nodez'"),
        "{err}"
    );
}

#[test]
fn out_of_range_sizes_are_refused() {
    let out = yurt(&["up", "--edge-nodes", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--edge-nodes"), "{}", stderr(&out));
    let out = yurt(&[
        "up",
        "--pools",
        "3",
        "--edge-nodes",
        "2",
        "--data-dir",
        "/var/lib/yurt-test/cli-pools",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--pools must be between 1 and min(26, --edge-nodes=2), got 3"),
        "{err}"
    );
    for short in ["5m", "-1h", "soon"] {
        let out = yurt(&["up", "--cluster-signing-duration", short]);
        assert_eq!(out.status.code(), Some(2), "{short}");
        assert!(
            stderr(&out).contains("--cluster-signing-duration"),
            "{}",
            stderr(&out)
        );
    }
    for csrs in ["0", "1001"] {
        let out = yurt(&["bench", "adm", "--csrs", csrs]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("--csrs"), "{}", stderr(&out));
    }
}

#[test]
fn fleet_commands_without_a_fleet_say_how_to_start_one() {
    let out = yurt(&[
        "fleet",
        "--data-dir",
        "/var/lib/yurt-test/cli-none",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: no fleet in /var/lib/yurt-test/cli-none; start one with `yurt up --data-dir /var/lib/yurt-test/cli-none`"
    );
}

#[test]
fn unusable_data_folders_are_refused() {
    for (dir, needle) in [
        ("/tmp/with space", "may contain only letters"),
        (
            "/var/lib/yurt-test/a-folder-name-that-is-much-too-long-for-sockets-xx",
            "at most 50 characters",
        ),
    ] {
        let out = yurt(&["up", "--data-dir", dir]);
        assert_eq!(out.status.code(), Some(1), "{dir}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{dir}: {err}");
        assert!(!Path::new(dir).exists(), "nothing made for {dir}");
    }
}

/// One line on stderr, exit code 1, containing `want`.
fn refused(out: &Output, want: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(want), "wanted {want:?}: {err}");
}

#[test]
fn adm_token_refuses_bad_input_before_reaching_any_cluster_and_answers_to_yurtadm() {
    // No cluster anywhere: each is refused for what it is, not for the missing cluster.
    let nowhere = ["--kubeconfig", "/nonexistent/kubeconfig"];
    for (args, want) in [
        (vec!["token", "create", "abc.def"], "is not of the form"),
        (
            vec!["token", "create", "--usages", "signing,admin"],
            "usage \"admin\"",
        ),
        (
            vec!["token", "create", "--groups", "system:masters"],
            "must start with",
        ),
        (
            vec!["token", "create", "--ttl", "-5m"],
            "must not be negative",
        ),
        (
            vec!["token", "create", "--ttl", "3d"],
            "--ttl: unknown unit",
        ),
        (
            vec!["token", "create", "--usages", "signing"],
            "unless the usage includes \"authentication\"",
        ),
        (
            vec!["token", "create", "--ttl", "600000000h"],
            "longer than Go allows",
        ),
        (vec!["token", "delete", "abc"], "is not 6 characters"),
    ] {
        let mut full = vec!["adm"];
        full.extend(&args);
        full.extend(nowhere);
        refused(&yurt(&full), want);
    }
    // The OpenYurt name runs the same command; a generated token is well formed.
    let dir = tempfile::tempdir().unwrap();
    let alias = dir.path().join("yurtadm");
    std::os::unix::fs::symlink(yurt_binary(), &alias).unwrap();
    let out = Command::new(&alias)
        .args(["token", "generate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (id, secret) = token.split_once('.').expect("id.secret");
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    assert!(ok(id, 6) && ok(secret, 16), "{token}");
}

#[test]
fn adm_join_and_reset_refuse_bad_input_and_a_host_without_a_service_manager_before_any_connection()
{
    let token = "abcdef.0123456789abcdef";
    let pin = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    for (args, want) in [
        (
            vec![
                "10.10.0.1:6443",
                "--token",
                "nope",
                "--discovery-token-ca-cert-hash",
                pin,
            ],
            "--token",
        ),
        (
            vec!["10.10.0.1:6443", "--token", token],
            "--discovery-token-ca-cert-hash sha256:<hex>",
        ),
        (
            vec![
                "10.10.0.1:6443",
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                pin,
                "--discovery-token-unsafe-skip-ca-verification",
            ],
            "exclude each other",
        ),
        (
            vec![
                "10.10.0.1:6443",
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                "sha256:zz",
            ],
            "--discovery-token-ca-cert-hash",
        ),
        (
            vec![
                "http://10.10.0.1:6443",
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                pin,
            ],
            "10.10.0.1",
        ),
        (
            vec![
                "10.10.0.1:6443",
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                pin,
                "--node-type",
                "fog",
            ],
            "edge or plain",
        ),
        (
            vec![
                "10.10.0.1:6443",
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                pin,
                "--node-name",
                "Bad_Name",
            ],
            "--node-name",
        ),
        (
            vec![
                "10.10.0.1:6443",
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                pin,
                "--timeout",
                "0s",
            ],
            "--timeout",
        ),
        // Well formed, but not run on a fleet host: nothing would start kubelet.
        (
            vec![
                "10.10.0.1:6443",
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                pin,
            ],
            "runs on a fleet host",
        ),
    ] {
        let mut full = vec!["adm", "join"];
        full.extend(&args);
        let out = Command::new(yurt_binary())
            .args(&full)
            .env_remove("YURT_HOST_DIR")
            .env_remove("YURT_SERVICE_MANAGER")
            .output()
            .unwrap();
        refused(&out, want);
    }
    // Reset, likewise, undoes nothing off a fleet host.
    let out = Command::new(yurt_binary())
        .args(["adm", "reset", "--delete-node"])
        .env_remove("YURT_HOST_DIR")
        .env_remove("YURT_SERVICE_MANAGER")
        .output()
        .unwrap();
    refused(&out, "runs on a fleet host");
}

#[test]
fn node_servant_and_adm_convert_refuse_bad_input_before_any_connection() {
    for (args, want) in [
        (
            vec![
                "node-servant",
                "convert",
                "--node-name",
                "Bad_Name",
                "--nodepool-name",
                "pool-a",
            ],
            "--node-name",
        ),
        (
            vec![
                "node-servant",
                "convert",
                "--node-name",
                "edge-z",
                "--nodepool-name",
                "Pool A",
            ],
            "--nodepool-name",
        ),
        (
            vec![
                "node-servant",
                "revert",
                "--node-name",
                "edge-z",
                "--timeout",
                "0s",
            ],
            "--timeout",
        ),
        (
            vec![
                "node-servant",
                "revert",
                "--node-name",
                "edge-z",
                "--container-stop-timeout",
                "soon",
            ],
            "--container-stop-timeout",
        ),
        // Well formed, but not run on a fleet host: nothing would restart kubelet.
        (
            vec!["node-servant", "revert", "--node-name", "edge-z"],
            "runs on a fleet host",
        ),
        (
            vec!["adm", "convert", "--node", "edge-z", "--timeout", "0s"],
            "--timeout",
        ),
        (
            vec!["adm", "revert", "--node", "edge-z", "--timeout", "1x"],
            "--timeout",
        ),
    ] {
        let out = Command::new(yurt_binary())
            .args(&args)
            .env_remove("YURT_HOST_DIR")
            .env_remove("YURT_SERVICE_MANAGER")
            .output()
            .unwrap();
        refused(&out, want);
    }
}

#[test]
fn manager_manifests_print_an_installable_stream_and_refuse_flags_the_manager_would() {
    let out = yurt(&[
        "manager",
        "manifests",
        "--image",
        "yurt.local/yurt:test",
        "--node-selector",
        "kubernetes.io/hostname=cloud-w1",
        "--",
        "--node-conversion-timeout=900",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "kind: CustomResourceDefinition",
        "kind: ServiceAccount",
        "kind: ClusterRoleBinding",
        "name: yurt-manager-webhook-service",
        "kind: Deployment",
        "image: yurt.local/yurt:test",
        "kubernetes.io/hostname: cloud-w1",
        "--node-conversion-timeout=900",
        "--manager-username=system:serviceaccount:kube-system:yurt-manager",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert!(text.starts_with("---\n"));
    let out = yurt(&[
        "manager",
        "manifests",
        "--node-selector",
        "node-role.kubernetes.io/cloud=",
        "--",
        "--leader-elect=false",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Usage errors, as clap reports them (exit 2).
    for (args, want) in [
        (vec!["--node-selector", "no-equals"], "not key=value"),
        (vec!["--node-selector", "a b=c"], "not a label key"),
        (
            vec!["--node-selector", "Example.com/a=b"],
            "not a label key",
        ),
        (vec!["--node-selector", "/a=b"], "not a label key"),
        (vec!["--node-selector", "a/b/c=d"], "not a label key"),
        (vec!["--replicas", "0"], "--replicas"),
        (
            vec!["--image-pull-policy", "Sometimes"],
            "--image-pull-policy",
        ),
    ] {
        let mut all = vec!["manager", "manifests"];
        all.extend_from_slice(&args);
        let out = yurt(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
        assert!(stderr(&out).contains(want), "{want}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "nothing printed for {args:?}");
    }
    for (args, want) in [
        (vec!["--namespace", "Kube_System"], "--namespace"),
        (vec!["--", "--bogus"], "unexpected argument '--bogus'"),
        (vec!["--", "--working-namespace=x"], "set by the manifests"),
        (
            vec!["--", "--webhook-port", "9443"],
            "--webhook-port is set by the manifests",
        ),
        (
            vec!["--", "--health-probe-addr=0.0.0.0:1"],
            "set by the manifests",
        ),
        (vec!["--", "--kubeconfig=/k"], "set by the manifests"),
        (
            vec!["--replicas", "2", "--", "--leader-elect=false"],
            "every replica would run the controllers",
        ),
        (vec!["--", "crds"], "subcommand"),
        (
            vec!["--", "--leader-elect-retry-period=30"],
            "leader election needs",
        ),
    ] {
        let mut all = vec!["manager", "manifests"];
        all.extend_from_slice(&args);
        refused(&yurt(&all), want);
    }

    // A reader that stops early (`| head`) ends the command quietly.
    let mut child = Command::new(yurt_binary())
        .args(["manager", "manifests"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn tunnel_server_manifests_and_egress_config_print_what_installs_it_and_refuse_bad_paths() {
    let out = yurt(&[
        "tunnel-server",
        "manifests",
        "--image",
        "yurt.local/yurt:test",
        "--egress-socket",
        "/srv/tunnel/egress.sock",
        "--agent-port",
        "10300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("---\n"));
    for want in [
        "kind: ServiceAccount",
        "kind: ClusterRoleBinding",
        "name: x-tunnel-server-svc",
        "kind: DaemonSet",
        "hostNetwork: true",
        "image: yurt.local/yurt:test",
        "--egress-socket=/srv/tunnel/egress.sock",
        "--agent-bind-address=0.0.0.0:10300",
        "--cert-file=/etc/kubernetes/pki/apiserver.crt",
        "path: /srv/tunnel",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let out = yurt(&[
        "tunnel-server",
        "egress-selector-config",
        "--egress-socket",
        "/srv/tunnel/egress.sock",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("apiVersion: apiserver.k8s.io/v1beta1\n"),
        "{text}"
    );
    assert!(text.contains("udsName: /srv/tunnel/egress.sock"), "{text}");

    for (args, want) in [
        (
            vec!["manifests", "--ca-file", "ca.crt"],
            "--ca-file: ca.crt is not an absolute path",
        ),
        (
            vec!["manifests", "--egress-socket", "/egress.sock"],
            "no folder",
        ),
        (vec!["manifests", "--agent-port", "0"], "--agent-port"),
        (vec!["manifests", "--image", ""], "--image"),
        (
            vec!["egress-selector-config", "--egress-socket", "x.sock"],
            "not an absolute path",
        ),
    ] {
        let mut all = vec!["tunnel-server"];
        all.extend_from_slice(&args);
        refused(&yurt(&all), want);
    }
    // Usage errors (exit 2): a bad flag value, and running the server without its files.
    for (args, want) in [
        (vec!["manifests", "--agent-port", "70000"], "--agent-port"),
        (
            vec!["manifests", "--node-selector", "no-equals"],
            "not key=value",
        ),
        (vec!["--egress-socket", "/x.sock"], "--ca-file"),
    ] {
        let mut all = vec!["tunnel-server"];
        all.extend_from_slice(&args);
        let out = yurt(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{want}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn image_push_refuses_bad_sources_and_names_before_reaching_any_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let data_dir = p("no-fleet");
    let push = |args: &[&str]| {
        let mut all = vec!["image", "push", "--data-dir", &data_dir];
        all.extend_from_slice(args);
        yurt(&all)
    };
    refused(&push(&[&p("missing.tar")]), "no such file");
    std::fs::write(p("notes.txt"), "not an archive").unwrap();
    refused(&push(&[&p("notes.txt")]), "neither a docker-archive");
    std::fs::create_dir_all(p("site")).unwrap();
    refused(&push(&[&p("site")]), "yurt image build --from-dir");

    let archive = p("hello.tar");
    let out = yurt(&[
        "image",
        "build",
        "--tag",
        "yurt.local/hello:1",
        "-o",
        &archive,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A truncated archive.
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(p("cut.tar"), &bytes[..bytes.len() / 2]).unwrap();
    refused(&push(&[&p("cut.tar")]), "cut.tar");

    refused(
        &push(&[&archive, "Hello/World:1"]),
        "not a valid image name",
    );
    refused(&push(&[&archive, "quay.io/x/hello:1"]), "do not pull from");
    let wrong = format!("docker.io/x/hello@sha256:{}", "0".repeat(64));
    refused(&push(&[&archive, &wrong]), "but the image's manifest is");
    // Everything checked: only the missing fleet is left to complain about.
    let out = push(&[&archive]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-fleet"), "{}", stderr(&out));
}

#[test]
fn image_build_writes_an_archive_and_refuses_bad_tags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "hi").unwrap();
    let out_file = dir.path().join("web.tar");
    let site = dir.path().join("site");
    let out = yurt(&[
        "image",
        "build",
        "--tag",
        "yurt.local/web:1",
        "--from-dir",
        site.to_str().unwrap(),
        "--dest",
        "/www",
        "--entrypoint",
        r#"["httpd","-f","-h","/www"]"#,
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("built yurt.local/web:1 (sha256:"));
    assert!(
        std::fs::metadata(&out_file).unwrap().len() > 1_000_000,
        "busybox is inside"
    );

    let out = yurt(&[
        "image",
        "build",
        "--tag",
        "Web",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("expected registry/name:tag"),
        "{}",
        stderr(&out)
    );
    let out = yurt(&[
        "image",
        "build",
        "--tag",
        "yurt.local/w:1",
        "--entrypoint",
        "httpd",
        "-o",
        "/tmp/x.tar",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--entrypoint must be a JSON array"),
        "{}",
        stderr(&out)
    );
}

/// Reads the child's stdout until a line contains `needle`.
fn wait_for_line(child: &mut std::process::Child, needle: &str, timeout: Duration) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("`{needle}` not printed within {timeout:?}; printed: {seen:?}"),
        }
    }
}

#[test]
fn second_up_is_refused_and_a_killed_up_is_cleaned_by_down() {
    let dir = "/var/lib/yurt-test/cli-up";
    let _ = yurt(&["down", "--purge", "--data-dir", dir]);
    let mut up = Command::new(yurt_binary())
        .args([
            "up",
            "--data-dir",
            dir,
            "--edge-nodes",
            "1",
            "--pools",
            "1",
            "--no-sample-app",
            "--timing",
            "fast",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start yurt up");
    let printed = wait_for_line(
        &mut up,
        "Ctrl-C (or `yurt down`) stops it",
        Duration::from_secs(300),
    );
    let text = printed.join("\n");
    assert!(
        text.contains(&format!("export KUBECONFIG={dir}/admin.kubeconfig")),
        "{text}"
    );
    assert!(text.contains("fleet cut pool-a"), "{text}");

    let second = yurt(&["up", "--data-dir", dir]);
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(
        err.contains(&format!(
            "data folder {dir} is in use by a running fleet (yurt up, pid {})",
            up.id()
        )),
        "{err}"
    );

    let status = yurt(&["fleet", "--data-dir", dir, "status"]);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status_text.contains("edge-a1") && status_text.contains("kubelet("),
        "{status_text}"
    );
    let slot: u8 = status_text
        .split("(slot ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("slot in status");

    // The foreground `yurt up` restarts a process that dies.
    let pid_file = format!("{dir}/hosts/edge-a1/run/pids/kubelet.pid");
    let old =
        yurt_cluster::process::PidRecord::read(Path::new(&pid_file)).expect("kubelet pid file");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = yurt_cluster::process::PidRecord::read(Path::new(&pid_file));
        if now.is_some_and(|r| r != old && r.is_alive()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kubelet was not restarted after it was killed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A reboot under the foreground `yurt up`: the reboot owns the host's processes
    // until they are up, so the supervisor does not start them a second time.
    let reboot = yurt(&["fleet", "--data-dir", dir, "reboot", "edge-a1"]);
    assert!(reboot.status.success(), "reboot: {}", stderr(&reboot));
    let hubs = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("hub\0") && c.contains("--node-name=edge-a1") && c.contains(dir)
                })
            })
            .collect()
    };
    let hub_pid = format!("{dir}/hosts/edge-a1/run/pids/yurt-hub.pid");
    let after_reboot = yurt_cluster::process::PidRecord::read(Path::new(&hub_pid))
        .expect("the hub's pid after the reboot");
    assert!(after_reboot.is_alive(), "the hub runs after the reboot");
    // Three supervisor rounds (every 2 s) later: still that one hub, nothing restarted.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        hubs(),
        vec![after_reboot.pid],
        "exactly one hub for edge-a1"
    );
    assert_eq!(
        yurt_cluster::process::PidRecord::read(Path::new(&hub_pid)),
        Some(after_reboot),
        "the hub was not restarted"
    );
    let status = yurt(&["fleet", "--data-dir", dir, "status"]);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(!status_text.contains("DEAD"), "{status_text}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = up.wait();
    assert!(
        yurt_cluster::netns::exists(&format!("yurt{slot}-cloud")),
        "SIGKILL leaves the fleet behind"
    );

    let down = yurt(&["down", "--data-dir", dir]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(
        !yurt_cluster::netns::list()
            .iter()
            .any(|n| n.starts_with(&format!("yurt{slot}-")))
    );
    assert!(yurt_cluster::mounts::mounts_under(Path::new(dir)).is_empty());
    let cgroups = yurt_cluster::cgroup::Cgroups::detect().unwrap();
    assert!(!cgroups.exists(&format!("yurt-{slot}")));
    // `yurt up` on the same folder restarts that fleet; Ctrl-C (SIGINT) stops it and
    // removes what it made.
    let mut again = Command::new(yurt_binary())
        .args(["up", "--data-dir", dir])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("restart yurt up");
    let printed = wait_for_line(
        &mut again,
        "Ctrl-C (or `yurt down`) stops it",
        Duration::from_secs(300),
    );
    assert!(
        printed
            .iter()
            .any(|l| l.contains("1 edge hosts in 1 pools")),
        "restarted with its spec: {printed:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(again.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = again.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "yurt up did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status}");
    assert!(
        !yurt_cluster::netns::list()
            .iter()
            .any(|n| n.starts_with(&format!("yurt{slot}-")))
    );
    assert!(yurt_cluster::mounts::mounts_under(Path::new(dir)).is_empty());
    assert!(!cgroups.exists(&format!("yurt-{slot}")));

    let purge = yurt(&["down", "--purge", "--data-dir", dir]);
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert!(!Path::new(dir).exists());
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until the pid file holds a live process other than `old`.
fn wait_restarted(
    pid_file: &Path,
    old: yurt_cluster::process::PidRecord,
    timeout: Duration,
) -> yurt_cluster::process::PidRecord {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = yurt_cluster::process::PidRecord::read(pid_file)
            && r != old
            && r.is_alive()
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not restarted within {timeout:?}",
            pid_file.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the supervisor log of `dir` holds `needle` `times` times.
fn wait_logged(dir: &str, needle: &str, times: usize, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(format!("{dir}/supervisor.log")).unwrap_or_default();
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` not logged {times} times within {timeout:?}: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Takes a test's fleet down (and deletes it) when the test ends, passed or not.
struct Purge(&'static str);

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = yurt(&["down", "--purge", "--data-dir", self.0]);
    }
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn detached_up_leaves_a_supervisor_that_down_stops() {
    let dir = "/var/lib/yurt-test/cli-detach";
    let _ = yurt(&["down", "--purge", "--data-dir", dir]);
    let _purge = Purge(dir);
    let up = yurt(&[
        "up",
        "--detach",
        "--data-dir",
        dir,
        "--edge-nodes",
        "1",
        "--pools",
        "1",
        "--no-sample-app",
        "--timing",
        "fast",
    ]);
    assert!(up.status.success(), "{}", stderr(&up));
    let text = stdout(&up);
    let supervisor: i32 = text
        .split("detached supervisor (pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the supervisor's pid is printed: {text}"));
    let supervisor = yurt_cluster::process::PidRecord::of(supervisor).expect("the supervisor runs");

    let status = stdout(&yurt(&["fleet", "--data-dir", dir, "status"]));
    assert!(
        status.contains(&format!("supervisor: detached (pid {})", supervisor.pid)),
        "{status}"
    );

    // One owner: a second `yurt up` is refused while the supervisor holds the fleet.
    let second = yurt(&["up", "--data-dir", dir]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains(&format!(
            "data folder {dir} is in use by a running fleet (yurt up, pid {})",
            supervisor.pid
        )),
        "{}",
        stderr(&second)
    );

    // The detached supervisor restarts a hub killed with SIGKILL, and reports it.
    let hub_pid = format!("{dir}/hosts/edge-a1/run/pids/yurt-hub.pid");
    let hub_pid = Path::new(&hub_pid);
    let mut hub = yurt_cluster::process::PidRecord::read(hub_pid).expect("the hub's pid file");
    sigkill(hub.pid);
    hub = wait_restarted(hub_pid, hub, Duration::from_secs(60));
    let restarted = "yurt-hub on edge-a1 had exited and was restarted";
    wait_logged(dir, restarted, 1, Duration::from_secs(60));
    // Two more crashes within a minute make a crash loop: reported once, with the
    // hub's log, in the supervisor's log and in `yurt fleet status`. (Each kill waits
    // until the last restart is reported, i.e. the new hub was ready.)
    sigkill(hub.pid);
    hub = wait_restarted(hub_pid, hub, Duration::from_secs(60));
    wait_logged(dir, restarted, 2, Duration::from_secs(60));
    sigkill(hub.pid);
    wait_restarted(hub_pid, hub, Duration::from_secs(60));
    wait_logged(
        dir,
        "yurt-hub on edge-a1 keeps crashing (3 restarts within 60s; next in 4s)",
        1,
        Duration::from_secs(60),
    );
    let status = stdout(&yurt(&["fleet", "--data-dir", dir, "status"]));
    assert!(
        status.contains("last supervisor report: ")
            && status.contains("yurt-hub on edge-a1 keeps crashing"),
        "{status}"
    );
    assert!(!status.contains("DEAD"), "{status}");
    assert!(
        supervisor.is_alive(),
        "the supervisor outlives what it restarts"
    );

    let down = yurt(&["down", "--data-dir", dir]);
    assert!(down.status.success(), "{}", stderr(&down));
    // Down waits until the supervisor let go of the fleet; it exits right after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while supervisor.is_alive() {
        assert!(Instant::now() < deadline, "yurt down stops the supervisor");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(format!("{dir}/supervisor.log")).unwrap();
    assert!(log.contains("stopped supervising"), "{log}");
    let supervisors: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("supervise") && c.contains(dir)
            }) && yurt_cluster::process::PidRecord::of(pid).is_some_and(|r| r.is_alive())
        })
        .collect();
    assert!(supervisors.is_empty(), "supervisors left: {supervisors:?}");
    let status = stdout(&yurt(&["fleet", "--data-dir", dir, "status"]));
    assert!(status.contains("not running"), "{status}");

    let purge = yurt(&["down", "--purge", "--data-dir", dir]);
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert!(!Path::new(dir).exists());
}

#[test]
fn a_tunnel_agent_refuses_a_certificate_that_is_not_its_nodes() {
    use yurt_core::pki::{CertSpec, CertificateAuthority};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate("cli-ca").expect("CA");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
    let write = |stem: &str, spec: &CertSpec| {
        let issued = ca.issue(spec).expect("issue");
        let cert = dir.path().join(format!("{stem}.crt"));
        let key = dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&key, &issued.key_pem).expect("write key");
        (cert, key)
    };
    let a1 = write(
        "edge-a1",
        &CertSpec::client("system:node:edge-a1", &["system:nodes"]),
    );
    let admin = write(
        "admin",
        &CertSpec::client("kubernetes-admin", &["system:masters"]),
    );
    let run = |node: &str, (cert, key): &(std::path::PathBuf, std::path::PathBuf)| {
        yurt(&[
            "tunnel-agent",
            &format!("--node-name={node}"),
            "--tunnelserver-addr=127.0.0.1:9",
            "--node-ip=127.0.0.1",
            &format!("--ca-file={}", ca_file.display()),
            &format!("--cert-file={}", cert.display()),
            &format!("--key-file={}", key.display()),
        ])
    };
    let out = run("edge-a2", &a1);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("is node edge-a1's certificate, not --node-name edge-a2's"),
        "{err}"
    );
    let out = run("edge-a1", &admin);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("is not system:node:<name>"), "{err}");
}
