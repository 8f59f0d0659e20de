//! Records how a real API server answers label and field selectors, into the fixture the
//! hub's selector tests compare against (`src/selector/corpus.json`).
//!
//! ```text
//! cargo run -p yurt-hub --example record_selector_corpus -- \
//!     --kubeconfig <admin kubeconfig> [--out crates/yurt-hub/src/selector/corpus.json]
//! ```
//!
//! It creates a scratch namespace with a fixed set of labelled ConfigMaps and Pods (the
//! Pods are bound to nodes that do not exist or to a scheduler that does not run, so
//! nothing changes them while recording), lists them once per selector, writes for every
//! selector the answer's status code and the names it returned (or the error message),
//! together with the unfiltered lists, and deletes the namespace again.

use std::error::Error;
use std::time::Duration;

use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const NAMESPACE: &str = "selector-corpus";

/// The label selectors to record (valid and invalid).
fn label_selectors() -> Vec<String> {
    let k63 = "k".repeat(63);
    let v63 = "v".repeat(63);
    let prefix253 = format!("{}.{}", "a".repeat(126), "b".repeat(126));
    let mut s: Vec<String> = [
        // empty and whitespace
        "",
        " ",
        "\t",
        "\n",
        " \t\r\n ",
        // equality
        "app=web",
        "app==web",
        "app!=web",
        "app",
        "!app",
        "app=",
        "app==",
        "app!=",
        "app=db",
        "app=cache",
        "app!=db",
        "app=WEB",
        "app=nope",
        "missing!=x",
        "missing=",
        "missing!=",
        "empty=",
        "empty",
        "!empty",
        "empty!=",
        "empty!=x",
        // set forms
        "app in (web)",
        "app in (web,db)",
        "app in (web, db)",
        "app in ( web , db )",
        "app in(web)",
        "app in(web,db)",
        "app notin (web)",
        "app notin(web,db)",
        "app notin ()",
        "app in ()",
        "app in (,)",
        "app in (,web)",
        "app in (web,)",
        "app in (web,,db)",
        "app in (web,,,db)",
        "app in (web db)",
        "app in web",
        "app in",
        "app notin",
        "app in (",
        "app in (web",
        "app in web)",
        "app in ((web))",
        "app in (web))",
        "app in (web),tier",
        "app in (web,web)",
        "empty in ()",
        "empty notin ()",
        "missing in (a)",
        "missing notin (a)",
        "missing notin ()",
        "tier in (front,back),app notin (db)",
        "app in (web),app in (db)",
        // spacing
        " app=web",
        "app=web ",
        "app = web",
        "app =web",
        "app= web",
        "app\t=\tweb",
        "app\n=\nweb",
        "app\r\n=web",
        "app=web , tier=front",
        "app=web,tier=front",
        "app=web ,tier=front",
        "app = = web",
        "a p p=web",
        "app=w eb",
        "app\u{a0}=web",
        "app=web\u{b}",
        "app=\u{c}",
        "app in\t(web)",
        // greater and less than
        "rank>1",
        "rank<10",
        "rank>0",
        "rank<0",
        "rank>9",
        "rank>10",
        "rank>007",
        "rank>-1",
        "rank>+1",
        "rank > 1",
        "rank>",
        "rank<",
        "rank>a",
        "rank>1.5",
        "rank>9223372036854775807",
        "rank>9223372036854775808",
        "rank<9223372036854775807",
        "rank>9223372036854775806",
        "missing>1",
        "rank>=1",
        "rank<=1",
        "rank=>1",
        "rank>1,rank<10",
        "rank>>1",
        "rank<>1",
        "!rank>1",
        "rank>1 ,app",
        "rank<1",
        "x>0",
        "x<2",
        "x>1",
        "rank> 5",
        "rank >5",
        // not, commas, bad operators
        "!app=web",
        "!app,tier",
        "!!app",
        "! app",
        "!app ",
        "!",
        "!=web",
        "=web",
        "==web",
        "app=web,",
        ",app=web",
        "app=web,,tier=front",
        ",",
        "app=web,!tier",
        "app===web",
        "app!==web",
        "app=!web",
        "app!web",
        "app<web",
        "app(web)",
        "app)",
        "(app)",
        "app,",
        "app=web)",
        "app=(web)",
        "app~=web",
        "app=web;tier=front",
        "app=web&tier=front",
        "app=web tier=front",
        "app=web|tier=front",
        "app=web,tier",
        "app,tier,!missing",
        // keys
        "example.com/team=blue",
        "example.com/team",
        "Example.com/team=blue",
        "example.com/Team=blue",
        "/team=blue",
        "example.com/=blue",
        "a/b/c=d",
        "k8s.io/app=web",
        "a.b_c-d=X.Y_z-9",
        "a.b_c-d",
        "-app=web",
        "app-=web",
        "_app",
        "app_",
        "a=b",
        "ex_ample.com/team",
        "EXAMPLE.COM/team",
        "example..com/team",
        ".example.com/team",
        "example.com./team",
        "1.2.3/x",
        "a-/x",
        "example.com/team in (blue,red)",
        "!example.com/team",
        // values
        "app=-web",
        "app=web-",
        "app=w_e.b",
        "app=é",
        "é=web",
        "app=web€",
        "app=ウェブ",
        "app=web\u{7}",
        "\u{1}",
        "app=\u{7f}",
        "app=1",
        "x=1",
        "x=01",
        "x==1",
        // keywords
        "in",
        "notin",
        "in=notin",
        "notin=in",
        "in in (notin)",
        "notin notin (in)",
        "in notin (in)",
        "in in in",
        "app in (in,notin)",
        "app=in",
        "app=notin",
        "in in ()",
        "innotin",
        "app notinn (web)",
        "app In (web)",
        "app IN (web)",
        "!in",
        "!notin",
        "in,notin",
        "in!=notin",
        // NUL
        "app\u{0}",
        "app=web\u{0}garbage",
        "app==\u{0}web",
        "app=\u{0}web",
        "a\u{0}pp",
        "app,\u{0}",
        "\u{0}",
        "app=web,\u{0}tier",
        "app \u{0} garbage",
        "app\u{0}=web",
        "app in (\u{0}web)",
        "app!=\u{0}",
        // duplicates
        "app=web,app=db",
        "app=web,app=web",
        "app,app",
        "!app,app",
        "tier=front,tier!=front",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    s.extend([
        format!("{k63}=x"),
        format!("{k63}k=x"),
        format!("app={v63}"),
        format!("app={v63}v"),
        format!("{prefix253}/x"),
        format!("{prefix253}b/x"),
        format!("app in (web,{v63}v)"),
    ]);
    s
}

/// The field selectors to record (valid and invalid), each against Pods and ConfigMaps.
fn field_selectors() -> Vec<String> {
    [
        "",
        "metadata.name=cm-a",
        "metadata.name==cm-a",
        "metadata.name!=cm-a",
        "metadata.name=cm-a,",
        ",metadata.name=cm-a",
        "metadata.name=cm-a,,metadata.namespace=selector-corpus",
        "metadata.name=",
        "metadata.name!=",
        "metadata.name",
        "metadata.name=cm-a=b",
        r"metadata.name=cm-a\=b",
        r"metadata.name=cm\,a",
        r"metadata.name=a\\b",
        r"metadata.name=cm-a\",
        r"metadata.name=cm\-a",
        " metadata.name=cm-a",
        "metadata.name =cm-a",
        "metadata.name= cm-a",
        "metadata.name=cm-a ",
        "metadata.name=é",
        "metadata.name=ノード",
        "métadata.name=x",
        "metadata.namespace=selector-corpus",
        "metadata.namespace!=selector-corpus",
        "metadata.namespace=default",
        "metadata.name=cm-a,metadata.name=cm-b",
        "metadata.name!=cm-a,metadata.name!=cm-b",
        "=",
        "==",
        "!=",
        "=,=",
        "=x",
        "!=x",
        r"=\,",
        "x=",
        "spec.nodeName=corpus-node-a",
        "spec.nodeName=",
        "spec.nodeName!=",
        "spec.nodeName!=corpus-node-a",
        "spec.host=corpus-node-a",
        "spec.restartPolicy=Never",
        "spec.restartPolicy=never",
        "spec.schedulerName=corpus-none",
        "spec.serviceAccountName=default",
        "status.phase=Pending",
        "status.phase=Running",
        "status.phase!=Pending",
        "status.podIP=10.9.8.7",
        "status.podIP=",
        "status.podIPs=",
        "status.podIPs=x",
        "status.nominatedNodeName=",
        "metadata.uid=x",
        "metadata.labels=x",
        "foo=bar",
        "foo",
        "metadata.name!=cm-a!=b",
        "metadata.name=!cm-a",
        "metadata.name!==cm-a",
        "metadata.name===cm-a",
        "metadata.name=a\u{0}",
        "metadata.name=\u{1}",
        r"metadata.name\=x=y",
        r"metadata\,name=x",
        "metadata.name=p-a,spec.nodeName=corpus-node-a",
        "metadata.name=p-a,spec.nodeName!=corpus-node-a",
        "metadata.name in (p-a)",
        r"metadata.name=p-a\,p-b",
        "type=Opaque",
        "spec.unschedulable=false",
        "metadata.name=p-a",
        "metadata.name!=p-a,spec.nodeName=corpus-node-a",
        r"metadata.name=\\",
        r"\=x",
        "metadata.name=cm-a,=",
        "metadata.name=cm-a,=x",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// The scratch objects: labels are chosen to tell the operators apart.
fn config_maps() -> Vec<Value> {
    let cm = |name: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels}})
    };
    vec![
        cm(
            "cm-a",
            json!({"app": "web", "tier": "front", "env": "prod", "rank": "1"}),
        ),
        cm("cm-b", json!({"app": "web", "tier": "back", "rank": "10"})),
        cm(
            "cm-c",
            json!({"app": "db", "tier": "back", "env": "dev", "rank": "007"}),
        ),
        cm(
            "cm-d",
            json!({"app": "cache", "example.com/team": "blue", "rank": "abc"}),
        ),
        cm("cm-e", json!({})),
        cm("cm-f", json!({"app": "", "empty": ""})),
        cm("cm-g", json!({"in": "notin", "notin": "in"})),
        cm(
            "cm-h",
            json!({"a.b_c-d": "X.Y_z-9", "rank": "9223372036854775807"}),
        ),
        cm(
            "cm-i",
            json!({"env": "prod", "example.com/team": "red", "k8s.io/app": "web"}),
        ),
        cm("cm-j", json!({"app": "WEB", "tier": "front", "x": "1"})),
    ]
}

fn pods() -> Vec<Value> {
    let pod = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "corpus.invalid/none"}]);
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
               "spec": spec})
    };
    vec![
        pod(
            "p-a",
            json!({"nodeName": "corpus-node-a", "restartPolicy": "Always"}),
        ),
        pod(
            "p-b",
            json!({"nodeName": "corpus-node-b", "restartPolicy": "Never"}),
        ),
        pod(
            "p-c",
            json!({"schedulerName": "corpus-none", "restartPolicy": "OnFailure"}),
        ),
        pod(
            "p-d",
            json!({"nodeName": "corpus-node-a", "schedulerName": "corpus-none"}),
        ),
    ]
}

/// Percent-encodes everything but the unreserved characters, so the API server sees the
/// selector byte for byte.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<(&str, Value)>,
) -> Result<(u16, Value)> {
    let mut req = http::Request::builder().method(method).uri(path);
    let bytes = match body {
        Some((content_type, v)) => {
            req = req.header("content-type", content_type);
            serde_json::to_vec(&v)?
        }
        None => Vec::new(),
    };
    let res = client.send(req.body(Body::from(bytes))?).await?;
    let code = res.status().as_u16();
    let data = res.into_body().collect().await?.to_bytes();
    let v = serde_json::from_slice(&data).unwrap_or(Value::Null);
    Ok((code, v))
}

/// Keeps what an answer says about the selector: accepted or not, and what it returned.
fn answer(code: u16, v: &Value) -> Value {
    if code == 200 {
        let mut names: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        json!({"status": code, "names": names})
    } else {
        json!({"status": code, "message": v["message"]})
    }
}

/// The unfiltered list, trimmed to what selectors can read.
async fn snapshot(client: &kube::Client, resource: &str) -> Result<Value> {
    let (code, mut v) = send(
        client,
        "GET",
        &format!("/api/v1/namespaces/{NAMESPACE}/{resource}"),
        None,
    )
    .await?;
    if code != 200 {
        return Err(format!("listing {resource}: {code} {v}").into());
    }
    for item in v["items"].as_array_mut().into_iter().flatten() {
        if let Some(m) = item["metadata"].as_object_mut() {
            m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels"));
        }
        if let Some(o) = item.as_object_mut() {
            o.remove("data");
        }
    }
    v["metadata"] = json!({"resourceVersion": "1"});
    Ok(v)
}

async fn create_retrying(client: &kube::Client, resource: &str, obj: Value) -> Result<()> {
    let path = format!("/api/v1/namespaces/{NAMESPACE}/{resource}");
    for _ in 0..60 {
        let (code, v) = send(
            client,
            "POST",
            &path,
            Some(("application/json", obj.clone())),
        )
        .await?;
        match code {
            200 | 201 => return Ok(()),
            // The namespace's default service account may not exist yet.
            403 | 404 => tokio::time::sleep(Duration::from_millis(500)).await,
            _ => return Err(format!("creating {resource}: {code} {v}").into()),
        }
    }
    Err(format!("creating {resource}: gave up").into())
}

async fn record(client: &kube::Client) -> Result<Value> {
    let (code, v) = send(client, "GET", "/version", None).await?;
    let version = if code == 200 {
        v["gitVersion"].clone()
    } else {
        Value::Null
    };
    send(
        client,
        "POST",
        "/api/v1/namespaces",
        Some((
            "application/json",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        )),
    )
    .await?;
    for cm in config_maps() {
        create_retrying(client, "configmaps", cm).await?;
    }
    for pod in pods() {
        create_retrying(client, "pods", pod).await?;
    }
    let (code, v) = send(
        client,
        "PATCH",
        &format!("/api/v1/namespaces/{NAMESPACE}/pods/p-b/status"),
        Some((
            "application/merge-patch+json",
            json!({"status": {"phase": "Running", "podIP": "10.9.8.7", "podIPs": [{"ip": "10.9.8.7"}]}}),
        )),
    )
    .await?;
    if code != 200 {
        return Err(format!("patching p-b's status: {code} {v}").into());
    }
    // Wait until the objects settle (the namespace's kube-root-ca.crt appears shortly
    // after the namespace).
    let mut settled = None;
    for _ in 0..30 {
        let now = (
            snapshot(client, "configmaps").await?,
            snapshot(client, "pods").await?,
        );
        let has_root_ca = now.0["items"].as_array().is_some_and(|i| {
            i.iter()
                .any(|o| o["metadata"]["name"] == "kube-root-ca.crt")
        });
        if has_root_ca && settled.as_ref() == Some(&now) {
            break;
        }
        settled = Some(now);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (config_maps_before, pods_before) = settled.ok_or("no snapshot")?;

    let mut labels = Vec::new();
    for s in label_selectors() {
        let path = format!(
            "/api/v1/namespaces/{NAMESPACE}/configmaps?labelSelector={}",
            encode(&s)
        );
        let (code, v) = send(client, "GET", &path, None).await?;
        let mut entry = answer(code, &v);
        entry["selector"] = json!(s);
        labels.push(entry);
    }
    let mut fields = Vec::new();
    for s in field_selectors() {
        let mut entry = json!({"selector": s});
        for resource in ["pods", "configmaps"] {
            let path = format!(
                "/api/v1/namespaces/{NAMESPACE}/{resource}?fieldSelector={}",
                encode(&s)
            );
            let (code, v) = send(client, "GET", &path, None).await?;
            entry[resource] = answer(code, &v);
        }
        fields.push(entry);
    }

    // Nothing may have changed the objects while recording.
    let after = (
        snapshot(client, "configmaps").await?,
        snapshot(client, "pods").await?,
    );
    if after != (config_maps_before.clone(), pods_before.clone()) {
        return Err(format!(
            "the scratch objects changed while recording: before {config_maps_before} {pods_before}, after {} {}",
            after.0, after.1
        )
        .into());
    }
    Ok(json!({
        "api_server": version,
        "namespace": NAMESPACE,
        "config_maps": config_maps_before,
        "pods": pods_before,
        "label_selectors": labels,
        "field_selectors": fields,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut kubeconfig, mut out) = (None, "crates/yurt-hub/src/selector/corpus.json".to_owned());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kubeconfig" => kubeconfig = args.next(),
            "--out" => out = args.next().ok_or("--out needs a path")?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let kubeconfig = kubeconfig.ok_or("--kubeconfig <path> is required")?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let recorded = record(&client).await;
    let _ = send(
        &client,
        "DELETE",
        &format!("/api/v1/namespaces/{NAMESPACE}"),
        None,
    )
    .await;
    let recorded = recorded?;
    std::fs::write(&out, serde_json::to_string_pretty(&recorded)? + "\n")?;
    println!(
        "wrote {out}: {} label and {} field selectors",
        recorded["label_selectors"].as_array().map_or(0, Vec::len),
        recorded["field_selectors"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}
