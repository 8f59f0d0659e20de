//! The agents connected now: node name (from each agent's certificate) → its HTTP/2
//! connections, newest last. Node X's traffic only ever uses X's own connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio_util::sync::CancellationToken;
use yurt_core::NodeName;

#[derive(Debug)]
struct Connection {
    id: u64,
    send: SendRequest<Bytes>,
    closed: CancellationToken,
}

/// One agent connection to open a stream on.
#[derive(Debug, Clone)]
pub struct AgentLink {
    /// Opens streams.
    pub send: SendRequest<Bytes>,
    /// Cancelled when the connection ends: its streams end with it.
    pub closed: CancellationToken,
}

/// Connected agents.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    by_node: Arc<Mutex<HashMap<NodeName, Vec<Connection>>>>,
    next_id: Arc<AtomicU64>,
}

impl Agents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeName, Vec<Connection>>> {
        self.by_node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection of `node`; new streams go to it from now on. `closed` is
    /// cancelled when it ends. Returns its id.
    pub fn register(
        &self,
        node: &NodeName,
        send: SendRequest<Bytes>,
        closed: CancellationToken,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(node.clone())
            .or_default()
            .push(Connection { id, send, closed });
        id
    }

    /// Removes connection `id` of `node` (streams on it carry on until they end).
    pub fn unregister(&self, node: &NodeName, id: u64) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(node) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                map.remove(node);
            }
        }
    }

    /// Every connection of `node`, newest first.
    pub fn links(&self, node: &NodeName) -> Vec<AgentLink> {
        self.lock()
            .get(node)
            .map(|list| {
                list.iter()
                    .rev()
                    .map(|c| AgentLink {
                        send: c.send.clone(),
                        closed: c.closed.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The newest connection of `node`.
    pub fn get(&self, node: &NodeName) -> Option<AgentLink> {
        self.lock()
            .get(node)
            .and_then(|list| list.last())
            .map(|c| AgentLink {
                send: c.send.clone(),
                closed: c.closed.clone(),
            })
    }

    /// Nodes with at least one agent connection.
    pub fn nodes(&self) -> Vec<NodeName> {
        let mut nodes: Vec<NodeName> = self.lock().keys().cloned().collect();
        nodes.sort();
        nodes
    }
}
