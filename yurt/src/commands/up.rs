//! `yurt up`: bring a fleet up, print how to use it, and keep it running (restarting
//! crashed processes) until Ctrl-C (or `yurt down`), then take it down; with `--detach`,
//! hand the fleet to a detached supervisor and return.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use tokio_util::sync::CancellationToken;
use yurt_cluster::fleet::check_data_dir;
use yurt_cluster::{Error, Fleet, FleetSpec, MachineConfig, NetMode, Timing, UpOptions, lock};

use super::absolute;
use crate::cli::{DEFAULT_DATA_DIR, Mode, TimingArg, UpArgs};
use crate::progress::SpinnerReporter;

fn spec_from(args: &UpArgs) -> Option<FleetSpec> {
    let given = args.edge_nodes.is_some()
        || args.pools.is_some()
        || args.mode.is_some()
        || args.timing.is_some()
        || args.no_sample_app;
    given.then(|| {
        let d = FleetSpec::default();
        FleetSpec {
            edge_nodes: args.edge_nodes.unwrap_or(d.edge_nodes),
            pools: args.pools.unwrap_or(d.pools),
            mode: match args.mode {
                Some(Mode::Nat) => NetMode::Nat,
                Some(Mode::Routed) => NetMode::Routed,
                None => d.mode,
            },
            timing: match args.timing {
                Some(TimingArg::Fast) => Timing::Fast,
                Some(TimingArg::Standard) | None => Timing::Standard,
            },
            sample_app: !args.no_sample_app,
        }
    })
}

/// Runs `yurt up`.
pub async fn run(
    machine: &MachineConfig,
    data_dir: &Path,
    args: UpArgs,
) -> anyhow::Result<ExitCode> {
    let data_dir = absolute(data_dir)?;
    check_data_dir(&data_dir)?;
    let spec = spec_from(&args);
    if let Some(spec) = &spec {
        spec.validate()?;
    }
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    let paths = yurt_cluster::paths::FleetPaths::new(&data_dir);
    let up_lock = match lock::try_exclusive(&paths.up_lock())? {
        Ok(lock) => lock,
        Err(pid) => return Err(Error::DataDirInUse { dir: data_dir, pid }.into()),
    };
    // Reports of an earlier run are about processes that no longer exist.
    let _ = std::fs::remove_file(yurt_cluster::fleet::last_report_file(&paths));
    let reporter = SpinnerReporter::for_stderr();
    let token = CancellationToken::new();
    let signals = tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    let options = UpOptions {
        spec: spec_from(&args),
        edge_api: args.direct_edges.then_some(yurt_cluster::EdgeApi::Direct),
        api_audit_log: args.api_audit_log.then_some(true),
        prometheus: args.prometheus.then_some(true),
        second_api_server: args.second_api_server.then_some(true),
        cluster_signing_duration: args.cluster_signing_duration,
        bare: args.bare.then_some(true),
    };
    let started = std::time::Instant::now();
    let mut fleet = tokio::select! {
        result = yurt_cluster::up(machine, &data_dir, options, reporter.clone()) => result?,
        () = token.cancelled() => {
            reporter.warn("interrupted: removing what was started");
            take_down(machine, &data_dir).await?;
            return Ok(ExitCode::from(130));
        }
    };
    eprintln!("fleet up in {:.1}s", started.elapsed().as_secs_f64());
    if !args.bare {
        // The image the manager's PlatformAdmins run their device agents from (its
        // --iot-agent-image default): this binary, in the fleet's registry.
        let tag = concat!("yurt.local/yurt:v", env!("CARGO_PKG_VERSION"));
        if let Err(e) = super::image::push_yurt_image(machine, &data_dir, tag).await {
            reporter.warn(&format!(
                "the device agents' image {tag} is not in the fleet's registry ({e:#}): PlatformAdmins cannot run their agents until `yurt image build --with-yurt --tag {tag} -o yurt.tar --push`"
            ));
        }
    }
    print_welcome(&fleet, &data_dir).await;
    if args.detach {
        token.cancel();
        let _ = signals.await;
        hand_over(machine, &data_dir, up_lock).await?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nThe fleet runs while this command does: Ctrl-C (or `yurt down`) stops it.");
    // Like a service manager with Restart=always: a crashed process starts again,
    // unless a reboot, stop or start owns the host's processes right now.
    let warn = reporter.clone();
    // The hosts' service managers, for tools that run on a host from a pod.
    let services = {
        let (machine, dir, token, warn) = (
            machine.clone(),
            data_dir.clone(),
            token.clone(),
            reporter.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) =
                yurt_cluster::fleet::service_manager::serve_every_host(&machine, &dir, token).await
            {
                warn.warn(&format!("the hosts' service managers: {e}"));
            }
        })
    };
    fleet
        .supervise_until(SUPERVISE_INTERVAL, token.cancelled(), |event| {
            warn.warn(&event.to_string());
        })
        .await;
    let _ = services.await;
    eprintln!("stopping the fleet ...");
    take_down(machine, &data_dir).await?;
    Ok(ExitCode::SUCCESS)
}

/// How often the supervisor looks for crashed processes.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(2);
/// How long `yurt up --detach` waits for its supervisor to take over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the detached supervisor and hands it the fleet's `up.lock`: from then on it
/// is the fleet's one owner (a second `yurt up` is refused, `yurt down` stops it first).
async fn hand_over(
    machine: &MachineConfig,
    data_dir: &Path,
    up_lock: lock::FileLock,
) -> anyhow::Result<()> {
    let paths = yurt_cluster::paths::FleetPaths::new(data_dir);
    let mut child = yurt_cluster::fleet::spawn_supervisor(machine, data_dir)?;
    drop(up_lock);
    let p = paths.clone();
    let taken = tokio::task::spawn_blocking(move || {
        let r = yurt_cluster::fleet::wait_for_supervisor(&p, &mut child, HANDOVER_TIMEOUT);
        (r, child)
    })
    .await?;
    match taken {
        (Ok(()), child) => {
            println!(
                "\nThe fleet keeps running under a detached supervisor (pid {}, log {}) that restarts crashed processes; `yurt down` stops both.",
                child.id(),
                yurt_cluster::fleet::supervisor_log(&paths).display()
            );
            Ok(())
        }
        (Err(e), mut child) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(anyhow::anyhow!(
                "the fleet is up, but its supervisor did not start ({e}); it runs unsupervised until `yurt down`"
            ))
        }
    }
}

async fn take_down(machine: &MachineConfig, data_dir: &Path) -> anyhow::Result<()> {
    let (machine, dir) = (machine.clone(), data_dir.to_owned());
    let reporter = SpinnerReporter::for_stderr();
    tokio::task::spawn_blocking(move || {
        yurt_cluster::down(&machine, &dir, false, reporter.as_ref())
    })
    .await??;
    Ok(())
}

/// How to call this binary in printed hints.
fn self_command(data_dir: &Path) -> String {
    let exe = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "yurt".into());
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| d.join("yurt").to_string_lossy() == exe)
    });
    let base = if on_path { "yurt".to_owned() } else { exe };
    if data_dir == Path::new(DEFAULT_DATA_DIR) {
        base
    } else {
        format!("{base} --data-dir {}", data_dir.display())
    }
}

/// What a bare fleet is, and how to install OpenYurt onto it.
fn print_bare_welcome(fleet: &Fleet, data_dir: &Path) {
    let plan = fleet.plan();
    let yurt = self_command(data_dir);
    println!(
        "\nFleet is up, bare: Kubernetes {} with a node on the cloud host and {} plain edge workers in {} sites ({} mode); no OpenYurt component runs.",
        yurt_cluster::upstream::KUBERNETES_VERSION,
        plan.edges.len(),
        plan.pools.len(),
        fleet.state().spec.mode,
    );
    println!(
        "\n  export KUBECONFIG={}",
        fleet.admin_kubeconfig().display()
    );
    println!("  kubectl get nodes -o wide");
    println!("  {yurt} fleet status");
    println!("\nTo install OpenYurt's manager onto it as onto any cluster:");
    // The image `yurt manager manifests` names by default.
    let image = concat!("yurt.local/yurt:v", env!("CARGO_PKG_VERSION"));
    println!("  {yurt} image build --with-yurt --tag {image} -o yurt.tar --push");
    println!(
        "  {yurt} manager manifests | kubectl apply -f -   # runs on the cloud node, a control-plane node"
    );
    println!(
        "  kubectl label node {} apps.openyurt.io/nodepool=<pool>   # converts it (a NodePool of that name must exist)",
        plan.edges
            .first()
            .map(|e| e.name.to_string())
            .unwrap_or_default()
    );
    // kubeadm's file names, in the fleet's folders instead of /etc/kubernetes.
    let pki = fleet.paths().pki();
    let root = fleet.paths().root().to_owned();
    let socket = root.join("tunnel-egress/egress.sock");
    let config = root.join("egress-selector.yaml");
    println!(
        "\nTo reach the workers behind NAT (kubectl logs/exec), the tunnel server beside the API server, as on a kubeadm cluster:"
    );
    println!(
        "  {yurt} tunnel-server manifests --ca-file {} --cert-file {} --key-file {} --egress-socket {} | kubectl apply -f -",
        pki.join("ca.crt").display(),
        pki.join("apiserver.crt").display(),
        pki.join("apiserver.key").display(),
        socket.display(),
    );
    println!(
        "  {yurt} tunnel-server egress-selector-config --egress-socket {} > {}",
        socket.display(),
        config.display(),
    );
    println!(
        "  # add \"--egress-selector-config-file={}\" to exec in {}, then:",
        config.display(),
        root.join("hosts/cloud/units/kube-apiserver.toml").display(),
    );
    println!("  {yurt} fleet stop cloud kube-apiserver && {yurt} fleet start cloud kube-apiserver");
    println!("  # converted workers then start their tunnel agents");
}

async fn print_welcome(fleet: &Fleet, data_dir: &Path) {
    if fleet.state().bare {
        print_bare_welcome(fleet, data_dir);
        return;
    }
    let plan = fleet.plan();
    let spec = &fleet.state().spec;
    let yurt = self_command(data_dir);
    let kubeconfig = fleet.admin_kubeconfig();
    let mut cluster_ips = Vec::new();
    if let Ok(client) = fleet.client().await {
        let services: Api<Service> = Api::namespaced(client, yurt_cluster::sample::NAMESPACE);
        for pool in &plan.pools {
            let name = yurt_cluster::sample::app_name(pool.name.as_str());
            if let Ok(svc) = services.get(&name).await
                && let Some(ip) = svc.spec.and_then(|s| s.cluster_ip)
            {
                cluster_ips.push((pool.name.to_string(), name, ip));
            }
        }
    }
    let pool_a = plan.pools[0].name.to_string();
    let first_a = plan
        .pool_members(0)
        .next()
        .map(|e| e.name.to_string())
        .unwrap_or_default();
    let last = plan
        .edges
        .last()
        .map(|e| e.name.to_string())
        .unwrap_or_default();
    let grace = spec.timing.timings().node_grace.as_secs();
    println!(
        "\nFleet is up: a cloud host and {} edge hosts in {} pools ({} mode), Kubernetes {}.",
        plan.edges.len(),
        plan.pools.len(),
        spec.mode,
        yurt_cluster::upstream::KUBERNETES_VERSION
    );
    println!("\n  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get nodes -L apps.openyurt.io/nodepool");
    println!(
        "  kubectl get yas,deploy,pods -o wide # the sample app: a YurtAppSet, one Deployment per pool"
    );
    println!("  {yurt} fleet status");
    println!("\nThree things to try:");
    let svc_a = cluster_ips
        .iter()
        .find(|(p, _, _)| *p == pool_a)
        .map(|(_, _, ip)| ip.clone())
        .unwrap_or_else(|| format!("<ClusterIP of web-{pool_a}>"));
    println!(
        "  1. Cut {pool_a} off from the cloud. Its nodes go NotReady after {grace}s, but its pods keep"
    );
    println!("     running and its Service keeps answering inside the pool:");
    println!("       {yurt} fleet cut {pool_a}");
    println!("       kubectl get nodes -w");
    println!("       {yurt} fleet exec {first_a} -- wget -qO- http://{svc_a}/");
    println!("       {yurt} fleet restore {pool_a}");
    println!(
        "  2. Reboot an edge node (everything on it dies, containers too) and watch its pods come back:"
    );
    println!("       {yurt} fleet reboot {last}");
    println!("       kubectl get pods -o wide -w");
    println!("  3. Logs and exec for pods on edge nodes:");
    let pods_a = yurt_cluster::sample::pod_selector(&pool_a);
    println!("       kubectl logs -l {pods_a}");
    println!(
        "       kubectl exec $(kubectl get pod -l {pods_a} -o name | head -1) -- cat /www/index.html"
    );
    if spec.mode == NetMode::Nat {
        println!(
            "     (in nat mode the cloud cannot open a connection to an edge host: these go through the tunnel)"
        );
    }
    if fleet.state().second_api_server {
        let second = format!(
            "https://{}:{}",
            plan.cloud_host_side_ip().addr,
            yurt_cluster::components::API_REPLICA_PORT
        );
        println!(
            "\nA second API server, with its own tunnel server (every agent is connected to both):"
        );
        println!("  kubectl --server {second} logs -l {pods_a}");
        println!(
            "  {yurt} fleet stop cloud yurt-tunnel-server --kill   # the second keeps working"
        );
    }
    if fleet.state().prometheus {
        let web = yurt_cluster::components::prometheus_address(plan);
        println!(
            "\nPrometheus scrapes every kubelet through the API server's node proxy (so through the tunnel):"
        );
        println!("  http://{web}/targets");
        println!("  curl -s 'http://{web}/api/v1/query?query=up'");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> UpArgs {
        match crate::cli::Cli::try_parse_from(args).unwrap().command {
            crate::cli::Command::Up(a) => a,
            _ => panic!("not up"),
        }
    }

    #[test]
    fn bare_refuses_what_needs_openyurts_components() {
        assert!(parse(&["yurt", "up", "--bare"]).bare);
        for other in ["--prometheus", "--second-api-server", "--direct-edges"] {
            let refused = crate::cli::Cli::try_parse_from(["yurt", "up", "--bare", other]);
            assert!(refused.is_err(), "--bare {other}");
        }
    }

    #[test]
    fn no_flags_means_restart_or_default() {
        assert_eq!(spec_from(&parse(&["yurt", "up"])), None);
    }

    #[test]
    fn flags_fill_in_defaults() {
        let spec = spec_from(&parse(&[
            "yurt",
            "up",
            "--edge-nodes",
            "6",
            "--mode",
            "nat",
        ]))
        .unwrap();
        assert_eq!(spec.edge_nodes, 6);
        assert_eq!(spec.pools, 2);
        assert_eq!(spec.mode, NetMode::Nat);
        assert!(spec.sample_app);
        // Real-WAN timings unless asked for the lab's.
        assert_eq!(spec.timing, Timing::Standard);
        let fast = spec_from(&parse(&["yurt", "up", "--timing", "fast"])).unwrap();
        assert_eq!(fast.timing, Timing::Fast);
        // Behind NAT unless asked otherwise: the cloud reaches nodes through the tunnel.
        assert_eq!(fast.mode, NetMode::Nat);
        let routed = spec_from(&parse(&["yurt", "up", "--mode", "routed"])).unwrap();
        assert_eq!(routed.mode, NetMode::Routed);
    }
}
