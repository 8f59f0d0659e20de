//! Upstream Kubernetes binaries, built from Debian's `kubernetes` source package
//! (1.20.2, vendored) with Debian's Go, and cached outside the repository, keyed by
//! version, so later runs start in seconds.
//!
//! The source is fetched through a private sources list (one `deb-src` line for
//! bookworm on the machine's own Debian mirror) and private package lists, so the
//! system's apt configuration is never touched.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cmd;
use crate::error::{Error, Result};
use crate::lock;
use crate::packages;
use crate::progress::{Reporter, Step};

/// The Kubernetes version we build.
pub const KUBERNETES_VERSION: &str = "1.20.2";
/// Debian's source package version carrying it.
const DEBIAN_SOURCE_SUFFIX: &str = "really1.20.2.orig.tar.gz";
/// Revision of our build recipe; part of the cache key, so a changed recipe rebuilds.
const BUILD_REVISION: &str = "yurt.3";
/// Debian suite that carries the source package.
const DEBIAN_SUITE: &str = "bookworm";
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One upstream binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager.
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
    /// kubelet.
    Kubelet,
    /// kube-proxy.
    KubeProxy,
    /// kubectl (the 1.20 client).
    Kubectl,
    /// kubeadm.
    Kubeadm,
}

impl Binary {
    /// Every binary we build.
    pub const ALL: [Binary; 7] = [
        Binary::KubeApiserver,
        Binary::KubeControllerManager,
        Binary::KubeScheduler,
        Binary::Kubelet,
        Binary::KubeProxy,
        Binary::Kubectl,
        Binary::Kubeadm,
    ];

    /// The binary's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Binary::KubeApiserver => "kube-apiserver",
            Binary::KubeControllerManager => "kube-controller-manager",
            Binary::KubeScheduler => "kube-scheduler",
            Binary::Kubelet => "kubelet",
            Binary::KubeProxy => "kube-proxy",
            Binary::Kubectl => "kubectl",
            Binary::Kubeadm => "kubeadm",
        }
    }
}

/// A folder holding every [`Binary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBinaries {
    dir: PathBuf,
}

impl UpstreamBinaries {
    /// Binaries in `dir` (not checked).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The path of `binary`.
    pub fn path(&self, binary: Binary) -> PathBuf {
        self.dir.join(binary.file_name())
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn version_dir(cache_dir: &Path) -> PathBuf {
    cache_dir
        .join("kubernetes")
        .join(format!("v{KUBERNETES_VERSION}+{BUILD_REVISION}"))
}

/// Debian's packaged reflect2 1.0.2 (the Go 1.18+ fix), as Go source.
const REFLECT2_SOURCE: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
/// Where Kubernetes 1.20 vendors reflect2 1.0.1.
const REFLECT2_VENDOR: &str = "vendor/github.com/modern-go/reflect2";

/// Fixes the vendored sources need to run correctly when built with Debian's newer Go.
fn patch_vendor(src: &Path) -> Result<()> {
    swap_reflect2(src)?;
    fix_zero_value_type_check(src)
}

/// The OpenAPI type checks Kubernetes 1.20 vendors (kube-openapi's copy validates
/// custom resources).
const TYPE_CHECK_FILES: [&str; 2] = [
    "vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go",
    "vendor/github.com/go-openapi/validate/type.go",
];
/// The check that misfires under newer Go.
const ZERO_VALUE_CHECK: &str = "if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {";

/// Makes the custom-resource type check treat only a missing value as null.
///
/// The vendored check compares two `reflect.Value`s with `DeepEqual`. Built with Go
/// 1.15 that was never true for a real value; since Go 1.19 (Debian's) an empty string
/// and `reflect.Zero` point at the same runtime zero buffer, so every `""` in a custom
/// resource is rejected as "must be of type string: null". Later kube-openapi releases
/// check `data == nil` only, which is what this patch does.
fn fix_zero_value_type_check(src: &Path) -> Result<()> {
    for file in TYPE_CHECK_FILES {
        let path = src.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        if text.contains(ZERO_VALUE_CHECK) {
            let fixed = text.replace(ZERO_VALUE_CHECK, "if data == nil {");
            std::fs::write(&path, fixed).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Replaces the vendored reflect2 1.0.1 with Debian's 1.0.2.
///
/// reflect2 1.0.1 iterates maps through a copy of the runtime's iterator struct whose
/// size changed in Go 1.18; built with Debian's Go 1.19, kube-apiserver then corrupts
/// memory and dies with "fatal error: fault" in `aeshashbody` (json-iterator encoding a
/// map) within minutes under load. 1.0.2 is the upstream fix and keeps the same API.
fn swap_reflect2(src: &Path) -> Result<()> {
    let vendor = src.join(REFLECT2_VENDOR);
    let fixed = Path::new(REFLECT2_SOURCE);
    let is_source = |p: &Path| p.extension().is_some_and(|e| e == "go" || e == "s");
    let entries = |dir: &Path| -> Result<Vec<PathBuf>> {
        Ok(std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_source(p))
            .collect())
    };
    for old in entries(&vendor)? {
        std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
    }
    for new in entries(fixed)? {
        let to = vendor.join(new.file_name().unwrap_or_default());
        std::fs::copy(&new, &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}

fn complete_marker(bin: &Path) -> PathBuf {
    bin.join(".complete")
}

/// The cached binaries, if a complete build is in the cache.
pub fn cached(cache_dir: &Path) -> Option<UpstreamBinaries> {
    let dir = version_dir(cache_dir).join("bin");
    let complete = complete_marker(&dir).exists()
        && Binary::ALL
            .iter()
            .all(|b| dir.join(b.file_name()).is_file());
    complete.then_some(UpstreamBinaries { dir })
}

/// Returns the cached binaries, building them first if they are not cached.
///
/// Safe to call from several processes at once: one builds, the others wait.
///
/// # Errors
/// [`Error::Build`] naming the failed step and its log; package errors.
pub fn ensure(cache_dir: &Path, reporter: &dyn Reporter) -> Result<UpstreamBinaries> {
    if let Some(bins) = cached(cache_dir) {
        return Ok(bins);
    }
    let vdir = version_dir(cache_dir);
    std::fs::create_dir_all(&vdir).map_err(|e| Error::io(&vdir, e))?;
    let _guard = lock::exclusive(&PathBuf::from(format!("{}.lock", vdir.display())))?;
    if let Some(bins) = cached(cache_dir) {
        return Ok(bins);
    }
    packages::ensure(packages::BUILD_PACKAGES, reporter)?;
    let log = vdir.join("build.log");
    let orig = download_source(cache_dir, &vdir, &log, reporter)?;
    let src = unpack(&vdir, &orig, &log, reporter)?;
    build(cache_dir, &src, &log, reporter)?;
    install(&src, &vdir.join("bin"), &log)
}

/// Finds the machine's Debian mirror in its apt sources (one-line or deb822 format).
fn debian_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter(|f| {
            let name = f.to_string_lossy();
            name.ends_with(".list") || name.ends_with(".sources")
        })
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| mirror_in(&text))
}

/// The first non-security Debian archive URI in one sources file.
fn mirror_in(text: &str) -> Option<String> {
    let is_debian = |uri: &str| uri.contains("debian") && !uri.contains("security");
    // deb822 stanzas
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            })
        };
        if let (Some(types), Some(uris)) = (field("Types"), field("URIs"))
            && types
                .split_whitespace()
                .any(|t| t == "deb" || t == "deb-src")
            && let Some(uri) = uris.split_whitespace().find(|u| is_debian(u))
        {
            return Some(uri.trim_end_matches('/').to_owned());
        }
    }
    // one-line format: deb [options] uri suite components
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if !matches!(words.next(), Some("deb" | "deb-src")) {
            return None;
        }
        words
            .find(|w| !w.starts_with('[') && !w.ends_with(']') && w.contains("://"))
            .filter(|u| is_debian(u))
            .map(|u| u.trim_end_matches('/').to_owned())
    })
}

fn download_source(
    cache_dir: &Path,
    vdir: &Path,
    log: &Path,
    reporter: &dyn Reporter,
) -> Result<PathBuf> {
    let download = vdir.join("download");
    if let Some(orig) = find_orig(&download) {
        return Ok(orig);
    }
    let step = Step::start(
        reporter,
        "fetching Debian's kubernetes source package (34 MB)",
    );
    let mirror = debian_mirror().ok_or_else(|| Error::Build {
        step: "find the Debian mirror".into(),
        detail: "no Debian archive URI in /etc/apt/sources.list or /etc/apt/sources.list.d".into(),
        log: log.to_owned(),
    })?;
    let apt = cache_dir.join("apt");
    let lists = apt.join("lists");
    std::fs::create_dir_all(lists.join("partial")).map_err(|e| Error::io(&lists, e))?;
    let sources = apt.join("sources.list");
    let line = format!("deb-src [signed-by={DEBIAN_KEYRING}] {mirror} {DEBIAN_SUITE} main\n");
    std::fs::write(&sources, line).map_err(|e| Error::io(&sources, e))?;
    let apt_opts = |c: &mut Command| {
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null", "-o"])
            .arg(format!("Dir::State::Lists={}", lists.display()));
    };
    let mut update = Command::new("apt-get");
    apt_opts(&mut update);
    update.args(["update", "-q"]);
    run_logged("apt-get update (private deb-src list)", &mut update, log)?;
    let tmp = vdir.join("download.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut source = Command::new("apt-get");
    apt_opts(&mut source);
    source
        .args(["source", "--download-only", "-q", "kubernetes"])
        .current_dir(&tmp);
    run_logged("apt-get source kubernetes", &mut source, log)?;
    let _ = std::fs::remove_dir_all(&download);
    std::fs::rename(&tmp, &download).map_err(|e| Error::io(&download, e))?;
    let orig = find_orig(&download).ok_or_else(|| Error::Build {
        step: "apt-get source kubernetes".into(),
        detail: format!("no *{DEBIAN_SOURCE_SUFFIX} was downloaded: the package no longer carries {KUBERNETES_VERSION}"),
        log: log.to_owned(),
    })?;
    step.finish();
    Ok(orig)
}

fn find_orig(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(DEBIAN_SOURCE_SUFFIX))
}

fn unpack(vdir: &Path, orig: &Path, log: &Path, reporter: &dyn Reporter) -> Result<PathBuf> {
    let src = vdir.join("src");
    if src.join("Makefile").exists() {
        return Ok(src);
    }
    let step = Step::start(reporter, "unpacking the Kubernetes source");
    let tmp = vdir.join("src.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut tar = Command::new("tar");
    tar.arg("xzf")
        .arg(orig)
        .arg("-C")
        .arg(&tmp)
        .arg("--strip-components=1");
    run_logged("unpack the source", &mut tar, log)?;
    // The build wants the tree at $GOPATH/src/k8s.io/kubernetes.
    let gopath_dir = tmp.join(".go/src/k8s.io");
    std::fs::create_dir_all(&gopath_dir).map_err(|e| Error::io(&gopath_dir, e))?;
    std::os::unix::fs::symlink("../../..", gopath_dir.join("kubernetes"))
        .map_err(|e| Error::io(&gopath_dir, e))?;
    patch_vendor(&tmp)?;
    let _ = std::fs::remove_dir_all(&src);
    std::fs::rename(&tmp, &src).map_err(|e| Error::io(&src, e))?;
    step.finish();
    Ok(src)
}

fn build(cache_dir: &Path, src: &Path, log: &Path, reporter: &dyn Reporter) -> Result<()> {
    let targets: Vec<String> = Binary::ALL
        .iter()
        .map(|b| format!("cmd/{}", b.file_name()))
        .collect();
    let step = Step::start(
        reporter,
        format!(
            "building Kubernetes {KUBERNETES_VERSION} with Go (about 8 minutes on 2 cores, once)"
        ),
    );
    // A failed earlier attempt can leave an empty generator binary behind.
    let _ = std::fs::remove_dir_all(src.join("_output"));
    let home = cache_dir.join("home");
    std::fs::create_dir_all(&home).map_err(|e| Error::io(&home, e))?;
    let mut make = Command::new("make");
    make.current_dir(src)
        .arg(format!("WHAT={}", targets.join(" ")))
        // `dockerless`, upstream's build tag for kubelets without dockershim: our
        // nodes run containerd only, and with Docker's cAdvisor plugin compiled in, every
        // kubelet start spends five seconds retrying a Docker daemon that is not there
        // (cadvisor's `docker.RootDir`, five tries a second apart).
        .arg("GOFLAGS=-v -tags=dockerless")
        .env("GOPATH", src.join(".go"))
        .env("GOCACHE", cache_dir.join("go-build"))
        .env("HOME", &home)
        .env("CGO_ENABLED", "0")
        .env_remove("GOFLAGS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let _ = writeln!(logf, "$ {}", cmd::render(&make));
    let mut child = make.spawn().map_err(|source| Error::Spawn {
        program: "make".into(),
        source,
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        stdout.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        stderr.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|pipe| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let mut compiled = 0usize;
    for line in rx {
        let _ = writeln!(logf, "{line}");
        if !line.contains(' ') && line.contains('/') {
            compiled += 1;
            step.detail(&format!("{compiled} packages compiled: {line}"));
        } else if line.starts_with("+++") {
            step.detail(line.trim_start_matches("+++ "));
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().map_err(|e| Error::io(log, e))?;
    if !status.success() {
        return Err(Error::Build {
            step: format!("make WHAT=\"{}\"", targets.join(" ")),
            detail: format!("{status}; last output:\n{}", cmd::tail_file(log, 8)),
            log: log.to_owned(),
        });
    }
    step.finish();
    Ok(())
}

fn install(src: &Path, bin: &Path, log: &Path) -> Result<UpstreamBinaries> {
    let out = src.join("_output/bin");
    let tmp = bin.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for b in Binary::ALL {
        let from = out.join(b.file_name());
        if !from.is_file() {
            return Err(Error::Build {
                step: "collect binaries".into(),
                detail: format!("{} was not built", from.display()),
                log: log.to_owned(),
            });
        }
        std::fs::copy(&from, tmp.join(b.file_name())).map_err(|e| Error::io(&from, e))?;
    }
    std::fs::write(complete_marker(&tmp), KUBERNETES_VERSION).map_err(|e| Error::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(bin);
    std::fs::rename(&tmp, bin).map_err(|e| Error::io(bin, e))?;
    Ok(UpstreamBinaries {
        dir: bin.to_owned(),
    })
}

/// Runs a build step, appending its output to `log`.
fn run_logged(what: &str, command: &mut Command, log: &Path) -> Result<()> {
    let output = cmd::output(command)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let _ = writeln!(f, "$ {}", cmd::render(command));
    let _ = f.write_all(&output.stdout);
    let _ = f.write_all(&output.stderr);
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Build {
            step: what.to_owned(),
            detail: cmd::tail(&String::from_utf8_lossy(&output.stderr), 4),
            log: log.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mirror_in_deb822_sources() {
        let text = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n\
                    Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://deb.debian.org/debian")
        );
    }

    #[test]
    fn finds_mirror_in_one_line_sources() {
        let text = "# x\ndeb http://security.debian.org/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn ignores_non_debian_sources() {
        assert_eq!(
            mirror_in("deb https://packages.cloud.google.com/apt cloud-sdk main\n"),
            None
        );
    }

    #[test]
    fn a_failed_build_step_names_the_step_and_keeps_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        let err = run_logged(
            "apt-get source kubernetes",
            Command::new("sh").args([
                "-c",
                "echo progress; echo 'E: no such package' >&2; exit 100",
            ]),
            &log,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "building Kubernetes failed at step 'apt-get source kubernetes': E: no such package"
            ),
            "{msg}"
        );
        assert!(
            msg.ends_with(&format!("(full output: {})", log.display())),
            "{msg}"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("progress") && text.contains("E: no such package"),
            "{text}"
        );
    }

    #[test]
    fn cache_is_incomplete_without_marker() {
        let dir = tempfile::tempdir().unwrap();
        let bin = version_dir(dir.path()).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for b in Binary::ALL {
            std::fs::write(bin.join(b.file_name()), b"x").unwrap();
        }
        assert!(cached(dir.path()).is_none());
        std::fs::write(complete_marker(&bin), b"1.20.2").unwrap();
        assert_eq!(
            cached(dir.path()).unwrap().path(Binary::Kubelet),
            bin.join("kubelet")
        );
    }
}
