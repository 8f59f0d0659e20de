//! The API server's audit log (JSON lines, level Metadata): which node asked for what.
//!
//! Every request from an edge host carries the host's address among its `sourceIPs`
//! (the connection's peer comes last; a proxy's `X-Forwarded-For` entries first), so
//! requests of a node's kubelet, kube-proxy and hub are told apart from everyone
//! else's exactly, through the hub or not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The audit stages the policy records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The response headers were sent (long-running requests: watches).
    ResponseStarted,
    /// The response was sent whole (every request, watches when they end).
    ResponseComplete,
    /// Anything else (`RequestReceived`, `Panic`).
    Other,
}

/// The fields of one audit event the bench needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The request's id (shared by its stages).
    pub audit_id: String,
    /// The stage.
    pub stage: Stage,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, ...
    pub verb: String,
    /// The client's addresses.
    pub source_ips: Vec<String>,
    /// The response code (`ResponseComplete`).
    pub code: Option<u16>,
}

/// Parses one line of the log.
///
/// # Errors
/// Not JSON, or a field missing.
pub fn parse_line(line: &str) -> anyhow::Result<AuditEvent> {
    let v: serde_json::Value = serde_json::from_str(line).context("audit line is not JSON")?;
    let text = |field: &str| {
        v.get(field)
            .and_then(|f| f.as_str())
            .map(str::to_owned)
            .with_context(|| format!("audit event without {field}"))
    };
    Ok(AuditEvent {
        audit_id: text("auditID")?,
        stage: match text("stage")?.as_str() {
            "ResponseStarted" => Stage::ResponseStarted,
            "ResponseComplete" => Stage::ResponseComplete,
            _ => Stage::Other,
        },
        verb: text("verb")?,
        source_ips: v
            .get("sourceIPs")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|ip| ip.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        code: v
            .pointer("/responseStatus/code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u16::try_from(c).ok()),
    })
}

/// Verbs that change stored objects (each successful one is at least one etcd write).
const WRITES: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// What the log says about one client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTally {
    /// Requests per verb since the window began (a watch counts when the log records
    /// it, which 1.20 does when it ends).
    pub requests: BTreeMap<String, u64>,
    /// Successful writes since the window began.
    pub writes: u64,
}

/// Requests per client address, and which watches are open.
#[derive(Debug, Default)]
pub struct Tally {
    /// The addresses counted.
    clients: Vec<String>,
    /// Per address, in the current window.
    window: HashMap<String, ClientTally>,
    /// Requests whose response started (watches) and has not completed: their audit
    /// ids. kube-apiserver 1.20 writes a watch's `ResponseStarted` event only when the
    /// watch ends, next to its `ResponseComplete`, so this set cannot tell which
    /// watches are open; it only keeps each request from counting twice.
    started: HashSet<String>,
}

impl Tally {
    /// A tally of the requests from `clients` (addresses).
    pub fn new(clients: Vec<String>) -> Self {
        Self {
            clients,
            ..Self::default()
        }
    }

    fn client_of(&self, event: &AuditEvent) -> Option<&String> {
        self.clients
            .iter()
            .find(|c| event.source_ips.iter().any(|ip| ip == *c))
    }

    /// Counts one event.
    pub fn add(&mut self, event: &AuditEvent) {
        let Some(client) = self.client_of(event).cloned() else {
            return;
        };
        let counted = match event.stage {
            Stage::ResponseStarted => self.started.insert(event.audit_id.clone()),
            // A request that started a response was counted then.
            Stage::ResponseComplete => !self.started.remove(&event.audit_id),
            Stage::Other => false,
        };
        if !counted {
            return;
        }
        let entry = self.window.entry(client).or_default();
        *entry.requests.entry(event.verb.clone()).or_insert(0) += 1;
        if event.stage == Stage::ResponseComplete
            && WRITES.contains(&event.verb.as_str())
            && event.code.is_some_and(|c| (200..300).contains(&c))
        {
            entry.writes += 1;
        }
    }

    /// Starts a new window: request counts go back to zero.
    pub fn new_window(&mut self) {
        self.window.clear();
    }

    /// What `client` did in the current window.
    pub fn client(&self, client: &str) -> ClientTally {
        self.window.get(client).cloned().unwrap_or_default()
    }
}

/// Follows the log: each call reads what was appended since the last, whole lines only.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    /// Follows `path` from its start.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Feeds the lines appended since the last call to `tally`; returns how many lines
    /// could not be read (a line cut by a full disk, say).
    ///
    /// # Errors
    /// The log cannot be read.
    pub fn feed(&mut self, tally: &mut Tally) -> anyhow::Result<usize> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut new = Vec::new();
        file.read_to_end(&mut new)?;
        self.offset += new.len() as u64;
        self.partial.extend_from_slice(&new);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(0);
        };
        let rest = self.partial.split_off(last_newline + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        let mut bad = 0;
        for line in String::from_utf8_lossy(&whole).lines() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Ok(event) => tally.add(&event),
                Err(_) => bad += 1,
            }
        }
        Ok(bad)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Lines as kube-apiserver 1.20 writes them (level Metadata), shortened.
    fn line(id: &str, stage: &str, verb: &str, ips: &[&str], code: Option<u16>) -> String {
        let mut v = serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": id, "stage": stage, "verb": verb,
            "requestURI": "/api/v1/nodes?fieldSelector=metadata.name%3Dedge-a1&watch=true",
            "user": {"username": "system:node:edge-a1", "groups": ["system:nodes"]},
            "sourceIPs": ips, "userAgent": "kubelet/v1.20.15 (linux/amd64) kubernetes/8f1e5bf",
            "objectRef": {"resource": "nodes", "name": "edge-a1", "apiVersion": "v1"},
            "requestReceivedTimestamp": "2026-11-30T23:00:00.000000Z",
            "stageTimestamp": "2026-11-30T23:00:00.001000Z",
        });
        if let Some(code) = code {
            v["responseStatus"] = serde_json::json!({"metadata": {}, "code": code});
        }
        v.to_string()
    }

    #[test]
    fn a_kube_apiserver_line_parses() {
        let e = parse_line(&line(
            "a1",
            "ResponseComplete",
            "patch",
            &["127.0.0.1", "10.20.0.11"],
            Some(200),
        ))
        .unwrap();
        assert_eq!(e.audit_id, "a1");
        assert_eq!(e.stage, Stage::ResponseComplete);
        assert_eq!(e.verb, "patch");
        assert_eq!(e.source_ips, ["127.0.0.1", "10.20.0.11"]);
        assert_eq!(e.code, Some(200));
        assert!(parse_line("{\"auditID\": \"x\"}").is_err());
        assert!(parse_line("not json").is_err());
    }

    #[test]
    fn requests_watches_and_writes_are_counted_per_address() {
        let node = "10.20.0.11";
        let mut t = Tally::new(vec![node.to_owned(), "10.20.0.12".to_owned()]);
        let events = [
            // A watch: both stages, counted once.
            line("w1", "ResponseStarted", "watch", &[node], None),
            line("w2", "ResponseStarted", "watch", &["127.0.0.1", node], None),
            line("w1", "ResponseComplete", "watch", &[node], Some(200)),
            // A watch refused before it started: one request, never open.
            line("w3", "ResponseComplete", "watch", &[node], Some(410)),
            line("g1", "ResponseComplete", "get", &[node], Some(200)),
            line("p1", "ResponseComplete", "update", &[node], Some(200)),
            line("p2", "ResponseComplete", "update", &[node], Some(409)),
            line("x", "RequestReceived", "get", &[node], None),
            // Someone else's.
            line(
                "c1",
                "ResponseComplete",
                "create",
                &["10.10.0.1"],
                Some(201),
            ),
        ];
        for l in &events {
            t.add(&parse_line(l).unwrap());
        }
        let c = t.client(node);
        assert_eq!(c.requests["watch"], 3);
        assert_eq!(c.requests["get"], 1);
        assert_eq!(c.requests["update"], 2);
        assert_eq!(c.requests.values().sum::<u64>(), 6);
        assert_eq!(c.writes, 1, "the conflict wrote nothing");
        assert_eq!(t.client("10.20.0.12"), ClientTally::default());
        // A new window forgets counts, not which requests were counted.
        t.new_window();
        assert_eq!(t.client(node), ClientTally::default());
        t.add(&parse_line(&line("w2", "ResponseComplete", "watch", &[node], Some(200))).unwrap());
        assert_eq!(
            t.client(node),
            ClientTally::default(),
            "w2 was counted before"
        );
    }

    #[test]
    fn the_follower_reads_whole_lines_only_and_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let node = "10.20.0.11";
        let mut file = std::fs::File::create(&path).unwrap();
        let first = line("g1", "ResponseComplete", "get", &[node], Some(200));
        let second = line("g2", "ResponseComplete", "get", &[node], Some(200));
        write!(file, "{first}\n{}", &second[..20]).unwrap();
        file.flush().unwrap();
        let mut t = Tally::new(vec![node.to_owned()]);
        let mut f = LogFollower::new(&path);
        assert_eq!(f.feed(&mut t).unwrap(), 0);
        assert_eq!(t.client(node).requests["get"], 1);
        writeln!(file, "{}\nnot json", &second[20..]).unwrap();
        file.flush().unwrap();
        assert_eq!(f.feed(&mut t).unwrap(), 1, "one unreadable line");
        assert_eq!(t.client(node).requests["get"], 2);
        assert_eq!(f.feed(&mut t).unwrap(), 0);
        assert_eq!(t.client(node).requests["get"], 2);
    }
}
