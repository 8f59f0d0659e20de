//! One device's loop: every poll interval it reads the device's readable resources (in
//! as few requests as the driver can), writes desired values that differ from what was
//! read and reads them back, and publishes what it observed. A device that stops
//! answering is `DOWN`; when it answers again (a PLC that rebooted and lost its
//! registers) the next comparison writes the desired values again, as it does after a
//! value is changed behind the agent's back.
//!
//! The loop decides everything from its [`DeviceConfig`]: it keeps driving the device
//! with the last configuration it was given while the cloud is unreachable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use yurt_api::iot::OperatingState;

use crate::driver::{Driver, DriverError, ProtocolProperties, Resource, Session};
use crate::metrics::Metrics;
use crate::value::{Value, ValueError};

#[cfg(test)]
mod tests;

/// The first wait after a failed write of a property; doubled per failure.
pub const WRITE_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between attempts to write a property.
pub const WRITE_RETRY_MAX: Duration = Duration::from_secs(60);

/// A value to keep written to a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The resource.
    pub resource: String,
    /// The value as the Device gives it.
    pub text: String,
}

/// Everything needed to drive one device.
#[derive(Clone)]
pub struct DeviceConfig {
    /// The device's name (for logs and drivers' per-device state).
    pub name: String,
    /// Its protocol's driver.
    pub driver: Arc<dyn Driver>,
    /// Its protocol properties.
    pub properties: ProtocolProperties,
    /// Its profile's resources.
    pub resources: Vec<Resource>,
    /// Values to keep written, by resource.
    pub desired: Vec<Desired>,
    /// Desired values are written (a managed, UNLOCKED device).
    pub writes: bool,
    /// The device is read (UNLOCKED).
    pub polls: bool,
    /// How often it is read.
    pub poll_interval: Duration,
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("name", &self.name)
            .field("protocol", &self.driver.protocol())
            .field("resources", &self.resources.len())
            .field("desired", &self.desired)
            .field("writes", &self.writes)
            .field("polls", &self.polls)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// What the loop last saw of its device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Whether the device answers (`None` before the first attempt).
    pub operating: Option<OperatingState>,
    /// Each readable resource's last reading, as EdgeX formats it.
    pub readings: BTreeMap<String, String>,
    /// What is wrong, by resource (or `""` for the device): a read or write that failed,
    /// a desired value that does not apply.
    pub problems: BTreeMap<String, String>,
    /// When the device last answered (milliseconds since the epoch, as EdgeX's
    /// `lastConnected`). Not part of [`Observed::same_state`]: it changes every poll.
    pub last_connected_ms: Option<i64>,
    /// Writes made since the loop started (tests and metrics).
    pub writes: u64,
    /// How long the last poll cycle took (benchmarks; not part of the state).
    pub cycle: Duration,
}

impl Observed {
    /// Whether two observations differ in anything but their time.
    pub fn same_state(&self, other: &Self) -> bool {
        self.operating == other.operating
            && self.readings == other.readings
            && self.problems == other.problems
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A desired value, parsed and checked against its resource once per configuration.
struct Target {
    key: String,
    index: usize,
    value: Value,
    raw: Value,
}

/// When a failed property may be written again.
#[derive(Debug, Clone)]
struct Retry {
    at: Instant,
    wait: Duration,
    error: String,
}

struct Loop {
    /// Shared with the agent's copy: a pool's configurations are held once.
    config: Arc<DeviceConfig>,
    targets: Vec<Target>,
    session: Option<Box<dyn Session>>,
    observed: Observed,
    /// What is wrong with the configuration itself: each cycle starts from these, its
    /// I/O problems replacing the last cycle's.
    config_problems: BTreeMap<String, String>,
    retries: BTreeMap<String, Retry>,
    /// Values written to resources that cannot be read back, kept until the
    /// configuration changes or the device is connected again (a reset device has lost
    /// them): written once, not every poll.
    written: BTreeMap<String, Value>,
    metrics: Metrics,
}

fn targets(config: &DeviceConfig, problems: &mut BTreeMap<String, String>) -> Vec<Target> {
    let mut out = Vec::new();
    for d in &config.desired {
        if d.text.is_empty() {
            continue;
        }
        let Some(index) = config.resources.iter().position(|r| r.name == d.resource) else {
            problems.insert(d.resource.clone(), "not a resource of the profile".into());
            continue;
        };
        let resource = &config.resources[index];
        if !resource.access.write {
            problems.insert(d.resource.clone(), "the resource is read-only".into());
            continue;
        }
        if resource.transform.mask.is_some() || resource.transform.shift.is_some() {
            problems.insert(
                d.resource.clone(),
                "a masked or shifted resource cannot be written (the other bits are unknown)"
                    .into(),
            );
            continue;
        }
        let parsed = Value::parse(&d.text, resource.value_type).and_then(|v| {
            resource.range.check(&v, resource.value_type)?;
            let raw = resource.transform.write(v.clone(), resource.value_type)?;
            Ok::<_, ValueError>((v, raw))
        });
        match parsed {
            Ok((value, raw)) => out.push(Target {
                key: d.resource.clone(),
                index,
                value,
                raw,
            }),
            Err(e) => {
                problems.insert(d.resource.clone(), format!("desired value: {e}"));
            }
        }
    }
    out
}

impl Loop {
    fn new(config: Arc<DeviceConfig>, metrics: Metrics) -> Self {
        let mut this = Self {
            config,
            targets: Vec::new(),
            session: None,
            observed: Observed::default(),
            config_problems: BTreeMap::new(),
            retries: BTreeMap::new(),
            written: BTreeMap::new(),
            metrics,
        };
        this.reconfigure(None);
        this
    }

    /// Takes a new configuration; the session is kept when the device's protocol
    /// properties are the same.
    fn reconfigure(&mut self, next: Option<Arc<DeviceConfig>>) {
        if let Some(next) = next {
            if next.properties != self.config.properties
                || next.driver.protocol() != self.config.driver.protocol()
            {
                self.session = None;
            }
            self.config = next;
            self.retries.clear();
            self.written.clear();
        }
        let mut problems = BTreeMap::new();
        if let Err(e) = self
            .config
            .driver
            .check(&self.config.properties, &self.config.resources)
        {
            problems.insert(String::new(), e.to_string());
        }
        self.targets = targets(&self.config, &mut problems);
        self.config_problems = problems.clone();
        self.observed.problems = problems;
        // Readings of resources no longer in the profile go.
        let names: Vec<&str> = self
            .config
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        self.observed
            .readings
            .retain(|k, _| names.contains(&k.as_str()));
    }

    async fn session(&mut self) -> Result<&mut Box<dyn Session>, DriverError> {
        if self.session.is_none() {
            self.written.clear();
            let s = self
                .config
                .driver
                .connect(&self.config.name, &self.config.properties)
                .await?;
            self.session = Some(s);
        }
        self.session
            .as_mut()
            .ok_or_else(|| DriverError::Unreachable("no session".into()))
    }

    /// Reads the readable resources; a connection error drops the session and is
    /// retried once on a new one.
    async fn read_all(&mut self) -> Result<Vec<(usize, Result<Value, DriverError>)>, DriverError> {
        let readable: Vec<usize> = (0..self.config.resources.len())
            .filter(|i| self.config.resources[*i].access.read)
            .collect();
        let mut last = None;
        // The configuration is shared, not copied, while the session is borrowed.
        let config = Arc::clone(&self.config);
        let refs: Vec<&Resource> = readable.iter().map(|i| &config.resources[*i]).collect();
        for _attempt in 0..2 {
            let outcome = match self.session().await {
                Ok(s) => s.read(&refs).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(values) => return Ok(readable.iter().copied().zip(values).collect()),
                Err(e) if e.is_connection() => {
                    self.session = None;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| DriverError::Unreachable("no answer".into())))
    }

    fn note_read(&mut self, index: usize, raw: Result<Value, DriverError>) -> Option<Value> {
        let r = &self.config.resources[index];
        let value = raw.and_then(|raw| Ok(r.transform.read(raw, r.value_type)?));
        match value {
            Ok(v) => {
                self.observed
                    .readings
                    .insert(r.name.clone(), v.to_reading());
                Some(v)
            }
            Err(e) => {
                self.observed
                    .problems
                    .insert(r.name.clone(), format!("read: {e}"));
                None
            }
        }
    }

    /// One poll: read, then write what differs, reading each write back.
    async fn cycle(&mut self) {
        if !self.config.polls {
            // LOCKED: not read, so not known to answer.
            self.session = None;
            self.observed.operating = Some(OperatingState::Unknown);
            return;
        }
        // Problems of the last cycle's I/O are found again or gone; configuration
        // problems stay until the configuration changes.
        self.observed.problems = self.config_problems.clone();

        let readings = match self.read_all().await {
            Ok(r) => r,
            Err(e) => {
                // Not answering is DOWN; a device the agent cannot address is unknown.
                self.observed.operating = Some(if e.is_connection() {
                    OperatingState::Down
                } else {
                    OperatingState::Unknown
                });
                self.observed.problems.insert(String::new(), e.to_string());
                return;
            }
        };
        self.observed.operating = Some(OperatingState::Up);
        self.observed.last_connected_ms = Some(now_ms());
        let mut actual: BTreeMap<usize, Value> = BTreeMap::new();
        for (index, raw) in readings {
            if let Some(v) = self.note_read(index, raw) {
                actual.insert(index, v);
            }
        }
        if !self.config.writes {
            return;
        }
        for t in 0..self.targets.len() {
            let (key, index) = (self.targets[t].key.clone(), self.targets[t].index);
            let resource = self.config.resources[index].clone();
            let wanted = &self.targets[t].value;
            let matches = if resource.access.read {
                actual
                    .get(&index)
                    .is_some_and(|a| a.same_as(wanted, resource.value_type))
            } else {
                self.written
                    .get(&key)
                    .is_some_and(|w| w.same_as(wanted, resource.value_type))
            };
            if matches {
                self.retries.remove(&key);
                continue;
            }
            if let Some(retry) = self.retries.get(&key)
                && Instant::now() < retry.at
            {
                let problem = format!("write: {} (retrying)", retry.error);
                self.observed.problems.insert(key, problem);
                continue;
            }
            let outcome = self.write_and_verify(t, &resource).await;
            Metrics::outcome(&self.metrics.device_writes, outcome.is_ok());
            match outcome {
                Ok(reading) => {
                    self.retries.remove(&key);
                    self.observed.problems.remove(&key);
                    if !resource.access.read {
                        self.written.insert(key.clone(), reading.clone());
                    }
                    if resource.access.read {
                        self.observed
                            .readings
                            .insert(resource.name.clone(), reading.to_reading());
                    }
                }
                Err(e) => {
                    let wait = self
                        .retries
                        .get(&key)
                        .map_or(WRITE_RETRY_FIRST, |r| (r.wait * 2).min(WRITE_RETRY_MAX));
                    // Jitter spreads the retries of many devices that failed together.
                    let jittered = wait.mul_f64(0.5 + fastrand::f64() * 0.5);
                    self.retries.insert(
                        key.clone(),
                        Retry {
                            at: Instant::now() + jittered,
                            wait,
                            error: e.to_string(),
                        },
                    );
                    self.observed.problems.insert(key, format!("write: {e}"));
                    if e.is_connection() {
                        self.session = None;
                        self.observed.operating = Some(OperatingState::Down);
                        return;
                    }
                }
            }
        }
    }

    /// Writes a target and reads it back (when the resource is readable).
    async fn write_and_verify(
        &mut self,
        t: usize,
        resource: &Resource,
    ) -> Result<Value, DriverError> {
        let raw = self.targets[t].raw.clone();
        let wanted = self.targets[t].value.clone();
        self.observed.writes += 1;
        // A connection error is tried once more on a new session, as reads are: a
        // connection shared with other devices may have been closed under this one.
        let mut attempt = 0;
        let back = loop {
            attempt += 1;
            let outcome = match self.session().await {
                Ok(session) => match session.write(resource, raw.clone()).await {
                    Ok(()) if !resource.access.read => return Ok(wanted),
                    Ok(()) => session.read(&[resource]).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if e.is_connection() && attempt < 2 => self.session = None,
                other => break other?,
            }
        };
        let back = back
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(DriverError::Refused("no reading".into())))?;
        let back = resource.transform.read(back, resource.value_type)?;
        if back.same_as(&wanted, resource.value_type) {
            Ok(back)
        } else {
            Err(DriverError::Refused(format!(
                "wrote {}, read back {}",
                wanted, back
            )))
        }
    }
}

/// Drives one device until `cancel` fires: polls every interval, takes each new
/// configuration from `configs` at once, and publishes each observation that differs
/// from the last (or only in its time) on `observed`.
pub async fn run(
    mut configs: watch::Receiver<Arc<DeviceConfig>>,
    observed: Arc<watch::Sender<Observed>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let first = configs.borrow_and_update().clone();
    // Loops started together (an agent's start) spread their first polls over up to a
    // second.
    let spread = first
        .poll_interval
        .min(Duration::from_secs(1))
        .mul_f64(fastrand::f64());
    if !crate::sleep_or_cancel(spread, &cancel).await {
        return;
    }
    let mut device = Loop::new(first, metrics.clone());
    loop {
        let started = Instant::now();
        // A cycle may take several timeouts: a deleted device stops at once.
        tokio::select! {
            () = cancel.cancelled() => return,
            () = device.cycle() => {}
        }
        device.observed.cycle = started.elapsed();
        if device.config.polls {
            metrics
                .poll_seconds
                .observe(device.observed.cycle.as_secs_f64());
        }
        observed.send_if_modified(|o| {
            let changed = *o != device.observed;
            if changed {
                *o = device.observed.clone();
            }
            changed
        });
        let next = started
            .checked_add(device.config.poll_interval)
            .unwrap_or_else(|| started + Duration::from_secs(86_400));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
            changed = configs.changed() => {
                if changed.is_err() {
                    return;
                }
                let config = configs.borrow_and_update().clone();
                device.reconfigure(Some(config));
            }
        }
    }
}
