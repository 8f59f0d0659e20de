//! `yurt adm token` against the real `kubeadm token` 1.20.2 on the shared fleet: one set
//! of bootstrap tokens, whichever tool made them. Each lists the other's the same way,
//! deletes them, and a token from either authenticates as a bootstrapper, gets the
//! `cluster-info` ConfigMap signed for discovery, and is deleted by the token cleaner
//! when it expires. Anonymous users may read `cluster-info` and nothing else.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine as _;
use yurt_cluster::upstream::Binary;
use yurt_testkit::{TestFleet, run_checked, shared, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(60);

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

fn kubeadm(f: &TestFleet, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(f.fleet().binaries().path(Binary::Kubeadm));
    cmd.args(args).arg(format!(
        "--kubeconfig={}",
        f.fleet().admin_kubeconfig().display()
    ));
    run_checked(&mut cmd)
}

/// `yurt adm` with this fleet's admin kubeconfig found the way a user's would be: from
/// `--data-dir`, with no `--kubeconfig` and no `$KUBECONFIG`.
fn yurt_adm(f: &TestFleet, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(&yurt_testkit::machine().yurt_binary);
    cmd.arg("--data-dir")
        .arg(f.dir())
        .arg("adm")
        .args(args)
        .env_remove("KUBECONFIG");
    cmd.output().expect("yurt runs")
}

fn yurt_adm_ok(f: &TestFleet, args: &[&str]) -> anyhow::Result<String> {
    let out = yurt_adm(f, args);
    ensure!(
        out.status.success(),
        "yurt adm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The row of token `token` in a token table, split into words.
fn row(table: &str, token: &str) -> Option<Vec<String>> {
    table
        .lines()
        .find(|l| l.starts_with(token))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
}

/// A kubectl 1.20 that authenticates with bootstrap token `token` only.
fn kubectl_with_token(f: &TestFleet, ca: &std::path::Path, token: &str) -> Command {
    let mut cmd = Command::new(f.fleet().binaries().path(Binary::Kubectl));
    cmd.arg("--kubeconfig=/dev/null")
        .arg(format!("--server={}", f.fleet().plan().api_url_from_host()))
        .arg(format!("--certificate-authority={}", ca.display()))
        .arg(format!("--token={token}"));
    cmd
}

fn cluster_info_signers(f: &TestFleet) -> anyhow::Result<Vec<String>> {
    let data = f.kubectl(&[
        "get",
        "configmap",
        "-n",
        "kube-public",
        "cluster-info",
        "-o",
        "jsonpath={.data}",
    ])?;
    let data: serde_json::Value = serde_json::from_str(&data)?;
    Ok(data
        .as_object()
        .context("cluster-info data")?
        .keys()
        .filter_map(|k| k.strip_prefix("jws-kubeconfig-").map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn yurt_and_kubeadm_share_one_set_of_bootstrap_tokens() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let dir = tempfile::tempdir()?;
        let ca_data = f.kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ])?;
        let ca = dir.path().join("ca.crt");
        std::fs::write(
            &ca,
            base64::engine::general_purpose::STANDARD.decode(ca_data.trim())?,
        )?;

        // Made by each tool, listed alike by both.
        let ours = yurt_adm_ok(
            &f,
            &[
                "token",
                "create",
                "--ttl",
                "2h",
                "--description",
                "made-by-yurt",
            ],
        )?
        .trim()
        .to_owned();
        let theirs = kubeadm(
            &f,
            &[
                "token",
                "create",
                "--ttl",
                "3h",
                "--description",
                "made-by-kubeadm",
            ],
        )?
        .trim()
        .to_owned();
        let (ours_id, theirs_id) = (&ours[..6], &theirs[..6]);
        let kubeadm_list = kubeadm(&f, &["token", "list"])?;
        let yurt_list = yurt_adm_ok(&f, &["token", "list"])?;
        for (token, description, ttl) in [
            (&ours, "made-by-yurt", "1h"),
            (&theirs, "made-by-kubeadm", "2h"),
        ] {
            let by_kubeadm = row(&kubeadm_list, token)
                .with_context(|| format!("kubeadm does not list {token}:\n{kubeadm_list}"))?;
            let by_yurt = row(&yurt_list, token)
                .with_context(|| format!("yurt does not list {token}:\n{yurt_list}"))?;
            ensure!(
                by_kubeadm == by_yurt,
                "kubeadm: {by_kubeadm:?}\nyurt: {by_yurt:?}"
            );
            ensure!(
                by_yurt[1] == ttl
                    && by_yurt[3] == "authentication,signing"
                    && by_yurt[4] == description
                    && by_yurt[5] == "system:bootstrappers:kubeadm:default-node-token",
                "{by_yurt:?}"
            );
        }
        let header = yurt_list.lines().next().unwrap_or_default();
        ensure!(
            header.split_whitespace().collect::<Vec<_>>()
                == [
                    "TOKEN",
                    "TTL",
                    "EXPIRES",
                    "USAGES",
                    "DESCRIPTION",
                    "EXTRA",
                    "GROUPS"
                ],
            "{header}"
        );

        // Either token authenticates as a bootstrapper that may ask for a node
        // certificate and nothing an admin may.
        for token in [&ours, &theirs] {
            for (verb, resource, want) in [
                ("create", "certificatesigningrequests", "yes"),
                ("get", "nodes", "yes"),
                ("list", "secrets", "no"),
            ] {
                let out = kubectl_with_token(&f, &ca, token)
                    .args(["auth", "can-i", verb, resource])
                    .output()?;
                let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                ensure!(
                    said == want,
                    "token {}: can-i {verb} {resource}: {said:?}",
                    &token[..6]
                );
            }
        }

        // Anonymous discovery: cluster-info is readable and signed with both tokens; no
        // other ConfigMap is readable.
        let anonymous_get = |path: &str| -> anyhow::Result<serde_json::Value> {
            let url = format!("{}{path}", f.fleet().plan().api_url_from_host());
            let body = run_checked(Command::new("curl").args([
                "-s",
                "--max-time",
                "10",
                "--cacert",
                &ca.to_string_lossy(),
                &url,
            ]))?;
            Ok(serde_json::from_str(&body)?)
        };
        let info = anonymous_get("/api/v1/namespaces/kube-public/configmaps/cluster-info")?;
        let kubeconfig = info["data"]["kubeconfig"].as_str().unwrap_or_default();
        ensure!(
            kubeconfig.contains(&f.fleet().plan().api_url_in_fleet())
                && kubeconfig.contains("certificate-authority-data"),
            "anonymous cluster-info: {info}"
        );
        let denied = anonymous_get("/api/v1/namespaces/kube-system/configmaps/yurt-hub-cfg")?;
        ensure!(
            denied["code"] == 403 && denied["reason"] == "Forbidden",
            "anonymous read of kube-system: {denied}"
        );
        wait_for("cluster-info signed with both tokens", WAIT, || async {
            let signers = cluster_info_signers(&f)?;
            Ok(
                (signers.iter().any(|s| s == ours_id) && signers.iter().any(|s| s == theirs_id))
                    .then_some(()),
            )
        })
        .await?;

        // Each deletes the other's; the signatures go with them.
        yurt_adm_ok(&f, &["token", "delete", theirs_id])?;
        kubeadm(&f, &["token", "delete", &ours])?;
        let left = yurt_adm_ok(&f, &["token", "list"])?;
        ensure!(
            row(&left, &ours).is_none() && row(&left, &theirs).is_none(),
            "{left}"
        );
        wait_for("signatures of deleted tokens removed", WAIT, || async {
            let signers = cluster_info_signers(&f)?;
            Ok((!signers.iter().any(|s| s == ours_id || s == theirs_id)).then_some(()))
        })
        .await?;

        // An expired token is deleted by the token cleaner.
        let short = yurt_adm_ok(&f, &["token", "create", "--ttl", "2s"])?
            .trim()
            .to_owned();
        wait_for("the expired token deleted", WAIT, || async {
            let list = kubeadm(&f, &["token", "list"])?;
            Ok(row(&list, &short).is_none().then_some(()))
        })
        .await?;

        // Bad input: one line, non-zero exit, nothing made. Each refused create carries a
        // description of its own to look for afterwards: other tests on the shared
        // fleet make and delete tokens meanwhile, so the whole list may change.
        const PROBE: &str = "e2e-refused-token-probe";
        for (args, says) in [
            (vec!["token", "create", "Not.A.Token"], "is not of the form"),
            (
                vec!["token", "create", "--usages", "admin"],
                "usage \"admin\"",
            ),
            (
                vec!["token", "create", "--groups", "system:masters"],
                "must start with",
            ),
            (
                vec!["token", "create", "--ttl", "-1s"],
                "must not be negative",
            ),
            (vec!["token", "create", "--ttl", "1d"], "--ttl"),
            (vec!["token", "delete", "zzzzzz"], "not found"),
            (vec!["token", "delete", "nonsense!"], "is not 6 characters"),
        ] {
            let mut args = args;
            if args[1] == "create" {
                args.extend(["--description", PROBE]);
            }
            let out = yurt_adm(&f, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success() && err.contains(says) && err.trim().lines().count() == 1,
                "yurt adm {args:?}: {out:?}"
            );
        }
        ensure!(
            !yurt_adm_ok(&f, &["token", "list"])?.contains(PROBE),
            "a refused create made a token"
        );
        Ok(())
    })
    .await
}

/// `cluster-info`'s data, key by key.
fn cluster_info_data(f: &TestFleet) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let data = f.kubectl(&[
        "get",
        "configmap",
        "-n",
        "kube-public",
        "cluster-info",
        "-o",
        "jsonpath={.data}",
    ])?;
    match serde_json::from_str(&data)? {
        serde_json::Value::Object(map) => Ok(map),
        other => anyhow::bail!("cluster-info data: {other}"),
    }
}

/// Token discovery, the first phase of `yurt adm join`, against the real bootstrap
/// signer and a token and CA pin printed by the real `kubeadm token create
/// --print-join-command`: trusted only when signed with the token's secret and pinned.
#[tokio::test]
async fn discovery_trusts_cluster_info_only_when_signed_by_the_token_and_pinned()
-> anyhow::Result<()> {
    use yurt_adm::discovery::{
        CaCertHash, CaVerification, Discovery, DiscoveryError, api_server_url, jws,
    };
    within(async {
        let f = shared().await?;
        let join = kubeadm(
            &f,
            &["token", "create", "--ttl", "10m", "--print-join-command"],
        )?;
        let word_after = |flag: &str| {
            let mut words = join.split_whitespace();
            words.find(|w| *w == flag);
            words.next().map(str::to_owned)
        };
        let token = word_after("--token").context("kubeadm printed a token")?;
        let kubeadm_pin: CaCertHash = word_after("--discovery-token-ca-cert-hash")
            .context("kubeadm printed a CA hash")?
            .parse()?;
        let (id, secret) = token.split_once('.').context("token form")?;

        // Our pin of the fleet's CA is kubeadm's.
        let ca_data = f.kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ])?;
        let ca_pem =
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(ca_data.trim())?)?;
        ensure!(
            CaCertHash::of_pem_bundle(&ca_pem)? == vec![kubeadm_pin],
            "our pin of the CA differs from kubeadm's {kubeadm_pin}"
        );

        let server = api_server_url(
            f.fleet()
                .plan()
                .api_url_from_host()
                .trim_start_matches("https://"),
        )?;
        let discovery =
            |token: &str, ca: CaVerification, timeout: Duration| -> anyhow::Result<Discovery> {
                Ok(Discovery {
                    server: server.clone(),
                    token: token.parse()?,
                    ca,
                    timeout,
                    retry_interval: Duration::from_millis(200),
                })
            };

        // Signed and pinned: trusted, and it names the in-fleet server and the CA.
        let info = discovery(&token, CaVerification::Pinned(vec![kubeadm_pin]), WAIT)?
            .run()
            .await?;
        ensure!(
            info.server == f.fleet().plan().api_url_in_fleet(),
            "server {}",
            info.server
        );
        ensure!(info.ca_pem == ca_pem, "the CA found is not the fleet's");
        // Our signature of the kubeconfig is byte for byte the bootstrap signer's.
        let data = cluster_info_data(&f)?;
        ensure!(
            data.get(&format!("jws-kubeconfig-{id}"))
                .and_then(|v| v.as_str())
                == Some(jws::sign_detached(&info.kubeconfig, id, secret).as_str()),
            "our detached JWS differs from the bootstrap signer's"
        );
        // Without a pin, when asked to.
        ensure!(
            discovery(&token, CaVerification::UnsafeSkip, WAIT)?
                .run()
                .await?
                == info,
            "unpinned discovery found something else"
        );

        // The right ID with a wrong secret: refused at once.
        let forged = format!("{id}.{}", "x".repeat(16));
        let started = std::time::Instant::now();
        let error = discovery(&forged, CaVerification::Pinned(vec![kubeadm_pin]), WAIT)?
            .run()
            .await
            .expect_err("a wrong secret");
        ensure!(
            matches!(error, DiscoveryError::BadSignature { .. })
                && started.elapsed() < Duration::from_secs(20),
            "{error}"
        );

        // Another CA pinned: refused, naming the CA's real pin.
        let other_pin: CaCertHash = format!("sha256:{}", "ab".repeat(32)).parse()?;
        let error = discovery(&token, CaVerification::Pinned(vec![other_pin]), WAIT)?
            .run()
            .await
            .expect_err("another pin");
        ensure!(
            matches!(error, DiscoveryError::NotPinned { .. })
                && error.to_string().contains(&kubeadm_pin.to_string()),
            "{error}"
        );

        // A token that cannot sign: once a later signing token is signed, the signer
        // has seen it and left it unsigned, so discovery with it finds no signature.
        let unsigned = yurt_adm_ok(
            &f,
            &[
                "token",
                "create",
                "--ttl",
                "10m",
                "--usages",
                "authentication",
            ],
        )?
        .trim()
        .to_owned();
        let later = yurt_adm_ok(&f, &["token", "create", "--ttl", "10m"])?
            .trim()
            .to_owned();
        wait_for("the later token's signature", WAIT, || async {
            Ok(cluster_info_signers(&f)?
                .contains(&later[..6].to_owned())
                .then_some(()))
        })
        .await?;
        for (what, token) in [
            ("a token without the signing usage", unsigned.as_str()),
            ("a token nobody made", "zzzzzz.zzzzzzzzzzzzzzzz"),
        ] {
            let error = discovery(
                token,
                CaVerification::Pinned(vec![kubeadm_pin]),
                Duration::from_secs(2),
            )?
            .run()
            .await
            .expect_err(what);
            ensure!(
                matches!(error, DiscoveryError::NotSigned { .. }),
                "{what}: {error}"
            );
        }

        // A deleted token: its signature goes, and discovery with it fails.
        yurt_adm_ok(&f, &["token", "delete", id])?;
        wait_for("the deleted token's signature to go", WAIT, || async {
            Ok((!cluster_info_signers(&f)?.contains(&id.to_owned())).then_some(()))
        })
        .await?;
        let error = discovery(
            &token,
            CaVerification::Pinned(vec![kubeadm_pin]),
            Duration::from_secs(2),
        )?
        .run()
        .await
        .expect_err("a deleted token");
        ensure!(
            matches!(error, DiscoveryError::NotSigned { .. }),
            "deleted: {error}"
        );

        for t in [&unsigned, &later] {
            yurt_adm_ok(&f, &["token", "delete", t])?;
        }
        Ok(())
    })
    .await
}

/// The hub's serving certificate by CSR, as OpenYurt's hub gets it: asked with the hub's
/// own node identity, approved by our manager's csrapprover, signed by
/// kube-controller-manager, presented on the pod-facing port, kept on disk, and reused
/// after a restart without asking again.
#[tokio::test]
async fn a_hub_without_serving_files_gets_its_certificate_by_csr() -> anyhow::Result<()> {
    const NODE: &str = "edge-b2";
    within(async {
        let f = shared().await?;
        let dir = tempfile::tempdir()?;
        let node_csrs = || -> anyhow::Result<Vec<serde_json::Value>> {
            let all: serde_json::Value =
                serde_json::from_str(&f.kubectl(&["get", "csr", "-o", "json"])?)?;
            Ok(all["items"]
                .as_array()
                .context("items")?
                .iter()
                .filter(|c| {
                    c["spec"]["username"] == format!("system:node:{NODE}")
                        && c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                })
                .cloned()
                .collect())
        };
        let name = |c: &serde_json::Value| c["metadata"]["name"].as_str().map(str::to_owned);
        let earlier: Vec<_> = node_csrs()?.iter().filter_map(name).collect();
        let before = earlier.len();
        let mut hub = f.start_extra_hub(NODE, dir.path())?;
        wait_for(
            "the second hub ready with a serving certificate",
            WAIT,
            || async { Ok(hub.ready(&f)?.then_some(())) },
        )
        .await
        .with_context(|| hub.log())?;

        // One new request, approved by our manager and issued.
        let csrs = node_csrs()?;
        ensure!(csrs.len() == before + 1, "CSRs of {NODE}: {csrs:#?}");
        let csr = csrs
            .iter()
            .find(|c| name(c).is_some_and(|n| !earlier.contains(&n)))
            .context("the hub's CSR")?;
        let approved = csr["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "Approved"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("serving certificate of its own node"))
            });
        ensure!(
            approved && csr["status"]["certificate"].is_string(),
            "{csr:#}"
        );

        // Presented on the pod-facing port: verifies against the fleet CA at 169.254.2.1.
        hub.presented_expiry(&f)?;

        // Kept on disk, root only; a restart uses it without asking again.
        let stored = hub.stored_certificate();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&stored)?.permissions());
        ensure!(mode & 0o777 == 0o600, "mode {mode:o}");
        drop(hub);
        hub = f.start_extra_hub(NODE, dir.path())?;
        wait_for("the second hub ready again", WAIT, || async {
            Ok(hub.ready(&f)?.then_some(()))
        })
        .await?;
        ensure!(node_csrs()?.len() == before + 1, "a restart asked again");
        drop(hub);
        Ok(())
    })
    .await
}

/// A hub started from kubelet's certificate (a joined node's: `system:node:<n>` in
/// `system:nodes` only) asks for a client certificate of its own in `openyurt:yurthub`,
/// approved by our manager and signed by kube-controller-manager, stores it, and from
/// then on goes upstream with it: what the hub's RBAC grants works through it.
#[tokio::test]
async fn a_hub_started_from_kubelets_certificate_gets_a_client_certificate_of_its_own()
-> anyhow::Result<()> {
    const NODE: &str = "edge-a2";
    within(async {
        let f = shared().await?;
        let dir = tempfile::tempdir()?;
        let client_csrs = || -> anyhow::Result<Vec<serde_json::Value>> {
            let all: serde_json::Value =
                serde_json::from_str(&f.kubectl(&["get", "csr", "-o", "json"])?)?;
            Ok(all["items"]
                .as_array()
                .context("items")?
                .iter()
                .filter(|c| {
                    c["spec"]["username"] == format!("system:node:{NODE}")
                        && c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client"
                })
                .cloned()
                .collect())
        };
        let name = |c: &serde_json::Value| c["metadata"]["name"].as_str().map(str::to_owned);
        let earlier: Vec<String> = client_csrs()?.iter().filter_map(name).collect();
        // kubelet's identity alone may not list NodePools (nodes may read what kube-proxy
        // reads, openyurt:nodes-proxier, but no pools): the hub's group may, for its
        // pool-scoped filters.
        let pools = "/apis/apps.openyurt.io/v1beta2/nodepools?limit=1";
        let kubelet = yurt_cluster::pki::Identity::Node(NODE.parse()?).stem();
        let denied = f.kubectl(&[
            "get",
            "--raw",
            pools,
            &format!("--as=system:node:{NODE}"),
            "--as-group=system:nodes",
        ]);
        ensure!(
            denied
                .as_ref()
                .is_err_and(|e| format!("{e:#}").contains("Forbidden")),
            "{kubelet} alone: {denied:?}"
        );

        let mut hub = f.start_extra_hub_from_kubelet(NODE, dir.path())?;
        wait_for(
            "the hub ready with a client certificate of its own",
            WAIT,
            || async { Ok(hub.ready(&f)?.then_some(())) },
        )
        .await
        .with_context(|| hub.log())?;

        let csrs = client_csrs()?;
        let new: Vec<&serde_json::Value> = csrs
            .iter()
            .filter(|c| name(c).is_some_and(|n| !earlier.contains(&n)))
            .collect();
        ensure!(new.len() == 1, "new client CSRs of {NODE}: {new:#?}");
        let csr = new[0];
        let approved = csr["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "Approved"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("yurthub client certificate of its own node"))
            });
        ensure!(
            approved && csr["status"]["certificate"].is_string(),
            "{csr:#}"
        );

        // Stored, root only, naming the node in both groups.
        let stored = hub.stored_client_certificate();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&stored)?.permissions());
        ensure!(mode & 0o777 == 0o600, "mode {mode:o}");
        let pem = std::fs::read(&stored)?;
        let (_, der) = x509_parser::pem::parse_x509_pem(&pem)?;
        let cert = der.parse_x509()?;
        let organizations: Vec<String> = cert
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect();
        ensure!(
            organizations == ["system:nodes", "openyurt:yurthub"],
            "{organizations:?}"
        );

        // Upstream with it: the list kubelet's identity may not make goes through.
        let url = format!("http://127.0.0.1:20261{pools}");
        let out = f.exec(
            NODE,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-A",
                "kube-proxy/v1.20.2",
                &url,
            ],
        )?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "200",
            "NodePools through the hub: {}",
            String::from_utf8_lossy(&out.stdout)
        );

        // A restart uses the stored one without asking again.
        drop(hub);
        hub = f.start_extra_hub_from_kubelet(NODE, dir.path())?;
        wait_for("the hub ready again", WAIT, || async {
            Ok(hub.ready(&f)?.then_some(()))
        })
        .await
        .with_context(|| hub.log())?;
        let asked_again = client_csrs()?
            .iter()
            .filter_map(name)
            .filter(|n| !earlier.contains(n))
            .count();
        ensure!(asked_again == 1, "a restart asked again");
        drop(hub);
        Ok(())
    })
    .await
}

/// ADR 008: a Node that registers without a pod CIDR (as a joined kubelet's does) gets a
/// free /24 of the cluster CIDR from kube-controller-manager's allocator, never one a
/// planned node holds, and the planned nodes keep theirs.
#[tokio::test]
async fn a_node_registered_without_a_pod_cidr_gets_a_free_one() -> anyhow::Result<()> {
    const NODE: &str = "cidr-stand-in";
    within(async {
        let f = shared().await?;
        f.kubectl(&["delete", "node", NODE, "--ignore-not-found"])?;
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE},
            // Nothing runs here: a custom NoSchedule taint keeps workloads away.
            "spec": {"taints": [{"key": "e2e.openyurt.io/stand-in", "effect": "NoSchedule"}]},
        });
        f.kubectl_stdin(&["create", "-f", "-"], &node.to_string())?;
        let result = async {
            let cidr = wait_for(
                "the allocator to give the node a pod CIDR",
                WAIT,
                || async {
                    let cidr =
                        f.kubectl(&["get", "node", NODE, "-o", "jsonpath={.spec.podCIDR}"])?;
                    Ok((!cidr.trim().is_empty()).then(|| cidr.trim().to_owned()))
                },
            )
            .await?;
            let planned: Vec<String> = f
                .fleet()
                .plan()
                .edges
                .iter()
                .map(|e| e.pod_cidr.to_string())
                .collect();
            ensure!(
                cidr.starts_with("10.244.") && cidr.ends_with(".0/24") && !planned.contains(&cidr),
                "{NODE} got {cidr}; planned nodes hold {planned:?}"
            );
            for edge in &f.fleet().plan().edges {
                let theirs = f.kubectl(&[
                    "get",
                    "node",
                    edge.name.as_str(),
                    "-o",
                    "jsonpath={.spec.podCIDR}",
                ])?;
                ensure!(
                    theirs.trim() == edge.pod_cidr.to_string(),
                    "{} now has {theirs}",
                    edge.name
                );
            }
            Ok(())
        }
        .await;
        f.kubectl(&["delete", "node", NODE, "--wait=false"])?;
        result
    })
    .await
}

/// The hosts' service managers (which start, stop and restart kubelet and the hub for
/// `yurt adm` and the node servant) are for root on the machine and the processes it
/// runs on a host, not for pods: the socket is a file of mode 0600 outside every
/// container's filesystem, so an ordinary pod on the node finds no such file anywhere,
/// nor the host's `/run/yurt-host` links, while the socket serves all along. Only a
/// privileged pod that mounts the host's `/` (the conversion Job) reaches it, and such a
/// pod is root on the node anyway.
#[tokio::test]
async fn an_ordinary_pod_cannot_reach_its_hosts_service_manager() -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    const NODE: &str = "edge-a1";
    const NS: &str = "e2e-service-manager";
    within(async {
        let f = shared().await?;
        let _served = f.serve_service_managers()?;
        let socket = f
            .fleet()
            .paths()
            .host(&yurt_cluster::spec::HostId::Edge(NODE.parse()?))
            .root()
            .join(yurt_core::host::PERSISTENT_SOCKET);
        wait_for("the service manager's socket", WAIT, || async {
            Ok(std::fs::metadata(&socket)
                .is_ok_and(|m| m.file_type().is_socket())
                .then_some(()))
        })
        .await?;
        let mode = std::fs::metadata(&socket)?.permissions().mode();
        ensure!(mode & 0o077 == 0, "socket mode {mode:o}: only its owner may open it");
        // The test can fail: the socket serves (a malformed request gets an answer).
        let answer = {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut conn = tokio::net::UnixStream::connect(&socket).await?;
            conn.write_all(b"no such request\n").await?;
            let mut answer = String::new();
            tokio::time::timeout(WAIT, conn.read_to_string(&mut answer)).await??;
            answer
        };
        ensure!(!answer.is_empty(), "the service manager answers");

        f.fresh_namespace(NS)?;
        let machine_path = socket.display().to_string();
        let script = format!(
            "for p in {machine_path} /run/yurt-host /run/yurt-host/dir/{sock} /run/yurt-host/yurt; do \
               if [ -e \"$p\" ]; then echo \"PRESENT $p\"; else echo \"absent $p\"; fi; \
             done; \
             find / -xdev -name '{sock}' 2>/dev/null | sed 's/^/FOUND /'; \
             echo END",
            sock = yurt_core::host::PERSISTENT_SOCKET,
        );
        f.apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "looker", "namespace": NS},
            "spec": {
                "nodeName": NODE,
                "restartPolicy": "Never",
                "containers": [{
                    "name": "looker",
                    "image": yurt_cluster::image::BUSYBOX_IMAGE,
                    "command": ["sh", "-c", script],
                }],
            },
        }))?;
        let log = wait_for("the pod's findings", Duration::from_secs(120), || async {
            let log = f.kubectl(&["logs", "-n", NS, "looker"]).unwrap_or_default();
            Ok(log.contains("END").then_some(log))
        })
        .await?;
        println!("{log}");
        ensure!(
            log.lines().filter(|l| l.starts_with("absent ")).count() == 4
                && !log.contains("PRESENT")
                && !log.contains("FOUND"),
            "an ordinary pod sees the service manager or the host's links:\n{log}"
        );
        f.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
        Ok(())
    })
    .await
}
