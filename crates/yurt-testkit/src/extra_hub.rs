//! A second hub on a fleet node, beside the fleet's own: the same flags as the node's hub
//! (read from its command line), but its own ports (20261 proxy, 20267 admin, 20268 pod
//! port on the existing dummy address), cache and certificate folder, and no serving
//! files, so it asks the cluster for its serving certificate by CSR, as a joined node's
//! hub does.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::TestFleet;

/// The extra hub's admin port.
pub const ADMIN_PORT: u16 = 20267;
/// The extra hub's pod-facing port (on the node's dummy address, 169.254.2.1).
pub const POD_PORT: u16 = 20268;

/// A running extra hub; killed when dropped.
#[derive(Debug)]
pub struct ExtraHub {
    child: std::process::Child,
    node: String,
    dir: PathBuf,
}

impl TestFleet {
    /// Starts an extra hub on `node`, keeping its cache, certificates and log in `dir`.
    ///
    /// # Errors
    /// No hub runs on `node` to copy flags from, or the process cannot start.
    pub fn start_extra_hub(&self, node: &str, dir: &Path) -> anyhow::Result<ExtraHub> {
        self.start_extra_hub_with(node, dir, false)
    }

    /// Like [`TestFleet::start_extra_hub`], but started from the node's kubelet
    /// certificate (`system:node:<node>` in `system:nodes` only, as a joined node's
    /// kubelet has) with `--request-client-certificate`: it asks for a client certificate
    /// of its own, as a joined node's hub does.
    ///
    /// # Errors
    /// As [`TestFleet::start_extra_hub`].
    pub fn start_extra_hub_from_kubelet(&self, node: &str, dir: &Path) -> anyhow::Result<ExtraHub> {
        self.start_extra_hub_with(node, dir, true)
    }

    fn start_extra_hub_with(
        &self,
        node: &str,
        dir: &Path,
        from_kubelet: bool,
    ) -> anyhow::Result<ExtraHub> {
        let host = self.fleet().plan().host(node)?;
        let pid_file = self.fleet().paths().host(&host).pid_file("yurt-hub");
        let record = yurt_cluster::process::PidRecord::read(&pid_file)
            .with_context(|| format!("the hub's pid file {}", pid_file.display()))?;
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", record.pid))?;
        let mut argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .filter(|a| {
                !["--serving-cert=", "--serving-key=", "--disk-cache-path="]
                    .iter()
                    .chain(if from_kubelet {
                        ["--client-cert=", "--client-key="].iter()
                    } else {
                        [].iter()
                    })
                    .any(|flag| a.starts_with(flag))
            })
            .collect();
        let hub = argv
            .iter()
            .position(|a| a == "hub")
            .context("a hub's command line")?;
        argv.drain(..hub);
        argv.insert(0, crate::machine().yurt_binary.display().to_string());
        argv.extend([
            format!("--disk-cache-path={}", dir.join("cache").display()),
            format!("--cert-dir={}", dir.join("pki").display()),
            "--proxy-port=20261".to_owned(),
            format!("--serve-port={ADMIN_PORT}"),
            format!("--proxy-secure-port={POD_PORT}"),
            "--enable-dummy-if=false".to_owned(),
        ]);
        if from_kubelet {
            let pki = yurt_cluster::pki::PkiPaths::new(self.fleet().paths());
            let kubelet = yurt_cluster::pki::Identity::Node(node.parse()?).stem();
            argv.extend([
                format!("--client-cert={}", pki.cert(&kubelet).display()),
                format!("--client-key={}", pki.key(&kubelet).display()),
                "--request-client-certificate".to_owned(),
            ]);
        }
        let log = std::fs::File::create(dir.join("hub.log"))?;
        let child = self
            .fleet()
            .exec_command(node, &argv)?
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(ExtraHub {
            child,
            node: node.to_owned(),
            dir: dir.to_owned(),
        })
    }
}

impl ExtraHub {
    /// Whether its `/v1/readyz` answers 200.
    ///
    /// # Errors
    /// `curl` could not run in the node.
    pub fn ready(&self, f: &TestFleet) -> anyhow::Result<bool> {
        let url = format!("http://127.0.0.1:{ADMIN_PORT}/v1/readyz");
        let out = f.exec(
            &self.node,
            &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "200")
    }

    /// Connects to its pod port at 169.254.2.1 verifying the fleet CA, as a pod would:
    /// the `expire date` curl reports for the certificate it was shown.
    ///
    /// # Errors
    /// The TLS handshake or verification failed (curl's message), or curl could not run.
    pub fn presented_expiry(&self, f: &TestFleet) -> anyhow::Result<String> {
        let ca = yurt_cluster::pki::PkiPaths::new(f.fleet().paths()).ca_cert();
        let url = format!("https://169.254.2.1:{POD_PORT}/version");
        let ca = ca.display().to_string();
        let out = f.exec(
            &self.node,
            &[
                "curl",
                "-sS",
                "-v",
                "-o",
                "/dev/null",
                "--cacert",
                &ca,
                &url,
            ],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.success(),
            "TLS to the extra hub's pod port: {stderr}"
        );
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("*  expire date: "))
            .map(str::to_owned)
            .with_context(|| format!("no expire date in curl's output: {stderr}"))
    }

    /// The serving certificate and key it stores (`yurthub-server-current.pem`).
    pub fn stored_certificate(&self) -> PathBuf {
        self.dir.join("pki").join("yurthub-server-current.pem")
    }

    /// The client certificate and key of its own it stores (`yurthub-current.pem`).
    pub fn stored_client_certificate(&self) -> PathBuf {
        self.dir.join("pki").join("yurthub-current.pem")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default()
    }
}

impl Drop for ExtraHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
