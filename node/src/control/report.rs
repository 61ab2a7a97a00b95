//! What the driver tells the API about the overlay: `GET /status`'s overlay part.

use serde::{Deserialize, Serialize};

use proto::overlay::{Peer, StreamId};

use super::{Control, Role};
use crate::lock;

/// One line of the node's recent history, for `astral status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventLine {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub event: String,
}

impl Control {
    /// What the engine knows, for the API.
    pub fn report(&self) -> Report {
        let state = lock(&self.state);
        let engine = &state.engine;
        Report {
            me: self.me(),
            running: state.running,
            supernode: engine.supernode_id().map(ToString::to_string),
            is_supernode: engine.is_supernode(),
            registered: engine.registered(),
            messages_sent: engine.messages_sent(),
            streams: engine
                .held()
                .into_iter()
                .map(|h| {
                    let role = state
                        .roles
                        .get(&h.stream)
                        .copied()
                        .unwrap_or(if h.is_source {
                            Role::Source
                        } else {
                            Role::Seed
                        });
                    HeldReport::new(h, role)
                })
                .collect(),
            events: state.events.iter().cloned().collect(),
        }
    }
}

/// `GET /status`'s overlay part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub me: Peer,
    pub running: bool,
    /// The supernode this node registered with (itself when it is one).
    pub supernode: Option<String>,
    pub is_supernode: bool,
    /// Boxes registered here, when this node is a supernode.
    pub registered: Option<usize>,
    pub messages_sent: u64,
    pub streams: Vec<HeldReport>,
    pub events: Vec<EventLine>,
}

/// One stream in the tree, as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldReport {
    pub stream: StreamId,
    pub role: Role,
    pub parent: Option<String>,
    /// Ancestors, source first; its length is this node's depth.
    pub path: Vec<String>,
    pub depth: usize,
    pub flowing: bool,
    pub slots: u8,
    pub tickets: Vec<TicketReport>,
    /// Players from beyond the box's network, each in a slot.
    pub viewers: u8,
    /// The hot-standby parent whose feed flows too (`relay.standby`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketReport {
    pub id: String,
    pub child: String,
    pub connected: bool,
    pub moving: bool,
    /// A hot standby of a box whose parent is another.
    #[serde(default)]
    pub standby: bool,
}

impl HeldReport {
    fn new(h: overlay::HeldStream, role: Role) -> HeldReport {
        HeldReport {
            depth: h.path.len(),
            stream: h.stream,
            role,
            parent: h.parent.map(|p| p.to_string()),
            path: h.path.iter().map(ToString::to_string).collect(),
            flowing: h.flowing,
            slots: h.slots,
            tickets: h
                .children
                .into_iter()
                .map(|t| TicketReport {
                    id: t.id.to_string(),
                    child: t.child.to_string(),
                    connected: t.connected,
                    moving: t.moving,
                    standby: t.standby,
                })
                .collect(),
            viewers: h.viewers,
            standby: h.standby.map(|s| s.to_string()),
        }
    }
}
