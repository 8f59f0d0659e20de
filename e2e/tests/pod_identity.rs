//! Trust boundaries of the hub's pod port (issue 9): a pod gets from the hub only what its
//! own token may read, online and offline.
//!
//! Every request is made from inside a real pod on edge-a1, to the address kubelet hands
//! it (`$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the hub's TLS port
//! 169.254.2.1:10268), with Debian's curl (`yurt.local/curl:1`: busybox's TLS client
//! cannot talk to rustls). Commands reach the pods through the node's containerd, so
//! they work while the node is cut off. Online, a `reader` service account reads its own
//! ConfigMaps; a pod of another namespace mounts a Secret and a ConfigMap (kubelet reads
//! and caches them). Then the pool is cut, and every caller (the reader, a service
//! account with no rights, no token, a forged token, and the reader and no token with
//! kubelet's User-Agent) asks for its own and the others' objects: only the reader's own
//! cached answers may come back; everything else is 401 or 403. The test also checks that
//! the kubelet lease path is refused on the pod port, that a pod cannot keep a node whose
//! kubelet stopped Ready, and that a LAN neighbour cannot reach a node's pod port.
//!
//! Every check is made and printed before the test fails, so one run shows the whole
//! picture.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use yurt_cluster::image::{CURL_IMAGE, ImageSpec};
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::{TestFleet, fresh, run_checked, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(900);
/// The node the pods run on, and its pool.
const NODE: &str = "edge-a1";
const POOL: &str = "pool-a";
/// The namespace of the callers, and the one whose objects they must not get.
const NS: &str = "idt";
const VICTIM_NS: &str = "victim";
/// The victim Secret's value: found in no answer.
const VICTIM_PASSWORD: &str = "victim-password-4711";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Where the test puts the cluster CA in the pod that mounts no service account token.
const CA_COPY: &str = "/tmp/ca.crt";
const KUBELET_UA: &str = "kubelet/v1.20.2";
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-a1";
/// The matrix's columns: what every caller asks for.
const REQUESTS: [(&str, &str); 5] = [
    (
        "GET idt/app-config",
        "/api/v1/namespaces/idt/configmaps/app-config",
    ),
    ("LIST idt configmaps", "/api/v1/namespaces/idt/configmaps"),
    (
        "GET victim Secret",
        "/api/v1/namespaces/victim/secrets/db-password",
    ),
    (
        "GET victim ConfigMap",
        "/api/v1/namespaces/victim/configmaps/db-config",
    ),
    (
        "LIST pods on edge-a1",
        "/api/v1/pods?fieldSelector=spec.nodeName=edge-a1",
    ),
];

/// Whether the reader's token may make request `column` (its Role: ConfigMaps in `idt`).
fn readers_own(column: usize) -> bool {
    column < 2
}

fn spec() -> FleetSpec {
    FleetSpec {
        // pool-a: edge-a1 and edge-a2; pool-b: edge-b1 (the cloud keeps a Ready node).
        edge_nodes: 3,
        pools: 2,
        mode: NetMode::Nat,
        timing: Timing::Fast,
        sample_app: false,
    }
}

// === the objects ===

fn setup_objects() -> Value {
    json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": VICTIM_NS}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": NS}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": NS}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "configmap-reader", "namespace": NS},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "reader", "namespace": NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
            },
            {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "app-config", "namespace": NS},
                "data": {"greeting": "hello"},
            },
            {
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db-password", "namespace": VICTIM_NS},
                "stringData": {"password": VICTIM_PASSWORD},
            },
            {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "db-config", "namespace": VICTIM_NS},
                "data": {"dsn": "postgres://db.victim:5432/orders"},
            },
            // The hub caches what curl clients read (OpenYurt's `cache_agents`).
            {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "yurt-hub-cfg", "namespace": "kube-system",
                    "labels": {"openyurt.io/configmap-name": "yurt-hub-cfg"},
                },
                "data": {"cache_agents": "curl"},
            },
        ]
    })
}

/// Pods stay on their node through the cut (the test restores the link itself).
fn tolerate_everything() -> Value {
    json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    ])
}

fn pods() -> Value {
    let curl_pod = |name: &str, service_account: &str, token: bool| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "nodeName": NODE,
                "serviceAccountName": service_account,
                "automountServiceAccountToken": token,
                "tolerations": tolerate_everything(),
                "dnsPolicy": "Default",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "curl", "image": CURL_IMAGE, "command": ["sleep", "86400"]}],
            }
        })
    };
    json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            curl_pod("reader", "reader", true),
            curl_pod("nobody", "nobody", true),
            curl_pod("anon", "nobody", false),
            {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "app", "namespace": VICTIM_NS},
                "spec": {
                    "nodeName": NODE,
                    "automountServiceAccountToken": false,
                    "tolerations": tolerate_everything(),
                    "dnsPolicy": "Default",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app", "image": yurt_cluster::image::BUSYBOX_IMAGE,
                        "command": ["sleep", "86400"],
                        "volumeMounts": [
                            {"name": "password", "mountPath": "/etc/password"},
                            {"name": "config", "mountPath": "/etc/config"},
                        ],
                    }],
                    "volumes": [
                        {"name": "password", "secret": {"secretName": "db-password"}},
                        {"name": "config", "configMap": {"name": "db-config"}},
                    ],
                }
            },
        ]
    })
}

// === requests from inside the pods ===

/// Who asks, from which pod.
struct Caller {
    name: &'static str,
    pod: &'static str,
    /// The CA file inside the pod.
    ca: &'static str,
    token: Option<String>,
    /// `None`: curl's own (`curl/7.88.1`).
    user_agent: Option<&'static str>,
    /// `None`: curl's own (`*/*`).
    accept: Option<&'static str>,
    /// Whether the token is the reader's.
    reader: bool,
}

/// What kubelet asks for (client-go with protobuf): an impersonator asks the same, and
/// gets what the hub cached for kubelet in the form it was cached.
const KUBELET_ACCEPT: &str = "application/vnd.kubernetes.protobuf,application/json";

/// What a request got.
#[derive(Debug)]
struct Answer {
    /// The HTTP status; `None` when no HTTP answer came.
    status: Option<u16>,
    /// Whether the hub answered it from its cache (`x-yurthub-source: cache`).
    from_cache: bool,
    body: Vec<u8>,
    /// curl's exit status and message when no HTTP answer came.
    error: Option<String>,
}

/// A body, decoded as far as the checks need.
enum Decoded {
    /// A Kubernetes Status.
    Status,
    /// Objects: (kind, namespace, name).
    Objects(Vec<(String, String, String)>),
    /// Not a Kubernetes object (or no body).
    Other,
}

impl Answer {
    fn of(out: &Output) -> Self {
        if !out.status.success() {
            return Self {
                status: None,
                from_cache: false,
                body: Vec::new(),
                error: Some(format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            };
        }
        let mut rest = out.stdout.as_slice();
        loop {
            let split = rest.windows(4).position(|w| w == b"\r\n\r\n");
            let (head, body) = match split {
                Some(i) => (&rest[..i], &rest[i + 4..]),
                None => (rest, &[][..]),
            };
            let head = String::from_utf8_lossy(head);
            let status = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u16>().ok());
            if status == Some(100) {
                rest = body;
                continue;
            }
            let from_cache = head.lines().any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("x-yurthub-source") && v.trim() == "cache"
                })
            });
            return Self {
                status,
                from_cache,
                body: body.to_vec(),
                error: status
                    .is_none()
                    .then(|| format!("no HTTP status line in {head:?}")),
            };
        }
    }

    fn is_protobuf(&self) -> bool {
        self.body.starts_with(proto::MAGIC)
    }

    fn decoded(&self) -> Decoded {
        if self.is_protobuf() {
            return match proto::decode(&self.body) {
                Some((kind, _)) if kind == "Status" => Decoded::Status,
                Some((kind, items)) => {
                    let kind = kind.strip_suffix("List").unwrap_or(&kind).to_owned();
                    Decoded::Objects(
                        items
                            .into_iter()
                            .map(|(ns, name)| (kind.clone(), ns, name))
                            .collect(),
                    )
                }
                None => Decoded::Other,
            };
        }
        let Ok(v) = serde_json::from_slice::<Value>(&self.body) else {
            return Decoded::Other;
        };
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        let meta = |o: &Value, kind: &str| {
            (
                kind.to_owned(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        if kind == "Status" {
            Decoded::Status
        } else if let Some(item_kind) = kind.strip_suffix("List") {
            Decoded::Objects(
                v["items"]
                    .as_array()
                    .map(|items| items.iter().map(|o| meta(o, item_kind)).collect())
                    .unwrap_or_default(),
            )
        } else if v["metadata"].is_object() {
            Decoded::Objects(vec![meta(&v, &kind)])
        } else {
            Decoded::Other
        }
    }

    fn success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The objects in the body: (kind, namespace, name).
    fn objects(&self) -> Vec<(String, String, String)> {
        match self.decoded() {
            Decoded::Objects(o) => o,
            Decoded::Status | Decoded::Other => Vec::new(),
        }
    }

    /// 401 or 403 with a Kubernetes Status body.
    fn refused(&self) -> bool {
        matches!(self.status, Some(401 | 403)) && matches!(self.decoded(), Decoded::Status)
    }

    /// One cell of a printed matrix: status, what the body holds (`pb`: protobuf), and
    /// whether the hub's cache answered.
    fn cell(&self) -> String {
        match (self.status, &self.error) {
            (Some(s), _) => {
                let what = match self.decoded() {
                    Decoded::Status => "Status".to_owned(),
                    Decoded::Objects(o) => format!("{} obj", o.len()),
                    Decoded::Other => format!("{} bytes", self.body.len()),
                };
                let pb = if self.is_protobuf() { " pb" } else { "" };
                let source = if self.from_cache { " cache" } else { "" };
                format!("{s} {what}{pb}{source}")
            }
            (None, Some(e)) => format!("no answer ({})", e.chars().take(40).collect::<String>()),
            (None, None) => "no answer".to_owned(),
        }
    }
}

/// Kubernetes' protobuf envelope (`k8s\0` + `runtime.Unknown`), read just far enough to
/// name the kind and the objects inside.
mod proto {
    pub const MAGIC: &[u8] = b"k8s\0";

    /// The length-delimited fields of one message: (field number, bytes).
    fn fields(mut b: &[u8]) -> Option<Vec<(u64, &[u8])>> {
        fn varint(b: &mut &[u8]) -> Option<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = b.split_first()?;
                *b = rest;
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Some(v);
                }
            }
            None
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b)?;
            let skip = match key & 7 {
                0 => {
                    varint(&mut b)?;
                    0
                }
                1 => 8,
                2 => {
                    let len = usize::try_from(varint(&mut b)?).ok()?;
                    let value = b.get(..len)?;
                    out.push((key >> 3, value));
                    len
                }
                5 => 4,
                _ => return None,
            };
            b = b.get(skip..)?;
        }
        Some(out)
    }

    fn field(b: &[u8], number: u64) -> Option<&[u8]> {
        fields(b)?
            .into_iter()
            .find(|(n, _)| *n == number)
            .map(|(_, v)| v)
    }

    fn string(b: &[u8], number: u64) -> String {
        field(b, number)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// (namespace, name) of an object: its field 1 is its ObjectMeta (name 1, namespace 3).
    fn meta(object: &[u8]) -> (String, String) {
        let meta = field(object, 1).unwrap_or_default();
        (string(meta, 3), string(meta, 1))
    }

    /// The kind, and (namespace, name) of each object (a list's items are its field 2).
    pub fn decode(body: &[u8]) -> Option<(String, Vec<(String, String)>)> {
        let unknown = body.strip_prefix(MAGIC)?;
        let kind = string(field(unknown, 1)?, 2);
        let raw = field(unknown, 2).unwrap_or_default();
        let objects = if kind == "Status" {
            Vec::new()
        } else if kind.ends_with("List") {
            fields(raw)?
                .into_iter()
                .filter(|(n, _)| *n == 2)
                .map(|(_, item)| meta(item))
                .collect()
        } else {
            vec![meta(raw)]
        };
        Some((kind, objects))
    }
}

/// Makes one request from inside `caller`'s pod to the API address kubelet gave it.
fn request(
    f: &TestFleet,
    caller: &Caller,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<Answer> {
    let auth = caller
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}"));
    let mut argv: Vec<&str> = vec![
        "sh",
        "-c",
        r#"p=$1; shift; exec curl "$@" "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT$p""#,
        "sh",
        path,
        "-sS",
        "-i",
        "--max-time",
        "10",
        "--cacert",
        caller.ca,
        "-X",
        method,
    ];
    if let Some(auth) = &auth {
        argv.extend(["-H", auth]);
    }
    if let Some(ua) = caller.user_agent {
        argv.extend(["-A", ua]);
    }
    let accept = caller.accept.map(|a| format!("Accept: {a}"));
    if let Some(accept) = &accept {
        argv.extend(["-H", accept]);
    }
    if let Some(body) = body {
        argv.extend([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Expect:",
            "--data-binary",
            body,
        ]);
    }
    let out = f.exec_in_pod(NODE, NS, caller.pod, "curl", &argv)?;
    Ok(Answer::of(&out))
}

fn in_pod(f: &TestFleet, pod: &str, script: &str) -> anyhow::Result<String> {
    let out = f.exec_in_pod(NODE, NS, pod, "curl", &["sh", "-c", script])?;
    ensure!(
        out.status.success(),
        "`{script}` in pod {pod} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A token with the reader's header and claims, signed by a key of our own.
fn forge(real: &str) -> anyhow::Result<String> {
    let mut parts = real.trim().split('.');
    let (Some(header), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!("the reader's token is not a JWT: {real}");
    };
    let mut header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    header["alg"] = json!("RS256");
    let key = run_checked(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ]))?;
    let key = rcgen::KeyPair::from_pem(&key)?;
    let signed = format!(
        "{}.{payload}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?)
    );
    let signature = rcgen::SigningKey::sign(&key, signed.as_bytes())?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

// === the matrix ===

fn matrix(f: &TestFleet, callers: &[Caller]) -> anyhow::Result<Vec<Vec<Answer>>> {
    callers
        .iter()
        .map(|c| {
            REQUESTS
                .iter()
                .map(|(_, path)| request(f, c, "GET", path, None))
                .collect()
        })
        .collect()
}

fn print_table(title: &str, columns: &[&str], rows: &[(&str, Vec<String>)]) {
    let first = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r.1[i].len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    println!("\n{title}");
    let mut line = format!("{:first$}", "caller");
    for (c, w) in columns.iter().zip(&widths) {
        line.push_str(&format!(" | {c:w$}"));
    }
    println!("{line}");
    for (name, cells) in rows {
        let mut line = format!("{name:first$}");
        for (c, w) in cells.iter().zip(&widths) {
            line.push_str(&format!(" | {c:w$}"));
        }
        println!("{line}");
    }
}

/// Prints the matrix and judges it: the objects that leaked, and every cell that is not
/// what it should be.
fn judge(
    title: &str,
    callers: &[Caller],
    answers: &[Vec<Answer>],
    offline: bool,
) -> (usize, Vec<String>) {
    let columns: Vec<&str> = REQUESTS.iter().map(|r| r.0).collect();
    let rows: Vec<(&str, Vec<String>)> = callers
        .iter()
        .zip(answers)
        .map(|(c, row)| (c.name, row.iter().map(Answer::cell).collect()))
        .collect();
    print_table(title, &columns, &rows);
    let mut leaked = 0;
    let mut problems = Vec::new();
    for (caller, row) in callers.iter().zip(answers) {
        for (column, answer) in row.iter().enumerate() {
            let own = caller.reader && readers_own(column);
            let objects = answer.objects();
            if answer.success() {
                leaked += objects
                    .iter()
                    .filter(|(kind, ns, _)| !(own && kind == "ConfigMap" && ns == NS))
                    .count();
            }
            let what = format!(
                "{title}: {} / {}: {}",
                caller.name,
                REQUESTS[column].0,
                answer.cell()
            );
            let served_own = answer.status == Some(200) && !objects.is_empty();
            if own && caller.user_agent.is_none() {
                if !served_own {
                    problems.push(format!("{what}; the reader's own read should be answered"));
                } else if offline && !answer.from_cache {
                    problems.push(format!("{what}; offline it should come from the cache"));
                }
            } else if own {
                if !served_own && !answer.refused() {
                    problems.push(format!(
                        "{what}; expected the reader's own objects or 401/403 with a Status"
                    ));
                }
            } else if !answer.refused() {
                problems.push(format!("{what}; expected 401/403 with a Status"));
            }
        }
    }
    let secret_b64 = STANDARD.encode(VICTIM_PASSWORD);
    let secret_seen = answers
        .iter()
        .flatten()
        .filter(|a| {
            [VICTIM_PASSWORD.as_bytes(), secret_b64.as_bytes()]
                .iter()
                .any(|needle| a.body.windows(needle.len()).any(|w| w == *needle))
        })
        .count();
    println!(
        "{title}: {leaked} object(s) leaked; the victim Secret's value is in {secret_seen} answer(s)"
    );
    if leaked > 0 {
        problems.push(format!(
            "{title}: {leaked} object(s) leaked to callers not allowed to read them"
        ));
    }
    (leaked, problems)
}

/// GET and PUT of the node's Lease through the pod port with kubelet's User-Agent: every
/// one must be refused.
fn lease_checks(
    f: &TestFleet,
    title: &str,
    callers: &[&Caller],
    lease: &str,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for caller in callers {
        let get = request(f, caller, "GET", LEASE_PATH, None)?;
        let put = request(f, caller, "PUT", LEASE_PATH, Some(lease))?;
        for (verb, answer) in [("GET", &get), ("PUT", &put)] {
            if !answer.refused() {
                problems.push(format!(
                    "{title}: {} {verb} of kube-node-lease/{NODE}: {}; expected 401/403 with a Status",
                    caller.name,
                    answer.cell()
                ));
            }
        }
        rows.push((caller.name, vec![get.cell(), put.cell()]));
    }
    print_table(title, &["GET lease", "PUT lease"], &rows);
    Ok(problems)
}

// === the fleet ===

/// Waits until the hub of `NODE` sees no healthy API server (its own verdict, from its
/// metrics).
async fn wait_hub_offline(f: &TestFleet) -> anyhow::Result<()> {
    wait_for(
        &format!("the hub of {NODE} to report no healthy API server"),
        Duration::from_secs(60),
        || async {
            let out = f.exec(NODE, &["wget", "-qO-", "http://127.0.0.1:10267/metrics"])?;
            ensure!(out.status.success(), "metrics scrape failed: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let values: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("yurt_hub_server_healthy{"))
                .filter_map(|l| l.split_whitespace().last())
                .collect();
            ensure!(
                !values.is_empty(),
                "no yurt_hub_server_healthy in the hub's metrics"
            );
            Ok(values.iter().all(|v| *v == "0").then_some(()))
        },
    )
    .await
}

async fn wait_ready_is(
    f: &TestFleet,
    node: &str,
    want: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(&format!("node {node} Ready={want}"), timeout, || async {
        let ready = f.node_ready(node).await? == "True";
        Ok((ready == want).then_some(()))
    })
    .await
}

/// A lease renewal every second through the pod port, as kubelet would send it, with no
/// token; each attempt's HTTP status is appended to `/tmp/renew.log`.
const RENEW_LOOP: &str = r#"
while [ ! -e /tmp/stop-renew ]; do
  now=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
  body="{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\",\"metadata\":{\"name\":\"edge-a1\",\"namespace\":\"kube-node-lease\"},\"spec\":{\"holderIdentity\":\"edge-a1\",\"leaseDurationSeconds\":40,\"renewTime\":\"$now\"}}"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert /tmp/ca.crt -A kubelet/v1.20.2 -X PUT -H 'Content-Type: application/json' --data-binary "$body" "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-a1")
  echo "$code" >> /tmp/renew.log
  sleep 1
done
"#;

fn renewals(f: &TestFleet) -> anyhow::Result<Vec<String>> {
    Ok(in_pod(f, "anon", "cat /tmp/renew.log 2>/dev/null || true")?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn count_codes(codes: &[String]) -> std::collections::BTreeMap<&str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for c in codes {
        *m.entry(c.as_str()).or_insert(0) += 1;
    }
    m
}

/// The objects and pods, the tokens, and the callers; checks the pods talk to the hub's
/// pod port and that curl works there.
async fn set_up(f: &TestFleet) -> anyhow::Result<Vec<Caller>> {
    f.add_image(ImageSpec::curl()?).await?;
    f.apply(&setup_objects())?;
    // A pod is refused until its service account's token exists.
    wait_for("the pods accepted", Duration::from_secs(60), || async {
        Ok(f.apply(&pods()).ok())
    })
    .await?;
    for ns in [NS, VICTIM_NS] {
        let args = ["wait", "--for=condition=Ready", "pod", "--all", "-n", ns];
        f.kubectl(&[&args[..], &["--timeout=120s"]].concat())?;
    }
    let address = in_pod(
        f,
        "reader",
        "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT",
    )?;
    assert_eq!(
        address.trim(),
        "169.254.2.1:10268",
        "kubelet points pods at the hub's pod port"
    );
    // curl works in the pod, the way an in-cluster client uses its mounted credentials.
    let script = format!(
        "curl -sS --cacert {SA_DIR}/ca.crt -H \"Authorization: Bearer $(cat {SA_DIR}/token)\" \
         https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/{NS}/configmaps"
    );
    let listed = in_pod(f, "reader", &script)?;
    let listed: Value =
        serde_json::from_str(&listed).with_context(|| format!("online list: {listed}"))?;
    assert_eq!(listed["kind"], "ConfigMapList", "{listed}");

    let read = |pod: &str, file: &str| in_pod(f, pod, &format!("cat {SA_DIR}/{file}"));
    let reader_token = read("reader", "token")?.trim().to_owned();
    let nobody_token = read("nobody", "token")?.trim().to_owned();
    let ca = read("reader", "ca.crt")?;
    let copy = format!("printf '%s\\n' \"$1\" > {CA_COPY}");
    let out = f.exec_in_pod(
        NODE,
        NS,
        "anon",
        "curl",
        &["sh", "-c", &copy, "sh", ca.trim()],
    )?;
    ensure!(
        out.status.success(),
        "copying the CA into the anon pod: {out:?}"
    );
    let listing = in_pod(f, "anon", &format!("ls {SA_DIR} 2>&1 || true"))?;
    ensure!(
        listing.contains("No such file"),
        "the anon pod must have no service account token: {listing}"
    );
    let forged = forge(&reader_token)?;
    ensure!(
        forged != reader_token,
        "the forged token differs from the real one"
    );

    let caller = |name, pod, token: Option<&str>, kubelet: bool| Caller {
        name,
        pod,
        ca: if pod == "anon" { CA_COPY } else { SA_CA },
        token: token.map(str::to_owned),
        user_agent: kubelet.then_some(KUBELET_UA),
        accept: kubelet.then_some(KUBELET_ACCEPT),
        reader: token == Some(reader_token.as_str()),
    };
    Ok(vec![
        caller("reader token", "reader", Some(&reader_token), false),
        caller("nobody token", "nobody", Some(&nobody_token), false),
        caller("no token", "anon", None, false),
        caller("forged token", "anon", Some(&forged), false),
        caller(
            "reader token + UA kubelet",
            "reader",
            Some(&reader_token),
            true,
        ),
        caller("no token + UA kubelet", "anon", None, true),
    ])
}

/// The node's Lease as the cloud has it, for PUT bodies.
fn lease_body(f: &TestFleet) -> anyhow::Result<String> {
    let lease = f.kubectl(&["get", "lease", "-n", "kube-node-lease", NODE, "-o", "json"])?;
    let mut lease: Value = serde_json::from_str(&lease)?;
    lease["metadata"]
        .as_object_mut()
        .context("lease metadata")?
        .remove("managedFields");
    Ok(lease.to_string())
}

/// Stops kubelet while a pod renews the node's Lease through the pod port every second:
/// the node must still go NotReady in time. Starts kubelet again.
async fn kubelet_stops_while_a_pod_renews_the_lease(
    f: &mut TestFleet,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let grace = f.fleet().state().spec.timing.timings().node_grace;
    let limit = grace + Duration::from_secs(30);
    let start_loop = "rm -f /tmp/stop-renew /tmp/renew.log; \
                      setsid sh -c \"$1\" </dev/null >/dev/null 2>&1 &";
    let out = f.exec_in_pod(
        NODE,
        NS,
        "anon",
        "curl",
        &["sh", "-c", start_loop, "sh", RENEW_LOOP],
    )?;
    ensure!(out.status.success(), "starting the renewal loop: {out:?}");
    wait_for(
        "the pod's first lease renewal",
        Duration::from_secs(30),
        || async { Ok((!renewals(f)?.is_empty()).then_some(())) },
    )
    .await?;
    let before = renewals(f)?.len();
    f.stop(NODE, "kubelet")?;
    let stopped_at = Instant::now();
    let not_ready = wait_ready_is(f, NODE, false, limit).await;
    let took = stopped_at.elapsed();
    let during: Vec<String> = renewals(f)?.split_off(before);
    let verdict = match &not_ready {
        Ok(()) => format!("after {took:?} (limit {limit:?})"),
        Err(e) => format!("NO: {e:#}"),
    };
    println!(
        "\nkubelet stopped on {NODE}; meanwhile the pod sent {} lease renewal(s) through the pod \
         port, answered {:?}; node NotReady: {verdict}",
        during.len(),
        count_codes(&during),
    );
    in_pod(f, "anon", "touch /tmp/stop-renew")?;
    ensure!(
        !during.is_empty(),
        "the pod kept trying to renew the lease while kubelet was stopped"
    );
    if not_ready.is_err() {
        problems.push(format!(
            "{NODE} stayed Ready for {took:?} after its kubelet stopped while a pod renewed its \
             lease through the pod port (limit {limit:?}; answers {:?})",
            count_codes(&during)
        ));
    }
    f.start(NODE, "kubelet").await?;
    wait_ready_is(f, NODE, true, Duration::from_secs(90)).await
}

/// A host on the pool's LAN routes 169.254.2.1 to the node: kubelet's port answers there
/// (the path works), the hub's pod port must not.
fn a_lan_neighbour_cannot_reach_the_pod_port(
    f: &TestFleet,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let node_ip = f.fleet().plan().edge(NODE).context("node in the plan")?.ip;
    let neighbour = f.lan_neighbour(POOL, 250)?;
    let node_ip = node_ip.to_string();
    let routed = neighbour.exec(&["ip", "route", "add", "169.254.2.1/32", "via", &node_ip])?;
    ensure!(
        routed.status.success(),
        "route 169.254.2.1 via {NODE}: {routed:?}"
    );
    let curl = |url: &str, tls: &[&str]| -> anyhow::Result<(Output, String)> {
        let mut argv = vec!["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"];
        argv.extend(["--connect-timeout", "5", "--max-time", "10"]);
        argv.extend(tls);
        argv.push(url);
        let out = neighbour.exec(&argv)?;
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok((out, code))
    };
    // kubelet listens on every address, 169.254.2.1 included.
    let (control, control_code) = curl("https://169.254.2.1:10250/healthz", &["-k"])?;
    ensure!(
        !matches!(control_code.as_str(), "" | "000"),
        "the neighbour {} must reach {NODE}'s 169.254.2.1 (kubelet's port): {control:?}",
        neighbour.address()
    );
    let ca = f.fleet().paths().pki().join("ca.crt");
    let ca = ca.to_str().context("CA path")?;
    let url = format!("https://169.254.2.1:10268/api/v1/namespaces/{NS}/configmaps");
    let (probe, code) = curl(&url, &["--cacert", ca])?;
    println!(
        "\nLAN neighbour {} -> {NODE}'s 169.254.2.1: kubelet :10250 answered HTTP {control_code}; \
         pod port :10268: HTTP {code}, curl {} {}",
        neighbour.address(),
        probe.status,
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    if probe.status.success() || code != "000" {
        problems.push(format!(
            "a LAN neighbour got an HTTP answer ({code}) from {NODE}'s pod port; expected no \
             connection or handshake"
        ));
    }
    Ok(())
}

async fn scenario() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut f = fresh("e2e-identity", spec()).await?;
    println!("fleet up after {:?}", started.elapsed());
    let mut problems = Vec::new();

    // Online: every caller tries everything (the API server decides; nothing a refused
    // caller tried may help it offline), the reader's own reads among them.
    let callers = set_up(&f).await?;
    for (_, path) in &REQUESTS[..2] {
        let a = request(&f, &callers[0], "GET", path, None)?;
        ensure!(
            a.status == Some(200) && !a.objects().is_empty(),
            "online read of {path} by the reader: {a:?}"
        );
    }
    let online = matrix(&f, &callers)?;
    problems.extend(
        judge(
            "ONLINE (through 169.254.2.1:10268)",
            &callers,
            &online,
            false,
        )
        .1,
    );
    let lease = lease_body(&f)?;
    let lease_callers = [&callers[5], &callers[4]];
    let title = "ONLINE lease through the pod port";
    problems.extend(lease_checks(&f, title, &lease_callers, &lease)?);
    println!("online phase done after {:?}", started.elapsed());

    // Offline: the pool is cut.
    f.cut(POOL)?;
    let cut_at = Instant::now();
    wait_hub_offline(&f).await?;
    println!(
        "the hub of {NODE} is offline {:?} after the cut",
        cut_at.elapsed()
    );
    let offline = matrix(&f, &callers)?;
    let title = "OFFLINE (pool cut, through 169.254.2.1:10268)";
    let (leaked, found) = judge(title, &callers, &offline, true);
    problems.extend(found);
    let title = "OFFLINE lease through the pod port";
    problems.extend(lease_checks(&f, title, &lease_callers, &lease)?);
    f.restore(POOL)?;
    for node in [NODE, "edge-a2"] {
        wait_ready_is(&f, node, true, Duration::from_secs(90)).await?;
    }
    println!("offline phase done after {:?}", started.elapsed());

    kubelet_stops_while_a_pod_renews_the_lease(&mut f, &mut problems).await?;
    a_lan_neighbour_cannot_reach_the_pod_port(&f, &mut problems)?;

    println!(
        "\nobjects leaked offline: {leaked}; finished after {:?}",
        started.elapsed()
    );
    for p in &problems {
        println!("PROBLEM: {p}");
    }
    ensure!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_from_the_hub_only_what_its_own_token_may_read() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .context("test did not finish in time")?
}
