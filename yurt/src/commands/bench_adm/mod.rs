//! `yurt bench adm`: what joining costs, on a one-node fleet. First the time from
//! creating a certificate request to holding the certificate:
//! - ours: the hub's serving certificate as it asks for it
//!   (`yurt_hub::certificate::csr`), made as the node, approved by the manager's
//!   csrapprover and signed by kube-controller-manager;
//! - anchor, in the same run: a kubelet's client certificate asked for with a bootstrap
//!   token (the TLS bootstrap of `kubeadm join`), approved by kube-controller-manager's
//!   own csrapproving controller and signed by the same signer.
//!
//! The requests alternate, one at a time, so both see the same machine. Then joins
//! ([`join`]): `yurt adm join` phase by phase to Node Ready and a first pod Running,
//! alternating with the anchor, the fleet's own node started from minted certificates as
//! `yurt up` does; then several joins at once. Then conversions ([`convert`]): a plain
//! node converted by its pool label and reverted, against a no-op Job on the same node.

mod convert;
mod join;

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
    /// Joins of an added host, each alternating with the anchor (0: none).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=50))]
    pub joins: u16,
    /// Hosts joining at once, after the single joins (0 or 1: none).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=16))]
    pub concurrent: u16,
    /// Conversions of a plain node by its pool label and back, each after the anchor (0: none).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=50))]
    pub conversions: u16,
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
        async |fleet| measure(machine, fleet, &args, reporter.as_ref()).await,
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
    machine: &yurt_cluster::MachineConfig,
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
    // One request first, not counted: a fresh fleet's kube-controller-manager starts
    // its informers only after every controller has started, and 1.20's node IPAM
    // controller waits 10 s before its first list of Nodes (`wait.Poll`, not
    // `PollImmediate`), so the first request of a new cluster is signed about 14 s after
    // kube-controller-manager starts, whoever approves it.
    bootstrap_kubelet_request(&as_bootstrapper, &kubelet_client_csr("bench-warm-up")?)
        .await
        .context("a first certificate request, not measured")?;
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    for i in 0..args.csrs {
        let started = Instant::now();
        hub.request_once(&as_node)
            .await
            .context("the hub's serving certificate")?;
        ours.push(started.elapsed());

        let csr = kubelet_client_csr(&format!("bench-joiner-{i}"))?;
        let started = Instant::now();
        bootstrap_kubelet_request(&as_bootstrapper, &csr)
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
    if args.joins > 0 || args.concurrent > 1 || args.conversions > 0 {
        joins(machine, fleet, &admin, &node, args, reporter, &mut table).await?;
    }
    Ok(table)
}

/// A kubelet client certificate request for `node` (its key made here, before any timing).
fn kubelet_client_csr(node: &str) -> anyhow::Result<String> {
    Ok(yurt_hub::certificate::csr::new_request(node, &["system:nodes"], &[])?.0)
}

/// Asks for `csr` as a kubelet's TLS bootstrap does and waits until it is issued.
async fn bootstrap_kubelet_request(client: &kube::Client, csr: &str) -> anyhow::Result<()> {
    yurt_hub::certificate::csr::request_certificate(
        client,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "key encipherment", "client auth"],
        csr,
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

/// The join rows: single joins against the anchor, phase by phase, then concurrent joins.
async fn joins(
    machine: &yurt_cluster::MachineConfig,
    fleet: &yurt_cluster::Fleet,
    admin: &kube::Client,
    node: &str,
    args: &BenchAdmArgs,
    reporter: &dyn Reporter,
    table: &mut Table,
) -> anyhow::Result<()> {
    let dir = args.bench_dir.join("fleet");
    let cli = join::Cli { dir: &dir };
    let pool = fleet
        .plan()
        .pools
        .first()
        .context("the fleet's pool")?
        .name
        .to_string();
    let printed = cli
        .run(&[
            "adm",
            "token",
            "create",
            "--ttl",
            "2h",
            "--print-join-command",
        ])
        .await?;
    // `yurt adm join SERVER --token T --discovery-token-ca-cert-hash H`, run on the host.
    let mut join_args: Vec<String> = printed
        .split_whitespace()
        .skip_while(|w| *w != "adm")
        .map(str::to_owned)
        .collect();
    if join_args.get(1).map(String::as_str) != Some("join") {
        anyhow::bail!("no join command in {printed:?}");
    }
    join_args.extend(["--nodepool-name".to_owned(), pool.clone()]);
    let hosts: Vec<String> = (1..=args.concurrent.max(1))
        .map(|i| format!("bench-j{i}"))
        .collect();
    let step = Step::start(reporter, format!("adding {} bare hosts", hosts.len()));
    for host in &hosts {
        cli.run(&["fleet", "add-host", host, "--pool", &pool])
            .await?;
    }
    step.finish();

    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    for round in 0..usize::from(args.joins) {
        let step = Step::start(
            reporter,
            format!("join {} of {}, then the anchor", round + 1, args.joins),
        );
        ours.push(join::join_once(&cli, admin, &hosts[0], &join_args, round).await?);
        join::reset(&cli, admin, &hosts[0], round).await?;
        anchor.push(join::preminted_once(&cli, admin, node, round).await?);
        step.finish();
    }
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    if !ours.is_empty() {
        for (i, phase) in join::PHASES.iter().enumerate() {
            let mut began: Vec<Duration> = ours.iter().filter_map(|t| t.phases[i]).collect();
            began.sort();
            if !began.is_empty() {
                table.row(
                    &format!("join: {phase} begins, p50"),
                    s(percentile(&began, 50.0)),
                    "—".into(),
                );
            }
        }
        for (what, of) in [
            (
                "join: command → Node Ready, p50",
                (|t: &join::Timed| t.node_ready) as fn(&join::Timed) -> Duration,
            ),
            (
                "join: command → first pod Running, p50",
                |t: &join::Timed| t.pod_running,
            ),
        ] {
            let mut o: Vec<Duration> = ours.iter().map(of).collect();
            let mut a: Vec<Duration> = anchor.iter().map(of).collect();
            o.sort();
            a.sort();
            let (o, a) = (percentile(&o, 50.0), percentile(&a, 50.0));
            table.row(
                what,
                format!(
                    "{} ({:+.1} s against the anchor; goal ≤ +5 s)",
                    s(o),
                    o.as_secs_f64() - a.as_secs_f64()
                ),
                format!("{} (minted certificates, started as yurt up does)", s(a)),
            );
        }
    }

    if hosts.len() > 1 {
        // The single joins' host was reset after each: it joins again with the others.
        let step = Step::start(reporter, format!("{} joins at once", hosts.len()));
        let together = futures_util::future::try_join_all(
            hosts
                .iter()
                .map(|h| join::join_once(&cli, admin, h, &join_args, usize::from(args.joins))),
        )
        .await?;
        step.finish();
        let mut ready: Vec<Duration> = together.iter().map(|t| t.node_ready).collect();
        let mut running: Vec<Duration> = together.iter().map(|t| t.pod_running).collect();
        ready.sort();
        running.sort();
        let single = |of: fn(&join::Timed) -> Duration| {
            let mut v: Vec<Duration> = ours.iter().map(of).collect();
            v.sort();
            if v.is_empty() {
                "—".to_owned()
            } else {
                format!("{} (one join alone, p50)", s(percentile(&v, 50.0)))
            }
        };
        table.row(
            &format!(
                "{} joins at once: command → Node Ready, p50 / slowest",
                hosts.len()
            ),
            format!(
                "{} / {}",
                s(percentile(&ready, 50.0)),
                s(percentile(&ready, 100.0))
            ),
            single(|t| t.node_ready),
        );
        table.row(
            &format!(
                "{} joins at once: command → first pod Running, p50 / slowest",
                hosts.len()
            ),
            format!(
                "{} / {}",
                s(percentile(&running, 50.0)),
                s(percentile(&running, 100.0))
            ),
            single(|t| t.pod_running),
        );
    }
    if args.conversions > 0 {
        conversions(
            machine, &cli, admin, &pool, &join_args, args, reporter, table,
        )
        .await?;
    }
    Ok(())
}

/// The conversion rows: a plain node converted and reverted by its pool label, against
/// a no-op Job on it. The fleet's hosts' service managers are served from here, as a
/// supervised fleet serves them, for the conversion Job's servant.
#[allow(clippy::too_many_arguments)]
async fn conversions(
    machine: &yurt_cluster::MachineConfig,
    cli: &join::Cli<'_>,
    admin: &kube::Client,
    pool: &str,
    join_args: &[String],
    args: &BenchAdmArgs,
    reporter: &dyn Reporter,
    table: &mut Table,
) -> anyhow::Result<()> {
    let host = "bench-c1";
    cli.run(&["fleet", "add-host", host, "--pool", pool])
        .await?;
    // Without the pool flag: the node joins plain and outside any pool.
    let plain: Vec<String> = join_args
        .iter()
        .take_while(|a| *a != "--nodepool-name")
        .cloned()
        .collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let services = {
        let (machine, dir, stop) = (machine.clone(), cli.dir.to_owned(), stop.clone());
        tokio::spawn(async move {
            yurt_cluster::fleet::service_manager::serve_every_host(&machine, &dir, stop).await
        })
    };
    let rounds = convert::measure(
        cli,
        admin,
        host,
        pool,
        &plain,
        usize::from(args.conversions),
        reporter,
    )
    .await;
    stop.cancel();
    services.await??;
    let rounds = rounds?;
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let mut anchor: Vec<Duration> = rounds.iter().map(|r| r.anchor).collect();
    anchor.sort();
    let a = percentile(&anchor, 50.0);
    for (what, of) in [
        (
            "convert: pool label → Converted, p50 / slowest",
            (|r: &convert::Round| r.convert) as fn(&convert::Round) -> Duration,
        ),
        ("revert: label removed → Reverted, p50 / slowest", |r| {
            r.revert
        }),
    ] {
        let mut v: Vec<Duration> = rounds.iter().map(of).collect();
        v.sort();
        let p50 = percentile(&v, 50.0);
        table.row(
            what,
            format!(
                "{} / {} ({:.1}× the anchor; goal ≤ 15 s; each pod restarted once, none evicted)",
                s(p50),
                s(percentile(&v, 100.0)),
                p50.as_secs_f64() / a.as_secs_f64().max(1e-6)
            ),
            format!(
                "{} (a no-op Job on the node: created → Complete, p50)",
                s(a)
            ),
        );
    }
    Ok(())
}
