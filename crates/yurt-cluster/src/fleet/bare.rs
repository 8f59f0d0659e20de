//! The nodes of a bare fleet (`yurt up --bare`), brought up as on a kubeadm cluster:
//! the cloud host's own node first (a control-plane node), then kube-controller-manager
//! (it signs the kubelets' certificates), then each edge host joined with a bootstrap
//! token by `yurt adm join --node-type plain` run on the host, one at a time.
//!
//! One at a time, and each Node created just before its host joins: kube-controller-
//! manager 1.20's node lifecycle controller corrupts its NoExecute taint queue while a
//! zone is in full or partial disruption (see `up.rs`), and a zone with one Ready node
//! and at most two NotReady ones is in neither. The Node is created with the pod CIDR
//! of the address plan, as `yurt up` does for every edge host, so the host's CNI range,
//! its Node and the fleet's routes agree; kubelet takes the existing Node over.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::Fleet;
use crate::components::Component;
use crate::error::{Error, Result};
use crate::progress::Step;
use crate::spec::{HostId, WorkerPlan};

/// How long one host's join may take (its own `--timeout` is the same).
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);
/// `yurt adm join --timeout` for each host: discovery, then the rest, each within it,
/// and its rollback, all before [`JOIN_TIMEOUT`] and its margin.
const JOIN_OWN_TIMEOUT: &str = "2m";
/// How long the bootstrap token `yurt up` joins the hosts with stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

impl Fleet {
    /// Starts the cloud's node and every host that joined already (a restarted
    /// fleet's, from the units their join wrote), then kube-controller-manager once
    /// they are all Ready, then joins each edge host that has not joined yet.
    pub(super) async fn bring_up_bare_nodes(&self, step: &Step<'_>) -> Result<()> {
        let client = self.client().await?;
        let mut ready_first: Vec<WorkerPlan> = Vec::new();
        if let Some(cloud) = &self.plan.cloud_worker {
            step.detail(&format!("{} (the cloud's own node)", cloud.name));
            super::api::register_node(&client, &self.plan, &HostId::Cloud, true).await?;
            self.start_cloud_worker().await?;
            ready_first.push(cloud.clone());
        }
        let mut to_join = Vec::new();
        let mut joined = Vec::new();
        for edge in &self.plan.edges {
            let host = HostId::Edge(edge.name.clone());
            self.save_host_facts(&host, edge.ip)?;
            let hp = self.paths.host(&host);
            if yurt_adm::join::HostFiles::new(hp.root())
                .joined_marker()
                .exists()
            {
                joined.push(host);
                ready_first.extend(self.plan.worker(&HostId::Edge(edge.name.clone())));
            } else {
                to_join.push(host);
            }
        }
        if !joined.is_empty() {
            step.detail(&format!(
                "{} joined hosts: starting from their units",
                joined.len()
            ));
            futures::future::try_join_all(joined.iter().map(|h| self.start_host(h))).await?;
        }
        for worker in &ready_first {
            wait_node_ready(&client, worker, Duration::from_secs(180)).await?;
        }
        step.detail(Component::KubeControllerManager.name());
        self.start_component(&HostId::Cloud, Component::KubeControllerManager)
            .await?;
        // A token lives an hour: one that has lived half of it is replaced, so a long
        // row of joins never meets an expired one.
        let mut join: Option<(String, String, Instant)> = None;
        for host in &to_join {
            step.detail(&format!("{host}: joining"));
            super::api::register_node(&client, &self.plan, host, true).await?;
            // Only containerd: whatever a join cut short left behind, the join started
            // again resumes (and starts kubelet itself).
            self.start_host_with(host, vec![Component::Containerd])
                .await?;
            if join
                .as_ref()
                .is_none_or(|(_, _, made)| made.elapsed() > TOKEN_TTL / 2)
            {
                let (token, hash) = self.bootstrap_token(&client).await?;
                join = Some((token, hash, Instant::now()));
            }
            let (token, hash, _) = join.as_ref().expect("set above");
            self.run_join(host, token, hash).await?;
            let worker = self.plan.worker(host).expect("a planned edge host");
            wait_node_ready(&client, &worker, JOIN_TIMEOUT).await?;
        }
        Ok(())
    }

    /// A new bootstrap token for the joins, and the CA's pin (`sha256:...`).
    async fn bootstrap_token(&self, client: &kube::Client) -> Result<(String, String)> {
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::Invalid(format!("{what}: {e}"));
        let token = yurt_adm::token::TokenString::generate()
            .map_err(|e| bad("generate a bootstrap token", &e))?;
        let mut record =
            yurt_adm::token::BootstrapToken::new(token, Some(TOKEN_TTL), jiff::Timestamp::now())
                .map_err(|e| bad("bootstrap token", &e))?;
        record.description = "yurt up --bare: joins the fleet's edge hosts".to_owned();
        yurt_adm::token::create(client, &record)
            .await
            .map_err(|e| bad("create the bootstrap token", &e))?;
        let ca = std::fs::read_to_string(self.pki.ca_cert())
            .map_err(|e| Error::io(self.pki.ca_cert(), e))?;
        let pin = yurt_adm::discovery::CaCertHash::of_pem_bundle(&ca)
            .map_err(|e| bad("pin the fleet's CA", &e))?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid("the fleet's CA file holds no certificate".into()))?;
        Ok((record.token.to_string(), pin.to_string()))
    }

    /// Runs `yurt adm join` on `host` as a user would (`yurt fleet exec`), its output
    /// in the host's `logs/yurt-adm-join.log`.
    async fn run_join(&self, host: &HostId, token: &str, hash: &str) -> Result<()> {
        let server = format!(
            "{}:{}",
            crate::spec::net::CLOUD_IP.addr,
            crate::spec::net::API_PORT
        );
        let argv: Vec<String> = [
            "yurt",
            "adm",
            "join",
            &server,
            "--token",
            token,
            "--discovery-token-ca-cert-hash",
            hash,
            "--node-name",
            &host.to_string(),
            "--node-type",
            "plain",
            // Its own deadline comes well before ours, so a join that cannot finish
            // rolls itself back rather than being killed half-way.
            "--timeout",
            JOIN_OWN_TIMEOUT,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let log = self.paths.host(host).log("yurt-adm-join");
        let out = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        let mut command =
            tokio::process::Command::from(self.exec_command(&host.to_string(), &argv)?);
        // While join runs, this process is the host's service manager for it (join
        // starts and restarts kubelet through it), as `yurt fleet exec` is.
        let socket = super::service_manager::socket_path(self, host);
        let listener = super::service_manager::bind(&socket)?;
        command
            .env(yurt_core::host::SERVICE_MANAGER_ENV, &socket)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let stop = CancellationToken::new();
        let own = Fleet::open(&self.machine, self.paths.root())?;
        let server = tokio::spawn(super::service_manager::serve(
            Arc::new(tokio::sync::Mutex::new(own)),
            host.clone(),
            listener,
            stop.clone(),
        ));
        let status =
            tokio::time::timeout(JOIN_TIMEOUT + Duration::from_secs(30), command.status()).await;
        stop.cancel();
        let _ = server.await;
        let _ = std::fs::remove_file(&socket);
        let status = status
            .map_err(|_| Error::NotReady {
                what: format!("yurt adm join on {host}"),
                waited: JOIN_TIMEOUT,
                log: Some(log.clone()),
            })?
            .map_err(|e| Error::io(&log, e))?;
        if status.success() {
            return Ok(());
        }
        Err(Error::ProcessExited {
            host: host.to_string(),
            process: "yurt adm join".to_owned(),
            status: status.to_string(),
            tail: crate::cmd::tail_file(&log, 8),
            log,
        })
    }
}

/// Waits until `worker`'s Node is Ready.
async fn wait_node_ready(
    client: &kube::Client,
    worker: &WorkerPlan,
    timeout: Duration,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        let ready = nodes
            .get_opt(worker.name.as_str())
            .await
            .ok()
            .flatten()
            .is_some_and(|n| super::api::node_is_ready(&n));
        if ready {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::NotReady {
                what: format!("node {}", worker.name),
                waited: timeout,
                log: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
