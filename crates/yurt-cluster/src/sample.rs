//! The sample app `yurt up` deploys: one YurtAppSet `web` across every pool, which yurt
//! manager turns into one Deployment per pool (pinned to the pool's nodes, its replica
//! count and `POOL` variable set by per-pool tweaks), and a ClusterIP Service per pool
//! (`web-<pool>`) in front of that pool's pods. Each pod answers with its name, node and
//! pool, so it is easy to see which pool served a request.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use yurt_api::labels::{POOL_NAME, REF_YURTAPPSET};

use crate::error::{Error, Result};
use crate::image::{ImageFile, ImageSpec};
use crate::spec::Plan;

/// The sample app's image.
pub const IMAGE: &str = "yurt.local/sample-web:1";
/// Namespace of the sample app.
pub const NAMESPACE: &str = "default";
/// The sample YurtAppSet (and the pods' `app` label).
pub const APP: &str = "web";
/// Port the pods listen on.
pub const CONTAINER_PORT: u16 = 8080;

/// The script the sample image runs: writes its identity page and serves it.
const SERVE_SCRIPT: &str = r#"#!/bin/sh
# Serves one page saying which pod, node and pool answered.
mkdir -p /www
echo "hello from ${POD_NAME:-$(hostname)} on ${NODE_NAME:-unknown} in ${POOL:-unknown}" > /www/index.html
echo "serving $(cat /www/index.html) on port ${PORT:-8080}"
exec httpd -f -v -p "${PORT:-8080}" -h /www
"#;

/// The sample image: busybox plus the serving script.
pub fn image_spec() -> ImageSpec {
    let mut spec = ImageSpec::busybox(IMAGE);
    spec.entrypoint = Some(vec!["/app/serve.sh".into()]);
    spec.cmd = None;
    spec.files.push(ImageFile {
        path: "app/serve.sh".into(),
        contents: SERVE_SCRIPT.as_bytes().to_vec(),
        mode: 0o755,
    });
    spec
}

/// The name of the sample Service of `pool`.
pub fn app_name(pool: &str) -> String {
    format!("{APP}-{pool}")
}

/// The label selector of `pool`'s sample pods.
pub fn pod_selector(pool: &str) -> String {
    format!("app={APP},{POOL_NAME}={pool}")
}

/// The sample YurtAppSet over `pools` (name and node count of each).
pub fn yurt_app_set(pools: &[(String, usize)]) -> serde_json::Value {
    let tweaks: Vec<serde_json::Value> = pools
        .iter()
        .map(|(pool, replicas)| {
            serde_json::json!({
                "pools": [pool],
                "tweaks": {
                    "replicas": replicas,
                    "patches": [{
                        "path": "/spec/template/spec/containers/0/env/2/value",
                        "operation": "replace",
                        "value": "{{nodepool-name}}",
                    }],
                },
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "pools": pools.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            "workload": {
                "workloadTemplate": {"deploymentTemplate": {
                    "metadata": {"labels": {"app": APP}},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": {"app": APP}},
                        "template": {
                            "metadata": {"labels": {"app": APP}},
                            "spec": {
                                "containers": [{
                                    "name": "web",
                                    "image": IMAGE,
                                    "imagePullPolicy": "IfNotPresent",
                                    "ports": [{"containerPort": CONTAINER_PORT, "protocol": "TCP"}],
                                    "env": [
                                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                        {"name": "POOL", "value": "set per pool by a tweak"},
                                        {"name": "PORT", "value": CONTAINER_PORT.to_string()},
                                    ],
                                    "readinessProbe": {
                                        "httpGet": {"path": "/", "port": CONTAINER_PORT},
                                        "periodSeconds": 2,
                                    },
                                    "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
                                }],
                                "terminationGracePeriodSeconds": 2,
                                "dnsPolicy": "Default",
                            },
                        },
                    },
                }},
                "workloadTweaks": tweaks,
            },
        },
    })
}

/// The sample Service of `pool`.
pub fn service(pool: &str) -> serde_json::Value {
    let name = app_name(pool);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": APP}},
        "spec": {
            "selector": {"app": APP, (POOL_NAME): pool},
            "ports": [{"port": 80, "targetPort": CONTAINER_PORT, "protocol": "TCP"}],
        }
    })
}

fn yurt_app_sets(client: &kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps.openyurt.io", "v1beta1", "YurtAppSet"),
        "yurtappsets",
    );
    Api::namespaced_with(client.clone(), NAMESPACE, &resource)
}

/// Applies the sample YurtAppSet and Services (server-side apply, so re-running is
/// harmless). yurt manager must be running: it serves the YurtAppSet kind.
///
/// # Errors
/// API errors.
pub async fn apply(client: &kube::Client, plan: &Plan) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let params = PatchParams::apply("yurt-up").force();
    let pools: Vec<(String, usize)> = plan
        .pools
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                plan.pool_members(usize::from(p.index)).count(),
            )
        })
        .collect();
    let set: DynamicObject = serde_json::from_value(yurt_app_set(&pools))
        .map_err(|e| Error::Invalid(format!("sample YurtAppSet: {e}")))?;
    // The kind appears when yurt manager has registered its CRDs; give the API server
    // a moment to serve it.
    let start = Instant::now();
    loop {
        match yurt_app_sets(client)
            .patch(APP, &params, &Patch::Apply(&set))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s))
                if (s.code == 404 || s.code == 503)
                    && start.elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(Error::kube("apply the sample YurtAppSet", e)),
        }
    }
    for (pool, _) in &pools {
        let name = app_name(pool);
        services
            .patch(&name, &params, &Patch::Apply(service(pool)))
            .await
            .map_err(|e| Error::kube(format!("apply service {name}"), e))?;
    }
    Ok(())
}

/// Waits until the sample YurtAppSet has a Deployment in every pool with all replicas
/// available.
///
/// # Errors
/// [`Error::NotReady`] naming the pools whose Deployment is missing or not available.
pub async fn wait_available(client: &kube::Client, plan: &Plan, timeout: Duration) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    loop {
        let list = deployments
            .list(&ListParams::default().labels(&format!("{REF_YURTAPPSET}={APP}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut pending = Vec::new();
        for pool in &plan.pools {
            let ready = list.iter().any(|d| {
                let labels = d.metadata.labels.clone().unwrap_or_default();
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let have = d
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0);
                labels.get(POOL_NAME).map(String::as_str) == Some(pool.name.as_str())
                    && have >= want
            });
            if !ready {
                pending.push(pool.name.to_string());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::NotReady {
                what: format!(
                    "the sample YurtAppSet's Deployments in {}",
                    pending.join(", ")
                ),
                waited: timeout,
                log: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_set_covers_every_pool_with_its_own_tweaks() {
        let v = yurt_app_set(&[("pool-a".into(), 2), ("pool-b".into(), 3)]);
        let set: yurt_api::apps::v1beta1::YurtAppSet =
            serde_json::from_value(v.clone()).expect("a valid YurtAppSet");
        assert_eq!(
            set.spec.pools.as_deref(),
            Some(&["pool-a".to_owned(), "pool-b".to_owned()][..])
        );
        let tweaks = &v["spec"]["workload"]["workloadTweaks"];
        assert_eq!(tweaks[1]["pools"][0], "pool-b");
        assert_eq!(tweaks[1]["tweaks"]["replicas"], 3);
        // The patch path points at the POOL variable.
        let c = &v["spec"]["workload"]["workloadTemplate"]["deploymentTemplate"]["spec"]["template"]
            ["spec"]["containers"][0];
        assert_eq!(c["env"][2]["name"], "POOL");
        assert_eq!(
            tweaks[0]["tweaks"]["patches"][0]["path"],
            "/spec/template/spec/containers/0/env/2/value"
        );
        assert_eq!(c["image"], IMAGE);
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8080);
        let s = service("pool-a");
        assert_eq!(s["spec"]["selector"]["app"], APP);
        assert_eq!(s["spec"]["selector"][POOL_NAME], "pool-a");
        assert_eq!(
            pod_selector("pool-a"),
            "app=web,apps.openyurt.io/pool-name=pool-a"
        );
    }

    #[test]
    fn image_runs_the_serve_script() {
        let spec = image_spec();
        assert_eq!(
            spec.entrypoint.as_deref(),
            Some(&["/app/serve.sh".to_owned()][..])
        );
        assert!(
            spec.files
                .iter()
                .any(|f| f.path == "app/serve.sh" && f.mode == 0o755)
        );
    }
}
