//! Bringing a fleet up: checks, packages, upstream binaries, certificates, network,
//! images, the control plane, the edge hosts, and the sample app.
//!
//! `up` on a data folder that already holds a fleet restarts that fleet with its state
//! (etcd data, certificates, images, containerd content). If any step fails, everything
//! made on the machine is removed again before the error is returned.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::ops::blocking;
use super::teardown::teardown_runtime;
use super::{Fleet, MachineConfig, check_data_dir, system_cgroup};
use crate::cgroup::Cgroups;
use crate::components::Component;
use crate::error::{Error, Result};
use crate::image::{self, ImageSpec};
use crate::network;
use crate::packages;
use crate::paths::FleetPaths;
use crate::pki;
use crate::progress::{Reporter, Step};
use crate::sample;
use crate::slots::Registry;
use crate::spec::{EdgeApi, FleetSpec, HostId, Slot};
use crate::state::{self, FleetState};
use crate::upstream;

/// Options of [`up`].
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// The fleet to create. `None` restarts the fleet in the data folder, or creates the
    /// default fleet if there is none. A spec that differs from an existing fleet's is refused.
    pub spec: Option<FleetSpec>,
    /// How edge hosts reach the API server; `None` keeps an existing fleet's choice
    /// (through the hub for a new one). A choice that differs from an existing fleet's
    /// is refused.
    pub edge_api: Option<EdgeApi>,
    /// Whether the API server writes an audit log (`logs/kube-apiserver-audit.log` of
    /// the cloud host); `None` keeps an existing fleet's choice (off for a new one).
    pub api_audit_log: Option<bool>,
    /// Whether the cloud host runs Prometheus, scraping every kubelet through the API
    /// server's node proxy (Debian's `prometheus` is installed if missing); `None` keeps
    /// an existing fleet's choice (off for a new one).
    pub prometheus: Option<bool>,
    /// Whether the cloud host runs a second kube-apiserver (port 6444) with its own
    /// tunnel server, every agent connected to both, as with two control-plane machines;
    /// `None` keeps an existing fleet's choice (off for a new one).
    pub second_api_server: Option<bool>,
    /// How long certificates signed by kube-controller-manager (every CSR it issues)
    /// stay valid; `None` keeps an existing fleet's choice (its default, a year, for a
    /// new one).
    pub cluster_signing_duration: Option<std::time::Duration>,
    /// Whether the fleet runs upstream Kubernetes only, for OpenYurt to be installed
    /// onto: no hub, manager, tunnel, NodePools or sample app; plain edge workers that
    /// reach the API server directly; a kubelet on the cloud host for add-ons. `None`
    /// keeps an existing fleet's choice (off for a new one); a choice that differs
    /// from an existing fleet's is refused.
    pub bare: Option<bool>,
}

/// Pushes `images` (image, repository, tags) to the fleet registry's push process, from
/// this machine.
async fn push_images(
    paths: &FleetPaths,
    plan: &crate::spec::Plan,
    images: &[(image::BuiltImage, String, Vec<String>)],
    step: &Step<'_>,
) -> Result<()> {
    let target = crate::registry::push::PushTarget::for_fleet(paths, plan)?;
    for (built, repository, tags) in images {
        step.detail(repository);
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let image = crate::registry::source::OciImage::from_built(built)?;
        crate::registry::push::push(&target, &image, repository, &tags, &|_| {}).await?;
    }
    Ok(())
}

/// Commands the fleet shells out to; all come with the runtime packages.
const TOOLS: &[&str] = &[
    "ip",
    "nsenter",
    "unshare",
    "mount",
    "umount",
    "iptables",
    "ctr",
    "containerd",
    "runc",
    "etcd",
    "docker-registry",
];

fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    crate::netns::check_support()?;
    Cgroups::detect()?;
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"))
    {
        return Err(Error::MissingFeature {
            feature: "overlay filesystem".into(),
            hint: "load the overlay module (modprobe overlay); containerd needs it".into(),
        });
    }
    if !Path::new("/proc/sys/net/bridge").exists() {
        return Err(Error::MissingFeature {
            feature: "br_netfilter".into(),
            hint: "load the br_netfilter module (modprobe br_netfilter); kube-proxy needs it"
                .into(),
        });
    }
    Ok(())
}

fn check_tools() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .collect();
    for tool in TOOLS {
        if !dirs.iter().any(|d| d.join(tool).is_file()) {
            return Err(Error::MissingFeature {
                feature: format!("the `{tool}` command"),
                hint: "install the runtime packages (yurt up does this with apt-get)".into(),
            });
        }
    }
    Ok(())
}

/// Slots whose namespaces or root interface exist on the machine.
fn slot_has_leftovers(slot: Slot) -> bool {
    crate::netns::exists(&format!("yurt{}-cloud", slot.0))
        || Path::new("/sys/class/net")
            .join(format!("yurt{}h", slot.0))
            .exists()
}

/// Brings up (or restarts) the fleet in `data_dir` and waits until every node is Ready
/// and the sample app is available.
///
/// # Errors
/// The first failing step, after removing what was made on the machine.
pub async fn up(
    machine: &MachineConfig,
    data_dir: &Path,
    options: UpOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Fleet> {
    check_data_dir(data_dir)?;
    if let Some(spec) = &options.spec {
        spec.validate()?;
    }
    preflight()?;
    {
        let r = reporter.clone();
        blocking(move || packages::ensure(packages::RUNTIME_PACKAGES, r.as_ref())).await?;
    }
    check_tools()?;
    if !machine.yurt_binary.is_file() {
        return Err(Error::Invalid(format!(
            "the yurt binary {} (runs the hub on every edge host) does not exist; build it with `cargo build -p yurt`",
            machine.yurt_binary.display()
        )));
    }
    {
        let (cache, r) = (machine.cache_dir.clone(), reporter.clone());
        blocking(move || upstream::ensure(&cache, r.as_ref())).await?;
    }
    std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    let paths = FleetPaths::new(data_dir);
    // A `yurt up` or a detached supervisor owns a running fleet here: restarting it
    // under them would race their restarts.
    if let Some(pid) = crate::lock::holder(&paths.up_lock())?
        && pid != std::process::id() as i32
    {
        return Err(Error::DataDirInUse {
            dir: data_dir.to_owned(),
            pid,
        });
    }
    let existing = state::load(&paths.state_file())?;
    let spec = match (&existing, options.spec) {
        (Some(s), Some(wanted)) if s.spec != wanted => {
            return Err(Error::Invalid(format!(
                "{} holds a fleet of {} edge nodes in {} pools ({} mode); remove it with `yurt down --purge --data-dir {}` or use another --data-dir",
                data_dir.display(),
                s.spec.edge_nodes,
                s.spec.pools,
                s.spec.mode,
                data_dir.display()
            )));
        }
        (Some(s), _) => s.spec.clone(),
        (None, Some(wanted)) => wanted,
        (None, None) => FleetSpec::default(),
    };
    spec.validate()?;
    let bare = match (&existing, options.bare) {
        (Some(s), Some(wanted)) if s.bare != wanted => {
            return Err(Error::Invalid(format!(
                "{} holds a fleet {} OpenYurt; remove it with `yurt down --purge --data-dir {}` or use another --data-dir",
                data_dir.display(),
                if s.bare { "without" } else { "with" },
                data_dir.display()
            )));
        }
        (Some(s), None) => s.bare,
        (_, wanted) => wanted.unwrap_or(false),
    };
    if bare {
        let refused = [
            (
                options.edge_api == Some(EdgeApi::ThroughHub),
                "edge hosts through the hub",
            ),
            (options.prometheus == Some(true), "--prometheus"),
            (
                options.second_api_server == Some(true),
                "--second-api-server",
            ),
        ];
        if let Some((_, flag)) = refused.iter().find(|(asked, _)| *asked) {
            return Err(Error::Invalid(format!(
                "{flag} needs OpenYurt's components (the hub, the tunnel), which --bare leaves out"
            )));
        }
    }
    let edge_api = match (&existing, options.edge_api) {
        (Some(s), Some(wanted)) if s.edge_api != wanted => {
            return Err(Error::Invalid(format!(
                "{} holds a fleet whose edge hosts reach the API server {}; remove it with `yurt down --purge --data-dir {}` or use another --data-dir",
                data_dir.display(),
                s.edge_api,
                data_dir.display()
            )));
        }
        (Some(s), None) => s.edge_api,
        (_, _) if bare => EdgeApi::Direct,
        (_, wanted) => wanted.unwrap_or_default(),
    };
    let api_audit_log = options
        .api_audit_log
        .or(existing.as_ref().map(|s| s.api_audit_log))
        .unwrap_or(false);
    let prometheus = options
        .prometheus
        .or(existing.as_ref().map(|s| s.prometheus))
        .unwrap_or(false);
    let second_api_server = options
        .second_api_server
        .or(existing.as_ref().map(|s| s.second_api_server))
        .unwrap_or(false);
    if prometheus {
        let r = reporter.clone();
        blocking(move || packages::ensure(&["prometheus"], r.as_ref())).await?;
    }
    let registry = Registry::new(&machine.registry_dir);
    let slot = {
        let (reg, dir, preferred) = (
            registry.clone(),
            data_dir.to_owned(),
            existing.as_ref().map(|s| s.slot),
        );
        blocking(move || reg.claim(&dir, preferred, &slot_has_leftovers)).await?
    };
    let mut new_state = FleetState::new(spec, slot);
    new_state.edge_api = edge_api;
    new_state.api_audit_log = api_audit_log;
    new_state.prometheus = prometheus;
    new_state.second_api_server = second_api_server;
    new_state.bare = bare;
    new_state.cluster_signing_duration = options
        .cluster_signing_duration
        .map(|d| d.as_secs())
        .or(existing.as_ref().and_then(|s| s.cluster_signing_duration));
    state::save(&paths.state_file(), &new_state)?;
    let fleet = Fleet::open(machine, data_dir)?;

    // Leftovers of an earlier run of this data folder (a killed `yurt up`) go first.
    {
        let (cgroups, p) = (fleet.cgroups.clone(), paths.clone());
        blocking(move || teardown_runtime(&cgroups, &p, slot)).await?;
    }
    match bring_up(&fleet, reporter.as_ref()).await {
        Ok(()) => Ok(fleet),
        Err(e) => {
            reporter.warn(&format!("bring-up failed; removing what was made: {e}"));
            let (cgroups, p) = (fleet.cgroups.clone(), paths.clone());
            let _ = blocking(move || teardown_runtime(&cgroups, &p, slot)).await;
            Err(e)
        }
    }
}

async fn bring_up(fleet: &Fleet, reporter: &dyn Reporter) -> Result<()> {
    let plan = fleet.plan.clone();
    let paths = fleet.paths.clone();

    let step = Step::start(reporter, "certificates, network namespaces and cgroups");
    {
        let (plan, paths, cgroups) = (plan.clone(), paths.clone(), fleet.cgroups.clone());
        blocking(move || {
            network::check_free(&plan)?;
            pki::ensure(&paths, &plan)?;
            for host in plan.hosts() {
                cgroups.create(&system_cgroup(plan.slot, &host))?;
            }
            network::create(&plan)
        })
        .await?;
    }
    step.finish();

    let step = Step::start(reporter, "building images (pause, busybox, sample-web)");
    let to_push = {
        let images = paths.images();
        blocking(move || {
            let busybox = Path::new(image::BUSYBOX);
            let mut to_push = Vec::new();
            for spec in [
                ImageSpec::pause(),
                ImageSpec::busybox(image::BUSYBOX_IMAGE),
                sample::image_spec(),
            ] {
                let built = image::build_image(&spec, busybox)?;
                image::write_archive(
                    &spec,
                    &built,
                    &image::archive_path(&images, &spec.reference),
                )?;
                // Under their upstream names too (ADR 005): `busybox` and the pause image
                // kubelet 1.20 asks for resolve through every host's containerd mirror.
                if spec.reference == image::PAUSE_IMAGE {
                    to_push.push((built.clone(), "pause".to_owned(), vec!["3.2".to_owned()]));
                } else if spec.reference == image::BUSYBOX_IMAGE {
                    let version = image::busybox_version(busybox)?;
                    let minor = version.rsplit_once('.').map(|(m, _)| m.to_owned());
                    let tags = ["latest".to_owned(), version]
                        .into_iter()
                        .chain(minor)
                        .collect();
                    to_push.push((built.clone(), "library/busybox".to_owned(), tags));
                }
                // And under their own `yurt.local` names: a node whose content store
                // lost them pulls them again.
                let own = crate::registry::destination(&spec.reference)?;
                to_push.push((built, own.repository, own.tag.into_iter().collect()));
            }
            Ok(to_push)
        })
        .await?
    };
    step.finish();

    let bare = fleet.state.bare;
    let step = Step::start(
        reporter,
        format!(
            "control plane: etcd, kube-apiserver, scheduler, {}registry{}{}",
            if bare {
                ""
            } else {
                "yurt manager, tunnel server, "
            },
            if fleet.state.second_api_server {
                ", a second kube-apiserver and tunnel server"
            } else {
                ""
            },
            if fleet.state.prometheus {
                ", prometheus"
            } else {
                ""
            }
        ),
    );
    // kube-controller-manager starts once every node is Ready (below). Its node
    // lifecycle controller in 1.20 corrupts its own NoExecute taint queue when it watches
    // nodes report NotReady while its limiter is shut (all nodes of a starting fleet
    // are NotReady: "master disruption mode"): each pass re-adds the untainted node
    // (`markNodeForTainting` drops it from the queue's set but not its heap), the node's
    // recovery removes only one copy, and a leftover copy of a Ready node then sits at
    // the head of its zone's queue for good, so no node of that zone is ever tainted
    // NoExecute again and no pod there is evicted. Nodes Ready before it starts leave
    // nothing behind. Nothing a node needs to become Ready comes from it: certificates
    // come from the fleet's CA, pod CIDRs from the address plan.
    // The cloud host's own node (a bare fleet's) starts with the edge hosts, below.
    let cloud: Vec<Component> = fleet
        .components_of(&HostId::Cloud)
        .filter(|c| *c != Component::KubeControllerManager && !Component::NODE.contains(c))
        .collect();
    for host in plan.hosts() {
        fleet.install_units(&host)?;
    }
    for component in cloud {
        if component == Component::KubeScheduler {
            // As on a kubeadm cluster, in every fleet: hosts can join with a token.
            let client = fleet.client().await?;
            let ca = std::fs::read(fleet.pki.ca_cert())
                .map_err(|e| crate::error::Error::io(fleet.pki.ca_cert(), e))?;
            // Kubelets ask for serving certificates by CSR where the fleet's manager
            // approves them; a bare fleet has none (kubeadm's default: self-signed).
            super::api::apply_bootstrap_prerequisites(
                &client,
                &plan.api_url_in_fleet(),
                &ca,
                !fleet.state.bare,
            )
            .await?;
        }
        if component == Component::YurtManager {
            let client = fleet.client().await?;
            super::api::apply_hub_rbac(&client).await?;
            super::api::apply_manager_rbac(&client).await?;
        }
        if component == Component::TunnelServer {
            let client = fleet.client().await?;
            super::api::apply_tunnel_rbac(&client).await?;
            let servers = crate::components::tunnel_server_addresses(fleet.state.second_api_server);
            super::api::apply_tunnel_discovery(&client, &servers).await?;
        }
        if component == Component::Prometheus {
            super::api::apply_prometheus_rbac(&fleet.client().await?).await?;
        }
        step.detail(component.name());
        fleet.start_component(&HostId::Cloud, component).await?;
    }
    step.finish();

    let step = Step::start(
        reporter,
        "pushing images to the fleet registry (pause, busybox, sample-web)",
    );
    // Boxed: the registry client's futures are large, and every caller of `up` would
    // carry them.
    Box::pin(push_images(&paths, &plan, &to_push, &step)).await?;
    step.finish();

    if bare {
        let step = Step::start(
            reporter,
            format!(
                "nodes: the cloud's own, kube-controller-manager, then {} plain edge workers joined with a bootstrap token",
                plan.edges.len()
            ),
        );
        // Boxed: joins hold large futures every caller of `up` would carry.
        Box::pin(fleet.bring_up_bare_nodes(&step)).await?;
        step.finish();
        return Ok(());
    }
    let client = fleet.client().await?;
    super::api::register_nodes(&client, &plan, bare).await?;
    super::api::create_node_pools(&client, &plan).await?;

    let step = Step::start(
        reporter,
        format!(
            "edge hosts: containerd, hub, kubelet, kube-proxy, tunnel agent on {} nodes",
            plan.edges.len()
        ),
    );
    let edge_hosts: Vec<HostId> = plan
        .edges
        .iter()
        .map(|e| HostId::Edge(e.name.clone()))
        .collect();
    futures::future::try_join_all(edge_hosts.iter().map(|h| fleet.start_host(h))).await?;
    step.finish();

    let step = Step::start(
        reporter,
        "waiting for every node to be Ready, then kube-controller-manager and tunnel agents",
    );
    let total = plan.edges.len();
    super::api::wait_nodes_ready(&client, &plan, Duration::from_secs(180), &|r| {
        step.detail(&format!("{}/{total} nodes Ready", r.ready.len()));
    })
    .await?;
    step.detail(Component::KubeControllerManager.name());
    fleet
        .start_component(&HostId::Cloud, Component::KubeControllerManager)
        .await?;
    step.detail("tunnel agents");
    fleet.wait_tunnel_agents(Duration::from_secs(60)).await?;
    step.finish();

    if fleet.state.spec.sample_app {
        let step = Step::start(
            reporter,
            "deploying the sample app (a YurtAppSet across the pools, a Service per pool)",
        );
        sample::apply(&client, &plan).await?;
        sample::wait_available(&client, &plan, Duration::from_secs(180)).await?;
        step.finish();
    }
    Ok(())
}
