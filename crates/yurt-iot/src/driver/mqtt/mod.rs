//! MQTT (protocol key `mqtt`), with rumqttc, as EdgeX's device-mqtt (v3) speaks it:
//!
//! - values a device publishes on `incoming/data/<device>/<source>` (a JSON object with
//!   one key per resource, or for a single resource any payload) are its readings;
//! - a read asks `<CommandTopic>/<resource>/get/<id>` (empty payload) and takes the
//!   answer on `command/response/<id>` (a JSON object with the resource's key);
//! - a write publishes `{"<resource>": <value>}` on `<CommandTopic>/<resource>/set/<id>`
//!   and waits for any answer on `command/response/<id>`.
//!
//! Devices that publish on topics of their own (a sensor's `tele/<name>/SENSOR`) are
//! read there too ([`yurt_api::iot::mqtt`]): the device's `ValueTopic` property, whose
//! JSON payload holds a key per resource (or what the resource's `jsonPath` attribute
//! names), or a resource's own `topic` attribute, whose whole payload is its value (or
//! what its `jsonPath` names). The agent subscribes to each such topic when a resource
//! first needs it, again after every reconnect, and reads the latest payload (a retained
//! one included).
//!
//! Device properties: `CommandTopic` (EdgeX's; without it the device only publishes),
//! and the broker, which EdgeX keeps in its service's configuration and we take from the
//! device: `Host`, `Port` (1883), `Timeout` (seconds an answer may take, 5). A command
//! left unanswered fails that resource only; a lost broker fails the device. One
//! connection per broker is shared by its devices; it reconnects on its own (with a
//! pause), subscribing again each time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::Value as Json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{
    Driver, DriverError, ProtocolProperties, Readings, Resource, Session, property,
    timeout_property,
};
use crate::value::{Value, ValueType};
use yurt_api::iot::mqtt::{json_pointer, topic_problem};

#[cfg(test)]
mod tests;

/// Where devices publish their values (EdgeX's `IncomingTopic`).
pub const INCOMING_TOPIC: &str = "incoming/data/#";
/// Where devices answer commands (EdgeX's `ResponseTopic`).
pub const RESPONSE_TOPIC: &str = "command/response/#";
/// The broker port when a device names none.
pub const DEFAULT_PORT: u16 = 1883;
/// How long an answer may take when a device names no `Timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Topics per SUBSCRIBE packet when subscribing again after a reconnect: with topics of
/// at most `MAX_TOPIC_BYTES` (1 KiB), well under `MAX_PACKET_BYTES`.
const SUBSCRIBE_CHUNK: usize = 64;
/// The largest MQTT packet taken or sent. MQTT 3.1.1 cannot refuse one packet and keep
/// the connection, so this is generous; a larger one still drops the connection (and is
/// logged with the error), as mosquitto's own `message_size_limit` would refuse it.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// The pause before connecting to a broker again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

type Key = (String, String);

/// The most values kept per device from `incoming/data/...` (a device has that many
/// resources at most in any profile seen; keys beyond are published for nothing).
const MAX_VALUES_PER_DEVICE: usize = 256;

#[derive(Default)]
struct DeviceEntry {
    sessions: usize,
    values: usize,
}

impl Inbox {
    /// Keeps a value a device published, if the device is driven here and has room.
    fn keep(&mut self, device: &str, resource: String, value: Json, at: Instant) {
        let Some(entry) = self.devices.get_mut(device) else {
            return;
        };
        let key = (device.to_owned(), resource);
        if let Some(slot) = self.latest.get_mut(&key) {
            *slot = (value, at);
        } else if entry.values < MAX_VALUES_PER_DEVICE {
            entry.values += 1;
            self.latest.insert(key, (value, at));
        }
    }
}

#[derive(Default)]
struct Inbox {
    /// The last value each (device, resource) published, and when.
    latest: HashMap<Key, (Json, Instant)>,
    /// Devices with a live session here: their sessions, and the values kept for them.
    /// What anyone publishes for other names on the broker is not kept.
    devices: HashMap<String, DeviceEntry>,
    /// Devices' own value topics subscribed to, and the last payload each carried.
    topics: HashMap<String, Option<Vec<u8>>>,
    /// Commands waiting for their answer, by id.
    pending: HashMap<String, oneshot::Sender<Vec<u8>>>,
}

/// One broker connection.
struct Broker {
    client: AsyncClient,
    inbox: Mutex<Inbox>,
    connected: AtomicBool,
    /// Connections made so far.
    connects: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Broker {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Plain maps: a panic elsewhere leaves them usable.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn received(&self, topic: &str, payload: &[u8]) {
        if let Some(last) = self.inbox().topics.get_mut(topic) {
            *last = Some(payload.to_vec());
        }
        if let Some(id) = topic.strip_prefix("command/response/") {
            let waiting = self.inbox().pending.remove(id);
            if let Some(tx) = waiting {
                let _ = tx.send(payload.to_vec());
            }
            return;
        }
        let Some(rest) = topic.strip_prefix("incoming/data/") else {
            return;
        };
        let Some((device, source)) = rest.split_once('/') else {
            return;
        };
        if source.contains('/') {
            return;
        }
        let now = Instant::now();
        let mut inbox = self.inbox();
        if !inbox.devices.contains_key(device) {
            return;
        }
        match serde_json::from_slice::<Json>(payload) {
            Ok(Json::Object(map)) if !map.is_empty() => {
                for (resource, value) in map {
                    inbox.keep(device, resource, value, now);
                }
            }
            // One resource: the whole payload is its value.
            Ok(other) => inbox.keep(device, source.to_owned(), other, now),
            Err(_) => {
                let text = String::from_utf8_lossy(payload).into_owned();
                inbox.keep(device, source.to_owned(), Json::String(text), now);
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// Connects to `host:port` and keeps the connection: subscribes after every connect,
/// hands what arrives to the broker's inbox.
fn connect_broker(host: &str, port: u16) -> Arc<Broker> {
    let id = format!("yurt-iot-agent-{:016x}", fastrand::u64(..));
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    // A packet over the limit ends the connection, for every device on the broker:
    // rumqttc's 10 KiB default is smaller than payloads devices publish.
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    let (client, mut events) = AsyncClient::new(options, 256);
    let broker = Arc::new(Broker {
        client: client.clone(),
        inbox: Mutex::new(Inbox::default()),
        connected: AtomicBool::new(false),
        connects: AtomicU64::new(0),
        task: Mutex::new(None),
    });
    let weak = Arc::downgrade(&broker);
    let endpoint = format!("{host}:{port}");
    let task = tokio::spawn(async move {
        loop {
            let event = events.poll().await;
            let Some(broker) = weak.upgrade() else {
                return;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    broker.connected.store(true, Ordering::Relaxed);
                    broker.connects.fetch_add(1, Ordering::Relaxed);
                    let own: Vec<String> = broker.inbox().topics.keys().cloned().collect();
                    let fixed = [INCOMING_TOPIC, RESPONSE_TOPIC].map(str::to_owned);
                    let all: Vec<String> = fixed.into_iter().chain(own).collect();
                    // Sent from a task of its own: the requests queue for this loop, which
                    // must go on polling for the queue to drain.
                    let (client, at) = (client.clone(), endpoint.clone());
                    tokio::spawn(async move {
                        for chunk in all.chunks(SUBSCRIBE_CHUNK) {
                            let filters = chunk
                                .iter()
                                .map(|t| SubscribeFilter::new(t.clone(), QoS::AtMostOnce));
                            if let Err(e) = client.subscribe_many(filters).await {
                                tracing::warn!(broker = %at, error = %e, "subscribing");
                                return;
                            }
                        }
                    });
                    tracing::info!(broker = %endpoint, "connected to the MQTT broker");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => broker.received(&p.topic, &p.payload),
                Ok(_) => {}
                Err(e) => {
                    if broker.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(broker = %endpoint, error = %e, "lost the MQTT broker");
                    }
                    drop(broker);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    });
    *broker.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    broker
}

/// A device's MQTT settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The broker's host.
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// EdgeX's `CommandTopic`, if the device takes commands.
    pub command_topic: Option<String>,
    /// The topic the device publishes its values on, if it has one of its own.
    pub value_topic: Option<String>,
    /// How long an answer may take.
    pub timeout: Duration,
}

impl Endpoint {
    /// A device's settings from its `mqtt` properties.
    pub fn from_properties(properties: &ProtocolProperties) -> Result<Self, DriverError> {
        let host = property(properties, "Host")
            .ok_or_else(|| DriverError::Config("mqtt: Host (the broker) is required".into()))?
            .to_owned();
        let port = match property(properties, "Port") {
            None => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| {
                DriverError::Config(format!("mqtt: Port {p:?} is not a port number"))
            })?,
        };
        let timeout = timeout_property(properties, "mqtt", DEFAULT_TIMEOUT)?;
        let command_topic =
            property(properties, "CommandTopic").map(|t| t.trim_end_matches('/').to_owned());
        if command_topic
            .as_deref()
            .is_some_and(|t| t.contains(['#', '+']))
        {
            return Err(DriverError::Config(
                "mqtt: CommandTopic may not hold the wildcards # or +".into(),
            ));
        }
        let value_topic = property(properties, "ValueTopic").map(str::to_owned);
        if let Some(problem) = value_topic.as_deref().and_then(topic_problem) {
            return Err(DriverError::Config(format!("mqtt: ValueTopic {problem}")));
        }
        Ok(Self {
            host,
            port,
            command_topic,
            value_topic,
            timeout,
        })
    }

    /// Where a resource's value is published, when it is on a topic of the device's
    /// own: the topic and a JSON Pointer into its payload.
    fn value_source(&self, resource: &Resource) -> Result<Option<(String, String)>, DriverError> {
        let path = resource.attribute("jsonPath");
        let (topic, path) = match (resource.attribute("topic"), &self.value_topic) {
            (Some(topic), _) => {
                if let Some(problem) = topic_problem(topic) {
                    return Err(DriverError::Config(format!(
                        "resource {:?}: topic {problem}",
                        resource.name
                    )));
                }
                (topic.to_owned(), path.unwrap_or("$").to_owned())
            }
            (None, Some(topic)) => (
                topic.clone(),
                path.map_or_else(
                    || format!("/{}", resource.name.replace('~', "~0").replace('/', "~1")),
                    str::to_owned,
                ),
            ),
            (None, None) => return Ok(None),
        };
        let pointer = json_pointer(&path).map_err(|e| {
            DriverError::Config(format!("resource {:?}: jsonPath {e}", resource.name))
        })?;
        Ok(Some((topic, pointer)))
    }
}

/// The MQTT driver.
#[derive(Default)]
pub struct MqttDriver {
    brokers: Mutex<HashMap<(String, u16), Arc<Broker>>>,
}

#[async_trait]
impl Driver for MqttDriver {
    fn protocol(&self) -> &'static str {
        "mqtt"
    }

    fn check(
        &self,
        properties: &ProtocolProperties,
        resources: &[Resource],
    ) -> Result<(), DriverError> {
        let endpoint = Endpoint::from_properties(properties)?;
        for r in resources {
            endpoint.value_source(r)?;
        }
        Ok(())
    }

    async fn connect(
        &self,
        device: &str,
        properties: &ProtocolProperties,
    ) -> Result<Box<dyn Session>, DriverError> {
        let endpoint = Endpoint::from_properties(properties)?;
        let broker = {
            let mut brokers = self.brokers.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(
                brokers
                    .entry((endpoint.host.clone(), endpoint.port))
                    .or_insert_with(|| connect_broker(&endpoint.host, endpoint.port)),
            )
        };
        broker
            .inbox()
            .devices
            .entry(device.to_owned())
            .or_default()
            .sessions += 1;
        Ok(Box::new(MqttSession {
            broker,
            device: device.to_owned(),
            endpoint,
            last_read: None,
        }))
    }
}

struct MqttSession {
    broker: Arc<Broker>,
    device: String,
    endpoint: Endpoint,
    last_read: Option<Instant>,
}

/// A JSON value as a value of `value_type` (numbers, booleans and strings as EdgeX's
/// `cast` reads them).
fn from_json(json: &Json, value_type: ValueType) -> Result<Value, DriverError> {
    let text = match json {
        Json::String(s) => s.clone(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    match (value_type, json) {
        // A JSON number for an integer type may be written 3.0.
        (t, Json::Number(n)) if t.integer().is_some() && n.is_f64() => {
            Ok(Value::Float(n.as_f64().unwrap_or_default()).fitted(t)?)
        }
        _ => Ok(Value::parse(text.trim(), value_type)?),
    }
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(n) => Json::from(*n),
        Value::Uint(n) => Json::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.clone()),
    }
}

fn command_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

impl Drop for MqttSession {
    fn drop(&mut self) {
        let mut inbox = self.broker.inbox();
        let last = inbox.devices.get_mut(&self.device).is_some_and(|e| {
            e.sessions = e.sessions.saturating_sub(1);
            e.sessions == 0
        });
        if last {
            inbox.devices.remove(&self.device);
            inbox.latest.retain(|(d, _), _| *d != self.device);
        }
    }
}

impl MqttSession {
    fn ensure_connected(&self) -> Result<(), DriverError> {
        if self.broker.connected.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(DriverError::Unreachable(format!(
                "MQTT broker {}:{} not connected",
                self.endpoint.host, self.endpoint.port
            )))
        }
    }

    /// Publishes a command and waits for its answer.
    async fn command(
        &self,
        topic: &str,
        id: String,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.broker.inbox().pending.insert(id.clone(), tx);
        let sent = self
            .broker
            .client
            .publish(topic, QoS::AtMostOnce, false, payload)
            .await;
        if let Err(e) = sent {
            self.broker.inbox().pending.remove(&id);
            return Err(DriverError::Unreachable(e.to_string()));
        }
        let answer = tokio::time::timeout(self.endpoint.timeout, rx).await;
        self.broker.inbox().pending.remove(&id);
        match answer {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(_)) => Err(DriverError::Unreachable(
                "the broker connection closed".into(),
            )),
            // The broker is there; the device did not answer this command. Not a lost
            // connection: the device's other resources (its published values) still count.
            Err(_) => Err(DriverError::Refused(format!(
                "the device did not answer on command/response/ within {:?}",
                self.endpoint.timeout
            ))),
        }
    }

    /// A resource's value from the latest payload on a topic of the device's own,
    /// subscribing to the topic the first time.
    async fn on_own_topic(
        &self,
        topic: &str,
        pointer: &str,
        resource: &Resource,
    ) -> Result<Result<Value, DriverError>, DriverError> {
        let latest = {
            let mut inbox = self.broker.inbox();
            match inbox.topics.get(topic) {
                Some(latest) => Some(latest.clone()),
                None => {
                    inbox.topics.insert(topic.to_owned(), None);
                    None
                }
            }
        };
        if latest.is_none()
            && let Err(e) = self.broker.client.subscribe(topic, QoS::AtMostOnce).await
        {
            self.broker.inbox().topics.remove(topic);
            return Err(DriverError::Unreachable(e.to_string()));
        }
        let Some(Some(payload)) = latest else {
            return Ok(Err(DriverError::Refused(format!(
                "no value published yet on {topic}"
            ))));
        };
        let json = match serde_json::from_slice::<Json>(&payload) {
            Ok(json) => json,
            // Not JSON: the whole payload is a value of its own.
            Err(_) if pointer.is_empty() => {
                Json::String(String::from_utf8_lossy(&payload).into_owned())
            }
            Err(e) => {
                return Ok(Err(DriverError::Refused(format!(
                    "the payload on {topic} is not JSON: {e}"
                ))));
            }
        };
        Ok(match json.pointer(pointer) {
            Some(value) => from_json(value, resource.value_type),
            None => Err(DriverError::Refused(format!(
                "the payload on {topic} has nothing at {}",
                resource.attribute("jsonPath").unwrap_or(pointer)
            ))),
        })
    }

    async fn get(&self, topic: &str, resource: &Resource) -> Result<Value, DriverError> {
        let id = command_id();
        let answer = self
            .command(
                &format!("{topic}/{}/get/{id}", resource.name),
                id,
                Vec::new(),
            )
            .await?;
        let json: Json = serde_json::from_slice(&answer).map_err(|e| {
            DriverError::Refused(format!(
                "the answer to get {} is not JSON: {e}",
                resource.name
            ))
        })?;
        let value = json.get(&resource.name).ok_or_else(|| {
            DriverError::Refused(format!(
                "the answer to get {} has no {:?} key",
                resource.name, resource.name
            ))
        })?;
        from_json(value, resource.value_type)
    }
}

#[async_trait]
impl Session for MqttSession {
    async fn read(&mut self, resources: &[&Resource]) -> Result<Readings, DriverError> {
        self.ensure_connected()?;
        let since = self.last_read;
        self.last_read = Some(Instant::now());
        let mut out = Vec::with_capacity(resources.len());
        for r in resources {
            match self.endpoint.value_source(r) {
                Ok(Some((topic, pointer))) => {
                    out.push(self.on_own_topic(&topic, &pointer, r).await?);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            }
            let pushed = self
                .broker
                .inbox()
                .latest
                .get(&(self.device.clone(), r.name.clone()))
                .cloned();
            let fresh = pushed
                .as_ref()
                .is_some_and(|(_, at)| since.is_none_or(|s| *at >= s));
            let reading = match (&pushed, fresh, self.endpoint.command_topic.clone()) {
                (Some((json, _)), true, _) | (Some((json, _)), false, None) => {
                    from_json(json, r.value_type)
                }
                (_, _, Some(topic)) => match self.get(&topic, r).await {
                    Err(e) if e.is_connection() => return Err(e),
                    other => other,
                },
                (None, _, None) => Err(DriverError::Refused(format!(
                    "no value published yet on incoming/data/{}/{}",
                    self.device, r.name
                ))),
            };
            out.push(reading);
        }
        Ok(out)
    }

    async fn write(&mut self, resource: &Resource, raw: Value) -> Result<(), DriverError> {
        self.ensure_connected()?;
        let topic = self.endpoint.command_topic.clone().ok_or_else(|| {
            DriverError::Config("mqtt: the device has no CommandTopic: it cannot be written".into())
        })?;
        let value = raw.fitted(resource.value_type)?;
        let mut body = serde_json::Map::new();
        body.insert(resource.name.clone(), to_json(&value));
        let payload = serde_json::to_vec(&Json::Object(body))
            .map_err(|e| DriverError::Config(e.to_string()))?;
        let id = command_id();
        self.command(&format!("{topic}/{}/set/{id}", resource.name), id, payload)
            .await
            .map(|_| ())
    }
}
