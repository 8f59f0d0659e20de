//! The device agent of one node pool (`yurt iot agent`): it watches its pool's Devices
//! and DeviceProfiles (by the `apps.openyurt.io/nodepool` label the manager's webhook
//! mirrors from `spec.nodePool`) through the node's hub, keeps them in a local snapshot,
//! runs one [`engine`](crate::engine) loop per device and reports each device's status
//! when it changes (and `lastConnected` every heartbeat).
//!
//! Cut from the cloud, it keeps driving every device from what it last knew, across its
//! own restarts (the snapshot), and keeps only the latest status per device to write when
//! the API answers again. The cloud wins the spec (each watch event reconfigures the
//! device's loop at once) and the edge wins the status.
//!
//! A Device deleted while the pool is cut keeps being driven until the agent sees the
//! deletion (its next successful list); the agent puts no finalizer on Devices, so the
//! deletion itself never waits for the pool. The agent changes no spec or metadata (its
//! rights are to read and to write status): a Device still carrying yurt-iot-dock's
//! finalizer (`iot.openyurt.io/device`) from an upstream install is released by an
//! administrator (`kubectl patch device NAME --type=merge -p
//! '{"metadata":{"finalizers":null}}'`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use yurt_api::iot::v1alpha1::{Device, DeviceProfile, DeviceService};
use yurt_api::labels::NODE_POOL;

use crate::driver::Drivers;
use crate::engine::{self, DeviceConfig, Observed};
use crate::metrics::Metrics;

pub mod snapshot;
pub mod status;
pub mod virtual_devices;
pub mod world;

use snapshot::{Loaded, Snapshot};
use status::View;
use world::Plan;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The namespace of its Devices and DeviceProfiles.
    pub namespace: String,
    /// Its node pool.
    pub pool: String,
    /// Where it keeps its snapshot.
    pub state_dir: PathBuf,
    /// How often a device is polled when neither it nor its profile says
    /// ([`world::POLL_INTERVAL_ANNOTATION`]).
    pub poll_interval: Duration,
    /// How often an unchanged status is written anyway (for `lastConnected`); each
    /// device's interval varies by up to a tenth either way, so a pool's devices, all
    /// written when the agent starts, do not beat in step.
    pub heartbeat: Duration,
    /// Write a status when it changes (else only every heartbeat: with a 5 s heartbeat,
    /// upstream yurt-iot-dock's cadence, kept to compare against).
    pub status_on_change: bool,
    /// The least time between two status writes of one device (changes in between are
    /// coalesced into the next).
    pub min_status_interval: Duration,
    /// The longest wait before retrying a failed status write.
    pub status_retry_max: Duration,
    /// Status writes in flight at once, across the pool's devices. The API client speaks
    /// HTTP/1.1, one connection per request in flight: unbounded, a thousand devices
    /// written at once (the agent's start, a link back after a cut, every value
    /// changing) open a thousand TLS connections to the hub, each with its buffers.
    pub max_concurrent_status_writes: usize,
    /// Register EdgeX's five virtual devices in the pool (PlatformAdmin component
    /// `edgex-device-virtual`).
    pub virtual_devices: bool,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag out of range.
    #[error("{0}")]
    Invalid(String),
}

struct Runner {
    fingerprint: String,
    stuck: bool,
    device: watch::Sender<Device>,
    config: Option<watch::Sender<Arc<DeviceConfig>>>,
    cancel: CancellationToken,
}

/// The pool's objects as the agent knows them.
#[derive(Default)]
struct Known {
    devices: BTreeMap<String, Device>,
    profiles: BTreeMap<String, DeviceProfile>,
    /// Objects listed since the watch (re)started, to replace the known ones at its end.
    devices_init: Option<BTreeMap<String, Device>>,
    profiles_init: Option<BTreeMap<String, DeviceProfile>>,
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// What a watch event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Changed {
    Nothing,
    /// The object of this name (added, changed or deleted).
    One(String),
    /// Anything: a relist ended.
    All,
}

impl Changed {
    /// What two changes amount to.
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::Nothing, c) | (c, Self::Nothing) => c,
            (Self::One(a), Self::One(b)) if a == b => Self::One(a),
            _ => Self::All,
        }
    }
}

/// Applies a watch event to `known` (and to its buffer while a relist is under way);
/// returns what changed.
fn apply<K: kube::Resource + Clone>(
    known: &mut BTreeMap<String, K>,
    init: &mut Option<BTreeMap<String, K>>,
    event: Event<K>,
) -> Changed {
    match event {
        Event::Apply(o) => {
            let name = name_of(&o);
            known.insert(name.clone(), o);
            Changed::One(name)
        }
        Event::Delete(o) => {
            let name = name_of(&o);
            if known.remove(&name).is_some() {
                Changed::One(name)
            } else {
                Changed::Nothing
            }
        }
        Event::Init => {
            *init = Some(BTreeMap::new());
            Changed::Nothing
        }
        Event::InitApply(o) => {
            init.get_or_insert_with(BTreeMap::new)
                .insert(name_of(&o), o);
            Changed::Nothing
        }
        Event::InitDone => {
            // Objects deleted while the agent was not watching go now.
            *known = init.take().unwrap_or_default();
            Changed::All
        }
    }
}

/// The agent.
pub struct Agent {
    client: kube::Client,
    config: AgentConfig,
    metrics: Metrics,
    drivers: Drivers,
    known: Known,
    runners: BTreeMap<String, Runner>,
    ready: Arc<AtomicBool>,
    /// What the pool's status writers share.
    status_link: Arc<StatusLink>,
}

/// What a pool's status writers share of their one link to the API server.
struct StatusLink {
    /// Permits for writes in flight ([`AgentConfig::max_concurrent_status_writes`]).
    permits: Semaphore,
    /// Some write failed since the last one that went through.
    failing: AtomicBool,
    /// Told when a write goes through after others failed: the link is back, and every
    /// writer waiting out its backoff tries at once instead of at its own next retry
    /// (up to `status_retry_max` away, so a pool's catch-up after a cut would be set by
    /// its slowest backoff rather than by the link).
    back: tokio::sync::Notify,
}

impl StatusLink {
    fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Semaphore::new(max_in_flight.max(1)),
            failing: AtomicBool::new(false),
            back: tokio::sync::Notify::new(),
        }
    }

    fn went_through(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            self.back.notify_waiters();
        }
    }
}

impl Agent {
    /// An agent of `config.pool`, through `client`.
    pub fn new(
        client: kube::Client,
        config: AgentConfig,
        metrics: Metrics,
    ) -> Result<Self, AgentError> {
        if config.pool.is_empty() {
            return Err(AgentError::Invalid("the node pool is empty".into()));
        }
        if config.poll_interval < world::MIN_POLL_INTERVAL {
            return Err(AgentError::Invalid(format!(
                "the poll interval must be at least {:?}",
                world::MIN_POLL_INTERVAL
            )));
        }
        let status_link = Arc::new(StatusLink::new(config.max_concurrent_status_writes));
        Ok(Self {
            client,
            config,
            metrics,
            drivers: Drivers::builtin(),
            known: Known::default(),
            runners: BTreeMap::new(),
            ready: Arc::new(AtomicBool::new(false)),
            status_link,
        })
    }

    /// True once the agent knows its devices (from its snapshot or the API).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    fn watch<K>(&self) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + use<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + 'static,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let selector = format!("{NODE_POOL}={}", self.config.pool);
        // managedFields are dropped as they arrive: the agent never reads them, and for a
        // device they describe every status property again (a tenth of the agent's memory
        // at 1,000 devices, copied into each device's loop and writer).
        watcher(api, watcher::Config::default().labels(&selector))
            .modify(|o| o.meta_mut().managed_fields = None)
            .default_backoff()
    }

    /// Runs until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), AgentError> {
        let dir = self.config.state_dir.clone();
        let pool = self.config.pool.clone();
        let loaded = tokio::task::spawn_blocking(move || snapshot::load(&dir, &pool))
            .await
            .unwrap_or_else(|e| Loaded::Corrupt(e.to_string()));
        match loaded {
            Loaded::Found(s) => {
                tracing::info!(
                    devices = s.devices.len(),
                    profiles = s.profiles.len(),
                    "driving the devices of the local snapshot until the API answers"
                );
                self.known.devices = s.devices.into_iter().map(|d| (name_of(&d), d)).collect();
                self.known.profiles = s.profiles.into_iter().map(|p| (name_of(&p), p)).collect();
                self.reconcile();
                self.ready.store(true, Ordering::Relaxed);
            }
            Loaded::Missing => tracing::info!("no local snapshot: waiting for the API"),
            Loaded::Corrupt(why) => {
                tracing::warn!(%why, "the local snapshot cannot be read; set aside, starting from the API")
            }
        }
        if self.config.virtual_devices {
            tokio::spawn(
                register_virtual_devices(self.client.clone(), self.config.clone(), cancel.clone())
                    .instrument(tracing::info_span!("virtual devices")),
            );
        }
        let mut devices = std::pin::pin!(self.watch::<Device>());
        let mut profiles = std::pin::pin!(self.watch::<DeviceProfile>());
        let mut save_due: Option<Instant> = None;
        // What is on disk, as a fingerprint (not a second copy of the pool).
        let mut saved: Option<u64> = None;
        let mut listed = (false, false);
        loop {
            let changed = tokio::select! {
                () = cancel.cancelled() => break,
                event = devices.next() => match event {
                    Some(Ok(e)) => {
                        listed.0 |= matches!(e, Event::InitDone);
                        let k = &mut self.known;
                        apply(&mut k.devices, &mut k.devices_init, e)
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watching Devices");
                        Changed::Nothing
                    }
                    None => break,
                },
                event = profiles.next() => match event {
                    Some(Ok(e)) => {
                        listed.1 |= matches!(e, Event::InitDone);
                        let k = &mut self.known;
                        // A profile may be any number of devices': all are looked at.
                        match apply(&mut k.profiles, &mut k.profiles_init, e) {
                            Changed::Nothing => Changed::Nothing,
                            _ => Changed::All,
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watching DeviceProfiles");
                        Changed::Nothing
                    }
                    None => break,
                },
                () = async {
                    match save_due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    save_due = None;
                    let next = self.snapshot();
                    let print = next.fingerprint();
                    if saved != Some(print) {
                        let dir = self.config.state_dir.clone();
                        let outcome = tokio::task::spawn_blocking(move || snapshot::save(&dir, &next)).await;
                        let failure = match outcome {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(e) => Some(e.to_string()),
                        };
                        match failure {
                            None => saved = Some(print),
                            Some(error) => {
                                self.metrics.snapshot_failures.inc();
                                tracing::warn!(%error, "saving the device snapshot");
                                save_due = Some(Instant::now() + Duration::from_secs(5));
                            }
                        }
                    }
                    Changed::Nothing
                }
            };
            if changed != Changed::Nothing {
                // Until both kinds are listed, what is known may be half the pool: a
                // device without its profile would be reported stuck for nothing.
                let was_ready = self.ready.load(Ordering::Relaxed);
                if listed == (true, true) || was_ready {
                    // One device's event (most are the agent's own status writes coming
                    // back) looks at that device only: a pool of thousands is not
                    // walked, nor copied, a thousand times a second.
                    match changed.and(if was_ready {
                        Changed::Nothing
                    } else {
                        Changed::All
                    }) {
                        Changed::One(name) => self.reconcile_device(&name),
                        _ => self.reconcile(),
                    }
                    self.ready.store(true, Ordering::Relaxed);
                }
                save_due.get_or_insert_with(|| Instant::now() + Duration::from_secs(1));
            }
        }
        for (_, r) in std::mem::take(&mut self.runners) {
            r.cancel.cancel();
        }
        Ok(())
    }

    /// What is kept on disk: the objects without their status, resourceVersion and
    /// managedFields, so the agent's own status writes (and their heartbeats) never
    /// rewrite the file; only a changed spec or metadata does.
    fn snapshot(&self) -> Snapshot {
        fn bare<K: kube::Resource + Clone>(o: &K) -> K {
            let mut o = o.clone();
            let m = o.meta_mut();
            m.resource_version = None;
            m.managed_fields = None;
            o
        }
        Snapshot {
            pool: self.config.pool.clone(),
            devices: self
                .known
                .devices
                .values()
                .map(|d| {
                    let mut d = bare(d);
                    d.status = None;
                    d
                })
                .collect(),
            profiles: self
                .known
                .profiles
                .values()
                .map(|p| {
                    let mut p = bare(p);
                    p.status = None;
                    p
                })
                .collect(),
        }
    }

    /// Starts, reconfigures and stops device loops to match what is known.
    fn reconcile(&mut self) {
        let profiles: Vec<DeviceProfile> = self.known.profiles.values().cloned().collect();
        let wanted: BTreeSet<String> = world::pool_devices(&self.known.devices, &self.config.pool)
            .map(|(n, _)| n.clone())
            .collect();
        self.runners.retain(|name, r| {
            let keep = wanted.contains(name);
            if !keep {
                r.cancel.cancel();
            }
            keep
        });
        for name in wanted {
            self.drive(&name, &profiles);
        }
        self.count();
    }

    /// As [`Agent::reconcile`], for the device named `name` only.
    fn reconcile_device(&mut self, name: &str) {
        let wanted = self
            .known
            .devices
            .get(name)
            .is_some_and(|d| world::drives(d, &self.config.pool));
        if wanted {
            let profiles: Vec<DeviceProfile> = self.known.profiles.values().cloned().collect();
            self.drive(name, &profiles);
        } else if let Some(r) = self.runners.remove(name) {
            r.cancel.cancel();
        }
        self.count();
    }

    /// Starts or reconfigures the loop of the known device `name`.
    fn drive(&mut self, name: &str, profiles: &[DeviceProfile]) {
        let Some(device) = self.known.devices.get(name) else {
            return;
        };
        let fingerprint = world::fingerprint(device, profiles);
        if let Some(r) = self.runners.get(name) {
            // The status writer works from the latest object (its own writes
            // included); the loop only from a changed spec.
            let version = device.metadata.resource_version.clone();
            r.device.send_if_modified(|d| {
                let newer = d.metadata.resource_version != version;
                if newer {
                    *d = device.clone();
                }
                newer
            });
            if r.fingerprint == fingerprint {
                return;
            }
        }
        let plan = world::plan(device, profiles, &self.drivers, self.config.poll_interval);
        let device = device.clone();
        match (self.runners.get_mut(name), plan) {
            (Some(r), Plan::Drive(config)) if !r.stuck => {
                r.fingerprint = fingerprint;
                if let Some(c) = &r.config {
                    c.send_replace(Arc::new(config));
                }
            }
            (_, plan) => {
                if let Some(old) = self.runners.remove(name) {
                    old.cancel.cancel();
                }
                let runner = self.start(device, plan, fingerprint);
                self.runners.insert(name.to_owned(), runner);
            }
        }
    }

    /// The devices gauges.
    fn count(&self) {
        let stuck = self.runners.values().filter(|r| r.stuck).count();
        self.metrics
            .devices
            .set((self.runners.len() - stuck) as i64);
        self.metrics.stuck_devices.set(stuck as i64);
    }

    fn start(&self, device: Device, plan: Plan, fingerprint: String) -> Runner {
        let name = name_of(&device);
        let cancel = CancellationToken::new();
        let (device_tx, device_rx) = watch::channel(device);
        let span = tracing::info_span!("device", device = %name, pool = %self.config.pool);
        let (stuck, config_tx, source) = match plan {
            Plan::Drive(config) => {
                let (config_tx, config_rx) = watch::channel(Arc::new(config));
                let (observed_tx, observed_rx) = watch::channel(Observed::default());
                tokio::spawn(
                    supervise(
                        config_rx,
                        Arc::new(observed_tx),
                        self.metrics.clone(),
                        cancel.clone(),
                    )
                    .instrument(span.clone()),
                );
                (false, Some(config_tx), Source::Engine(observed_rx))
            }
            Plan::Stuck { reason, message } => {
                tracing::warn!(parent: &span, reason, %message, "the device cannot be driven");
                (true, None, Source::Stuck(View::Stuck { reason, message }))
            }
        };
        let writer = StatusWriter {
            api: Api::namespaced(self.client.clone(), &self.config.namespace),
            name,
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            link: Arc::clone(&self.status_link),
        };
        tokio::spawn(
            writer
                .run(device_rx, source, cancel.clone())
                .instrument(span),
        );
        Runner {
            fingerprint,
            stuck,
            device: device_tx,
            config: config_tx,
            cancel,
        }
    }
}

/// Runs a device's loop until `cancel`; a loop that panics (a driver's bug, a protocol
/// library's assertion) is reported in the device's status and started again, never
/// left dead behind a status that still says UP.
async fn supervise(
    configs: watch::Receiver<Arc<DeviceConfig>>,
    observed: Arc<watch::Sender<Observed>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        let run = engine::run(
            configs.clone(),
            Arc::clone(&observed),
            metrics.clone(),
            cancel.clone(),
        );
        match tokio::spawn(run.in_current_span()).await {
            Err(e) if e.is_panic() => {
                metrics.engine_restarts.inc();
                tracing::error!("the device's loop panicked; starting it again in 1 s");
                observed.send_modify(|o| {
                    o.operating = Some(yurt_api::iot::OperatingState::Unknown);
                    o.problems.insert(
                        String::new(),
                        "the agent's loop for this device failed and was started again".into(),
                    );
                });
                if !crate::sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                    return;
                }
            }
            // Cancelled, or the agent dropped the device.
            _ => return,
        }
    }
}

/// Where a device's status comes from.
enum Source {
    Engine(watch::Receiver<Observed>),
    Stuck(View),
}

struct StatusWriter {
    api: Api<Device>,
    name: String,
    config: AgentConfig,
    metrics: Metrics,
    link: Arc<StatusLink>,
}

/// Whether a failed write says the way to the API server is down or overloaded (no
/// answer, or a 5xx or 429 from the hub or the server), rather than that this object's
/// write was refused.
fn link_trouble(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        _ => true,
    }
}

fn now() -> (Time, i64) {
    let ts = k8s_openapi::jiff::Timestamp::now();
    (Time(ts), ts.as_millisecond())
}

impl StatusWriter {
    /// Writes the device's status when it changes (at most once per minimum interval,
    /// the latest state winning), and every heartbeat; a failed write is retried with
    /// jittered backoff, with whatever is latest by then, or as soon as another writer's
    /// write goes through.
    async fn run(
        self,
        mut device: watch::Receiver<Device>,
        mut source: Source,
        cancel: CancellationToken,
    ) {
        // What was last written, as a fingerprint of its significant part (a pool's
        // writers would otherwise keep every device's status twice over).
        let mut written: Option<u64> = None;
        let mut basis: Option<(View, Option<String>)> = None;
        let mut last_write: Option<Instant> = None;
        let mut failures: u32 = 0;
        // This writer's last try was woken by another's write going through (and failed
        // again, if it is still set at a failure): it then waits out its whole backoff, so
        // a link that is up but failing some writes (an overloaded server) does not turn
        // every write that goes through into a wave of retries.
        let mut woken = false;
        let jittered = || self.config.heartbeat.mul_f64(0.9 + fastrand::f64() * 0.2);
        let mut beat = jittered();
        loop {
            let view = match &mut source {
                Source::Engine(rx) => {
                    let o = rx.borrow_and_update().clone();
                    // Nothing observed yet: nothing to say.
                    (o.operating.is_some() || !o.problems.is_empty()).then_some(View::Observed(o))
                }
                Source::Stuck(v) => Some(v.clone()),
            };
            let mut wait = beat;
            if let Some(view) = view {
                let since = last_write.map(|t| t.elapsed());
                let heartbeat = since.is_none_or(|s| s >= beat);
                let version = device.borrow_and_update().metadata.resource_version.clone();
                // Most wake-ups are a poll that changed only the time: skip building the
                // status unless the state, the object or the heartbeat asks for it.
                let unchanged = basis
                    .as_ref()
                    .is_some_and(|(v, rv): &(View, Option<String>)| {
                        *rv == version && v.same_state(&view)
                    });
                if unchanged && !heartbeat {
                    wait = since.map_or(Duration::ZERO, |s| beat.saturating_sub(s));
                } else {
                    let build = || {
                        let (time, ms) = now();
                        let patch = status::patch(&device.borrow(), &view, &time, ms);
                        let significant = status::fingerprint(&status::significant(&patch));
                        (patch, significant)
                    };
                    let (_, significant) = build();
                    let changed = self.config.status_on_change && written != Some(significant);
                    let early = since.map_or(Duration::ZERO, |s| {
                        self.config.min_status_interval.saturating_sub(s)
                    });
                    if (changed || heartbeat) && early.is_zero() {
                        // Waits its turn among the pool's writes (the semaphore is never
                        // closed; were it, the write goes ahead unbounded), and holds it
                        // for the request only, never through a backoff.
                        let permit = tokio::select! {
                            () = cancel.cancelled() => return,
                            permit = self.link.permits.acquire() => permit.ok(),
                        };
                        // Built again once its turn comes: a writer waiting holds no
                        // status, and writes what is latest.
                        let (patch, significant) = build();
                        let started = Instant::now();
                        let outcome = self
                            .api
                            .patch_status(
                                &self.name,
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await;
                        drop(permit);
                        self.metrics
                            .status_write_seconds
                            .observe(started.elapsed().as_secs_f64());
                        Metrics::outcome(&self.metrics.status_writes, outcome.is_ok());
                        match outcome {
                            Ok(_) => {
                                self.link.went_through();
                                written = Some(significant);
                                basis = Some((view, version));
                                last_write = Some(Instant::now());
                                failures = 0;
                                woken = false;
                                beat = jittered();
                            }
                            Err(kube::Error::Api(s)) if s.code == 404 => {
                                // Gone: the agent stops this writer when it sees the deletion.
                                self.link.went_through();
                                wait = beat;
                            }
                            Err(e) => {
                                // Created before the failure is recorded: a write that goes
                                // through from here on wakes this one, if the link was the
                                // trouble (a refusal of this object waits out its backoff)
                                // and it was not woken so already.
                                let back = self.link.back.notified();
                                let link_trouble = link_trouble(&e);
                                let listen = link_trouble && !woken;
                                if link_trouble {
                                    self.link.failing.store(true, Ordering::Relaxed);
                                } else {
                                    self.link.went_through();
                                }
                                failures = failures.saturating_add(1);
                                let backoff = Duration::from_secs(1)
                                    .saturating_mul(1 << failures.min(10))
                                    .min(self.config.status_retry_max);
                                wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                                tracing::debug!(error = %e, retry_in = ?wait, "writing the device's status");
                                tokio::select! {
                                    () = cancel.cancelled() => return,
                                    () = tokio::time::sleep(wait) => woken = false,
                                    () = back, if listen => woken = true,
                                }
                                continue;
                            }
                        }
                    } else if changed || heartbeat {
                        wait = early;
                    } else {
                        basis = Some((view, version));
                        if let Some(s) = since {
                            wait = beat.saturating_sub(s);
                        }
                    }
                }
            }
            let observed_change = async {
                match &mut source {
                    Source::Engine(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    Source::Stuck(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = observed_change => {}
                changed = device.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Creates what of EdgeX's virtual devices is missing in the pool (an object that
/// exists is left as it is), retrying until done or cancelled.
async fn register_virtual_devices(
    client: kube::Client,
    config: AgentConfig,
    cancel: CancellationToken,
) {
    let (service, profiles, devices) =
        match virtual_devices::objects(&config.pool, &config.namespace) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "the virtual devices do not encode");
                return;
            }
        };
    let ns = &config.namespace;
    let mut wait = Duration::from_secs(1);
    loop {
        let outcome = async {
            create_missing(
                Api::<DeviceService>::namespaced(client.clone(), ns),
                &service,
            )
            .await?;
            for p in &profiles {
                create_missing(Api::<DeviceProfile>::namespaced(client.clone(), ns), p).await?;
            }
            for d in &devices {
                create_missing(Api::<Device>::namespaced(client.clone(), ns), d).await?;
            }
            Ok::<(), kube::Error>(())
        }
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(
                    devices = devices.len(),
                    "EdgeX's virtual devices are registered"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?wait, "registering the virtual devices");
                if !crate::sleep_or_cancel(wait.mul_f64(0.5 + fastrand::f64() * 0.5), &cancel).await
                {
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Creates `object` unless one of its name exists.
async fn create_missing<K>(api: Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&kube::api::PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
