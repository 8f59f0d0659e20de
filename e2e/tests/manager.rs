//! yurt manager on the shared fleet: NodePools for the fleet's pools, their status,
//! labels/annotations/taints propagated and cleaned up, webhooks refusing what
//! OpenYurt refuses (with the message kubectl shows), v1beta1 and v1beta2 clients
//! seeing one object, and pods on autonomous nodes tolerating unreachability forever.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use yurt_testkit::{TestFleet, shared, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(420);

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

/// `kubectl <args> -f -` with `manifest` on stdin: (success, its output or its error).
fn kubectl_stdin(f: &TestFleet, args: &[&str], manifest: &Value) -> anyhow::Result<(bool, String)> {
    let mut all = args.to_vec();
    all.extend(["-f", "-"]);
    Ok(match f.kubectl_stdin(&all, &manifest.to_string()) {
        Ok(out) => (true, out),
        Err(e) => (false, format!("{e:#}")),
    })
}

fn get_json(f: &TestFleet, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&f.kubectl(&all)?)?)
}

async fn node(f: &TestFleet, name: &str) -> anyhow::Result<Node> {
    Ok(Api::<Node>::all(f.client()).get(name).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fleet_pool_is_a_nodepool_with_its_nodes_in_status() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        let plan = f.fleet().plan().clone();
        for pool in &plan.pools {
            let members: Vec<String> = plan
                .edges
                .iter()
                .filter(|e| plan.pools[e.pool].name == pool.name)
                .map(|e| e.name.to_string())
                .collect();
            let name = pool.name.to_string();
            wait_for(
                &format!("status of nodepool {name}"),
                Duration::from_secs(60),
                || {
                    let (f, name, members) = (f, name.clone(), members.clone());
                    async move {
                        let np =
                            get_json(f, &["get", "nodepools.v1beta2.apps.openyurt.io", &name])?;
                        let nodes: Vec<String> =
                            serde_json::from_value(np["status"]["nodes"].clone())
                                .unwrap_or_default();
                        Ok((nodes == members
                            && np["status"]["readyNodeNum"] == json!(members.len())
                            && np["metadata"]["labels"]["nodepool.openyurt.io/type"] == "edge"
                            && np["spec"]["type"] == "Edge")
                            .then_some(()))
                    }
                },
            )
            .await?;
        }
        // kubectl's short name and printer columns come from the CRD.
        let table = f.kubectl(&["get", "np"])?;
        ensure!(
            table.contains("READYNODES") && table.contains("pool-a"),
            "{table}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_labels_annotations_and_taints_reach_its_nodes_and_are_cleaned_up()
-> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        let members = ["edge-b1", "edge-b2"];
        let patch = json!({"spec": {
            "labels": {"e2e.openyurt.io/site": "b"},
            "annotations": {"e2e.openyurt.io/owner": "tests"},
            "taints": [{"key": "e2e.openyurt.io/pool", "value": "b", "effect": "PreferNoSchedule"}],
        }});
        f.kubectl(&[
            "patch",
            "nodepool",
            "pool-b",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])?;
        for n in members {
            wait_for(
                &format!("pool attributes on {n}"),
                Duration::from_secs(60),
                || async move {
                    let node = node(f, n).await?;
                    let labels = node.metadata.labels.unwrap_or_default();
                    let annotations = node.metadata.annotations.unwrap_or_default();
                    let tainted = node
                        .spec
                        .and_then(|s| s.taints)
                        .unwrap_or_default()
                        .iter()
                        .any(|t| t.key == "e2e.openyurt.io/pool" && t.effect == "PreferNoSchedule");
                    Ok(
                        (labels.get("e2e.openyurt.io/site").map(String::as_str) == Some("b")
                            && annotations.contains_key("e2e.openyurt.io/owner")
                            && tainted)
                            .then_some(()),
                    )
                },
            )
            .await?;
        }
        // Pool-a's nodes are untouched.
        let a = node(f, "edge-a1").await?;
        ensure!(
            !a.metadata
                .labels
                .unwrap_or_default()
                .contains_key("e2e.openyurt.io/site")
        );

        // Dropping them from the pool removes them from the nodes, and only them.
        let clear = json!({"spec": {"labels": null, "annotations": null, "taints": null}});
        f.kubectl(&[
            "patch",
            "nodepool",
            "pool-b",
            "--type=merge",
            "-p",
            &clear.to_string(),
        ])?;
        for n in members {
            wait_for(
                &format!("pool attributes gone from {n}"),
                Duration::from_secs(60),
                || async move {
                    let node = node(f, n).await?;
                    let labels = node.metadata.labels.unwrap_or_default();
                    let annotations = node.metadata.annotations.unwrap_or_default();
                    let tainted = node
                        .spec
                        .and_then(|s| s.taints)
                        .unwrap_or_default()
                        .iter()
                        .any(|t| t.key.starts_with("e2e.openyurt.io"));
                    Ok((!labels.contains_key("e2e.openyurt.io/site")
                        && !annotations.contains_key("e2e.openyurt.io/owner")
                        && !tainted
                        && labels.get("apps.openyurt.io/nodepool").map(String::as_str)
                            == Some("pool-b"))
                    .then_some(()))
                },
            )
            .await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_refuse_invalid_pools_deletes_with_members_and_pool_moves() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        let bad = json!({
            "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
            "metadata": {"name": "e2e-bad"},
            "spec": {"type": "Fog"},
        });
        let (ok, out) = kubectl_stdin(f, &["create"], &bad)?;
        ensure!(!ok && out.contains("spec.type") && out.contains("Fog"), "{out}");

        let (ok, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({
                "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
                "metadata": {"name": "e2e-cloud-hostnet"},
                "spec": {"type": "Cloud", "hostNetwork": true},
            }),
        )?;
        ensure!(!ok && out.contains("hostNetwork"), "{out}");

        let change = f.kubectl(&["patch", "nodepool", "pool-a", "--type=merge", "-p", r#"{"spec":{"type":"Cloud"}}"#]);
        let msg = format!("{change:?}");
        ensure!(change.is_err() && msg.contains("immutable"), "{msg}");

        let delete = f.kubectl(&["delete", "nodepool", "pool-a", "--wait=false"]);
        let msg = format!("{delete:?}");
        ensure!(delete.is_err() && msg.contains("edge-a1"), "{msg}");
        f.kubectl(&["get", "nodepool", "pool-a"])?;

        let relabel = f.kubectl(&["label", "node", "edge-a1", "apps.openyurt.io/nodepool=pool-b", "--overwrite"]);
        let msg = format!("{relabel:?}");
        ensure!(relabel.is_err() && msg.contains("cannot be changed"), "{msg}");

        // An empty pool can be created (defaults filled in) and deleted.
        f.kubectl(&["delete", "nodepool", "e2e-empty", "--ignore-not-found"])?;
        let (ok, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({"apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool", "metadata": {"name": "e2e-empty"}}),
        )?;
        ensure!(ok, "{out}");
        let np = get_json(f, &["get", "nodepool", "e2e-empty"])?;
        ensure!(np["spec"]["type"] == "Edge" && np["spec"]["leaderReplicas"] == 1, "{np}");
        f.kubectl(&["delete", "nodepool", "e2e-empty"])?;
        Ok(())
    })
    .await
}

/// The `iot.openyurt.io` kinds are served as upstream's (short names, a Device with
/// quoted numbers stored as written) and checked by the manager (a desired value out of
/// its resource's range refused, the pool mirrored into the pool label); PlatformAdmin
/// gets upstream's defaults and checks: one platform per pool, known pools, `edgex` and
/// a known version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iot_kinds_are_served_and_platformadmins_are_defaulted_and_checked() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        for name in ["e2e-pa", "e2e-pa-2", "e2e-pa-bad"] {
            f.kubectl(&["delete", "platformadmin", name, "--ignore-not-found"])?;
        }
        for (kind, name) in [
            ("device", "e2e-thermostat"),
            ("device", "e2e-bad-device"),
            ("deviceprofile", "e2e-thermostat"),
            ("deviceservice", "e2e-modbus"),
        ] {
            f.kubectl(&["delete", kind, name, "--ignore-not-found"])?;
        }
        // A device may come before its profile and service (`kubectl apply -f dir/`
        // applies files in name order): accepted, with a warning. Numbers are quoted and
        // stored as written, and the pool is mirrored into the pool label.
        let device = |name: &str, set_point: &str| {
            json!({
                "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "serviceName": "e2e-modbus", "profileName": "e2e-thermostat", "notify": false,
                    "nodePool": "pool-a", "managed": true, "adminState": "UNLOCKED",
                    "protocols": {"modbus-tcp": {"Address": "10.20.1.50", "Port": "502", "UnitID": "1"}},
                    "deviceProperties": {"SetPoint": {"name": "SetPoint", "desiredValue": set_point}},
                },
            })
        };
        let (ok, out) = kubectl_stdin(f, &["create"], &device("e2e-thermostat", "21"))?;
        ensure!(ok, "{out}");
        let dev = get_json(f, &["get", "dev", "e2e-thermostat"])?;
        ensure!(
            dev["spec"]["protocols"]["modbus-tcp"]["Port"] == "502"
                && dev["spec"]["deviceProperties"]["SetPoint"]["desiredValue"] == "21"
                && dev["metadata"]["labels"]["apps.openyurt.io/nodepool"] == "pool-a",
            "{dev}"
        );
        // Its profile and service.
        let (ok, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceProfile",
                 "metadata": {"name": "e2e-thermostat", "namespace": "default"},
                 "spec": {"nodePool": "pool-a", "deviceResources": [
                    {"description": "room", "name": "Temperature", "isHidden": false,
                     "properties": {"valueType": "Float32", "readWrite": "R"},
                     "attributes": {"primaryTable": "INPUT_REGISTERS", "startingAddress": "0"}},
                    {"description": "set point", "name": "SetPoint", "isHidden": false,
                     "properties": {"valueType": "Int16", "readWrite": "RW", "minimum": "5", "maximum": "30"},
                     "attributes": {"primaryTable": "HOLDING_REGISTERS", "startingAddress": "1"}}]}},
                {"apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceService",
                 "metadata": {"name": "e2e-modbus", "namespace": "default"},
                 "spec": {"baseAddress": "modbus://pool-a", "nodePool": "pool-a"}},
            ]}),
        )?;
        ensure!(ok, "{out}");
        // Out of the resource's range: refused, naming it.
        let (ok, out) = kubectl_stdin(f, &["create"], &device("e2e-bad-device", "31"))?;
        ensure!(!ok && out.contains("outside SetPoint's range [5, 30]"), "{out}");
        for (kind, name) in [
            ("device", "e2e-thermostat"),
            ("deviceprofile", "e2e-thermostat"),
            ("deviceservice", "e2e-modbus"),
        ] {
            f.kubectl(&["delete", kind, name])?;
        }

        // Defaults: the latest EdgeX release and the edgex platform.
        let (ok, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({
                "apiVersion": "iot.openyurt.io/v1beta1", "kind": "PlatformAdmin",
                "metadata": {"name": "e2e-pa", "namespace": "default"},
                "spec": {"nodepools": ["pool-a"]},
            }),
        )?;
        ensure!(ok, "{out}");
        let pa = get_json(f, &["get", "pa", "e2e-pa"])?;
        ensure!(
            pa["spec"]["version"] == "napa" && pa["spec"]["platform"] == "edgex",
            "{pa}"
        );
        // One platform per pool, whichever namespace; unknown pools, platforms and
        // versions are refused, each named.
        let (ok, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({
                "apiVersion": "iot.openyurt.io/v1beta1", "kind": "PlatformAdmin",
                "metadata": {"name": "e2e-pa-2", "namespace": "kube-public"},
                "spec": {"nodepools": ["pool-a"]},
            }),
        )?;
        ensure!(!ok && out.contains("already used by PlatformAdmin default/e2e-pa"), "{out}");
        let (ok, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({
                "apiVersion": "iot.openyurt.io/v1beta1", "kind": "PlatformAdmin",
                "metadata": {"name": "e2e-pa-bad", "namespace": "default"},
                "spec": {"nodepools": ["no-such-pool"], "platform": "kubeedge", "version": "v9"},
            }),
        )?;
        ensure!(
            !ok && out.contains("no-such-pool") && out.contains("kubeedge") && out.contains("v9"),
            "{out}"
        );
        f.kubectl(&["delete", "platformadmin", "e2e-pa"])?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1beta1_and_v1beta2_clients_see_the_same_pool() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        f.kubectl(&["delete", "nodepool", "e2e-versions", "--ignore-not-found"])?;
        let (ok, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({
                "apiVersion": "apps.openyurt.io/v1beta1", "kind": "NodePool",
                "metadata": {"name": "e2e-versions"},
                "spec": {"type": "Edge", "labels": {"zone": "z1"}},
            }),
        )?;
        ensure!(ok, "{out}");
        let v2 = get_json(
            f,
            &["get", "nodepools.v1beta2.apps.openyurt.io", "e2e-versions"],
        )?;
        ensure!(
            v2["apiVersion"] == "apps.openyurt.io/v1beta2" && v2["spec"]["labels"]["zone"] == "z1",
            "{v2}"
        );
        // A v1beta2-only field set through v1beta2 survives an update through v1beta1.
        f.kubectl(&[
            "patch",
            "nodepools.v1beta2.apps.openyurt.io",
            "e2e-versions",
            "--type=merge",
            "-p",
            r#"{"spec":{"leaderReplicas":3}}"#,
        ])?;
        f.kubectl(&[
            "patch",
            "nodepools.v1beta1.apps.openyurt.io",
            "e2e-versions",
            "--type=merge",
            "-p",
            r#"{"spec":{"labels":{"zone":"z2"}}}"#,
        ])?;
        let v1 = get_json(
            f,
            &["get", "nodepools.v1beta1.apps.openyurt.io", "e2e-versions"],
        )?;
        ensure!(
            v1["apiVersion"] == "apps.openyurt.io/v1beta1"
                && v1["spec"]["labels"]["zone"] == "z2"
                && v1["spec"].get("leaderReplicas").is_none(),
            "{v1}"
        );
        let v2 = get_json(
            f,
            &["get", "nodepools.v1beta2.apps.openyurt.io", "e2e-versions"],
        )?;
        ensure!(
            v2["spec"]["labels"]["zone"] == "z2" && v2["spec"]["leaderReplicas"] == 3,
            "{v2}"
        );
        f.kubectl(&["delete", "nodepool", "e2e-versions"])?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_autonomous_nodes_tolerate_unreachability_forever() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        let pods: Api<Pod> = Api::namespaced(f.client(), "default");
        wait_for(
            "sample pods bound to their autonomous nodes",
            Duration::from_secs(60),
            || {
                let pods = pods.clone();
                async move {
                    let list = pods.list(&ListParams::default()).await?;
                    let on_edge: Vec<&Pod> = list
                        .items
                        .iter()
                        .filter(|p| {
                            p.spec
                                .as_ref()
                                .and_then(|s| s.node_name.as_deref())
                                .is_some_and(|n| n.starts_with("edge-"))
                        })
                        .collect();
                    let bound = on_edge.iter().all(|p| {
                        let t = p
                            .spec
                            .as_ref()
                            .and_then(|s| s.tolerations.clone())
                            .unwrap_or_default();
                        [
                            "node.kubernetes.io/unreachable",
                            "node.kubernetes.io/not-ready",
                        ]
                        .iter()
                        .all(|k| {
                            t.iter().any(|t| {
                                t.key.as_deref() == Some(*k)
                                    && t.effect.as_deref() == Some("NoExecute")
                                    && t.toleration_seconds.is_none()
                            })
                        }) && p.metadata.annotations.as_ref().is_some_and(|a| {
                            a.contains_key(
                                "apps.openyurt.io/original-unreachable-toleration-duration",
                            )
                        })
                    });
                    Ok((!on_edge.is_empty() && bound).then_some(()))
                }
            },
        )
        .await?;
        // The manager answers its probes and counts its work.
        let out = f.exec("cloud", &["wget", "-qO-", "http://127.0.0.1:10271/metrics"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(text.contains("yurt_manager_leader 1"), "{text}");
        ensure!(text.contains("yurt_manager_webhook_calls_total"), "{text}");
        Ok(())
    })
    .await
}

/// A PEM certificate request for `cn` in `orgs`, with `sans` DNS names.
fn csr_pem(cn: &str, orgs: &[&str], sans: &[&str]) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    // rcgen keeps one value per attribute type; a second organization goes in as its
    // own attribute through the raw OID of organizationName.
    ensure!(orgs.len() <= 2, "at most two organizations");
    if let Some(first) = orgs.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *first);
    }
    if let Some(second) = orgs.get(1) {
        params.distinguished_name.push(
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
            rcgen::DnValue::Utf8String((*second).to_owned()),
        );
    }
    Ok(params.serialize_request(&key)?.pem()?)
}

const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
const SERVER_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

/// A CertificateSigningRequest object named `name`.
fn csr_object(name: &str, signer: &str, usages: &[&str], pem: &str) -> Value {
    use base64::Engine as _;
    json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "signerName": signer,
            "usages": usages,
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
        },
    })
}

/// Creates `csr` as node `node`: from inside its host, through its hub's plain local port
/// (the hub forwards it with the node's own certificate, as it does for kubelet). Returns
/// the uid of the created request, after checking the API server recorded the node as
/// its requester.
fn create_as_node(f: &TestFleet, node: &str, csr: &Value) -> anyhow::Result<String> {
    let name = csr["metadata"]["name"].as_str().context("a name")?;
    f.kubectl(&["delete", "csr", name, "--ignore-not-found"])?;
    let body = csr.to_string();
    let out = f.exec(
        node,
        &[
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            "http://127.0.0.1:10261/apis/certificates.k8s.io/v1/certificatesigningrequests",
        ],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim_end().ends_with("201"),
        "{node} could not create {name}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = get_json(f, &["get", "csr", name])?;
    ensure!(
        created["spec"]["username"] == format!("system:node:{node}"),
        "{name} was not created as {node}: {}",
        created["spec"]
    );
    created["metadata"]["uid"]
        .as_str()
        .map(str::to_owned)
        .context("a uid")
}

/// Creates `csr` as the fleet's admin; returns its uid.
fn create_as_admin(f: &TestFleet, csr: &Value) -> anyhow::Result<String> {
    let name = csr["metadata"]["name"].as_str().context("a name")?;
    f.kubectl(&["delete", "csr", name, "--ignore-not-found"])?;
    let (ok, out) = kubectl_stdin(f, &["create"], csr)?;
    ensure!(ok, "{out}");
    get_json(f, &["get", "csr", name])?["metadata"]["uid"]
        .as_str()
        .map(str::to_owned)
        .context("a uid")
}

async fn approved(f: &TestFleet, name: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("{name} approved"),
        Duration::from_secs(60),
        || async {
            let csr = get_json(f, &["get", "csr", name])?;
            let approved = csr["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Approved"));
            Ok(approved.then_some(()))
        },
    )
    .await
}

/// Waits for the manager's Event saying why request `name` (`uid`) is not approved,
/// then checks it is still undecided; returns the Event's message.
async fn refused(f: &TestFleet, name: &str, uid: &str) -> anyhow::Result<String> {
    let selector = format!("involvedObject.uid={uid},reason=CSRNotApproved");
    let message = wait_for(
        &format!("an Event saying why {name} is not approved"),
        Duration::from_secs(60),
        || async {
            let events = get_json(
                f,
                &[
                    "get",
                    "events",
                    "-n",
                    "default",
                    "--field-selector",
                    &selector,
                ],
            )?;
            Ok(events["items"]
                .as_array()
                .and_then(|items| items.first())
                .and_then(|e| e["message"].as_str())
                .map(str::to_owned))
        },
    )
    .await?;
    let csr = get_json(f, &["get", "csr", name])?;
    ensure!(
        csr["status"]["conditions"].is_null(),
        "{name} was decided although the manager refused it ({message}): {}",
        csr["status"]
    );
    Ok(message)
}

/// Finding 2 of the 2026-11 review: a node (or anything on it, through its hub) could get
/// a client certificate for another node, or a serving certificate for any name. Requests
/// are made as the node itself, the way a hub or kubelet makes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_requests_are_approved_only_for_the_node_that_asks() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        let a1_ip = node(f, "edge-a1")
            .await?
            .status
            .and_then(|s| s.addresses)
            .and_then(|a| a.into_iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address)
            .context("edge-a1 has an InternalIP")?;
        let hub = |cn: &str| csr_pem(cn, &["system:nodes", "openyurt:yurthub"], &[]);
        let serving = |sans: &[&str]| csr_pem("system:node:edge-a1", &["system:nodes"], sans);
        let client = |name, pem: String| csr_object(name, CLIENT_SIGNER, CLIENT_USAGES, &pem);
        let server = |name, pem: String| csr_object(name, SERVING_SIGNER, SERVER_USAGES, &pem);
        let names = [
            "e2e-own-client",
            "e2e-other-client",
            "e2e-admin-client",
            "e2e-own-serving",
            "e2e-foreign-serving",
        ];

        // Its own client and serving certificates: approved.
        let own = client(names[0], hub("system:node:edge-a1")?);
        create_as_node(f, "edge-a1", &own)?;
        let own = server(names[3], serving(&["edge-a1", &a1_ip, "169.254.2.1"])?);
        create_as_node(f, "edge-a1", &own)?;
        // Another node's identity, a node identity asked for by an admin, and a serving
        // certificate with an address that is not the node's: left pending, with an Event.
        let other = create_as_node(f, "edge-a1", &client(names[1], hub("system:node:edge-b1")?))?;
        let admin = create_as_admin(f, &client(names[2], hub("system:node:edge-a1")?))?;
        let foreign = server(names[4], serving(&["edge-a1", "10.9.9.9"])?);
        let foreign = create_as_node(f, "edge-a1", &foreign)?;

        approved(f, names[0]).await?;
        approved(f, names[3]).await?;
        let expected = [
            (names[1], &other, "requester system:node:edge-a1 may not obtain a certificate for system:node:edge-b1"),
            (names[2], &admin, "requester kubernetes-admin may not obtain a certificate for system:node:edge-a1"),
            (names[4], &foreign, "SAN 10.9.9.9 is not an address of node edge-a1"),
        ];
        for (name, uid, want) in expected {
            let why = refused(f, name, uid).await?;
            ensure!(why == want, "{name}: the Event says {why:?}, not {want:?}");
        }

        let mut delete = vec!["delete", "csr"];
        delete.extend(names);
        f.kubectl(&delete)?;
        Ok(())
    })
    .await
}

/// Deployments of a YurtAppSet: pool → (name, replicas, revision, template env value).
fn yas_workloads(
    f: &TestFleet,
    yas: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, i64, String, String)>> {
    let list = get_json(
        f,
        &[
            "get",
            "deployments",
            "-n",
            "e2e-yas",
            "-l",
            &format!("apps.openyurt.io/ref-yurtappset={yas}"),
        ],
    )?;
    let mut out = std::collections::BTreeMap::new();
    for d in list["items"].as_array().into_iter().flatten() {
        let labels = &d["metadata"]["labels"];
        out.insert(
            labels["apps.openyurt.io/pool-name"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            (
                d["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                d["spec"]["replicas"].as_i64().unwrap_or(-1),
                labels["apps.openyurt.io/controller-revision-hash"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            ),
        );
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yurtappset_runs_one_tweaked_workload_per_pool_and_follows_its_pools()
-> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        let _ = f.kubectl(&["delete", "namespace", "e2e-yas", "--ignore-not-found", "--wait=true", "--timeout=60s"]);
        let _ = f.kubectl(&["delete", "nodepool", "e2e-yas-gone", "--ignore-not-found"]);
        f.kubectl(&["create", "namespace", "e2e-yas"])?;
        let yas = |pools: &[&str], version: &str| {
            json!({
                "apiVersion": "apps.openyurt.io/v1beta1", "kind": "YurtAppSet",
                "metadata": {"name": "web", "namespace": "e2e-yas"},
                "spec": {
                    "pools": pools,
                    "workload": {
                        "workloadTemplate": {"deploymentTemplate": {
                            "metadata": {"labels": {"app": "yas-web"}},
                            "spec": {
                                "replicas": 1,
                                "selector": {"matchLabels": {"app": "yas-web"}},
                                "template": {
                                    "metadata": {"labels": {"app": "yas-web"}},
                                    "spec": {"containers": [{
                                        "name": "web", "image": "yurt.local/sample-web:1",
                                        "env": [{"name": "VERSION", "value": version}],
                                    }]},
                                },
                            },
                        }},
                        "workloadTweaks": [{
                            "pools": ["pool-b"],
                            "tweaks": {
                                "replicas": 2,
                                "patches": [{"operation": "add", "path": "/spec/template/metadata/labels/site", "value": "{{nodepool-name}}"}],
                            },
                        }],
                    },
                },
            })
        };
        let (ok, out) = kubectl_stdin(f, &["apply"], &yas(&["pool-a", "pool-b"], "1"))?;
        ensure!(ok, "{out}");
        let first = wait_for("a workload per pool", Duration::from_secs(60), || async {
            let w = yas_workloads(f, "web")?;
            Ok((w.len() == 2).then_some(w))
        })
        .await?;
        ensure!(first["pool-a"].1 == 1 && first["pool-b"].1 == 2, "tweaked replicas: {first:?}");
        let b = get_json(f, &["get", "deployment", "-n", "e2e-yas", &first["pool-b"].0])?;
        ensure!(b["spec"]["template"]["metadata"]["labels"]["site"] == "pool-b", "{b}");
        ensure!(b["spec"]["template"]["spec"]["nodeSelector"]["apps.openyurt.io/nodepool"] == "pool-b", "{b}");
        wait_for("pods of both pools ready and status counted", Duration::from_secs(120), || async {
            let s = get_json(f, &["get", "yurtappset", "-n", "e2e-yas", "web"])?;
            Ok((s["status"]["readyWorkloads"] == 2 && s["status"]["totalWorkloads"] == 2).then_some(()))
        })
        .await?;

        // A template change rolls every pool's workload.
        let (ok, out) = kubectl_stdin(f, &["apply"], &yas(&["pool-a", "pool-b"], "2"))?;
        ensure!(ok, "{out}");
        wait_for("both workloads on the new template", Duration::from_secs(60), || async {
            let w = yas_workloads(f, "web")?;
            Ok((w.len() == 2 && w.values().all(|x| x.3 == "2" && x.2 != first["pool-a"].2)).then_some(()))
        })
        .await?;

        // A pool that is deleted takes its workload with it at once, not at the
        // controller's periodic requeue (60 s).
        let gone = json!({
            "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
            "metadata": {"name": "e2e-yas-gone"}, "spec": {"type": "Edge"},
        });
        let (ok, out) = kubectl_stdin(f, &["apply"], &gone)?;
        ensure!(ok, "{out}");
        let (ok, out) = kubectl_stdin(f, &["apply"], &yas(&["pool-a", "pool-b", "e2e-yas-gone"], "2"))?;
        ensure!(ok, "{out}");
        wait_for("a workload for the new pool", Duration::from_secs(60), || async {
            Ok(yas_workloads(f, "web")?.contains_key("e2e-yas-gone").then_some(()))
        })
        .await?;
        f.kubectl(&["delete", "nodepool", "e2e-yas-gone"])?;
        wait_for("the deleted pool's workload removed", Duration::from_secs(20), || async {
            let w = yas_workloads(f, "web")?;
            Ok((w.len() == 2 && !w.contains_key("e2e-yas-gone")).then_some(()))
        })
        .await?;

        // A pool leaving the selection takes its workload with it.
        let (ok, out) = kubectl_stdin(f, &["apply"], &yas(&["pool-a"], "2"))?;
        ensure!(ok, "{out}");
        wait_for("pool-b's workload removed", Duration::from_secs(60), || async {
            let w = yas_workloads(f, "web")?;
            Ok((w.len() == 1 && w.contains_key("pool-a")).then_some(()))
        })
        .await?;

        // An invalid YurtAppSet is refused with the webhook's message.
        let mut bad = yas(&["pool-a"], "2");
        bad["metadata"]["name"] = json!("bad");
        bad["spec"]["workload"]["workloadTemplate"]["statefulSetTemplate"] = json!({"spec": {"selector": {}, "serviceName": "x", "template": {}}});
        let (ok, out) = kubectl_stdin(f, &["apply"], &bad)?;
        ensure!(!ok && out.contains("exactly one"), "{out}");

        f.kubectl(&["delete", "namespace", "e2e-yas", "--wait=false"])?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_yurt_app_daemon_still_follows_its_pool_selector() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;
        let ns = "e2e-yad";
        f.kubectl(&["create", "namespace", ns])?;
        let workloads = || -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
            let list = get_json(
                f,
                &["get", "deployments", "-n", ns, "-l", "apps.openyurt.io/yurtappdaemon=agent"],
            )?;
            Ok(list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    (
                        d["metadata"]["labels"]["apps.openyurt.io/pool-name"].as_str().unwrap_or("").to_owned(),
                        d["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    )
                })
                .collect())
        };
        f.kubectl(&["label", "nodepool", "pool-a", "e2e-yad=yes", "--overwrite"])?;
        let (ok, out) = kubectl_stdin(
            f,
            &["apply"],
            &json!({
                "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "YurtAppDaemon",
                "metadata": {"name": "agent", "namespace": ns},
                "spec": {
                    "selector": {"matchLabels": {"app": "agent"}},
                    "nodepoolSelector": {"matchLabels": {"e2e-yad": "yes"}},
                    "workloadTemplate": {"deploymentTemplate": {
                        "metadata": {"labels": {"app": "agent"}},
                        "spec": {
                            "replicas": 1,
                            "selector": {"matchLabels": {"app": "agent"}},
                            "template": {
                                "metadata": {"labels": {"app": "agent"}},
                                "spec": {
                                    "terminationGracePeriodSeconds": 1,
                                    "containers": [{"name": "a", "image": "yurt.local/busybox:1", "command": ["sleep", "100000"]}],
                                },
                            },
                        },
                    }},
                },
            }),
        )?;
        ensure!(ok, "{out}");
        wait_for("pool-a's workload running", Duration::from_secs(90), || async {
            let w = workloads()?;
            Ok((w.len() == 1 && w.get("pool-a") == Some(&1)).then_some(()))
        })
        .await?;
        let pods = get_json(f, &["get", "pods", "-n", ns, "-l", "app=agent"])?;
        let node = pods["items"][0]["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
        ensure!(node.starts_with("edge-a"), "the pod runs outside pool-a: {node}");
        // A pool that starts matching gets its workload; one that stops loses it.
        f.kubectl(&["label", "nodepool", "pool-b", "e2e-yad=yes", "--overwrite"])?;
        wait_for("pool-b's workload", Duration::from_secs(60), || async {
            Ok(workloads()?.contains_key("pool-b").then_some(()))
        })
        .await?;
        f.kubectl(&["label", "nodepool", "pool-a", "e2e-yad-"])?;
        wait_for("pool-a's workload removed", Duration::from_secs(60), || async {
            let w = workloads()?;
            Ok((w.len() == 1 && w.contains_key("pool-b")).then_some(()))
        })
        .await?;
        let status = get_json(f, &["get", "yurtappdaemon", "-n", ns, "agent"])?;
        ensure!(
            status["status"]["templateType"] == "Deployment"
                && status["status"]["nodepools"] == json!(["pool-b"]),
            "status: {}",
            status["status"]
        );
        f.kubectl(&["label", "nodepool", "pool-b", "e2e-yad-"])?;
        f.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
        Ok(())
    })
    .await
}

/// A kube client for the fleet's API server (as reached from the machine) with the
/// client certificate and key of `kubeconfig_yaml`.
async fn client_from(f: &TestFleet, kubeconfig_yaml: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml)?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.cluster_url = f.fleet().plan().api_url_from_host().parse()?;
    Ok(kube::Client::try_from(config)?)
}

/// Removes a Node when dropped (a test's stand-in node must not outlive it).
struct NodeGone<'a>(&'a TestFleet, &'static str);

impl Drop for NodeGone<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            "node",
            self.1,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// `openyurt.io/is-edge-worker` says whether a node runs behind a hub: only the node
/// itself and the manager (the conversion controller) may change it. An admin is refused
/// by the manager's webhook with a message that says what to do instead (another node
/// already by the Node authorizer). Other labels stay free to edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_node_and_the_manager_change_is_edge_worker() -> anyhow::Result<()> {
    const NODE: &str = "edge-worker-guard";
    // Boxed: the clients it builds make a large future.
    within(Box::pin(async {
        let f = shared().await?;
        let f = &f;
        // A stand-in Node nothing runs on (a custom NoSchedule taint keeps workloads,
        // DaemonSets included, away from it).
        f.kubectl(&["delete", "node", NODE, "--ignore-not-found"])?;
        let (created, out) = kubectl_stdin(
            f,
            &["create"],
            &json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE, "labels": {"openyurt.io/is-edge-worker": "true"}},
                "spec": {"taints": [{"key": "e2e.openyurt.io/stand-in", "effect": "NoSchedule"}]},
            }),
        )?;
        ensure!(created, "creating {NODE}: {out}");
        let _gone = NodeGone(f, NODE);

        // The manager's view must hold the node before its webhook can compare (1.20
        // hands validating webhooks an oldObject equal to the new one): probe with
        // server-side dry runs, which change nothing, until one is refused.
        let admin_flip = |dry_run: bool| -> anyhow::Result<(bool, String)> {
            let mut args = vec![
                "label",
                "node",
                NODE,
                "openyurt.io/is-edge-worker=false",
                "--overwrite",
            ];
            if dry_run {
                args.push("--dry-run=server");
            }
            Ok(match f.kubectl(&args) {
                Ok(out) => (true, out),
                Err(e) => (false, format!("{e:#}")),
            })
        };
        wait_for(
            "the webhook to know the stand-in node",
            Duration::from_secs(60),
            || async { Ok((!admin_flip(true)?.0).then_some(())) },
        )
        .await?;

        let (allowed, message) = admin_flip(false)?;
        ensure!(
            !allowed
                && message.contains("is set only by the node itself and the conversion controller")
                && message.contains("apps.openyurt.io/nodepool"),
            "an admin changed is-edge-worker: {message}"
        );
        let removed = f.kubectl(&["label", "node", NODE, "openyurt.io/is-edge-worker-"]);
        ensure!(removed.is_err(), "an admin removed is-edge-worker");
        f.kubectl(&["label", "node", NODE, "e2e.openyurt.io/free=yes"])
            .context("other labels stay free")?;
        // The same through `nodes/status`, where 1.20 keeps the status strategy's hands
        // off metadata: the webhook sees that route too. A free label there passes, so
        // the refusal is the webhook's, not the route's.
        let admin = Api::<Node>::all(f.client());
        let status_patch = |labels: serde_json::Value| {
            kube::api::Patch::Merge(json!({"metadata": {"labels": labels}}))
        };
        let through_status = admin
            .patch_status(
                NODE,
                &kube::api::PatchParams::default(),
                &status_patch(json!({"openyurt.io/is-edge-worker": "false"})),
            )
            .await;
        ensure!(
            through_status.as_ref().is_err_and(|e| e
                .to_string()
                .contains("is set only by the node itself and the conversion controller")),
            "an admin changed is-edge-worker through nodes/status: {through_status:?}"
        );
        admin
            .patch_status(
                NODE,
                &kube::api::PatchParams::default(),
                &status_patch(json!({"e2e.openyurt.io/free-status": "yes"})),
            )
            .await
            .context("other labels stay free through nodes/status")?;
        let labels = node(f, NODE).await?.metadata.labels.unwrap_or_default();
        ensure!(
            labels.get("openyurt.io/is-edge-worker").map(String::as_str) == Some("true")
                && labels.contains_key("e2e.openyurt.io/free-status"),
            "{labels:?}"
        );

        // Another node, then the node itself and the manager.
        let pki = yurt_cluster::pki::PkiPaths::new(f.fleet().paths());
        let ca = yurt_core::pki::CertificateAuthority::from_pem(
            yurt_cluster::pki::CA_NAME,
            &std::fs::read_to_string(pki.ca_cert())?,
            &std::fs::read_to_string(pki.ca_key())?,
        )?;
        let node_client = |name: &str| -> anyhow::Result<String> {
            let issued = ca.issue(&yurt_core::pki::CertSpec::client(
                format!("system:node:{name}"),
                &["system:nodes"],
            ))?;
            Ok(yurt_cluster::pki::kubeconfig(
                &f.fleet().plan().api_url_from_host(),
                ca.cert_pem(),
                &issued.cert_pem,
                &issued.key_pem,
                name,
            )?)
        };
        let patch = |value: Option<&str>| {
            kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"openyurt.io/is-edge-worker": value}}}),
            )
        };
        let params = kube::api::PatchParams::default();
        let other = client_from(f, &node_client("edge-a1")?).await?;
        let refused = Api::<Node>::all(other)
            .patch(NODE, &params, &patch(Some("false")))
            .await;
        ensure!(refused.is_err(), "another node changed is-edge-worker");

        let itself = client_from(f, &node_client(NODE)?).await?;
        Api::<Node>::all(itself)
            .patch(NODE, &params, &patch(Some("false")))
            .await
            .context("the node itself changes its is-edge-worker")?;
        let manager_kubeconfig = std::fs::read_to_string(pki.kubeconfig("yurt-manager"))?;
        let manager = client_from(f, &manager_kubeconfig).await?;
        Api::<Node>::all(manager)
            .patch(NODE, &params, &patch(None))
            .await
            .context("the manager removes is-edge-worker")?;
        let labels = node(f, NODE).await?.metadata.labels.unwrap_or_default();
        ensure!(
            !labels.contains_key("openyurt.io/is-edge-worker")
                && labels.contains_key("e2e.openyurt.io/free"),
            "{labels:?}"
        );
        Ok(())
    }))
    .await
}

/// What `yurt manager manifests` prints is what a user pipes into `kubectl apply`: the
/// API server 1.20 accepts every object (a server-side dry run validates, defaults and
/// admits each, and stores nothing), and the ClusterRole it grants the pods' service
/// account has the rules `yurt up` grants the manager it runs on the cloud host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_manifests_are_accepted_by_the_api_server() -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
    within(async {
        let f = shared().await?;
        let manifests = f.yurt(&[
            "manager",
            "manifests",
            "--image",
            "yurt.local/yurt:e2e",
            "--node-selector",
            "kubernetes.io/hostname=edge-a1",
        ])?;
        let out = f.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifests)?;
        let documents: Vec<Value> = manifests
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(serde_yaml::from_str)
            .collect::<Result<_, _>>()?;
        let lines: Vec<&str> = out.lines().collect();
        ensure!(
            lines.len() == documents.len() && lines.iter().all(|l| l.ends_with("(server dry run)")),
            "one dry-run line per object ({} objects):\n{out}",
            documents.len()
        );
        for want in [
            "customresourcedefinition.apiextensions.k8s.io/nodepools.apps.openyurt.io",
            "serviceaccount/yurt-manager",
            "clusterrolebinding.rbac.authorization.k8s.io/yurt-manager",
            "service/yurt-manager-webhook-service",
            "deployment.apps/yurt-manager",
        ] {
            ensure!(out.contains(want), "{want} missing:\n{out}");
        }
        // Nothing was stored.
        ensure!(
            f.kubectl(&["get", "serviceaccount", "yurt-manager", "-n", "kube-system"])
                .is_err(),
            "the dry run created the service account"
        );
        let printed = documents
            .iter()
            .find(|d| d["kind"] == "ClusterRole")
            .context("no ClusterRole printed")?;
        let printed: Vec<PolicyRule> = serde_json::from_value(printed["rules"].clone())?;
        let granted = Api::<ClusterRole>::all(f.client())
            .get("openyurt:yurt-manager")
            .await?
            .rules
            .unwrap_or_default();
        ensure!(
            printed == granted,
            "printed {printed:?}\nthe fleet's {granted:?}"
        );
        Ok(())
    })
    .await
}
