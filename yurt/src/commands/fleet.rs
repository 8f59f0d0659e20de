//! `yurt fleet ...`: handles on a running fleet.

use std::process::ExitCode;

use yurt_cluster::fleet::ProcessState;
use yurt_cluster::network::LinkTarget;
use yurt_cluster::progress::Step;
use yurt_cluster::{Fleet, MachineConfig};

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
        FleetCommand::Stop { host, process } => {
            fleet.stop_process(&host, &process)?;
            println!("stopped {process} on {host}");
        }
        FleetCommand::Start { host, process } => {
            let step = Step::start(reporter.as_ref(), format!("starting {process} on {host}"));
            fleet.start_process(&host, &process).await?;
            step.finish();
        }
        FleetCommand::Exec { host, command } => {
            let mut cmd = fleet.exec_command(&host, &command)?;
            let status = tokio::task::spawn_blocking(move || cmd.status()).await??;
            return Ok(ExitCode::from(
                status.code().map_or(1, |c| c.clamp(0, 255) as u8),
            ));
        }
        FleetCommand::Kubeconfig => println!("{}", fleet.admin_kubeconfig().display()),
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
