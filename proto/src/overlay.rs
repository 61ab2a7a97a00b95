//! Control messages between boxes and with the portal: the overlay's vocabulary.
//!
//! Each request is the JSON body of one ReST call (the route is in the comment of its
//! variant), and each has exactly one kind of successful answer. The overlay's state
//! machines (`overlay/`) speak these types and nothing else, so the node's HTTP
//! driver and the simulation carry the very same messages.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest node id or stream id.
pub const MAX_ID_LEN: usize = 64;

/// Checks an id: 1 to 64 of `A-Z a-z 0-9 _ - .`, so that it is safe in a URL path,
/// a file name and a log line as it is.
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{kind} must be 1 to {MAX_ID_LEN} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{kind} {id:?} has {c:?}; use letters, digits, '_', '-', '.'"
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        /// Shared, not copied: ids travel in every message and every path.
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(id: impl Into<String>) -> Result<Self, String> {
                let id = id.into();
                check_id($kind, &id)?;
                Ok(Self(id.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(id: String) -> Result<Self, String> {
                Self::new(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A box's name in the overlay, unique in the network.
    NodeId,
    "node id"
);
id_type!(
    /// A stream's name, the same at every hop: `rtmp://BOX/live/{stream}`.
    StreamId,
    "stream id"
);

/// How to reach a node: its id, its ReST API and its RTMP server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub id: NodeId,
    pub api: SocketAddr,
    pub rtmp: SocketAddr,
    /// Its RTMP server on its own IPv6 address, where the portal could reach it: boxes
    /// that have IPv6 connect there directly, through no NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmp_v6: Option<SocketAddr>,
}

impl Peer {
    /// A peer known by its IPv4 (or only) addresses.
    pub fn new(id: NodeId, api: SocketAddr, rtmp: SocketAddr) -> Peer {
        Peer {
            id,
            api,
            rtmp,
            rtmp_v6: None,
        }
    }

    /// Where a box connects to this one's RTMP server: over IPv6 when it has IPv6
    /// (`from_ipv6`) and this one can be reached there.
    pub fn rtmp_for(&self, from_ipv6: bool) -> SocketAddr {
        match self.rtmp_v6 {
            Some(v6) if from_ipv6 => v6,
            _ => self.rtmp,
        }
    }
}

/// Whether a box can open a connection to another: the other accepts connections from
/// beyond its router (`to_reachable`), or both have IPv6 and the other accepts them
/// there.
pub fn can_connect_to(from_ipv6: bool, to_reachable: bool, to: &Peer) -> bool {
    to_reachable || (from_ipv6 && to.rtmp_v6.is_some())
}

/// What a node tells its supernode about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCard {
    pub peer: Peer,
    /// Most forwards of one stream (`max_forwards`).
    pub max_forwards: u8,
    /// Upload budget.
    pub upload_kbps: u32,
    /// Whether boxes beyond its router can connect to it. One that cannot forwards
    /// only to boxes that can: it dials them (connection reversal, `Request::Dial`).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub reachable: bool,
    /// Whether it can open connections over IPv6: to boxes that accept them there
    /// (`Peer::rtmp_v6`) whether or not either can be reached over IPv4.
    #[serde(default, skip_serializing_if = "is_no")]
    pub ipv6: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

fn is_no(b: &bool) -> bool {
    !*b
}

/// A stream a node holds, as announced to its supernode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub stream: StreamId,
    /// The node's ancestors in the stream's tree, source first; empty at the source.
    /// Its length is the node's depth. Shared, not copied, as a holding travels
    /// through supernodes in search answers.
    pub path: Arc<[NodeId]>,
    /// Forward slots for this stream, used and free.
    pub slots: u8,
    pub free: u8,
    /// The fewest slots of any child: a joiner with more slots than that may take that
    /// child's place and adopt it (capacity-first placement). `None` without children.
    pub weakest_child: Option<u8>,
    /// Whether boxes beyond the holder's router can connect to it: one that cannot
    /// is offered only to boxes that can, which it dials.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub reachable: bool,
}

impl Holding {
    pub fn depth(&self) -> usize {
        self.path.len()
    }
}

/// A possible parent for a stream, from a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub peer: Peer,
    pub holding: Holding,
}

/// An identifier the parent gives a ticket; public, unlike its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TicketId(pub u64);

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A parent's grant to forward a stream to one child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: TicketId,
    /// Secret shared by parent and child: the child plays
    /// `rtmp://PARENT/live/{stream}?ticket={token}` with it, and either side ends the
    /// ticket with it.
    pub token: String,
    pub stream: StreamId,
    pub parent: Peer,
    /// The child's path: the parent's path and the parent.
    pub path: Vec<NodeId>,
    /// Where the child goes first when the parent fails: the parent's parent.
    pub backup: Option<Peer>,
    /// A node the child must take as its own child (it was displaced to make room).
    pub adopt: Option<NodeId>,
}

/// One control request. Routes are on the node's API unless marked portal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `POST /nodes` on a supernode: take me as a child. Answer: `Registered`.
    Register { node: NodeCard },
    /// `PUT /nodes/{id}` on a supernode: what I hold now; renews the lease. Answer: `Done`.
    Announce {
        node: NodeId,
        holdings: Vec<Holding>,
    },
    /// `DELETE /nodes/{id}` on a supernode: I am leaving. Answer: `Done`.
    Unregister { node: NodeId },
    /// `POST /search`: who can forward `stream` to `requester`? Answer: `Candidates`.
    Search {
        query: u64,
        stream: StreamId,
        ttl: u8,
        requester: NodeId,
        /// The requester's slots, so that a parent with a weaker child counts.
        requester_slots: u8,
        /// Whether the requester can be connected to: one that cannot is offered only
        /// parents that can.
        #[serde(default = "yes", skip_serializing_if = "is_yes")]
        requester_reachable: bool,
        /// Whether the requester has IPv6: it can connect to parents that are reached
        /// there.
        #[serde(default, skip_serializing_if = "is_no")]
        requester_ipv6: bool,
    },
    /// `POST /tickets`: forward `stream` to me. Answer: `Ticket`.
    Ticket {
        stream: StreamId,
        child: NodeCard,
        /// The child's current path, if it has a parent (a move, not a join).
        path: Option<Vec<NodeId>>,
        /// The child takes over the slot of this (failed or leaving) child of the
        /// parent.
        replaces: Option<NodeId>,
        /// A second, hot-standby feed for a child that has a parent: granted only
        /// from a free slot, and the first forward to go when a box needs the slot.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        standby: bool,
    },
    /// `DELETE /tickets/{id}`, either way: the ticket ends. `handover` suggests the
    /// child's next parent, and `replaces` lets it take over the sender's slot there.
    EndTicket {
        ticket: TicketId,
        token: String,
        handover: Option<Peer>,
    },
    /// `PUT /tickets/{id}` from parent to child: the parent's path changed.
    Path {
        ticket: TicketId,
        token: String,
        path: Vec<NodeId>,
        backup: Option<Peer>,
    },
    /// `POST /dial` from child to parent, for the ticket whose token is `token`:
    /// connection reversal. The parent cannot be connected to, so it connects to the
    /// child's RTMP address (its card's, never one from this request), says `nonce`
    /// first, and serves the child's play on that connection as on any other.
    /// Answer: `Done`.
    Dial {
        stream: StreamId,
        token: String,
        nonce: String,
    },
    /// `GET /ping`: round-trip time, and whether `stream` still flows here.
    Ping { stream: Option<StreamId> },
    /// `POST /supernode`: become a supernode and take these children (hand-off).
    Adopt {
        children: Vec<(NodeCard, Vec<Holding>)>,
        neighbours: Vec<Peer>,
    },
    /// `PUT /supernode` to a child: register with this supernode from now on.
    Rehome { supernode: Peer },
    /// `POST /supernode/neighbours` to a supernode: I am a supernode too, new to
    /// the portal's list; flood searches to me. Answer: `Done`.
    Neighbour { peer: Peer },
    /// Portal `GET /api/supernodes`: a partial list of supernodes. Answer: `Supernodes`.
    Bootstrap,
    /// Portal `POST /api/supernodes`: I am a supernode now, or still am (sent every
    /// `neighbour_refresh`). `viewers` counts the boxes registered here that hold each
    /// stream, for the portal's directory. Answer: `Supernodes` (my neighbours).
    PromoteSupernode {
        peer: Peer,
        #[serde(default)]
        viewers: BTreeMap<StreamId, u32>,
    },
    /// Portal `DELETE /api/supernodes/{id}`. Answer: `Done`.
    RetireSupernode { id: NodeId },
}

impl Request {
    /// The node a request speaks for, which must be the node that signed it: a box
    /// registers, announces, leaves and asks for tickets for itself only.
    pub fn speaks_for(&self) -> Option<&NodeId> {
        match self {
            Request::Register { node } => Some(&node.peer.id),
            Request::Announce { node, .. } | Request::Unregister { node } => Some(node),
            Request::Ticket { child, .. } => Some(&child.peer.id),
            Request::Neighbour { peer } | Request::PromoteSupernode { peer, .. } => Some(&peer.id),
            Request::RetireSupernode { id } => Some(id),
            Request::Search { .. }
            | Request::EndTicket { .. }
            | Request::Dial { .. }
            | Request::Path { .. }
            | Request::Ping { .. }
            | Request::Adopt { .. }
            | Request::Rehome { .. }
            | Request::Bootstrap => None,
        }
    }
}

/// The successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Done,
    Registered { lease_ms: u64 },
    Candidates { candidates: Vec<Candidate> },
    Ticket { ticket: Box<Ticket> },
    Pong { flowing: Option<bool> },
    Supernodes { supernodes: Vec<Peer> },
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// 400: the request makes no sense (bad id, TTL over the limit, …).
    Invalid,
    /// 404: no such node, stream or ticket here.
    NotFound,
    /// 403: the token does not match.
    Forbidden,
    /// 409: no free slot or no room for another child.
    Full,
    /// 409: granting it would make a loop.
    Loop,
    /// 503: this node is not a supernode, or is leaving.
    Unavailable,
    /// 429: the caller asked too often (`node::api::limits`); ask again later.
    TooMany,
}

/// A refused request: what and why, for a log line or an API error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub error: String,
    /// Where to ask instead: a parent refusing the claim on a dead child's slot names
    /// the sibling that took it first. Boxed: a refusal is an error of most of the
    /// engine's calls, and seldom names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instead: Option<Box<Peer>>,
}

impl Refusal {
    pub fn new(kind: RefusalKind, error: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            error: error.into(),
            instead: None,
        }
    }

    /// The same refusal, naming where to ask instead.
    pub fn ask_instead(self, peer: Peer) -> Refusal {
        Refusal {
            instead: Some(Box::new(peer)),
            ..self
        }
    }

    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self.kind {
            RefusalKind::Invalid => 400,
            RefusalKind::Forbidden => 403,
            RefusalKind::NotFound => 404,
            RefusalKind::Full | RefusalKind::Loop => 409,
            RefusalKind::Unavailable => 503,
            RefusalKind::TooMany => 429,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_when_parsed() {
        assert!(NodeId::new("box-1.home").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a/b").is_err());
        assert!(NodeId::new("x".repeat(65)).is_err());
        let err = serde_json::from_str::<StreamId>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
    }

    #[test]
    fn requests_are_tagged_json() {
        let req = Request::Ping {
            stream: Some(StreamId::new("cam").unwrap()),
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"type":"ping","stream":"cam"}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
        assert!(serde_json::from_str::<Request>(r#"{"type":"ping","x":1}"#).is_err());
    }
}
