//! `yurt image build`, `yurt image push` and `yurt image import`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use yurt_cluster::image::{self, ImageSpec};
use yurt_cluster::progress::Step;
use yurt_cluster::registry::push::{PushTarget, human_size};
use yurt_cluster::registry::source::{self, OciImage};
use yurt_cluster::registry::{self as fleet_registry, Destination};
use yurt_cluster::spec::HostId;
use yurt_cluster::{Fleet, MachineConfig};

use super::absolute;
use crate::cli::ImageCommand;
use crate::progress::SpinnerReporter;

fn json_list(flag: &str, value: Option<String>) -> anyhow::Result<Option<Vec<String>>> {
    value
        .map(|v| {
            serde_json::from_str::<Vec<String>>(&v).with_context(|| {
                format!("{flag} must be a JSON array of strings, e.g. '[\"/app/run.sh\"]', got {v}")
            })
        })
        .transpose()
}

/// The image of this `yurt` (busybox with the binary at
/// [`yurt_manager::install::manifests::BINARY_IN_IMAGE`]), pushed to the fleet's
/// registry as `tag`: what the device agents PlatformAdmins run pull.
pub async fn push_yurt_image(
    machine: &MachineConfig,
    data_dir: &Path,
    tag: &str,
) -> anyhow::Result<()> {
    let yurt = std::env::current_exe().context("find this yurt binary")?;
    let inside = Path::new(yurt_manager::install::manifests::BINARY_IN_IMAGE);
    let mut spec = ImageSpec::busybox(tag).with_program_at(&yurt, inside)?;
    spec.entrypoint = Some(vec![inside.display().to_string()]);
    spec.cmd = None;
    let built =
        tokio::task::spawn_blocking(move || image::build_image(&spec, Path::new(image::BUSYBOX)))
            .await??;
    let image = OciImage::from_built(&built)?;
    push_to_fleet(machine, data_dir, &image, &[tag.to_owned()]).await
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
            push,
            with_yurt,
        } => {
            let mut spec = ImageSpec::busybox(&tag);
            if let Some(e) = json_list("--entrypoint", entrypoint)? {
                spec.entrypoint = Some(e);
                spec.cmd = None;
            }
            let cmd = json_list("--cmd", cmd)?;
            if let Some(c) = &cmd {
                spec.cmd = Some(c.clone());
            }
            if let Some(dir) = from_dir {
                if !dir.is_dir() {
                    anyhow::bail!("--from-dir {} is not a folder", dir.display());
                }
                spec.files = image::files_from_dir(&dir, &dest)?;
            }
            if with_yurt {
                let yurt = std::env::current_exe().context("find this yurt binary")?;
                let inside = Path::new(yurt_manager::install::manifests::BINARY_IN_IMAGE);
                spec = spec.with_program_at(&yurt, inside)?;
                if spec.entrypoint.is_none() {
                    spec.entrypoint = Some(vec![inside.display().to_string()]);
                    // busybox's default `sh` is no argument for yurt.
                    spec.cmd = cmd;
                }
            }
            let (built, output) = tokio::task::spawn_blocking(move || {
                let built = image::build_image(&spec, Path::new(image::BUSYBOX))?;
                image::write_archive(&spec, &built, &output)?;
                anyhow::Ok((built, output))
            })
            .await??;
            println!("built {tag} ({}) into {}", built.id(), output.display());
            if push {
                let image = OciImage::from_built(&built)?;
                push_to_fleet(machine, data_dir, &image, &[tag]).await?;
            }
        }
        ImageCommand::Push { source, names } => {
            let image = {
                let source = source.clone();
                tokio::task::spawn_blocking(move || source::load(&source)).await??
            };
            let names = if names.is_empty() {
                image.names.clone()
            } else {
                names
            };
            anyhow::ensure!(
                !names.is_empty(),
                "{} carries no image name; give one, e.g. `yurt image push {} docker.io/myorg/app:1`",
                source.display(),
                source.display()
            );
            push_to_fleet(machine, data_dir, &image, &names).await?;
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

/// Pushes `image` as each of `names` to the registry of the fleet in `data_dir`.
async fn push_to_fleet(
    machine: &MachineConfig,
    data_dir: &Path,
    image: &OciImage,
    names: &[String],
) -> anyhow::Result<()> {
    let destinations = names
        .iter()
        .map(|n| fleet_registry::destination(n))
        .collect::<Result<Vec<Destination>, _>>()?;
    let digest = image.digest();
    for d in &destinations {
        if let Some(pinned) = &d.digest {
            anyhow::ensure!(
                *pinned == digest,
                "{} pins {pinned}, but the image's manifest is {digest}",
                d.name
            );
        }
    }
    let dir = absolute(data_dir)?;
    let fleet = Fleet::open(machine, &dir)?;
    let target = PushTarget::for_fleet(fleet.paths(), fleet.plan())?;
    // One push per repository, with all of its tags.
    let mut by_repository: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in &destinations {
        let tags = by_repository.entry(&d.repository).or_default();
        tags.extend(d.tag.as_deref());
    }
    let reporter = SpinnerReporter::for_stderr();
    for (repository, tags) in &by_repository {
        let step = Step::start(
            reporter.as_ref(),
            format!(
                "pushing {repository} ({}, {} layers) to the fleet registry",
                human_size(image.size()),
                image.layers.len()
            ),
        );
        fleet_registry::push::push(&target, image, repository, tags, &|d| step.detail(d)).await?;
        step.finish();
    }
    for d in &destinations {
        let base = d.name.split('@').next().unwrap_or(&d.name);
        println!("pushed {base} ({digest})");
    }
    Ok(())
}
