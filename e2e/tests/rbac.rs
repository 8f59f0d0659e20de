//! Least privilege, checked on the shared fleet: every ClusterRole, Role and binding that
//! names the hubs (group `openyurt:yurthub`) or yurt manager (user
//! `openyurt:yurt-manager`) is listed and printed, then `kubectl auth can-i` answers a
//! table of what each identity may and may not do (printed whole before any mismatch
//! fails the test), and real requests as the hub show the API server accepting the one
//! ConfigMap watch the hub makes (by name, `filter/view/mod.rs`) and refusing any other.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use yurt_testkit::{TestFleet, shared};

const TEST_TIMEOUT: Duration = Duration::from_secs(420);

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

const HUB_GROUP: &str = "openyurt:yurthub";
const MANAGER_USER: &str = "openyurt:yurt-manager";

/// Who asks.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// A hub: its certificate's identity (`system:node:edge-a1` in `system:nodes` and
    /// `openyurt:yurthub`). kubelet, kube-proxy and host processes share it.
    Hub,
    /// The same node without the hub's group: what the Node authorizer alone allows.
    Node,
    /// yurt manager.
    Manager,
}

impl Who {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Hub => &[
                "--as=system:node:edge-a1",
                "--as-group=system:nodes",
                "--as-group=openyurt:yurthub",
            ],
            Self::Node => &["--as=system:node:edge-a1", "--as-group=system:nodes"],
            Self::Manager => &["--as=openyurt:yurt-manager"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hub => "hub",
            Self::Node => "node",
            Self::Manager => "manager",
        }
    }
}

/// One question for `kubectl auth can-i`: who, its arguments, the answer we want, why.
type Row = (Who, &'static str, bool, &'static str);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // The hubs: their own ConfigMap, nothing else of the kind.
    (Who::Hub, "get configmaps/yurt-hub-cfg -n kube-system", true, "its settings (filter/view.rs)"),
    (Who::Hub, "list configmaps/yurt-hub-cfg -n kube-system", true, "listed by metadata.name"),
    (Who::Hub, "watch configmaps/yurt-hub-cfg -n kube-system", true, "watched by metadata.name"),
    (Who::Hub, "get configmaps -n kube-system", false, "any other ConfigMap there"),
    (Who::Hub, "get configmaps/extension-apiserver-authentication -n kube-system", false, "a named one there"),
    (Who::Hub, "list configmaps -n kube-system", false, "listing kube-system's"),
    (Who::Hub, "get configmaps -n default", false, "another namespace's"),
    (Who::Hub, "get configmaps/yurt-hub-cfg -n default", false, "the same name elsewhere"),
    (Who::Hub, "list configmaps -A", false, "cluster-wide"),
    (Who::Hub, "update configmaps/yurt-hub-cfg -n kube-system", false, "read-only"),
    (Who::Hub, "get /openid/v1/jwks", true, "issuer keys, to verify pod tokens"),
    (Who::Hub, "get /.well-known/openid-configuration", true, "issuer discovery"),
    (Who::Hub, "list services -A", true, "kube-proxy, kubelet, filters"),
    (Who::Hub, "watch endpoints -A", true, "kube-proxy"),
    (Who::Hub, "watch endpointslices.discovery.k8s.io -A", true, "kube-proxy"),
    (Who::Hub, "list nodes", true, "its own Node; its pool's by label without a NodePool (filter/view/)"),
    (Who::Hub, "list nodepools.apps.openyurt.io", true, "pool members for the pool-scoped filters (filter/view/pool.rs)"),
    (Who::Hub, "watch nodepools.apps.openyurt.io", true, "watched by metadata.name"),
    (Who::Hub, "create events -n default", true, "kubelet, kube-proxy"),
    (Who::Hub, "get secrets -n kube-system", false, "Secrets: only kubelet's, by the Node authorizer"),
    (Who::Hub, "list secrets -A", false, "Secrets cluster-wide"),
    (Who::Hub, "list namespaces", false, "nothing behind the hub reads them"),
    (Who::Hub, "list nodebuckets.apps.openyurt.io", false, "nothing reads them"),
    (Who::Hub, "list yurtappsets.apps.openyurt.io -A", false, "the manager's business"),
    (Who::Hub, "get yurtstaticsets.apps.openyurt.io -n default", true, "OTA renders static pod manifests (ota.rs)"),
    (Who::Hub, "list yurtstaticsets.apps.openyurt.io -A", false, "one set at a time, by name"),
    (Who::Hub, "get configmaps/yurt-static-set-x -n default", false, "OTA no longer reads the manager's ConfigMaps"),
    // The ConfigMap is the hubs', not every node's.
    (Who::Node, "get configmaps/yurt-hub-cfg -n kube-system", false, "a node without the hub group"),
    (Who::Node, "get /openid/v1/jwks", false, "a node without the hub group"),
    (Who::Node, "list nodepools.apps.openyurt.io", false, "a node without the hub group"),
    // What kube-proxy reads, for a plain node's kube-proxy on kubelet's credentials.
    (Who::Node, "watch endpointslices.discovery.k8s.io -A", true, "kube-proxy of a plain node (openyurt:nodes-proxier)"),
    (Who::Node, "create secrets -n default", false, "system:node-proxier writes only events"),
    // The manager: its Secret and Lease in kube-system, by name.
    (Who::Manager, "get secrets/yurt-manager-webhook-certs -n kube-system", true, "webhook/certs.rs"),
    (Who::Manager, "update secrets/yurt-manager-webhook-certs -n kube-system", true, "webhook/certs.rs replaces bad certs"),
    (Who::Manager, "create secrets -n kube-system", true, "first start (a POST has no name)"),
    (Who::Manager, "get secrets -n kube-system", false, "any other Secret there"),
    (Who::Manager, "list secrets -n kube-system", false, "listing kube-system's"),
    (Who::Manager, "delete secrets/yurt-manager-webhook-certs -n kube-system", false, "never deleted"),
    (Who::Manager, "get secrets -n default", false, "another namespace's"),
    (Who::Manager, "get secrets/yurt-manager-webhook-certs -n default", false, "the same name elsewhere"),
    (Who::Manager, "create secrets -n default", false, "another namespace"),
    (Who::Manager, "list secrets -A", false, "cluster-wide"),
    (Who::Manager, "get leases.coordination.k8s.io/yurt-manager -n kube-system", true, "leader.rs"),
    (Who::Manager, "update leases.coordination.k8s.io/yurt-manager -n kube-system", true, "leader.rs renews"),
    (Who::Manager, "create leases.coordination.k8s.io -n kube-system", true, "leader.rs, first election"),
    (Who::Manager, "update leases.coordination.k8s.io/kube-controller-manager -n kube-system", false, "another's Lease"),
    (Who::Manager, "create leases.coordination.k8s.io -n kube-node-lease", false, "node heartbeats"),
    // Its CRDs and webhook configurations, applied by name, nothing else.
    (Who::Manager, "create customresourcedefinitions/nodepools.apps.openyurt.io", true, "server-side apply (webhook/register.rs)"),
    (Who::Manager, "patch customresourcedefinitions/yurtstaticsets.apps.openyurt.io", true, "server-side apply"),
    (Who::Manager, "create customresourcedefinitions", false, "a CRD of its choosing"),
    (Who::Manager, "patch customresourcedefinitions/widgets.example.com", false, "someone else's CRD"),
    (Who::Manager, "delete customresourcedefinitions/nodepools.apps.openyurt.io", false, "never deleted"),
    (Who::Manager, "list customresourcedefinitions", false, "never read"),
    (Who::Manager, "patch mutatingwebhookconfigurations/yurt-manager-mutating-webhook-configuration", true, "webhook/register.rs"),
    (Who::Manager, "patch validatingwebhookconfigurations/yurt-manager-validating-webhook-configuration", true, "webhook/register.rs"),
    (Who::Manager, "create mutatingwebhookconfigurations", false, "a webhook of its choosing"),
    (Who::Manager, "patch validatingwebhookconfigurations/someone-else", false, "someone else's webhook"),
    (Who::Manager, "delete mutatingwebhookconfigurations/yurt-manager-mutating-webhook-configuration", false, "never deleted"),
    // No way to more rights.
    (Who::Manager, "escalate clusterroles.rbac.authorization.k8s.io", false, "RBAC"),
    (Who::Manager, "bind clusterroles.rbac.authorization.k8s.io", false, "RBAC"),
    (Who::Manager, "bind clusterroles.rbac.authorization.k8s.io/cluster-admin", false, "RBAC"),
    (Who::Manager, "bind clusterroles.rbac.authorization.k8s.io/openyurt:yurt-manager", false, "its own role to others"),
    (Who::Manager, "bind roles.rbac.authorization.k8s.io -n kube-system", false, "RBAC"),
    (Who::Manager, "create clusterrolebindings.rbac.authorization.k8s.io", false, "RBAC"),
    (Who::Manager, "create clusterroles.rbac.authorization.k8s.io", false, "RBAC"),
    (Who::Manager, "create roles.rbac.authorization.k8s.io -n default", false, "RBAC"),
    (Who::Manager, "update rolebindings.rbac.authorization.k8s.io -n default", false, "RBAC"),
    // PlatformAdmins: the agents' account and its binding to their roles, which the
    // manager may bind but not hold (a RoleBinding to any other role is refused by the
    // API server's escalation check).
    (Who::Manager, "bind clusterroles.rbac.authorization.k8s.io/openyurt:yurt-iot-dock", true, "platformadmin: the agents' role"),
    (Who::Manager, "bind clusterroles.rbac.authorization.k8s.io/openyurt:yurt-iot-dock-virtual", true, "platformadmin: virtual devices"),
    (Who::Manager, "create rolebindings.rbac.authorization.k8s.io -n default", true, "platformadmin: binds the agents' roles"),
    (Who::Manager, "create serviceaccounts -n default", true, "platformadmin: the agents' account"),
    (Who::Manager, "watch serviceaccounts -A", true, "webhook/device: the agents' accounts, each confined to its pool"),
    (Who::Manager, "update serviceaccounts -n default", false, "accounts are made once"),
    (Who::Manager, "delete serviceaccounts -n default", false, "owner references do it"),
    (Who::Manager, "impersonate users", false, "impersonation"),
    (Who::Manager, "create serviceaccounts --subresource=token -n kube-system", false, "tokens"),
    // Controllers: what they call.
    (Who::Manager, "list pods -A", true, "the pod feed"),
    (Who::Manager, "get pods -n default", true, "webhook/endpoints.rs"),
    (Who::Manager, "patch pods -n default", true, "podbinding.rs"),
    (Who::Manager, "create pods -n default", true, "yurtstaticset.rs workers"),
    (Who::Manager, "delete pods -n default", true, "daemonpodupdater.rs, yurtstaticset.rs"),
    (Who::Manager, "patch pods --subresource=status -n default", true, "PodNeedUpgrade"),
    (Who::Manager, "create pods --subresource=exec -n default", false, "exec"),
    (Who::Manager, "create pods --subresource=eviction -n default", false, "evictions"),
    (Who::Manager, "patch nodes", true, "nodepool.rs"),
    (Who::Manager, "get nodes", true, "webhook/node.rs, when its view lags"),
    (Who::Manager, "delete nodes", false, "never"),
    (Who::Manager, "patch nodes --subresource=status", true, "nodeconversion: YurtNodeConversionFailed"),
    (Who::Manager, "create jobs.batch -n kube-system", true, "nodeconversion: the servant's Job"),
    (Who::Manager, "delete jobs.batch -n kube-system", true, "nodeconversion: a finished Job"),
    (Who::Manager, "list jobs.batch -n kube-system", true, "nodeconversion: its Jobs' watch"),
    (Who::Manager, "create jobs.batch -n default", false, "Jobs elsewhere"),
    (Who::Manager, "update jobs.batch -n kube-system", false, "never changed"),
    (Who::Manager, "create deployments.apps -n default", true, "yurtappset.rs"),
    (Who::Manager, "delete statefulsets.apps -n default", true, "yurtappset.rs"),
    (Who::Manager, "list daemonsets.apps -A", true, "daemonpodupdater.rs"),
    (Who::Manager, "create daemonsets.apps -n default", false, "never written"),
    (Who::Manager, "create configmaps -n default", true, "yurtstaticset.rs (apply)"),
    (Who::Manager, "get configmaps -n default", false, "never read"),
    (Who::Manager, "delete configmaps -n default", false, "owner references do it"),
    (Who::Manager, "patch endpoints -n default", true, "servicetopology.rs"),
    (Who::Manager, "patch endpointslices.discovery.k8s.io -n default", true, "servicetopology.rs"),
    (Who::Manager, "update services -n default", false, "only watched"),
    (Who::Manager, "patch yurtappsets.apps.openyurt.io --subresource=status -n default", true, "yurtappset.rs"),
    (Who::Manager, "create yurtappsets.apps.openyurt.io -n default", true, "platformadmin: the agents' YurtAppSet (apply)"),
    (Who::Manager, "delete yurtappsets.apps.openyurt.io -n default", false, "owner references do it"),
    (Who::Manager, "delete nodepools.apps.openyurt.io", false, "users delete them"),
    (Who::Manager, "create gateways.raven.openyurt.io", false, "no raven controller"),
    (Who::Manager, "update certificatesigningrequests.certificates.k8s.io --subresource=approval", true, "csrapprover.rs"),
    (Who::Manager, "delete certificatesigningrequests.certificates.k8s.io", false, "never"),
    (Who::Manager, "create events -n default", true, "csrapprover.rs refusals"),
    (Who::Manager, "create events -n kube-system", false, "only in default"),
    (Who::Manager, "list platformadmins.iot.openyurt.io -A", true, "one platform per pool (webhook/platformadmin.rs)"),
    (Who::Manager, "list deviceprofiles.iot.openyurt.io -n default", true, "a device's profile (webhook/device)"),
    (Who::Manager, "list deviceservices.iot.openyurt.io -n default", true, "a device's service (webhook/device)"),
    (Who::Manager, "update devices.iot.openyurt.io -n default", false, "the webhooks only read"),
    (Who::Manager, "create devices.iot.openyurt.io -n default", false, "agents create the virtual devices"),
    (Who::Manager, "patch devices.iot.openyurt.io --subresource=status -n default", false, "agents write status"),
    (Who::Manager, "patch platformadmins.iot.openyurt.io -n default", true, "platformadmin: its finalizer"),
    (Who::Manager, "patch platformadmins.iot.openyurt.io --subresource=status -n default", true, "platformadmin: status"),
    (Who::Manager, "delete platformadmins.iot.openyurt.io -n default", false, "users delete them"),
    (Who::Hub, "list devices.iot.openyurt.io -A", false, "agents read with their own service account"),
];

/// Signers are no API resource, so kubectl cannot ask about them: the manager's signer
/// rights, as SubjectAccessReviews (signer, allowed, why).
const SIGNERS: &[(&str, bool, &str)] = &[
    (
        "kubernetes.io/kube-apiserver-client",
        true,
        "hub and tunnel client certificates",
    ),
    (
        "kubernetes.io/kubelet-serving",
        true,
        "node serving certificates",
    ),
    (
        "kubernetes.io/kube-apiserver-client-kubelet",
        false,
        "kubelet's: kube-controller-manager's",
    ),
    ("example.com/anything", false, "any other signer"),
];

/// Whether the manager may approve for `signer`, by a SubjectAccessReview.
fn manager_may_approve(f: &TestFleet, signer: &str) -> anyhow::Result<bool> {
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": MANAGER_USER, "groups": ["system:authenticated"],
            "resourceAttributes": {"group": "certificates.k8s.io", "resource": "signers", "name": signer, "verb": "approve"},
        },
    });
    let out = f.kubectl_stdin(&["create", "-o", "json", "-f", "-"], &review.to_string())?;
    let answer: Value = serde_json::from_str(&out)?;
    answer["status"]["allowed"]
        .as_bool()
        .with_context(|| format!("SubjectAccessReview answer {answer}"))
}

/// `kubectl auth can-i <args> <who>`: `Ok(true)` for yes, `Ok(false)` for no (exit 1).
fn can_i(f: &TestFleet, who: Who, args: &str) -> anyhow::Result<bool> {
    let mut cmd = f.fleet().kubectl();
    cmd.args(["auth", "can-i"])
        .args(args.split_whitespace())
        .args(who.flags());
    let out = cmd
        .output()
        .with_context(|| format!("run kubectl auth can-i {args}"))?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match (out.status.code(), answer.as_str()) {
        (Some(0), "yes") => Ok(true),
        (Some(1), a) if a.starts_with("no") => Ok(false),
        _ => bail!(
            "kubectl auth can-i {args} as {}: {} {answer} {}",
            who.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn get_json(f: &TestFleet, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&f.kubectl(&all)?)?)
}

fn names_our_identities(binding: &Value) -> bool {
    binding["subjects"].as_array().is_some_and(|s| {
        s.iter().any(|s| {
            (s["kind"] == "Group" && s["name"] == HUB_GROUP)
                || (s["kind"] == "User" && s["name"] == MANAGER_USER)
        })
    })
}

fn strings(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| if s.is_empty() { "\"\"" } else { s })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Every binding naming the hubs or the manager, with the rules of its role, printed.
/// Returns `namespace/kind/name -> subject` of each.
fn our_bindings(f: &TestFleet) -> anyhow::Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let cluster = get_json(f, &["get", "clusterrolebindings"])?;
    let namespaced = get_json(f, &["get", "rolebindings", "--all-namespaces"])?;
    let items = cluster["items"]
        .as_array()
        .into_iter()
        .chain(namespaced["items"].as_array())
        .flatten()
        .filter(|b| names_our_identities(b));
    for b in items {
        let ns = b["metadata"]["namespace"].as_str();
        let subject = b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{}:{}",
                    s["kind"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
        let binding = format!(
            "{}{} {} -> {role_kind} {role_name} ({subject})",
            ns.map(|n| format!("{n}/")).unwrap_or_default(),
            b["kind"].as_str().unwrap_or_default(),
            b["metadata"]["name"].as_str().unwrap_or_default(),
        );
        println!("\n{binding}");
        let role = match (role_kind, ns) {
            ("Role", Some(ns)) => get_json(f, &["get", "role", role_name, "-n", ns])?,
            _ => get_json(f, &["get", "clusterrole", role_name])?,
        };
        let (groups, resources, names) = ("apiGroups / URLs", "resources", "resourceNames");
        println!("  {groups:<30} {resources:<55} {names:<50} verbs");
        for rule in role["rules"].as_array().into_iter().flatten() {
            let groups = if rule["nonResourceURLs"].is_array() {
                strings(&rule["nonResourceURLs"])
            } else {
                strings(&rule["apiGroups"])
            };
            println!(
                "  {groups:<30} {:<55} {:<50} {}",
                strings(&rule["resources"]),
                strings(&rule["resourceNames"]),
                strings(&rule["verbs"])
            );
        }
        found.insert(binding);
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_manager_hold_only_the_rights_they_use() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let f = &f;

        // Every binding of our identities: these and no others.
        let bindings = our_bindings(f)?;
        let want: BTreeSet<String> = [
            "ClusterRoleBinding openyurt:yurthub -> ClusterRole openyurt:yurthub (Group:openyurt:yurthub)",
            "kube-system/RoleBinding openyurt:yurthub -> Role openyurt:yurthub (Group:openyurt:yurthub)",
            "ClusterRoleBinding openyurt:yurt-manager -> ClusterRole openyurt:yurt-manager (User:openyurt:yurt-manager)",
            "kube-system/RoleBinding openyurt:yurt-manager -> Role openyurt:yurt-manager (User:openyurt:yurt-manager)",
            "default/RoleBinding openyurt:yurt-manager -> Role openyurt:yurt-manager (User:openyurt:yurt-manager)",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let mut wrong = Vec::new();
        if bindings != want {
            wrong.push(format!(
                "bindings of the hubs and the manager: got {bindings:#?}, want {want:#?}"
            ));
        }

        // What each identity may do, as the API server answers it; the whole table is
        // printed before any difference fails the test.
        println!("\n{:<8} {:<88} {:<4} {:<4} why", "who", "kubectl auth can-i", "want", "got");
        let mut row = |who: &str, args: &str, want: bool, got: bool, why: &str| {
            let yn = |b: bool| if b { "yes" } else { "no" };
            let mark = if got == want { "" } else { "  <-- WRONG" };
            println!("{who:<8} {args:<88} {:<4} {:<4} {why}{mark}", yn(want), yn(got));
            if got != want {
                wrong.push(format!("{who} {args}: want {}, got {}", yn(want), yn(got)));
            }
        };
        for &(who, args, want, why) in TABLE {
            row(who.name(), args, want, can_i(f, who, args)?, why);
        }
        for &(signer, want, why) in SIGNERS {
            let args = format!("approve signers.certificates.k8s.io/{signer} (SubjectAccessReview)");
            row("manager", &args, want, manager_may_approve(f, signer)?, why);
        }
        ensure!(wrong.is_empty(), "{} differences:\n{}", wrong.len(), wrong.join("\n"));

        // The requests themselves, as the hub makes them. The hub lists and watches its
        // ConfigMap by name (filter/view/), which RBAC matches against resourceNames;
        // without the name the same list is refused.
        let hub = Who::Hub.flags();
        let by_name = ["get", "configmaps", "-n", "kube-system", "--field-selector=metadata.name=yurt-hub-cfg"];
        f.kubectl(&[&by_name[..], hub].concat())
            .context("the hub's list of its ConfigMap by name")?;
        f.kubectl(&[&by_name[..], &["--watch", "--request-timeout=2s"][..], hub].concat())
            .or_else(|e| {
                // kubectl ends a watch at --request-timeout with an error of its own.
                let text = format!("{e:#}");
                ensure!(!text.contains("forbidden"), "the hub's watch of its ConfigMap: {text}");
                Ok(String::new())
            })?;
        let all = f.kubectl(&[&["get", "configmaps", "-n", "kube-system"][..], hub].concat());
        ensure!(
            all.as_ref().is_err_and(|e| format!("{e:#}").contains("forbidden")),
            "the hub's list of every ConfigMap in kube-system should be forbidden, got {all:?}"
        );

        // And through a real hub, with its own certificate (edge-a1's 127.0.0.1:10261):
        // the watch filter/view/ makes is let through, a list of all is not.
        let hub_api = "http://127.0.0.1:10261/api/v1/namespaces/kube-system/configmaps";
        let status = |query: &str| -> anyhow::Result<String> {
            let url = format!("{hub_api}?{query}");
            let out = f.exec("edge-a1", &["curl", "-s", "-A", "rbac-e2e", "-o", "/dev/null", "-w", "%{http_code}", &url])?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let named = status("fieldSelector=metadata.name%3Dyurt-hub-cfg")?;
        let watched = status("fieldSelector=metadata.name%3Dyurt-hub-cfg&watch=1&timeoutSeconds=1")?;
        let everything = status("limit=1")?;
        println!("\nthrough edge-a1's hub: list by name {named}, watch by name {watched}, list all {everything}");
        ensure!(named == "200", "list of yurt-hub-cfg by name through the hub: {named}");
        ensure!(watched == "200", "watch of yurt-hub-cfg by name through the hub: {watched}");
        ensure!(everything == "403", "list of every ConfigMap through the hub: {everything}");
        Ok(())
    })
    .await
}
