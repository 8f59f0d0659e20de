//! `yurt bench adm`: what joining costs, on a one-node fleet. Today one measure, the
//! time from creating a certificate request to holding the certificate:
//! - ours: the hub's serving certificate as it asks for it
//!   (`yurt_hub::certificate::csr`), made as the node, approved by the manager's
//!   csrapprover and signed by kube-controller-manager;
//! - anchor, in the same run: a kubelet's client certificate asked for with a bootstrap
//!   token (the TLS bootstrap of `kubeadm join`), approved by kube-controller-manager's
//!   own csrapproving controller and signed by the same signer.
//!
//! The requests alternate, one at a time, so both see the same machine. Join phase by
//! phase, conversion and concurrent joins come with `yurt adm join` and the conversion
//! controller (not built yet).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use yurt_cluster::progress::{Reporter, Step};

use super::bench::percentile;
use super::bench_table::Table;
use crate::progress::SpinnerReporter;

/// `yurt bench adm` options.
#[derive(Debug, Args)]
pub struct BenchAdmArgs {
    /// Certificate requests of each kind.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub csrs: u16,
    /// Folder for the benchmark's fleet (removed afterwards).
    #[arg(long, default_value = "/var/lib/yurt/bench-adm")]
    pub bench_dir: PathBuf,
}

/// Runs `yurt bench adm`.
pub async fn run(
    machine: &yurt_cluster::MachineConfig,
    args: BenchAdmArgs,
) -> anyhow::Result<ExitCode> {
    let reporter: Arc<dyn Reporter> = SpinnerReporter::for_stderr();
    let table = super::bench::on_one_node_fleet(
        machine,
        &args.bench_dir.join("fleet"),
        "a one-node fleet",
        reporter.as_ref(),
        async |fleet| measure(fleet, &args, reporter.as_ref()).await,
    )
    .await?;
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// A client of the fleet's API server (as reached from this machine) that trusts the
/// fleet CA and authenticates with the client certificate in `kubeconfig`, or with
/// `bearer` and no certificate.
async fn client(
    fleet: &yurt_cluster::Fleet,
    kubeconfig: &str,
    bearer: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await?;
    config.cluster_url = fleet.plan().api_url_from_host().parse()?;
    if let Some(token) = bearer {
        config.auth_info = kube::config::AuthInfo::default();
        config.headers.push((
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}"))?,
        ));
    }
    Ok(kube::Client::try_from(config)?)
}

async fn measure(
    fleet: &yurt_cluster::Fleet,
    args: &BenchAdmArgs,
    reporter: &dyn Reporter,
) -> anyhow::Result<Table> {
    let admin = fleet.client().await?;
    let node = fleet
        .plan()
        .edges
        .first()
        .context("the fleet's edge node")?
        .name
        .to_string();

    // The node's identity, as its hub holds it, minted from the fleet CA.
    let pki = yurt_cluster::pki::PkiPaths::new(fleet.paths());
    let ca = yurt_core::pki::CertificateAuthority::from_pem(
        yurt_cluster::pki::CA_NAME,
        &std::fs::read_to_string(pki.ca_cert())?,
        &std::fs::read_to_string(pki.ca_key())?,
    )?;
    let issued = ca.issue(&yurt_core::pki::CertSpec::client(
        format!("system:node:{node}"),
        &["system:nodes"],
    ))?;
    let node_kubeconfig = yurt_cluster::pki::kubeconfig(
        &fleet.plan().api_url_from_host(),
        ca.cert_pem(),
        &issued.cert_pem,
        &issued.key_pem,
        &node,
    )?;
    let as_node = client(fleet, &node_kubeconfig, None).await?;

    // A bootstrap token, as `kubeadm token create` makes it.
    let token = yurt_adm::token::BootstrapToken::new(
        yurt_adm::token::TokenString::generate()?,
        Some(Duration::from_secs(3600)),
        jiff::Timestamp::now(),
    )?;
    yurt_adm::token::create(&admin, &token).await?;
    let as_bootstrapper = client(fleet, &node_kubeconfig, Some(&token.token.to_string())).await?;

    let hub =
        yurt_hub::certificate::csr::CsrCertificate::new(yurt_hub::certificate::csr::CsrRequest {
            purpose: yurt_hub::certificate::csr::Purpose::Serving,
            node: node.clone(),
            ips: vec![std::net::IpAddr::from([169, 254, 2, 1])],
            dir: std::env::temp_dir().join("yurt-bench-adm-unused"),
            issue_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        });
    let step = Step::start(
        reporter,
        format!(
            "{} certificate requests of each kind, alternating",
            args.csrs
        ),
    );
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    for i in 0..args.csrs {
        let started = Instant::now();
        hub.request_once(&as_node)
            .await
            .context("the hub's serving certificate")?;
        ours.push(started.elapsed());

        let (csr, _key) = yurt_hub::certificate::csr::new_request(
            &format!("bench-joiner-{i}"),
            &["system:nodes"],
            &[],
        )?;
        let started = Instant::now();
        yurt_hub::certificate::csr::request_certificate(
            &as_bootstrapper,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["digital signature", "key encipherment", "client auth"],
            &csr,
            Duration::from_secs(60),
        )
        .await
        .context("a bootstrapping kubelet's client certificate")?;
        anchor.push(started.elapsed());
    }
    step.finish();
    yurt_adm::token::delete(&admin, token.token.id()).await?;

    ours.sort();
    anchor.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let mut table = Table::new(
        "yurt bench adm",
        "ours",
        "anchor: kube-controller-manager approves (same run)",
    );
    for (what, p) in [("p50", 50.0), ("p90", 90.0)] {
        let (o, a) = (percentile(&ours, p), percentile(&anchor, p));
        table.row(
            &format!("CSR create → issued, {what}"),
            format!(
                "{} ({:.2}× the anchor; goal ≤ 1 s)",
                ms(o),
                o.as_secs_f64() / a.as_secs_f64().max(1e-6)
            ),
            ms(a),
        );
    }
    Ok(table)
}
