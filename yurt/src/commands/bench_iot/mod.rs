//! `yurt bench iot`: the device agent's loops at scale against an in-process Modbus
//! device: many devices × properties polled every second, with a share of the values
//! changing; our figure beside the anchor measured in the same run, the same loops with
//! one request per property (what EdgeX's device-modbus does for yurt-iot-dock, which
//! reads every readable command of every device each round) and upstream's status cadence
//! (one write per device per 5 s). Then every device's enforced register is tampered with
//! at once, and each device's time until its loop wrote it back is read from the device's
//! memory.
//!
//! The loops run in a child process (`yurt bench iot-agents`, hidden) so that its CPU
//! and memory are the agent's alone; the Modbus device runs here. Status writes are
//! counted as the agent's status writer makes them: one per observation whose state
//! changed (heartbeats aside).
//!
//! Then the whole agent against a real API server ([`api`], on a one-node fleet; skipped
//! with `--api-devices 0`): start-up, status writes as the API server counts them, the
//! latency from `kubectl patch` to the register and to `actualValue`, and the catch-up
//! after a cut link, against the same agent at upstream's status cadence.

mod api;
mod link;

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use yurt_iot::driver::modbus::ModbusTcpDriver;
use yurt_iot::driver::modbus::simulator::{Memory, Simulator};
use yurt_iot::driver::{Access, Resource};
use yurt_iot::engine::{Desired, DeviceConfig, Observed};
use yurt_iot::metrics::Metrics;
use yurt_iot::value::{Range, Transform, ValueType};

use super::bench_manager::usage;
use super::bench_table::Table;

/// `yurt bench iot` flags.
#[derive(Debug, Args)]
pub struct BenchIotArgs {
    /// Devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Properties (holding registers) per device.
    #[arg(long, default_value_t = 10)]
    pub properties: usize,
    /// Seconds measured per scenario (after a warm-up of 3 s).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Devices declared as Device objects for the scenarios against a real API server
    /// (0: skip them and the fleet they need).
    #[arg(long, default_value_t = 1000)]
    pub api_devices: usize,
    /// Desired values patched and timed in each of those scenarios.
    #[arg(long, default_value_t = 30)]
    pub patches: usize,
    /// Folder for the benchmark's fleet and the agent's files (removed afterwards).
    #[arg(long, default_value = "/var/lib/yurt/bench-iot")]
    pub bench_dir: std::path::PathBuf,
}

/// `yurt bench iot-agents` (started by `yurt bench iot`).
#[derive(Debug, Args)]
pub struct IotAgentsArgs {
    /// The Modbus device.
    #[arg(long)]
    pub modbus: SocketAddr,
    /// Devices.
    #[arg(long)]
    pub devices: usize,
    /// Properties per device.
    #[arg(long)]
    pub properties: usize,
    /// Seconds to run after the warm-up.
    #[arg(long)]
    pub seconds: u64,
    /// Lay each property two registers apart, so no read can cover two (one request per
    /// property: the anchor).
    #[arg(long)]
    pub per_property: bool,
    /// Make each device's first property writable with this desired value, which the
    /// loops keep enforcing.
    #[arg(long)]
    pub enforce: Option<u16>,
}

const WARM_UP: Duration = Duration::from_secs(3);

/// Where property `p` of device `d` lives.
fn register(d: usize, p: usize, properties: usize, per_property: bool) -> usize {
    let stride = if per_property { 2 } else { 1 };
    (d * properties + p) * stride
}

/// Runs the loops and prints one line of results: `cycles p50_ms p99_ms changes`.
pub async fn agents(args: IotAgentsArgs) -> anyhow::Result<ExitCode> {
    let driver: Arc<dyn yurt_iot::driver::Driver> = Arc::new(ModbusTcpDriver::default());
    let cancel = CancellationToken::new();
    // One set for the process, as in the agent.
    let metrics = Metrics::default();
    let mut collectors = Vec::new();
    for d in 0..args.devices {
        let resources = (0..args.properties)
            .map(|p| Resource {
                name: format!("p{p}"),
                value_type: ValueType::Uint16,
                access: Access {
                    read: true,
                    write: p == 0 && args.enforce.is_some(),
                },
                transform: Transform::default(),
                range: Range::default(),
                attributes: [
                    ("primaryTable".to_owned(), "HOLDING_REGISTERS".to_owned()),
                    (
                        "startingAddress".to_owned(),
                        register(d, p, args.properties, args.per_property).to_string(),
                    ),
                ]
                .into(),
                hidden: false,
                default_value: None,
            })
            .collect();
        let config = DeviceConfig {
            name: format!("device-{d}"),
            driver: Arc::clone(&driver),
            properties: [
                ("Address".to_owned(), args.modbus.ip().to_string()),
                ("Port".to_owned(), args.modbus.port().to_string()),
            ]
            .into(),
            resources,
            desired: args
                .enforce
                .map(|v| Desired {
                    resource: "p0".into(),
                    text: v.to_string(),
                })
                .into_iter()
                .collect(),
            writes: args.enforce.is_some(),
            polls: true,
            poll_interval: Duration::from_secs(1),
        };
        let (_configs, configs_rx) = watch::channel(Arc::new(config));
        let (observed_tx, mut observed) = watch::channel(Observed::default());
        tokio::spawn(yurt_iot::engine::run(
            configs_rx,
            Arc::new(observed_tx),
            metrics.clone(),
            cancel.clone(),
        ));
        let stop = cancel.clone();
        collectors.push(tokio::spawn(async move {
            let _keep = _configs;
            let started = Instant::now();
            let mut cycles = Vec::new();
            let mut changes = 0u64;
            let mut last: Option<Observed> = None;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    changed = observed.changed() => if changed.is_err() { break },
                }
                let o = observed.borrow_and_update().clone();
                if started.elapsed() < WARM_UP {
                    last = Some(o);
                    continue;
                }
                cycles.push(o.cycle);
                if last.as_ref().is_some_and(|l| !l.same_state(&o)) {
                    changes += 1;
                }
                last = Some(o);
            }
            (cycles, changes)
        }));
    }
    tokio::time::sleep(WARM_UP + Duration::from_secs(args.seconds)).await;
    cancel.cancel();
    let mut cycles = Vec::new();
    let mut changes = 0;
    for c in collectors {
        let (mut d, n) = c.await.context("a collector")?;
        cycles.append(&mut d);
        changes += n;
    }
    cycles.sort();
    let pick = |q: f64| {
        cycles
            .get(((cycles.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{} {:.3} {:.3} {}",
        cycles.len(),
        pick(0.5),
        pick(0.99),
        changes
    );
    Ok(ExitCode::SUCCESS)
}

struct Outcome {
    cycles_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    changes_per_s: f64,
    requests_per_s: f64,
    cpu_percent: f64,
    rss_mib: f64,
    /// Of the peak: (anonymous, file-backed: the binary's pages) MiB.
    rss_parts: (f64, f64),
}

/// (anonymous, file-backed) resident MiB of a process.
pub(super) fn rss_parts(pid: i32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .ok()
    };
    Some((kib("RssAnon:")? / 1024.0, kib("RssFile:")? / 1024.0))
}

/// The in-process Modbus device, sized for the benchmark, and the loops' child process
/// polling it (killed when dropped).
async fn device_and_loops(
    args: &BenchIotArgs,
    per_property: bool,
    extra: &[&str],
    stdout: Stdio,
) -> anyhow::Result<(Simulator, tokio::process::Child)> {
    let size = args.devices * args.properties * 2 + 2;
    let sim = Simulator::start("127.0.0.1:0".parse()?, Memory::with_size(size.min(65_536)))
        .await
        .context("the Modbus device")?;
    let exe = std::env::current_exe().context("this yurt")?;
    let child = tokio::process::Command::new(exe)
        .args([
            "bench",
            "iot-agents",
            "--modbus",
            &sim.address().to_string(),
        ])
        .args(["--devices", &args.devices.to_string()])
        .args(["--properties", &args.properties.to_string()])
        .args(extra)
        .args(per_property.then_some("--per-property"))
        .stdout(stdout)
        .kill_on_drop(true)
        .spawn()
        .context("starting the loops")?;
    Ok((sim, child))
}

/// One scenario: the child's loops for `seconds`, `changing` of the registers changed
/// every second.
async fn scenario(
    args: &BenchIotArgs,
    per_property: bool,
    changing: f64,
) -> anyhow::Result<Outcome> {
    let seconds = args.seconds.to_string();
    let (sim, mut child) =
        device_and_loops(args, per_property, &["--seconds", &seconds], Stdio::piped()).await?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .context("the child's pid")?;
    let changes_per_second = (args.devices * args.properties) as f64 * changing;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut measured: Option<(Instant, f64, u64)> = None;
    // The child ends by itself when its time is up: the window closes at the last
    // sample taken while it still ran (a sample of a child gone reads as zero CPU).
    let mut last: Option<(Instant, f64, u64)> = None;
    let mut peak_rss: f64 = 0.0;
    let mut peak_parts = (0.0, 0.0);
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut round: u16 = 0;
    let end = Instant::now() + WARM_UP + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        tick.tick().await;
        round = round.wrapping_add(1);
        // A share of the values changes every second (spread over the devices).
        let count = changes_per_second.round() as usize;
        sim.with_memory(|m| {
            for i in 0..count {
                let d = (i * 7919) % args.devices;
                let p = i % args.properties;
                let r = register(d, p, args.properties, per_property);
                if let Some(v) = m.holding_registers.get_mut(r) {
                    *v = v.wrapping_add(round);
                }
            }
        });
        let Some((rss, cpu)) = usage(pid) else {
            continue;
        };
        if rss > peak_rss {
            peak_rss = rss;
            peak_parts = rss_parts(pid).unwrap_or_default();
        }
        let sample = (Instant::now(), cpu, sim.requests());
        if measured.is_none() && sample.0 + Duration::from_secs(args.seconds) >= end {
            measured = Some(sample);
        }
        last = Some(sample);
    }
    let (started, cpu_before, requests_before) = measured.context("no measurement window")?;
    let (ended, cpu_after, requests_after) = last.context("no sample of the loops")?;
    let elapsed = ended.duration_since(started).as_secs_f64();
    anyhow::ensure!(
        elapsed > 0.5,
        "the loops ended before the window ({elapsed:.1} s)"
    );
    let requests = requests_after - requests_before;
    let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .context("the loops' results")??
        .context("no results from the loops")?;
    let _ = child.wait().await;
    let fields: Vec<f64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    anyhow::ensure!(fields.len() == 4, "unreadable results {line:?}");
    Ok(Outcome {
        cycles_per_s: fields[0] / args.seconds as f64,
        p50_ms: fields[1],
        p99_ms: fields[2],
        changes_per_s: fields[3] / args.seconds as f64,
        requests_per_s: requests as f64 / elapsed,
        cpu_percent: (cpu_after - cpu_before) / elapsed * 100.0,
        rss_mib: peak_rss,
        rss_parts: peak_parts,
    })
}

/// What a tampered register's restoring took, over the devices: p50, p99 and the
/// longest, in ms.
struct Restored {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The value the tamper scenario's loops enforce, and the one the tamper writes.
const ENFORCED: u16 = 7;
const TAMPERED: u16 = 0;

/// Every device's enforced register set to another value at once (a PLC reset, or
/// someone at the panel), then each device's time until its loop wrote it back, seen in
/// the device's memory.
async fn tamper_scenario(args: &BenchIotArgs, per_property: bool) -> anyhow::Result<Restored> {
    let enforced = ENFORCED.to_string();
    let (sim, _child) = device_and_loops(
        args,
        per_property,
        &["--seconds", "60", "--enforce", &enforced],
        Stdio::null(),
    )
    .await?;
    let registers: Vec<usize> = (0..args.devices)
        .map(|d| register(d, 0, args.properties, per_property))
        .collect();
    let all_enforced = |m: &Memory| {
        registers
            .iter()
            .all(|r| m.holding_registers.get(*r) == Some(&ENFORCED))
    };
    let deadline = Instant::now() + WARM_UP + Duration::from_secs(15);
    while !sim.with_memory(|m| all_enforced(m)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the loops never wrote every device's desired value"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the first round of writes and read-backs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tampered = Instant::now();
    sim.with_memory(|m| {
        for r in &registers {
            if let Some(v) = m.holding_registers.get_mut(*r) {
                *v = TAMPERED;
            }
        }
    });
    let mut restored: Vec<Option<Duration>> = vec![None; registers.len()];
    let deadline = tampered + Duration::from_secs(20);
    while restored.iter().any(Option::is_none) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} devices not restored in 20 s",
            restored.iter().filter(|r| r.is_none()).count(),
            registers.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = tampered.elapsed();
        sim.with_memory(|m| {
            for (i, r) in registers.iter().enumerate() {
                if restored[i].is_none() && m.holding_registers.get(*r) == Some(&ENFORCED) {
                    restored[i] = Some(now);
                }
            }
        });
    }
    let mut times: Vec<Duration> = restored.into_iter().flatten().collect();
    times.sort();
    let ms = |p: f64| super::bench::percentile(&times, p).as_secs_f64() * 1000.0;
    Ok(Restored {
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
        max_ms: ms(100.0),
    })
}

/// Runs `yurt bench iot`.
pub async fn run(
    machine: &yurt_cluster::MachineConfig,
    args: BenchIotArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.devices > 0 && args.properties > 0,
        "--devices and --properties must be positive"
    );
    anyhow::ensure!(
        args.devices * args.properties * 2 <= 65_536,
        "devices × properties must fit one Modbus table twice over (at most 32768)"
    );
    anyhow::ensure!(args.seconds >= 2, "--seconds must be at least 2");
    anyhow::ensure!(
        args.api_devices == 0 || args.patches > 0,
        "--patches must be positive (or --api-devices 0)"
    );
    println!(
        "{} devices × {} properties polled every second, {} s per scenario",
        args.devices, args.properties, args.seconds
    );
    let mut table = Table::new(
        "yurt bench iot: the device agent's loops (one process), against an in-process Modbus device",
        "ours",
        "anchor, same run",
    )
    .with_progress();
    let anchor = scenario(&args, true, 0.0).await?;
    let steady = scenario(&args, false, 0.0).await?;
    let some = scenario(&args, false, 0.01).await?;
    let all = scenario(&args, false, 1.0).await?;
    let restored = tamper_scenario(&args, false).await?;
    let restored_anchor = tamper_scenario(&args, true).await?;
    let upstream_writes = args.devices as f64 / 5.0;
    table.row(
        "poll cycles per second",
        format!("{:.0}", steady.cycles_per_s),
        format!("{:.0} one request per property", anchor.cycles_per_s),
    );
    table.row(
        "poll cycle p50 / p99 (goal p99 ≤ 1 s)",
        format!("{:.1} / {:.1} ms", steady.p50_ms, steady.p99_ms),
        format!(
            "{:.1} / {:.1} ms one request per property",
            anchor.p50_ms, anchor.p99_ms
        ),
    );
    table.row(
        "Modbus requests per second",
        format!("{:.0}", steady.requests_per_s),
        format!(
            "{:.0} one request per property ({:.1}×)",
            anchor.requests_per_s,
            anchor.requests_per_s / steady.requests_per_s.max(1.0)
        ),
    );
    table.row(
        "agent CPU, % of a core (goal ≤ 25%)",
        format!("{:.1}%", steady.cpu_percent),
        format!("{:.1}% one request per property", anchor.cpu_percent),
    );
    table.row(
        "agent RSS, peak (goal ≤ 40 MiB)",
        format!(
            "{:.1} MiB ({:.1} anonymous, {:.1} the binary's pages)",
            steady.rss_mib, steady.rss_parts.0, steady.rss_parts.1
        ),
        format!("{:.1} MiB one request per property", anchor.rss_mib),
    );
    for (what, o, share) in [
        ("0%", &steady, 0.0),
        ("1%", &some, 0.01),
        ("100%", &all, 1.0),
    ] {
        table.row(
            &format!("status writes per second, {what} of values changing (beyond heartbeats)"),
            format!("{:.1}", o.changes_per_s),
            format!(
                "{upstream_writes:.0} upstream's cadence (every device every 5 s); {:.0} devices changed per second",
                (args.devices as f64).min((args.devices * args.properties) as f64 * share)
            ),
        );
    }
    table.row(
        "with 100% changing: cycle p99, CPU",
        format!("{:.1} ms, {:.1}%", all.p99_ms, all.cpu_percent),
        format!("{:.1} ms, {:.1}% at 0%", steady.p99_ms, steady.cpu_percent),
    );
    table.row(
        "tamper → restored, p50 / p99 / longest of every device (goal ≤ poll interval + 1 s = 2 s)",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            restored.p50_ms, restored.p99_ms, restored.max_ms
        ),
        format!(
            "{:.0} / {:.0} / {:.0} ms one request per property (upstream's yurt-iot-dock writes once, without reading back: never restored)",
            restored_anchor.p50_ms, restored_anchor.p99_ms, restored_anchor.max_ms
        ),
    );
    table.print();
    if args.api_devices > 0 {
        api_table(machine, &args).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The scenarios against a real API server, and their table.
async fn api_table(
    machine: &yurt_cluster::MachineConfig,
    args: &BenchIotArgs,
) -> anyhow::Result<()> {
    let settings = api::Settings {
        devices: args.api_devices,
        properties: args.properties,
        patches: args.patches,
        window: Duration::from_secs(args.seconds.max(10)),
    };
    let reporter = crate::progress::SpinnerReporter::for_stderr();
    let files = args.bench_dir.join("files");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let (ours, upstream) = super::bench::on_one_node_fleet(
        machine,
        &args.bench_dir.join("fleet"),
        "a one-node fleet (the API server and the manager's webhooks)",
        reporter.as_ref(),
        async |fleet| {
            let step = yurt_cluster::progress::Step::start(
                reporter.as_ref(),
                format!("{} devices, our status cadence", settings.devices),
            );
            let ours = api::scenario(fleet, &settings, false, &files).await?;
            step.finish();
            eprintln!("  ours: {}", ours.summary());
            let step = yurt_cluster::progress::Step::start(
                reporter.as_ref(),
                format!("{} devices, upstream's status cadence", settings.devices),
            );
            let upstream = api::scenario(fleet, &settings, true, &files).await?;
            step.finish();
            eprintln!("  upstream's cadence: {}", upstream.summary());
            Ok((ours, upstream))
        },
    )
    .await?;
    let _ = std::fs::remove_dir_all(&args.bench_dir);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let p = |sorted: &[Duration], q: f64| super::bench::percentile(sorted, q);
    println!(
        "\n{} Device objects × {} properties, each its own simulated Modbus device, polled every second",
        settings.devices, settings.properties
    );
    let mut table = Table::new(
        "yurt bench iot: the agent (`yurt iot agent`) against a real API server",
        "ours (status on change)",
        "anchor, same run: the same agent at upstream's status cadence (every device every 5 s)",
    );
    table.row(
        "agent start → every device current",
        format!("{:.1} s", ours.start_to_current.as_secs_f64()),
        format!("{:.1} s", upstream.start_to_current.as_secs_f64()),
    );
    table.row(
        &format!(
            "status writes per second, nothing changing, over {} s (API server's count)",
            settings.window.as_secs()
        ),
        format!(
            "{:.1} (plus a heartbeat per device per 60 s ± 10%: {:.1}/s on average)",
            ours.writes_per_s,
            settings.devices as f64 / 60.0
        ),
        format!(
            "{:.1} ({:.1}×)",
            upstream.writes_per_s,
            upstream.writes_per_s / ours.writes_per_s.max(0.1)
        ),
    );
    table.row(
        &format!(
            "patch → register written, p50 / p99 of {} (goal ≤ 150 ms / 1 s)",
            settings.patches
        ),
        format!(
            "{} / {}",
            ms(p(&ours.register, 50.0)),
            ms(p(&ours.register, 99.0))
        ),
        format!(
            "{} / {}",
            ms(p(&upstream.register, 50.0)),
            ms(p(&upstream.register, 99.0))
        ),
    );
    table.row(
        "patch → actualValue visible, p50 / p99 (goal p99 ≤ 2 s)",
        format!(
            "{} / {}",
            ms(p(&ours.visible, 50.0)),
            ms(p(&ours.visible, 99.0))
        ),
        format!(
            "{} / {}",
            ms(p(&upstream.visible, 50.0)),
            ms(p(&upstream.visible, 99.0))
        ),
    );
    table.row(
        "link restored after a cut in which every reading changed → every device current (goal ≤ 10 s)",
        format!("{:.1} s", ours.catch_up.as_secs_f64()),
        format!("{:.1} s", upstream.catch_up.as_secs_f64()),
    );
    table.row(
        "agent CPU at steady state, % of a core; peak RSS",
        format!("{:.1}%; {:.1} MiB", ours.cpu_percent, ours.rss_mib),
        format!("{:.1}%; {:.1} MiB", upstream.cpu_percent, upstream.rss_mib),
    );
    table.print();
    Ok(())
}
