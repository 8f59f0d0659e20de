//! The sample app `yurt up` deploys: per pool, an HTTP Deployment pinned to the pool's
//! nodes and a ClusterIP Service in front of it. Each pod answers with its name, node
//! and pool, so it is easy to see which pool served a request.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};

use crate::error::{Error, Result};
use crate::image::{ImageFile, ImageSpec};
use crate::spec::Plan;

/// The sample app's image.
pub const IMAGE: &str = "yurt.local/sample-web:1";
/// Namespace of the sample app.
pub const NAMESPACE: &str = "default";
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

/// The name of the sample Deployment and Service of `pool`.
pub fn app_name(pool: &str) -> String {
    format!("web-{pool}")
}

/// The sample Deployment of `pool` with `replicas` pods.
pub fn deployment(pool: &str, replicas: usize) -> serde_json::Value {
    let name = app_name(pool);
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {(yurt_api::labels::NODE_POOL): pool},
                    "containers": [{
                        "name": "web",
                        "image": IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": CONTAINER_PORT, "protocol": "TCP"}],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "POOL", "value": pool},
                            {"name": "PORT", "value": CONTAINER_PORT.to_string()},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": CONTAINER_PORT},
                            "periodSeconds": 2,
                        },
                        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
                    }],
                    "terminationGracePeriodSeconds": 2,
                    // The fleet runs no cluster DNS yet; say so rather than fall back.
                    "dnsPolicy": "Default",
                }
            }
        }
    })
}

/// The sample Service of `pool`.
pub fn service(pool: &str) -> serde_json::Value {
    let name = app_name(pool);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "selector": {"app": name},
            "ports": [{"port": 80, "targetPort": CONTAINER_PORT, "protocol": "TCP"}],
        }
    })
}

/// Applies the sample app of every pool (server-side apply, so re-running is harmless).
///
/// # Errors
/// API errors.
pub async fn apply(client: &kube::Client, plan: &Plan) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let params = PatchParams::apply("yurt-up").force();
    for pool in &plan.pools {
        let name = app_name(pool.name.as_str());
        let replicas = plan.pool_members(usize::from(pool.index)).count();
        deployments
            .patch(
                &name,
                &params,
                &Patch::Apply(deployment(pool.name.as_str(), replicas)),
            )
            .await
            .map_err(|e| Error::kube(format!("apply deployment {name}"), e))?;
        services
            .patch(&name, &params, &Patch::Apply(service(pool.name.as_str())))
            .await
            .map_err(|e| Error::kube(format!("apply service {name}"), e))?;
    }
    Ok(())
}

/// Waits until every pool's sample Deployment has all replicas available.
///
/// # Errors
/// [`Error::NotReady`] naming the Deployments that are not available.
pub async fn wait_available(client: &kube::Client, plan: &Plan, timeout: Duration) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    loop {
        let mut pending = Vec::new();
        for pool in &plan.pools {
            let name = app_name(pool.name.as_str());
            let ready = match deployments.get_opt(&name).await {
                Ok(Some(d)) => {
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let have = d
                        .status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    have >= want
                }
                _ => false,
            };
            if !ready {
                pending.push(name);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::NotReady {
                what: format!("sample deployments {}", pending.join(", ")),
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
    fn deployment_is_pinned_to_its_pool_and_probed() {
        let d = deployment("pool-a", 2);
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            d["spec"]["template"]["spec"]["nodeSelector"]["apps.openyurt.io/nodepool"],
            "pool-a"
        );
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], IMAGE);
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8080);
        let s = service("pool-a");
        assert_eq!(s["spec"]["selector"]["app"], "web-pool-a");
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
