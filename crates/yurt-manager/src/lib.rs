//! yurt-manager in Rust: OpenYurt's controllers and webhooks (reference/openyurt.md §5).
//!
//! Every replica serves the webhooks; one replica, elected through a Lease, runs the
//! controllers. Everything goes through the Kubernetes API, so the manager works
//! against any upstream API server (1.20 and later).

pub mod admin;
pub mod autonomy;
pub mod controllers;
pub mod feed;
pub mod install;
pub mod leader;
pub mod metrics;
pub mod webhook;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::Api;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use yurt_api::apps::v1beta2::NodePool;

/// Manager failures.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// A listening address could not be bound.
    #[error("cannot listen on {addr} for the {what} server: {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Certificates could not be made.
    #[error("webhook certificates: {0}")]
    Pki(#[from] yurt_core::pki::Error),
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Objects kept changing under us.
    #[error("{0}")]
    Conflict(String),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

impl ManagerError {
    /// An API error while doing `what`.
    pub fn kube(what: &str, source: kube::Error) -> Self {
        Self::Kube {
            what: what.to_owned(),
            source,
        }
    }
}

/// Manager configuration (upstream's flags where they exist).
#[derive(Debug, Clone)]
pub struct Config {
    /// Controllers to run (already resolved from `--controllers`).
    pub controllers: BTreeSet<&'static str>,
    /// Namespace for the Lease, the webhook Secret and Service (`--working-namespace`).
    pub namespace: String,
    /// Webhook HTTPS address (`--webhook-port`, default 10273).
    pub webhook_addr: SocketAddr,
    /// Where the API server reaches the webhooks.
    pub webhook_endpoint: webhook::register::Endpoint,
    /// Addresses the webhook certificate must cover besides the Service names.
    pub webhook_ips: Vec<IpAddr>,
    /// Prometheus metrics (`--metrics-addr`, default :10271).
    pub metrics_addr: SocketAddr,
    /// Health probes (`--health-probe-addr`, default :10272).
    pub health_addr: SocketAddr,
    /// Run the leader election (`--leader-elect`, default true).
    pub leader_elect: bool,
    /// This replica's identity in the election.
    pub identity: String,
    /// Lease duration.
    pub lease_duration: Duration,
    /// Lease renewal period.
    pub lease_retry: Duration,
    /// How long the leader may go without a successful renewal before it steps down.
    pub lease_renew_deadline: Duration,
    /// Image of the YurtStaticSet upgrade workers (`--node-servant-image`).
    pub node_servant_image: String,
    /// Image of the device agent PlatformAdmins deploy (`--iot-agent-image`): `yurt` at
    /// /usr/local/bin/yurt.
    pub iot_agent_image: String,
    /// The manager's own user name as the API server authenticates it
    /// (`--manager-username`): the node webhook lets it, and the node itself, change a
    /// node's `is-edge-worker` label.
    pub manager_username: String,
    /// The hubs' pod-facing address (`--hub-pod-address`, default 169.254.2.1), which the
    /// csrapprover allows in every node's serving certificate.
    pub hub_pod_address: IpAddr,
    /// How long a NotReady node's pods still count as unavailable in DaemonSet and
    /// YurtStaticSet rolling updates (`--unready-node-grace`).
    pub unready_node_grace: Duration,
    /// How long a conversion Job's servant may take (`--node-conversion-timeout`).
    pub node_conversion_timeout: Duration,
}

/// Runs the manager until `shutdown`.
///
/// # Errors
/// Start-up failures: ports in use, the API server refusing our CRDs or webhooks.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ManagerError> {
    let metrics = metrics::ManagerMetrics::default();
    let mut registry = Registry::default();
    metrics.register(registry.sub_registry_with_prefix("yurt_manager"));
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = admin::AdminState {
        ready: ready.clone(),
        registry: Arc::new(registry),
    };
    admin::serve(
        config.health_addr,
        admin_state.clone(),
        "health",
        shutdown.clone(),
    )
    .await?;
    if config.metrics_addr != config.health_addr {
        admin::serve(
            config.metrics_addr,
            admin_state,
            "metrics",
            shutdown.clone(),
        )
        .await?;
    }

    // One watch of Nodes for the webhooks and every controller.
    let node_feed = feed::Feed::new();
    node_feed.start(Api::<Node>::all(client.clone()), "node", shutdown.clone());
    let nodes = node_feed.store();
    // One watch of Pods for the endpoints webhooks (every replica serves them) and the
    // controllers.
    let pod_feed = feed::Feed::<Pod>::new();
    pod_feed.start(Api::<Pod>::all(client.clone()), "pod", shutdown.clone());
    // One watch of NodePools, started once the conversion webhook is registered.
    let pool_feed = feed::Feed::<NodePool>::new();
    let pools = pool_feed.store();
    // One watch of the device agents' ServiceAccounts, which the device webhook confines
    // to their pools.
    let agent_account_feed = feed::Feed::<ServiceAccount>::new();
    agent_account_feed.start_selected(
        Api::<ServiceAccount>::all(client.clone()),
        kube::runtime::watcher::Config::default()
            .labels(controllers::platformadmin::PLATFORM_ADMIN_LABEL),
        "serviceaccount",
        shutdown.clone(),
    );

    // Webhooks first: the CRD's conversion and the pools' validation need them.
    let certs = webhook::certs::ensure(&client, &config.namespace, &config.webhook_ips).await?;
    let tls = webhook::certs::server_config(&certs)?;
    let state = webhook::WebhookState {
        client: client.clone(),
        nodes: nodes.clone(),
        pods: pod_feed.store(),
        pools: pools.clone(),
        agent_accounts: agent_account_feed.store(),
        metrics: metrics.clone(),
        manager_username: config.manager_username.clone(),
    };
    webhook::serve(
        config.webhook_addr,
        tls,
        webhook::router(state),
        shutdown.clone(),
    )
    .await?;
    webhook::register::install(&client, &config.webhook_endpoint, &certs.ca_pem).await?;
    pool_feed.start(
        Api::<NodePool>::all(client.clone()),
        "nodepool",
        shutdown.clone(),
    );
    tracing::info!("CRDs and webhooks registered");

    let _ = tokio::time::timeout(Duration::from_secs(30), nodes.wait_until_ready()).await;
    ready.store(true, Ordering::Release);

    let mut leading = if config.leader_elect {
        leader::run(
            client.clone(),
            leader::LeaseConfig {
                namespace: config.namespace.clone(),
                name: install::rbac::LEASE_NAME.to_owned(),
                identity: config.identity.clone(),
                lease_duration: config.lease_duration,
                retry_period: config.lease_retry,
                renew_deadline: config.lease_renew_deadline,
            },
            shutdown.clone(),
        )
    } else {
        tokio::sync::watch::channel(true).1
    };
    loop {
        // Wait to lead.
        while !*leading.borrow() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = leading.changed() => if r.is_err() { return Ok(()) },
            }
        }
        metrics.leader.set(1);
        let term = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        let inputs = controllers::Inputs {
            client: client.clone(),
            nodes: node_feed.clone(),
            pods: pod_feed.clone(),
            pools: pool_feed.clone(),
            node_servant_image: config.node_servant_image.clone(),
            iot_agent_image: config.iot_agent_image.clone(),
            hub_pod_address: config.hub_pod_address,
            unready_node_grace: config.unready_node_grace,
            node_conversion_timeout: config.node_conversion_timeout,
            metrics: metrics.clone(),
        };
        for (name, run) in controllers::ALL {
            if config.controllers.contains(*name) {
                tasks.spawn(run(inputs.clone(), term.clone()));
            }
        }
        tracing::info!(controllers = ?config.controllers, "controllers started");
        // Lead until the term ends.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                r = leading.changed() => {
                    if r.is_err() || !*leading.borrow() { break; }
                }
            }
        }
        term.cancel();
        while tasks.join_next().await.is_some() {}
        metrics.leader.set(0);
        if shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::warn!("controllers stopped: leadership lost");
    }
}
