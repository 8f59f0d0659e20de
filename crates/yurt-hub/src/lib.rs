//! YurtHub in Rust: the node-local proxy between kubelet, kube-proxy and pods on one side
//! and the API servers on the other. It caches what cache agents read (durably, on
//! disk), judges cloud health by renewing the node's lease itself, and answers from the
//! cache when the cloud is unreachable, so an edge node keeps working, and restarts,
//! through a cloud outage.
//!
//! Layer: a component; it talks to nothing but the Kubernetes API.
//!
//! ```no_run
//! # async fn demo(config: yurt_hub::Config) -> Result<(), yurt_hub::HubError> {
//! use std::sync::Arc;
//! let metrics = yurt_hub::metrics::HubMetrics::default();
//! let mut registry = prometheus_client::registry::Registry::default();
//! metrics.register(registry.sub_registry_with_prefix("yurt_hub"));
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! yurt_hub::run(config, metrics, Arc::new(registry), shutdown).await
//! # }
//! ```

pub mod admin;
pub mod autonomy;
pub mod body;
pub mod cache;
pub mod certificate;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod config;
pub mod filter;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod ota;
pub mod peers;
pub mod proxy;
pub mod request;
pub mod selector;
pub mod status;
pub mod store;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use config::Config;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The cache could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Upstream clients could not be built.
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    /// TLS material for the pod-facing port is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A certificate given as files is unusable.
    #[error(transparent)]
    Certificate(#[from] certificate::CertificateError),
    /// The dummy interface could not be set up.
    #[error("dummy interface {name}: {reason}")]
    Dummy {
        /// Interface name.
        name: String,
        /// What failed.
        reason: String,
    },
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, HubError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HubError::Bind { addr, what, source })
}

/// Creates the dummy interface carrying the pod-facing address, if missing.
fn setup_dummy(d: &config::DummyInterface) -> Result<(), HubError> {
    let run = |args: &[&str]| -> Result<(), HubError> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| HubError::Dummy {
                name: d.name.clone(),
                reason: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HubError::Dummy {
                name: d.name.clone(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    };
    let prefix = if d.ip.is_ipv4() { 32 } else { 128 };
    let address = format!("{}/{prefix}", d.ip);
    // Asked over netlink: `/sys/class/net` lists the links of the namespace that mounted
    // sysfs, not of the one this hub was started in.
    let exists = run(&["-o", "link", "show", "dev", &d.name]).is_ok();
    if !exists && let Err(e) = run(&["link", "add", &d.name, "type", "dummy"]) {
        // Kernels without the dummy driver: the address on loopback is just as local.
        tracing::info!(error = %e, "no dummy interface support; putting {address} on lo");
        return run(&["addr", "replace", &address, "dev", "lo"]);
    }
    run(&["addr", "replace", &address, "dev", &d.name])?;
    run(&["link", "set", &d.name, "up"])
}

fn serve_connection<I>(
    tracker: &TaskTracker,
    io: I,
    hub: Arc<proxy::Hub>,
    origin: proxy::Origin,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use tracing::Instrument as _;
    let span = tracing::debug_span!("connection", client.addr = %peer, origin = ?origin);
    tracker.spawn(
        async move {
            let svc = service_fn(move |req| proxy::handle(hub.clone(), origin, req));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        .instrument(span),
    );
}

/// Runs the hub until `shutdown` fires.
///
/// # Errors
/// Start-up failures: a port in use, an unusable cache folder or certificates.
pub async fn run(
    config: Config,
    metrics: metrics::HubMetrics,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<(), HubError> {
    if let Some(d) = &config.dummy_interface {
        setup_dummy(d)?;
    }
    let store = store::Store::open(
        &store::StoreConfig {
            batch_max: config.cache_batch_max,
            queue_capacity: config.cache_write_queue,
            ..store::StoreConfig::new(config.cache_dir.clone())
        },
        metrics.clone(),
    )?;
    let tracker = TaskTracker::new();
    let client_identity = Arc::new(certificate::FollowedFiles::load(
        if config.client_csr.is_some() {
            "kubelet's client certificate"
        } else {
            "client certificate"
        },
        &config.client_cert,
        &config.client_key,
    )?);
    tracker.spawn(
        client_identity
            .clone()
            .follow(config::CERTIFICATE_RELOAD_INTERVAL, shutdown.clone()),
    );
    // Asking for a client certificate of its own: kubelet's stands in (and makes the
    // requests: the same node) until it is issued.
    let own_client = match &config.client_csr {
        Some(c) => {
            let own = Arc::new(
                certificate::csr::CsrCertificate::new(certificate::csr::CsrRequest {
                    purpose: certificate::csr::Purpose::Client,
                    node: config.node_name.to_string(),
                    ips: Vec::new(),
                    dir: c.dir.clone(),
                    issue_timeout: c.issue_timeout,
                    poll_interval: std::time::Duration::from_secs(1),
                    max_backoff: std::time::Duration::from_secs(300),
                })
                .with_stand_in(client_identity.slot().get()),
            );
            let requesters = upstream::backends(&config, &client_identity.slot())?;
            let clients = requesters.iter().map(|b| b.kube.clone()).collect();
            tracker.spawn(own.clone().run(clients, shutdown.clone()));
            // Until its own is issued, the stand-in follows kubelet's rotations.
            let (stand_in, kubelets, token) =
                (own.clone(), client_identity.slot(), shutdown.clone());
            tracker.spawn(async move {
                while !stand_in.ready() {
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(config::CERTIFICATE_RELOAD_INTERVAL) => {}
                    }
                    if let Some(current) = kubelets.get() {
                        stand_in.stand_in(current);
                    }
                }
            });
            Some(own)
        }
        None => None,
    };
    let upstream_identity = own_client
        .as_ref()
        .map_or_else(|| client_identity.slot(), |own| own.slot());
    let backends = upstream::backends(&config, &upstream_identity)?;
    let urls: Vec<String> = config.servers.iter().map(ToString::to_string).collect();
    let health = Arc::new(health::Health::new(&urls, metrics.clone()));
    let node = config.node_name.to_string();
    let agents = Arc::new(cache::Agents::new(&node, &config.extra_cache_agents));
    let cache = cache::Cache::new(store.clone(), agents.clone(), &node);
    let view = Arc::new(filter::view::ClusterView::default());
    let node_ctx = filter::builtin::NodeContext {
        node: node.clone(),
        pool: config.pool.as_ref().map(ToString::to_string),
        hub_ip: config
            .secure_proxy
            .as_ref()
            .map_or(std::net::IpAddr::from([169, 254, 2, 1]), |s| s.addr.ip()),
        hub_port: config
            .secure_proxy
            .as_ref()
            .map_or(10268, |s| s.addr.port()),
        view: view.clone(),
    };
    let plain = bind(config.proxy_addr, "proxy").await?;
    let mut serving_from_csr = None;
    let secure = match &config.secure_proxy {
        Some(s) => {
            let slot = match &s.serving {
                config::ServingSource::Files { cert, key } => {
                    let files = Arc::new(certificate::FollowedFiles::load(
                        "serving certificate",
                        cert,
                        key,
                    )?);
                    let slot = files.slot();
                    tracker
                        .spawn(files.follow(config::CERTIFICATE_RELOAD_INTERVAL, shutdown.clone()));
                    slot
                }
                config::ServingSource::Csr { dir, issue_timeout } => {
                    let serving = Arc::new(certificate::csr::CsrCertificate::new(
                        certificate::csr::CsrRequest {
                            purpose: certificate::csr::Purpose::Serving,
                            node: config.node_name.to_string(),
                            ips: vec![s.addr.ip()],
                            dir: dir.clone(),
                            issue_timeout: *issue_timeout,
                            poll_interval: std::time::Duration::from_secs(1),
                            max_backoff: std::time::Duration::from_secs(300),
                        },
                    ));
                    let slot = serving.slot();
                    let clients = backends.iter().map(|b| b.kube.clone()).collect();
                    tracker.spawn(serving.run(clients, shutdown.clone()));
                    serving_from_csr = Some(slot.clone());
                    slot
                }
            };
            let tls = tls::server_config_with(slot, &config.ca_file)?;
            let listener = bind(s.addr, "pod-facing proxy").await?;
            Some((listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
        }
        None => None,
    };
    let admin_listener = bind(config.admin_addr, "admin").await?;
    let ready = Arc::new(AtomicBool::new(false));
    let verifier = Arc::new(identity::Verifier::new(config.pod_tokens.audiences.clone()));
    let hub = Arc::new(proxy::Hub {
        config: config.clone(),
        cache,
        health: health.clone(),
        balancer: upstream::Balancer::new(backends.clone()),
        filters: filter::Filters::new(filter::builtin::all(&node_ctx)),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        autonomy: autonomy::AutonomyReporter::new(std::time::Duration::from_secs(30)),
        verifier: verifier.clone(),
        short_requests: Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight)),
        shared_watches: proxy::shared_watch::SharedWatches::default(),
    });

    {
        let (health, backends, token, ready) = (
            health.clone(),
            backends.clone(),
            shutdown.clone(),
            ready.clone(),
        );
        let cfg = config.health;
        let node = node.clone();
        tracker.spawn(async move {
            // The first round decides whether the hub starts online or offline.
            let first = health::run(health, backends, node, cfg, token);
            tokio::pin!(first);
            tokio::select! {
                () = &mut first => {}
                () = tokio::time::sleep(cfg.timeout * cfg.retries.max(1) + std::time::Duration::from_millis(200)) => {
                    ready.store(true, Ordering::Release);
                    first.await;
                }
            }
        });
    }
    {
        let (health, ready) = (health.clone(), ready.clone());
        tracker.spawn(async move {
            let mut rx = health.subscribe();
            // Ready as soon as the first probe succeeded (or the timer above gave up).
            let _ = rx.wait_for(|online| *online).await;
            ready.store(true, Ordering::Release);
        });
    }
    {
        let (hub, token, t) = (hub.clone(), shutdown.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = plain.accept() => match r {
                        Ok(s) => s,
                        Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                    },
                    () = token.cancelled() => return,
                };
                let _ = stream.set_nodelay(true);
                serve_connection(
                    &t,
                    TokioIo::new(stream),
                    hub.clone(),
                    proxy::Origin::Local,
                    peer,
                );
            }
        });
    }
    if let Some((listener, acceptor)) = secure {
        let (hub, token, t) = (hub.clone(), shutdown.clone(), tracker.clone());
        let local_peers = peers::LocalPeers::new(node.clone(), view.clone());
        tracker.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                    },
                    () = token.cancelled() => return,
                };
                if !local_peers.allows(peer.ip()) {
                    // Pods of this node and the host itself only: a LAN neighbour that
                    // routes the hub's link-local address here is turned away.
                    tracing::warn!(client.addr = %peer, "connection to the pod-facing port from outside this node refused");
                    hub.metrics.request("refused", "connect");
                    drop(stream);
                    continue;
                }
                let (acceptor, hub, t2) = (acceptor.clone(), hub.clone(), t.clone());
                t.spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => {
                            serve_connection(&t2, TokioIo::new(tls), hub, proxy::Origin::Pod, peer)
                        }
                        Err(e) => {
                            tracing::debug!(client.addr = %peer, error = %e, "TLS handshake failed")
                        }
                    }
                });
            }
        });
    }
    // The hub's own client goes through the hub itself (cached, so the filters' view
    // of the cluster is there after an offline restart too).
    let self_client = {
        let url: http::Uri = format!("http://{}", config.proxy_addr).parse().map_err(
            |e: http::uri::InvalidUri| HubError::Dummy {
                name: "self client".into(),
                reason: e.to_string(),
            },
        )?;
        upstream::kube_client::plain(url, upstream::kube_client::Timeouts::default())
    };
    {
        let scope = filter::view::Scope {
            node: node.clone(),
            configured_pool: config.pool.as_ref().map(ToString::to_string),
            namespace: config.namespace.clone(),
        };
        let (view, agents, token) = (view.clone(), agents.clone(), shutdown.clone());
        tracker.spawn(filter::view::run(
            view,
            agents,
            self_client.clone(),
            scope,
            token,
        ));
    }
    {
        // A cache writer that stopped would cache nothing more while the node looked
        // fine: report not-ready (and the Autonomy condition says why).
        let (store, ready, token) = (store.clone(), ready.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = token.cancelled() => return,
                }
                if !store.writer_running() {
                    tracing::error!("the cache writer has stopped: the hub reports not ready");
                    ready.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }
    tracker.spawn(identity::keep_keys(
        verifier,
        self_client.clone(),
        config.pod_tokens.keys_refresh,
        std::time::Duration::from_secs(5),
        shutdown.clone(),
    ));
    {
        let ota = Arc::new(ota::Ota {
            client: self_client.clone(),
            health: health.clone(),
            node: node.clone(),
            static_pod_dir: config.static_pod_dir.clone(),
        });
        let app = admin::router(
            admin::AdminState {
                ready: ready.clone(),
                registry,
                serving: serving_from_csr,
                client: own_client,
            },
            Some(ota),
        );
        let token = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = yurt_core::admin::serve(admin_listener, app, token).await {
                tracing::warn!(error = %e, "admin server stopped");
            }
        });
    }
    tracing::info!(node = %node, proxy = %config.proxy_addr, admin = %config.admin_addr, "yurt hub started");
    shutdown.cancelled().await;
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.close()).await;
    Ok(())
}
