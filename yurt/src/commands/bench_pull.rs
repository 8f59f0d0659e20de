//! `yurt bench fleet`'s image measurement: a 50 MiB image reaching every edge node at
//! once, pulled through the fleet registry over each host's own link, against `ctr
//! import` of the same archive on each node (what fleets did before the registry), in
//! the same run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use yurt_cluster::Fleet;
use yurt_cluster::image::{self, ImageFile, ImageSpec};
use yurt_cluster::progress::{Reporter, Step};
use yurt_cluster::registry::push::{PushTarget, push};
use yurt_cluster::registry::source::OciImage;
use yurt_cluster::spec::HostId;

/// The benchmark image's name (pushed to and pulled from the fleet registry).
const IMAGE: &str = "yurt.local/bench-pull:1";
/// Rounds of each way; the median is reported.
const ROUNDS: usize = 3;

/// What one run measured.
pub struct PullRow {
    /// The image's size (all blobs).
    pub image_bytes: usize,
    /// Edge nodes served at once.
    pub nodes: usize,
    /// The push to the registry, once.
    pub push: Duration,
    /// Median of the pulls through the registry, all nodes at once.
    pub pull: Duration,
    /// Median of the imports, all nodes at once.
    pub import: Duration,
}

/// Builds the image, pushes it, then times pulls and imports to every edge node.
///
/// # Errors
/// A build, push, pull or import failure.
pub async fn measure(
    fleet: &Fleet,
    work_dir: &Path,
    mib: usize,
    reporter: &dyn Reporter,
) -> anyhow::Result<PullRow> {
    let step = Step::start(reporter, format!("building a {mib} MiB image"));
    let archive = work_dir.join("bench-pull.tar");
    let built = {
        let archive = archive.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<image::BuiltImage> {
            // Random bytes: nothing to deduplicate or compress away.
            let mut noise = vec![0u8; mib * 1024 * 1024];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut noise))?;
            let mut spec = ImageSpec::busybox(IMAGE);
            spec.files = vec![ImageFile {
                path: "data/noise".into(),
                contents: noise,
                mode: 0o644,
            }];
            let built = image::build_image(&spec, Path::new(image::BUSYBOX))?;
            image::write_archive(&spec, &built, &archive)?;
            Ok(built)
        })
        .await??
    };
    step.finish();

    let step = Step::start(reporter, "pushing it to the fleet registry");
    let oci = OciImage::from_built(&built)?;
    let target = PushTarget::for_fleet(fleet.paths(), fleet.plan())?;
    let destination = yurt_cluster::registry::destination(IMAGE)?;
    let tags: Vec<&str> = destination.tag.iter().map(String::as_str).collect();
    let started = Instant::now();
    push(&target, &oci, &destination.repository, &tags, &|d| {
        step.detail(d);
    })
    .await?;
    let pushed = started.elapsed();
    step.finish();

    let edges: Vec<HostId> = fleet
        .plan()
        .edges
        .iter()
        .map(|e| HostId::Edge(e.name.clone()))
        .collect();
    let (mut pulls, mut imports) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let step = Step::start(
            reporter,
            format!(
                "round {round}/{ROUNDS}: pull through the registry, then ctr import, on {} nodes at once",
                edges.len()
            ),
        );
        forget(fleet, &edges, &oci)?;
        pulls.push(all_at_once(&edges, |host| {
            let certs = fleet.paths().host(host).containerd_certs_d();
            ctr_in_host(
                fleet,
                host,
                &[
                    "images",
                    "pull",
                    "--hosts-dir",
                    &certs.to_string_lossy(),
                    IMAGE,
                ],
            )
        })?);
        forget(fleet, &edges, &oci)?;
        imports.push(all_at_once(&edges, |host| {
            ctr_in_host(
                fleet,
                host,
                &["images", "import", &archive.to_string_lossy()],
            )
        })?);
        forget(fleet, &edges, &oci)?;
        step.finish();
    }
    pulls.sort();
    imports.sort();
    Ok(PullRow {
        image_bytes: oci.size(),
        nodes: edges.len(),
        push: pushed,
        pull: pulls[pulls.len() / 2],
        import: imports[imports.len() / 2],
    })
}

/// `ctr` against `host`'s containerd, run inside the host (its network namespace and
/// cgroup: a pull crosses the host's own link).
fn ctr_in_host(fleet: &Fleet, host: &HostId, args: &[&str]) -> anyhow::Result<Command> {
    let socket = fleet.paths().host(host).containerd_socket();
    let mut argv = vec![
        "ctr".to_owned(),
        "-a".to_owned(),
        socket.to_string_lossy().into_owned(),
        "-n".to_owned(),
        "k8s.io".to_owned(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let mut cmd = fleet.exec_command(&host.to_string(), &argv)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// Starts the command of every host at once; the wall time until all succeeded.
fn all_at_once(
    hosts: &[HostId],
    command: impl Fn(&HostId) -> anyhow::Result<Command>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let children = hosts
        .iter()
        .map(|h| {
            command(h)?
                .spawn()
                .with_context(|| format!("starting ctr in {h}"))
                .map(|c| (h, c))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (host, child) in children {
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "ctr in {host}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(started.elapsed())
}

/// Removes the image from every host, its content with it, so the next round starts
/// from nothing: every name containerd's CRI plugin keeps it under (the tag, the
/// repository digest and the image ID, each of which holds the content).
fn forget(fleet: &Fleet, hosts: &[HostId], image: &OciImage) -> anyhow::Result<()> {
    let repository = IMAGE.rsplit_once(':').map_or(IMAGE, |(r, _)| r);
    let by_digest = format!("{repository}@{}", image.digest());
    for h in hosts {
        let names = [IMAGE, by_digest.as_str(), image.config.digest.as_str()];
        let mut args = vec!["images", "rm", "--sync"];
        args.extend(names);
        // Absent names (all of them, the first time) are not an error.
        let _ = ctr_in_host(fleet, h, &args)?.output();
        let left = ctr_in_host(fleet, h, &["content", "ls", "-q"])?
            .stdout(Stdio::piped())
            .output()?;
        let left = String::from_utf8_lossy(&left.stdout);
        anyhow::ensure!(
            !image.layers.iter().any(|l| left.contains(&l.digest)),
            "the image's layer is still in {h}'s content store"
        );
    }
    Ok(())
}
