//! Prometheus metrics of the tunnel server (`yurt_tunnel_server_`) and agent
//! (`yurt_tunnel_agent_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of tunnelled-connection counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StreamLabels {
    /// `agent` (through a node's agent), `direct` (dialled from the server's host) or
    /// `refused` (answered with an error before any dial).
    pub route: &'static str,
    /// The status answered: 200, 400, 403, 502, 504.
    pub code: u16,
}

/// Labels of refusal counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

fn dial_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The server's metrics.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    /// CONNECTs answered, by route and status.
    pub connects: Family<StreamLabels, Counter>,
    /// Time from a CONNECT's arrival to its answer, by route.
    pub connect_seconds: Family<StreamLabels, Histogram, fn() -> Histogram>,
    /// Agent connections open.
    pub agents: Gauge,
    /// Agent connections refused, by reason (`tls`, `identity`, `unknown_node`, `handshake`).
    pub agent_refusals: Family<ReasonLabel, Counter>,
    /// Tunnelled connections open.
    pub open_streams: Gauge,
    /// Bytes carried, from the API server's side towards nodes.
    pub bytes_out: Counter,
    /// Bytes carried from nodes back.
    pub bytes_in: Counter,
}

impl ServerMetrics {
    /// New metrics registered in `registry` under `yurt_tunnel_server_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connects: Family::default(),
            connect_seconds: Family::new_with_constructor(dial_histogram),
            agents: Gauge::default(),
            agent_refusals: Family::default(),
            open_streams: Gauge::default(),
            bytes_out: Counter::default(),
            bytes_in: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("yurt_tunnel_server");
        r.register("connects", "CONNECT requests answered", m.connects.clone());
        r.register(
            "connect_duration_seconds",
            "Time from a CONNECT's arrival to its answer",
            m.connect_seconds.clone(),
        );
        r.register("agents", "Agent connections open", m.agents.clone());
        r.register(
            "agent_refusals",
            "Agent connections refused",
            m.agent_refusals.clone(),
        );
        r.register(
            "open_streams",
            "Tunnelled connections open",
            m.open_streams.clone(),
        );
        r.register(
            "bytes_out",
            "Bytes carried towards nodes",
            m.bytes_out.clone(),
        );
        r.register(
            "bytes_in",
            "Bytes carried back from nodes",
            m.bytes_in.clone(),
        );
        m
    }

    pub(crate) fn answered(&self, route: &'static str, code: u16, seconds: f64) {
        let labels = StreamLabels { route, code };
        self.connects.get_or_create(&labels).inc();
        self.connect_seconds.get_or_create(&labels).observe(seconds);
    }
}

/// The agent's metrics.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// Server replicas the agent is connected to.
    pub connected: Gauge,
    /// Connection attempts to the server, by result: `ok`, `connect` (no TCP
    /// connection), `tls` (a certificate refused either way), `http2`, `timeout`.
    pub connects: Family<ReasonLabel, Counter>,
    /// Dials asked by the server, by status answered.
    pub dials: Family<StreamLabels, Counter>,
    /// Time to dial a target, by status.
    pub dial_seconds: Family<StreamLabels, Histogram, fn() -> Histogram>,
    /// Tunnelled connections open.
    pub open_streams: Gauge,
    /// When the certificate of the newest connection expires (Unix seconds).
    pub certificate_expiry: Gauge,
}

impl AgentMetrics {
    /// New metrics registered in `registry` under `yurt_tunnel_agent_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connected: Gauge::default(),
            connects: Family::default(),
            dials: Family::default(),
            dial_seconds: Family::new_with_constructor(dial_histogram),
            open_streams: Gauge::default(),
            certificate_expiry: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("yurt_tunnel_agent");
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the node certificate the agent connects with expires",
            m.certificate_expiry.clone(),
        );
        r.register(
            "connected",
            "Connected to the tunnel server",
            m.connected.clone(),
        );
        r.register(
            "server_connects",
            "Connection attempts to the server",
            m.connects.clone(),
        );
        r.register("dials", "Dials asked by the server", m.dials.clone());
        r.register(
            "dial_duration_seconds",
            "Time to dial a target",
            m.dial_seconds.clone(),
        );
        r.register(
            "open_streams",
            "Tunnelled connections open",
            m.open_streams.clone(),
        );
        m
    }

    pub(crate) fn dialled(&self, code: u16, seconds: f64) {
        let labels = StreamLabels {
            route: "local",
            code,
        };
        self.dials.get_or_create(&labels).inc();
        self.dial_seconds.get_or_create(&labels).observe(seconds);
    }
}
