//! `yurt up`: bring a fleet up, print how to use it, and keep it running until Ctrl-C
//! (or `yurt down`), then take it down.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use tokio_util::sync::CancellationToken;
use yurt_cluster::components::Component;
use yurt_cluster::fleet::check_data_dir;
use yurt_cluster::spec::HostId;
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
                Some(Mode::Routed) | None => NetMode::Routed,
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
    let _up_lock = match lock::try_exclusive(&paths.up_lock())? {
        Ok(lock) => lock,
        Err(pid) => return Err(Error::DataDirInUse { dir: data_dir, pid }.into()),
    };
    let reporter = SpinnerReporter::for_stderr();
    let token = CancellationToken::new();
    let signals = tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    let options = UpOptions {
        spec: spec_from(&args),
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
    print_welcome(&fleet, &data_dir).await;
    if args.detach {
        token.cancel();
        let _ = signals.await;
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nThe fleet runs while this command does: Ctrl-C (or `yurt down`) stops it.");
    let mut backoff = RestartBackoff::default();
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        fleet.reap();
        // Like a service manager with Restart=always: a crashed process starts again,
        // unless a reboot, stop or start owns the host's processes right now.
        let now = Instant::now();
        let restarted = tokio::select! {
            r = fleet.supervise(|host, process| backoff.allows(host, process, now)) => r,
            () = token.cancelled() => break,
        };
        let restarted = match restarted {
            Ok(r) => r,
            Err(e) => {
                reporter.warn(&format!("supervising the fleet: {e}"));
                continue;
            }
        };
        for (host, process, result) in restarted {
            let log = fleet.paths().host(&host).log(process.name());
            match result {
                Ok(()) => {
                    if let Some(crash_loop) = backoff.restarted(&host, process, Instant::now()) {
                        reporter.warn(&format!(
                            "{process} on {host} keeps crashing ({crash_loop}); restarts now back off; see {}:\n{}",
                            log.display(),
                            yurt_cluster::cmd::tail_file(&log, 10)
                        ));
                    } else {
                        reporter.warn(&format!(
                            "{process} on {host} had exited and was restarted; see {}",
                            log.display()
                        ));
                    }
                }
                Err(e) => reporter.warn(&format!(
                    "{process} on {host} is down and could not be restarted: {e}"
                )),
            }
        }
    }
    eprintln!("stopping the fleet ...");
    take_down(machine, &data_dir).await?;
    Ok(ExitCode::SUCCESS)
}

/// Restarts within this window count towards a crash loop.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Restarts within the window that make a crash loop.
const CRASH_LOOP: usize = 3;
/// The longest wait between restarts of a crash-looping process.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Per process: recent restarts, when it may be restarted next, and whether its crash
/// loop was reported (once per loop).
#[derive(Default)]
struct RestartBackoff {
    processes: HashMap<(String, &'static str), ProcessRestarts>,
}

#[derive(Default)]
struct ProcessRestarts {
    recent: Vec<Instant>,
    not_before: Option<Instant>,
    reported: bool,
}

impl RestartBackoff {
    fn allows(&self, host: &HostId, process: Component, now: Instant) -> bool {
        self.processes
            .get(&(host.to_string(), process.name()))
            .and_then(|p| p.not_before)
            .is_none_or(|t| now >= t)
    }

    /// Records a restart; when it makes (or continues) a crash loop, the next restart
    /// waits twice as long as the last, and the loop is described the first time only.
    fn restarted(&mut self, host: &HostId, process: Component, now: Instant) -> Option<String> {
        let p = self
            .processes
            .entry((host.to_string(), process.name()))
            .or_default();
        p.recent.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        p.recent.push(now);
        let n = p.recent.len();
        if n < CRASH_LOOP {
            p.not_before = None;
            p.reported = false;
            return None;
        }
        let doublings = u32::try_from(n - CRASH_LOOP).unwrap_or(u32::MAX).min(8);
        let wait = (Duration::from_secs(4) * 2u32.pow(doublings)).min(MAX_BACKOFF);
        p.not_before = Some(now + wait);
        if p.reported {
            return None;
        }
        p.reported = true;
        Some(format!(
            "{n} restarts within {}s; next in {}s",
            CRASH_WINDOW.as_secs(),
            wait.as_secs()
        ))
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

async fn print_welcome(fleet: &Fleet, data_dir: &Path) {
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
            "     (in nat mode the cloud cannot reach the edge hosts, so logs/exec need the tunnel)"
        );
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
    }

    #[test]
    fn a_crash_loop_is_reported_once_and_its_restarts_back_off() {
        let mut b = RestartBackoff::default();
        let host = HostId::Cloud;
        let hub = Component::YurtHub;
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(b.restarted(&host, hub, t0).is_none());
        assert!(b.restarted(&host, hub, t0 + s(2)).is_none());
        assert!(b.allows(&host, hub, t0 + s(3)), "two restarts are no loop");
        let report = b.restarted(&host, hub, t0 + s(4)).expect("the third is");
        assert!(
            report.contains("3 restarts within 60s; next in 4s"),
            "{report}"
        );
        assert!(!b.allows(&host, hub, t0 + s(7)));
        assert!(b.allows(&host, hub, t0 + s(8)));
        assert!(
            b.restarted(&host, hub, t0 + s(8)).is_none(),
            "reported once"
        );
        assert!(!b.allows(&host, hub, t0 + s(15)), "the wait doubles");
        assert!(b.allows(&host, hub, t0 + s(16)));
        assert!(
            b.allows(&host, Component::Kubelet, t0 + s(9)),
            "other processes are not held back"
        );
        // A quiet minute ends the loop.
        assert!(b.restarted(&host, hub, t0 + s(200)).is_none());
        assert!(b.allows(&host, hub, t0 + s(200)));
    }
}
