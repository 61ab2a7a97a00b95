//! JSON bodies of the portal's API, besides the overlay's own requests
//! ([`crate::overlay::Request::Bootstrap`] and the supernode calls).
//!
//! The portal lists live streams and bootstraps nodes; it never carries video. A
//! stream's source box keeps its entry alive with a `PUT` every
//! [`DIRECTORY_REFRESH_SECS`]; an entry not renewed for [`DIRECTORY_TTL_SECS`] is gone.

use serde::{Deserialize, Serialize};

use crate::overlay::{NodeId, Peer, StreamId};

/// How often a source renews its stream's entry.
pub const DIRECTORY_REFRESH_SECS: u64 = 30;
/// How long an entry lives without renewal: three refreshes missed.
pub const DIRECTORY_TTL_SECS: u64 = 3 * DIRECTORY_REFRESH_SECS;
/// Longest title, and longest description, in characters.
pub const MAX_TITLE_CHARS: usize = 120;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;

/// `PUT /api/streams/{id}` from the stream's source box: create or renew its entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamUpdate {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// The box that publishes the stream: the root of its relay tree.
    pub source: Peer,
    #[serde(default)]
    pub bitrate_kbps: u32,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
}

impl StreamUpdate {
    /// Checks the free-text fields' lengths and that they hold no control characters.
    pub fn check(&self) -> Result<(), String> {
        check_text("title", &self.title, MAX_TITLE_CHARS)?;
        check_text("description", &self.description, MAX_DESCRIPTION_CHARS)
    }
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), String> {
    if text.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("{field} has control characters"));
    }
    Ok(())
}

/// `GET /api/streams` (a list) and `GET /api/streams/{id}`: one live stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    pub id: StreamId,
    pub title: String,
    pub description: String,
    pub source: Peer,
    /// Boxes holding the stream, as the supernodes last counted them.
    pub viewers: u32,
    /// When the stream went live, in seconds since the Unix epoch.
    pub started: u64,
    /// When the source last renewed the entry.
    pub updated: u64,
    pub bitrate_kbps: u32,
    pub width: u32,
    pub height: u32,
}

/// How often a box reports its place in the network to the portal, for the map; it
/// also reports at once when its place changes.
pub const MAP_REFRESH_SECS: u64 = 10;
/// A box not heard from for this long is off the map: a box that lost power says
/// nothing, and its children have found new parents by then.
pub const MAP_TTL_SECS: u64 = 25;
/// Most streams in one report, and most children of one stream.
pub const MAX_REPORT_STREAMS: usize = 64;
pub const MAX_REPORT_CHILDREN: usize = 64;
/// Largest thumbnail a source may send, in bytes.
pub const MAX_THUMBNAIL_BYTES: usize = 60 * 1024;

/// `PUT /api/nodes/{id}`: a box's place in the network, as it sees it. The portal
/// draws the map from these; the node serves its own as `GET /map`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub peer: Peer,
    /// The name its owner gave it, for people to read; not unique, and not checked
    /// against anything (the node id is what the box is).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The supernode this box registered with (itself, on a supernode).
    #[serde(default)]
    pub supernode: Option<NodeId>,
    #[serde(default)]
    pub is_supernode: bool,
    #[serde(default)]
    pub streams: Vec<TreePlace>,
}

/// Where a box is in one stream's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreePlace {
    pub stream: StreamId,
    /// The parent it plays from (the ticket's grantor); none at the source.
    #[serde(default)]
    pub parent: Option<NodeId>,
    /// Hops from the source.
    pub depth: u32,
    /// Forward slots, and the children holding tickets for them.
    pub slots: u8,
    #[serde(default)]
    pub children: Vec<NodeId>,
    /// Whether video arrives (always, at the source).
    pub flowing: bool,
    /// Players that are not boxes, each in a slot of its own.
    #[serde(default)]
    pub viewers: u8,
}

impl TreePlace {
    /// Slots nobody holds.
    pub fn free(&self) -> usize {
        usize::from(self.slots).saturating_sub(self.children.len() + usize::from(self.viewers))
    }
}

impl NodeReport {
    pub fn check(&self) -> Result<(), String> {
        if self.name.chars().count() > crate::overlay::MAX_ID_LEN
            || self.name.chars().any(char::is_control)
        {
            return Err(format!(
                "name: at most {} characters, none of them control characters",
                crate::overlay::MAX_ID_LEN
            ));
        }
        if self.streams.len() > MAX_REPORT_STREAMS {
            return Err(format!("streams: at most {MAX_REPORT_STREAMS}"));
        }
        for place in &self.streams {
            if place.children.len() > MAX_REPORT_CHILDREN {
                return Err(format!(
                    "streams: {} has more than {MAX_REPORT_CHILDREN} children",
                    place.stream
                ));
            }
            if place.parent.as_ref() == Some(&self.peer.id)
                || place.children.contains(&self.peer.id)
            {
                return Err(format!(
                    "streams: {} names the box as its own parent or child",
                    place.stream
                ));
            }
        }
        Ok(())
    }
}

/// Longest account of a tampering in a report.
pub const MAX_TAMPER_WHAT: usize = 200;

/// `POST /api/nodes/{id}/reports`: box `id` caught its parent sending video of
/// `stream` that the source did not seal (`crate::seal`), left it, and says so. The
/// portal records it for the network's operators; it is one box's word, so the portal
/// takes no action on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TamperReport {
    pub stream: StreamId,
    pub parent: NodeId,
    /// What the parent did, as the box's log says it.
    pub what: String,
}

impl TamperReport {
    pub fn check(&self, reporter: &NodeId) -> Result<(), String> {
        if self.what.chars().count() > MAX_TAMPER_WHAT || self.what.chars().any(char::is_control) {
            return Err(format!(
                "what: at most {MAX_TAMPER_WHAT} characters, none of them control characters"
            ));
        }
        if self.parent == *reporter {
            return Err("parent: a box does not report itself".into());
        }
        Ok(())
    }
}

/// `GET /api/reports`: the tampering reported by boxes, newest first. One entry per
/// reporter, parent and stream; a repeated report counts up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TamperEntry {
    pub reporter: NodeId,
    pub parent: NodeId,
    pub stream: StreamId,
    pub what: String,
    /// Seconds since the Unix epoch.
    pub first_at: u64,
    pub last_at: u64,
    pub count: u64,
}

/// What the portal pushes over `/api/map/ws`: everything at once on connecting (and
/// again after a client fell behind), then each change as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MapEvent {
    Snapshot {
        nodes: Vec<NodeReport>,
        streams: Vec<StreamEntry>,
        /// The version of each stream's latest still (see `Thumbnail`).
        #[serde(default)]
        thumbnails: std::collections::BTreeMap<StreamId, u64>,
    },
    /// A box joined, or its place changed.
    Node {
        node: NodeReport,
    },
    /// A box left, or was not heard from for `MAP_TTL_SECS`.
    NodeGone {
        id: NodeId,
    },
    /// A stream was listed, or its entry renewed.
    Stream {
        stream: StreamEntry,
    },
    StreamGone {
        id: StreamId,
    },
    /// A new still of the stream: `GET /api/streams/{id}/thumbnail.jpg?v={version}`.
    Thumbnail {
        id: StreamId,
        version: u64,
    },
}

/// `POST /api/reachability`: dial me back on these ports. The portal dials only the
/// address the request came from, so no one can have it connect to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachabilityCheck {
    pub api_port: u16,
    pub rtmp_port: u16,
    /// A check of the box's own IPv6 address, which must then come over IPv6. It runs
    /// beside the IPv4 check: the two requests differ, so neither is taken for a
    /// replay of the other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6: bool,
}

/// The portal's answer: the address it saw the box at, and whether each port
/// answered there as this box (its API names the box that signed the check; its RTMP
/// port answers a handshake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    pub address: std::net::IpAddr,
    pub api: Dialled,
    pub rtmp: Dialled,
}

/// How dialling one port went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialled {
    pub reachable: bool,
    /// Why not, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Dialled {
    pub fn from_result(result: Result<(), String>) -> Dialled {
        match result {
            Ok(()) => Dialled {
                reachable: true,
                error: None,
            },
            Err(e) => Dialled {
                reachable: false,
                error: Some(e),
            },
        }
    }
}

impl Reachability {
    /// Whether other boxes can reach both ports.
    pub fn reachable(&self) -> bool {
        self.api.reachable && self.rtmp.reachable
    }

    /// Why each port that did not answer did not.
    pub fn errors(&self) -> Vec<String> {
        [&self.api, &self.rtmp]
            .into_iter()
            .filter_map(|d| d.error.clone())
            .collect()
    }
}

/// A pairing code as its owner may type it: case, spaces and dashes do not matter.
/// The box and the portal compare codes in this form.
pub fn pairing_code_key(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// What travels on a box's control channel to the portal (`GET /api/nodes/{id}/channel`,
/// a WebSocket the box opens and keeps open): requests other boxes send it through the
/// portal (`/api/relay/{id}/…`) when they cannot connect to it, and its answers. The
/// portal passes both on as they are: signed by their senders, checked by their
/// receivers. And the box's management by its owner: the pairing code it shows, the
/// claim, and the owner's commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelMessage {
    /// Portal to box: a request for one of the box's peer routes.
    Request {
        id: u64,
        method: String,
        /// The route, with its query.
        path: String,
        /// The address the request came to the portal from.
        caller: std::net::IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        body: String,
    },
    /// Box to portal, as the channel opens and whenever it changes: who owns the box,
    /// or, while no one does, the code its owner gives the portal to claim it.
    Pairing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// Portal to box: owner `owner` gave the portal this box's pairing code `code`.
    /// The box takes the owner if the code is its own and no one owns it yet, and
    /// answers 200.
    Claim {
        id: u64,
        owner: String,
        code: String,
    },
    /// Portal to box: a command of owner `owner`, for one of the box's admin routes
    /// (`GET /status`, `GET`/`PATCH /config`, `PUT /broadcast`). The box runs it only
    /// for its owner, and logs it.
    Command {
        id: u64,
        owner: String,
        method: String,
        path: String,
        body: String,
    },
    /// Box to portal: the answer to request, claim or command `id`.
    Answer {
        id: u64,
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        body: String,
    },
}

/// `GET /api/streams/{id}/play`: where a browser with no box of its own plays a
/// stream. It asks `ticket_url` (`POST`) for a viewer ticket, which takes the slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayAt {
    pub node: Peer,
    pub depth: u32,
    pub ticket_url: String,
}
