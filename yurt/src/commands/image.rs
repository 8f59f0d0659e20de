//! `yurt image build` and `yurt image import`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use yurt_cluster::image::{self, ImageSpec};
use yurt_cluster::spec::HostId;
use yurt_cluster::{Fleet, MachineConfig};

use super::absolute;
use crate::cli::ImageCommand;

fn json_list(flag: &str, value: Option<String>) -> anyhow::Result<Option<Vec<String>>> {
    value
        .map(|v| {
            serde_json::from_str::<Vec<String>>(&v).with_context(|| {
                format!("{flag} must be a JSON array of strings, e.g. '[\"/app/run.sh\"]', got {v}")
            })
        })
        .transpose()
}

/// Runs `yurt image ...`.
pub async fn run(
    machine: &MachineConfig,
    data_dir: &Path,
    cmd: ImageCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Build {
            tag,
            from_dir,
            dest,
            entrypoint,
            cmd,
            output,
        } => {
            let mut spec = ImageSpec::busybox(&tag);
            if let Some(e) = json_list("--entrypoint", entrypoint)? {
                spec.entrypoint = Some(e);
                spec.cmd = None;
            }
            if let Some(c) = json_list("--cmd", cmd)? {
                spec.cmd = Some(c);
            }
            if let Some(dir) = from_dir {
                if !dir.is_dir() {
                    anyhow::bail!("--from-dir {} is not a folder", dir.display());
                }
                spec.files = image::files_from_dir(&dir, &dest)?;
            }
            let id = tokio::task::spawn_blocking(move || {
                image::build(&spec, Path::new(image::BUSYBOX), &output).map(|id| (id, output))
            })
            .await??;
            println!("built {tag} ({}) into {}", id.0, id.1.display());
        }
        ImageCommand::Import { archives } => {
            let dir = absolute(data_dir)?;
            let fleet = Fleet::open(machine, &dir)?;
            for a in &archives {
                if !a.is_file() {
                    anyhow::bail!("{} is not a file", a.display());
                }
            }
            let images = fleet.paths().images();
            let sockets: Vec<(String, std::path::PathBuf)> = fleet
                .plan()
                .edges
                .iter()
                .map(|e| {
                    let host = HostId::Edge(e.name.clone());
                    (
                        host.to_string(),
                        fleet.paths().host(&host).containerd_socket(),
                    )
                })
                .collect();
            let imported = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
                std::fs::create_dir_all(&images)?;
                let mut done = Vec::new();
                for a in &archives {
                    let name = a.file_name().context("archive has no file name")?;
                    // Kept in the fleet, so nodes that start or reboot later get it too.
                    std::fs::copy(a, images.join(name))?;
                    for (host, socket) in &sockets {
                        if socket.exists() {
                            image::import(socket, a)?;
                            done.push(format!("{} -> {host}", a.display()));
                        }
                    }
                }
                Ok(done)
            })
            .await??;
            for line in imported {
                println!("imported {line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
