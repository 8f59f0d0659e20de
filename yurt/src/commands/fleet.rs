//! `yurt fleet ...`: handles on a running fleet.

use std::process::ExitCode;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use yurt_cluster::fleet::{self, ProcessState, Supervision};
use yurt_cluster::network::LinkTarget;
use yurt_cluster::process::{PidRecord, humantime_now};
use yurt_cluster::progress::Step;
use yurt_cluster::{Error, Fleet, MachineConfig, lock};

use super::absolute;
use crate::cli::{FleetArgs, FleetCommand};
use crate::progress::SpinnerReporter;

/// Runs `yurt fleet ...`.
pub async fn run(
    machine: &MachineConfig,
    data_dir: &std::path::Path,
    args: FleetArgs,
) -> anyhow::Result<ExitCode> {
    let dir = absolute(data_dir)?;
    let mut fleet = Fleet::open(machine, &dir)?;
    let reporter = SpinnerReporter::for_stderr();
    match args.command {
        FleetCommand::Status => print_status(&fleet),
        FleetCommand::Cut { target } => {
            let t = fleet.cut(&target)?;
            println!("cut {}: {}", t.name(), describe(&t, false));
        }
        FleetCommand::Restore { target } => {
            let t = fleet.restore(&target)?;
            println!("restored {}: {}", t.name(), describe(&t, true));
        }
        FleetCommand::Reboot { node } => {
            let step = Step::start(reporter.as_ref(), format!("rebooting {node}"));
            fleet.reboot(&node).await?;
            step.finish();
        }
        FleetCommand::Stop {
            host,
            process,
            kill,
        } => {
            if kill {
                fleet.kill_process(&host, &process)?;
                println!("killed {process} on {host}");
            } else {
                fleet.stop_process(&host, &process)?;
                println!("stopped {process} on {host}");
            }
        }
        FleetCommand::Start { host, process } => {
            let step = Step::start(reporter.as_ref(), format!("starting {process} on {host}"));
            fleet.start_process(&host, &process).await?;
            step.finish();
        }
        FleetCommand::Exec { host, command } => {
            let mut cmd = fleet.exec_command(&host, &command)?;
            // While the command runs, the fleet is the host's service manager for it.
            let host = fleet.plan().host(&host)?;
            let socket = fleet::service_manager::socket_path(&fleet, &host);
            let listener = fleet::service_manager::bind(&socket)?;
            cmd.env(yurt_core::host::SERVICE_MANAGER_ENV, &socket);
            let stop = CancellationToken::new();
            let server = tokio::spawn(fleet::service_manager::serve(
                std::sync::Arc::new(tokio::sync::Mutex::new(fleet)),
                host,
                listener,
                stop.clone(),
            ));
            let status = tokio::task::spawn_blocking(move || cmd.status()).await;
            stop.cancel();
            let _ = server.await;
            let _ = std::fs::remove_file(&socket);
            let status = status??;
            return Ok(ExitCode::from(
                status.code().map_or(1, |c| c.clamp(0, 255) as u8),
            ));
        }
        FleetCommand::AddHost { name, pool } => {
            let step = Step::start(
                reporter.as_ref(),
                format!("adding {name} to {pool}: network, containerd, images"),
            );
            let host = fleet.add_host(&name, &pool).await?;
            step.finish();
            let added = fleet.plan().added_host(&host.to_string()).cloned();
            if let Some(a) = added {
                println!(
                    "added {host} in {pool} at {}: containerd runs with the fleet's images; it has no certificates and no Node, so the cluster does not know it yet",
                    a.ip
                );
            }
        }
        FleetCommand::RemoveHost { name } => {
            let step = Step::start(reporter.as_ref(), format!("removing {name}"));
            fleet.remove_host(&name).await?;
            step.finish();
            println!("removed {name}: no process, mount, route or file of it is left");
        }
        FleetCommand::FollowRoutes {
            kubeconfig,
            period,
            admin_address,
        } => {
            super::follow_routes::run(&dir, &kubeconfig, period, admin_address).await?;
        }
        FleetCommand::Kubeconfig => println!("{}", fleet.admin_kubeconfig().display()),
        FleetCommand::Supervise => supervise(machine, &dir, fleet).await?,
        FleetCommand::ServiceManager => {
            let token = CancellationToken::new();
            let signals = tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
            eprintln!(
                "serving the service managers of the fleet in {} until stopped",
                dir.display()
            );
            fleet::service_manager::serve_every_host(machine, &dir, token).await?;
            signals.abort();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(target: &LinkTarget, connected: bool) -> &'static str {
    match (target, connected) {
        (LinkTarget::Node(_), false) => {
            "the node keeps running, cut off from the cloud and its pool"
        }
        (LinkTarget::Pool(_), false) => {
            "the pool's nodes keep running and reach each other, but not the cloud"
        }
        (LinkTarget::Cloud, false) => "every edge site has lost the cloud",
        (_, true) => "connected to the cloud again",
    }
}

fn print_status(fleet: &Fleet) {
    let state = fleet.state();
    println!(
        "fleet in {} (slot {}, {} mode), API server {}",
        fleet.paths().root().display(),
        state.slot,
        state.spec.mode,
        fleet.plan().api_url_from_host()
    );
    if !fleet.is_up() {
        println!("not running (start it with `yurt up`)");
        return;
    }
    println!(
        "image registry: https://{} for the fleet (pull only); pushes from this machine to https://{}:{} (user {}, password in {})",
        yurt_cluster::registry::pull_host(),
        fleet.plan().cloud_host_side_ip().addr,
        yurt_cluster::registry::PUSH_PORT,
        yurt_cluster::registry::PUSH_USER,
        yurt_cluster::registry::password_file(&fleet.paths().pki()).display(),
    );
    let paths = fleet.paths();
    match fleet::supervision(paths) {
        Ok(Supervision::Foreground { pid }) => {
            println!(
                "supervisor: yurt up in the foreground (pid {pid}) restarts crashed processes"
            );
        }
        Ok(Supervision::Detached { pid, log }) => println!(
            "supervisor: detached (pid {pid}) restarts crashed processes; log {}",
            log.display()
        ),
        Ok(Supervision::None) => {
            println!("supervisor: none (crashed processes stay down until `yurt fleet start`)");
        }
        Err(e) => println!("supervisor: unknown ({e})"),
    }
    if let Some(report) = fleet::last_report(paths) {
        println!("last supervisor report: {}", report.trim_end());
    }
    println!(
        "{:<10} {:<8} {:<12} {:<10} PROCESSES",
        "HOST", "POOL", "ADDRESS", "LINK"
    );
    for h in fleet.status() {
        let link = match h.connected {
            Some(true) => "up",
            Some(false) => "CUT",
            None => "-",
        };
        let procs: Vec<String> = h
            .processes
            .iter()
            .map(|p| match (p.state, p.pid) {
                (ProcessState::Running, Some(pid)) => format!("{}({pid})", p.component),
                (ProcessState::Stopped, _) => format!("{}(stopped)", p.component),
                _ => format!("{}(DEAD)", p.component),
            })
            .collect();
        println!(
            "{:<10} {:<8} {:<12} {:<10} {}",
            h.host.to_string(),
            h.pool.as_deref().unwrap_or("-"),
            h.address.to_string(),
            link,
            procs.join(" ")
        );
    }
}

/// How long the detached supervisor waits for the `yurt up --detach` that started it to
/// hand over the fleet's lock.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the supervisor looks for crashed processes.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(2);

/// `yurt fleet supervise`: the detached supervisor `yurt up --detach` leaves behind. It
/// holds the fleet's `up.lock` (so it is the fleet's one owner, and `yurt down` stops
/// it first), restarts crashed processes until SIGTERM, and writes what it does to its
/// stderr (the supervisor log). Stopping it leaves the fleet running.
async fn supervise(
    machine: &yurt_cluster::MachineConfig,
    data_dir: &std::path::Path,
    mut fleet: Fleet,
) -> anyhow::Result<()> {
    // A session of its own: the terminal of the `yurt up --detach` that started it
    // can close (SIGHUP) or be interrupted (SIGINT) without reaching it.
    let _ = nix::unistd::setsid();
    if !fleet.is_up() {
        anyhow::bail!(
            "the fleet in {} is not running; nothing to supervise",
            fleet.paths().root().display()
        );
    }
    let paths = fleet.paths().clone();
    let up_lock = paths.up_lock();
    let dir = paths.root().to_owned();
    let lock = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + HANDOVER_TIMEOUT;
        loop {
            match lock::try_exclusive(&up_lock)? {
                Ok(lock) => return Ok(lock),
                Err(pid) if Instant::now() >= deadline => {
                    return Err(Error::DataDirInUse { dir, pid });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
    .await??;
    let me = std::process::id() as i32;
    let pid_file = fleet::supervisor_pid_file(&paths);
    PidRecord::of(me)
        .ok_or_else(|| anyhow::anyhow!("cannot read this process's start time"))?
        .write(&pid_file)?;
    eprintln!(
        "{}: supervising the fleet in {} (pid {me})",
        humantime_now(),
        paths.root().display()
    );
    let token = CancellationToken::new();
    let signals = tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    // The hosts' service managers, for tools that run on a host from a pod.
    let services = {
        let (machine, dir, token) = (machine.clone(), data_dir.to_owned(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = fleet::service_manager::serve_every_host(&machine, &dir, token).await {
                eprintln!("{}: the hosts' service managers: {e}", humantime_now());
            }
        })
    };
    fleet
        .supervise_until(SUPERVISE_INTERVAL, token.cancelled(), |event| {
            eprintln!("{}: {event}", humantime_now());
        })
        .await;
    let _ = services.await;
    let _ = std::fs::remove_file(&pid_file);
    eprintln!("{}: stopped supervising", humantime_now());
    drop(lock);
    let _ = signals.await;
    Ok(())
}
