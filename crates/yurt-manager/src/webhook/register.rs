//! Registration with the API server: the webhook configurations (OpenYurt's names) and
//! the NodePool CRD's conversion webhook, each carrying our CA, written with server-side
//! apply so a restart converges them and nothing else is touched.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use super::certs::SERVICE_NAME;
use super::{
    conversion, device, endpoints, node, nodepool, platformadmin, yurtappset, yurtstaticset,
};
use crate::ManagerError;

/// Name of the mutating configuration (OpenYurt's).
pub const MUTATING: &str = "yurt-manager-mutating-webhook-configuration";
/// Name of the validating configuration (OpenYurt's).
pub const VALIDATING: &str = "yurt-manager-validating-webhook-configuration";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "yurt-manager";

/// Where the API server reaches the webhooks.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Through the Service `yurt-manager-webhook-service` in `namespace` (in-cluster).
    Service {
        /// Namespace of the Service.
        namespace: String,
    },
    /// Directly, `https://<host:port>` (the manager runs outside the cluster's pods).
    Url {
        /// `host:port`.
        authority: String,
    },
}

impl Endpoint {
    fn client_config(&self, path: &str, ca_pem: &str) -> WebhookClientConfig {
        let ca = Some(ByteString(ca_pem.as_bytes().to_vec()));
        match self {
            Self::Service { namespace } => WebhookClientConfig {
                ca_bundle: ca,
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: SERVICE_NAME.to_owned(),
                    path: Some(path.to_owned()),
                    port: Some(443),
                }),
                url: None,
            },
            Self::Url { authority } => WebhookClientConfig {
                ca_bundle: ca,
                service: None,
                url: Some(format!("https://{authority}{path}")),
            },
        }
    }

    fn conversion_config(&self, ca_pem: &str) -> apiext::WebhookClientConfig {
        let ca = Some(ByteString(ca_pem.as_bytes().to_vec()));
        match self {
            Self::Service { namespace } => apiext::WebhookClientConfig {
                ca_bundle: ca,
                service: Some(apiext::ServiceReference {
                    namespace: namespace.clone(),
                    name: SERVICE_NAME.to_owned(),
                    path: Some(conversion::PATH.to_owned()),
                    port: Some(443),
                }),
                url: None,
            },
            Self::Url { authority } => apiext::WebhookClientConfig {
                ca_bundle: ca,
                service: None,
                url: Some(format!("https://{authority}{}", conversion::PATH)),
            },
        }
    }
}

fn rule(
    groups: &[&str],
    versions: &[&str],
    resources: &[&str],
    ops: &[&str],
) -> RuleWithOperations {
    let v = |xs: &[&str]| Some(xs.iter().map(|x| (*x).to_owned()).collect());
    RuleWithOperations {
        api_groups: v(groups),
        api_versions: v(versions),
        resources: v(resources),
        operations: v(ops),
        scope: None,
    }
}

/// One webhook's registration.
struct Hook {
    name: &'static str,
    path: &'static str,
    rule: RuleWithOperations,
    fail: bool,
}

fn mutating_hooks() -> Vec<Hook> {
    vec![
        Hook {
            name: "mutate.apps.v1beta2.nodepool.openyurt.io",
            path: nodepool::MUTATE_PATH,
            rule: rule(
                &["apps.openyurt.io"],
                &["v1beta2"],
                &["nodepools"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "mutate.iot.v1beta1.platformadmin.openyurt.io",
            path: platformadmin::MUTATE_PATH,
            rule: rule(
                &["iot.openyurt.io"],
                &["v1beta1"],
                &["platformadmins"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "mutate.iot.v1alpha1.devices.openyurt.io",
            path: device::MUTATE_PATH,
            rule: rule(
                &["iot.openyurt.io"],
                &["v1alpha1"],
                &["devices", "deviceservices", "deviceprofiles"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "mutate.core.v1.node.openyurt.io",
            path: node::MUTATE_PATH,
            rule: rule(&[""], &["v1"], &["nodes"], &["CREATE", "UPDATE"]),
            fail: false,
        },
        Hook {
            name: "mutate.core.v1.endpoints.openyurt.io",
            path: endpoints::ENDPOINTS_PATH,
            rule: rule(&[""], &["v1"], &["endpoints"], &["CREATE", "UPDATE"]),
            fail: false,
        },
        Hook {
            name: "mutate.discovery.v1.endpointslice.openyurt.io",
            path: endpoints::ENDPOINTSLICE_PATH,
            rule: rule(
                &["discovery.k8s.io"],
                &["v1", "v1beta1"],
                &["endpointslices"],
                &["CREATE", "UPDATE"],
            ),
            fail: false,
        },
    ]
}

fn validating_hooks() -> Vec<Hook> {
    vec![
        Hook {
            name: "validate.apps.v1beta2.nodepool.openyurt.io",
            path: nodepool::VALIDATE_PATH,
            rule: rule(
                &["apps.openyurt.io"],
                &["v1beta2"],
                &["nodepools"],
                &["CREATE", "UPDATE", "DELETE"],
            ),
            fail: true,
        },
        Hook {
            name: "validate.apps.v1beta1.yurtappset.openyurt.io",
            path: yurtappset::VALIDATE_PATH,
            rule: rule(
                &["apps.openyurt.io"],
                &["v1beta1"],
                &["yurtappsets"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "validate.apps.v1alpha1.yurtstaticset.openyurt.io",
            path: yurtstaticset::VALIDATE_PATH,
            rule: rule(
                &["apps.openyurt.io"],
                &["v1alpha1"],
                &["yurtstaticsets"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "validate.iot.v1beta1.platformadmin.openyurt.io",
            path: platformadmin::VALIDATE_PATH,
            rule: rule(
                &["iot.openyurt.io"],
                &["v1beta1"],
                &["platformadmins"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "validate.iot.v1alpha1.device.openyurt.io",
            path: device::VALIDATE_DEVICE_PATH,
            rule: rule(
                &["iot.openyurt.io"],
                &["v1alpha1"],
                &["devices", "devices/status"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "validate.iot.v1alpha1.deviceprofile.openyurt.io",
            path: device::VALIDATE_PROFILE_PATH,
            rule: rule(
                &["iot.openyurt.io"],
                &["v1alpha1"],
                &["deviceprofiles"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "validate.iot.v1alpha1.deviceservice.openyurt.io",
            path: device::VALIDATE_SERVICE_PATH,
            rule: rule(
                &["iot.openyurt.io"],
                &["v1alpha1"],
                &["deviceservices"],
                &["CREATE", "UPDATE"],
            ),
            fail: true,
        },
        Hook {
            name: "validate.core.v1.node.openyurt.io",
            path: node::VALIDATE_PATH,
            // `nodes/status` too: 1.20 resets only the spec of a status update, so labels
            // change through it as well.
            rule: rule(&[""], &["v1"], &["nodes", "nodes/status"], &["UPDATE"]),
            fail: false,
        },
    ]
}

fn policy(fail: bool) -> Option<String> {
    Some(if fail { "Fail" } else { "Ignore" }.to_owned())
}

/// The mutating configuration.
pub fn mutating(endpoint: &Endpoint, ca_pem: &str) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(MUTATING.to_owned()),
            ..ObjectMeta::default()
        },
        webhooks: Some(
            mutating_hooks()
                .into_iter()
                .map(|h| MutatingWebhook {
                    name: h.name.to_owned(),
                    admission_review_versions: vec!["v1".to_owned(), "v1beta1".to_owned()],
                    client_config: endpoint.client_config(h.path, ca_pem),
                    failure_policy: policy(h.fail),
                    rules: Some(vec![h.rule]),
                    side_effects: "None".to_owned(),
                    timeout_seconds: Some(5),
                    // Endpoint changes may need a second pass after other mutations.
                    reinvocation_policy: Some("IfNeeded".to_owned()),
                    ..MutatingWebhook::default()
                })
                .collect(),
        ),
    }
}

/// The validating configuration.
pub fn validating(endpoint: &Endpoint, ca_pem: &str) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(VALIDATING.to_owned()),
            ..ObjectMeta::default()
        },
        webhooks: Some(
            validating_hooks()
                .into_iter()
                .map(|h| ValidatingWebhook {
                    name: h.name.to_owned(),
                    admission_review_versions: vec!["v1".to_owned(), "v1beta1".to_owned()],
                    client_config: endpoint.client_config(h.path, ca_pem),
                    failure_policy: policy(h.fail),
                    rules: Some(vec![h.rule]),
                    side_effects: "None".to_owned(),
                    timeout_seconds: Some(5),
                    ..ValidatingWebhook::default()
                })
                .collect(),
        ),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Installs or updates our CRDs (NodePool with its conversion webhook) and both webhook
/// configurations.
///
/// # Errors
/// API errors, naming what was being written.
pub async fn install(
    client: &kube::Client,
    endpoint: &Endpoint,
    ca_pem: &str,
) -> Result<(), ManagerError> {
    let crds: Api<apiext::CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in yurt_api::crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        if name == yurt_api::crds::NODEPOOL_CRD_NAME {
            crd.spec.conversion = Some(apiext::CustomResourceConversion {
                strategy: "Webhook".to_owned(),
                webhook: Some(apiext::WebhookConversion {
                    client_config: Some(endpoint.conversion_config(ca_pem)),
                    conversion_review_versions: vec!["v1".to_owned(), "v1beta1".to_owned()],
                }),
            });
        }
        crds.patch(&name, &apply_params(), &Patch::Apply(&crd))
            .await
            .map_err(|e| ManagerError::kube(&format!("apply CRD {name}"), e))?;
    }
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    m.patch(
        MUTATING,
        &apply_params(),
        &Patch::Apply(&mutating(endpoint, ca_pem)),
    )
    .await
    .map_err(|e| ManagerError::kube("apply the mutating webhook configuration", e))?;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    v.patch(
        VALIDATING,
        &apply_params(),
        &Patch::Apply(&validating(endpoint, ca_pem)),
    )
    .await
    .map_err(|e| ManagerError::kube("apply the validating webhook configuration", e))?;
    Ok(())
}
