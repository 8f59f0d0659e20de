//! Prometheus metrics of the device agent (`yurt_iot_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of outcome counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 100 µs to about 52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The agent's metrics. `Default` gives unregistered ones (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Time of one device's poll cycle (reads, and writes with read-back).
    pub poll_seconds: Histogram,
    /// Desired values written to devices, by outcome.
    pub device_writes: Family<OutcomeLabel, Counter>,
    /// Status writes to the API, by outcome.
    pub status_writes: Family<OutcomeLabel, Counter>,
    /// Time of one status write.
    pub status_write_seconds: Histogram,
    /// Devices driven.
    pub devices: Gauge,
    /// Devices that cannot be driven (no profile, no driver, bad profile).
    pub stuck_devices: Gauge,
    /// Snapshot saves that failed.
    pub snapshot_failures: Counter,
    /// Device loops that panicked and were started again.
    pub engine_restarts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            poll_seconds: seconds_histogram(),
            device_writes: Family::default(),
            status_writes: Family::default(),
            status_write_seconds: seconds_histogram(),
            devices: Gauge::default(),
            stuck_devices: Gauge::default(),
            snapshot_failures: Counter::default(),
            engine_restarts: Counter::default(),
        }
    }
}

impl Metrics {
    /// New metrics registered in `registry` under `yurt_iot_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("yurt_iot");
        r.register(
            "poll_seconds",
            "Time of one device's poll cycle",
            m.poll_seconds.clone(),
        );
        r.register(
            "device_writes",
            "Desired values written to devices",
            m.device_writes.clone(),
        );
        r.register(
            "status_writes",
            "Device status writes to the API",
            m.status_writes.clone(),
        );
        r.register(
            "status_write_seconds",
            "Time of one device status write",
            m.status_write_seconds.clone(),
        );
        r.register("devices", "Devices driven", m.devices.clone());
        r.register(
            "stuck_devices",
            "Devices that cannot be driven",
            m.stuck_devices.clone(),
        );
        r.register(
            "snapshot_failures",
            "Saves of the local device snapshot that failed",
            m.snapshot_failures.clone(),
        );
        r.register(
            "engine_restarts",
            "Device loops that panicked and were started again",
            m.engine_restarts.clone(),
        );
        m
    }

    /// Counts an outcome.
    pub fn outcome(family: &Family<OutcomeLabel, Counter>, ok: bool) {
        family
            .get_or_create(&OutcomeLabel {
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}
