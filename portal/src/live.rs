//! What the portal knows of the network right now, kept in memory: each box's place
//! in its trees (for the map), each stream's latest still, and the feed of changes
//! that `/api/map/ws` pushes to browsers.
//!
//! None of it is worth a database: boxes report every `MAP_REFRESH_SECS` and sources
//! send a still every ten seconds, so a restarted portal has it all back within
//! seconds. Events are serialized once and shared by every browser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use proto::overlay::{NodeId, StreamId};
use proto::portal::{MapEvent, NodeReport, StreamEntry};
use tokio::sync::broadcast;

/// Changes a browser may fall behind by before it is sent everything again.
const FEED_BACKLOG: usize = 1024;
/// Most boxes on the map from one address (a household behind one router, the demo).
pub const PER_ADDRESS: usize = 64;

/// Why a report is not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("box {0} is on the map from another address; a box speaks only for itself")]
    Taken(NodeId),
    #[error("{0} already has {PER_ADDRESS} boxes on the map")]
    Crowded(std::net::IpAddr),
}

pub struct Live {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<str>>,
    ttl: u64,
}

#[derive(Default)]
struct Inner {
    /// Each box's latest report, and when it stops counting.
    nodes: HashMap<NodeId, (NodeReport, u64)>,
    thumbnails: HashMap<StreamId, Thumbnail>,
    next_version: u64,
}

/// The version of each stream's latest still.
pub type Versions = std::collections::BTreeMap<StreamId, u64>;

impl Inner {
    fn versions(&self) -> Versions {
        self.thumbnails
            .iter()
            .map(|(id, t)| (id.clone(), t.version))
            .collect()
    }

    fn sorted(&self) -> Vec<NodeReport> {
        let mut nodes: Vec<NodeReport> = self.nodes.values().map(|(r, _)| r.clone()).collect();
        nodes.sort_by(|a, b| a.peer.id.cmp(&b.peer.id));
        nodes
    }
}

#[derive(Clone)]
pub struct Thumbnail {
    pub jpeg: Bytes,
    pub version: u64,
}

impl Live {
    pub fn new(ttl: u64) -> Live {
        Live {
            inner: Mutex::default(),
            feed: broadcast::channel(FEED_BACKLOG).0,
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: &MapEvent) {
        // Nobody listening is not an error.
        if let Ok(json) = serde_json::to_string(event) {
            let _ = self.feed.send(json.into());
        }
    }

    /// A box's report; browsers hear of it only if something changed. A box on the
    /// map stays bound to its address until it leaves or expires, and one address
    /// holds at most `PER_ADDRESS` boxes.
    pub fn report(&self, report: NodeReport, now: u64) -> Result<(), Refused> {
        let expires = now + self.ttl;
        let mut inner = self.lock();
        let ip = report.peer.api.ip().to_canonical();
        match inner.nodes.get(&report.peer.id) {
            Some((known, _)) if known.peer.api.ip().to_canonical() != ip => {
                return Err(Refused::Taken(report.peer.id.clone()))
            }
            Some(_) => {}
            None => {
                let here = inner
                    .nodes
                    .values()
                    .filter(|(n, _)| n.peer.api.ip().to_canonical() == ip)
                    .count();
                if here >= PER_ADDRESS {
                    return Err(Refused::Crowded(ip));
                }
            }
        }
        let changed = match inner.nodes.get_mut(&report.peer.id) {
            Some((known, until)) => {
                *until = expires;
                if *known == report {
                    false
                } else {
                    *known = report.clone();
                    true
                }
            }
            None => {
                inner
                    .nodes
                    .insert(report.peer.id.clone(), (report.clone(), expires));
                true
            }
        };
        drop(inner);
        if changed {
            tracing::debug!(node = %report.peer.id, "map: node changed");
            self.emit(&MapEvent::Node { node: report });
        }
        Ok(())
    }

    pub fn node(&self, id: &NodeId) -> Option<NodeReport> {
        self.lock().nodes.get(id).map(|(r, _)| r.clone())
    }

    pub fn remove(&self, id: &NodeId) -> bool {
        let removed = self.lock().nodes.remove(id).is_some();
        if removed {
            self.emit(&MapEvent::NodeGone { id: id.clone() });
        }
        removed
    }

    /// Takes boxes not heard from in time off the map.
    pub fn expire(&self, now: u64) {
        let mut gone = Vec::new();
        self.lock().nodes.retain(|id, (_, until)| {
            let keep = *until > now;
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        for id in gone {
            tracing::debug!(node = %id, "map: node silent, taken off");
            self.emit(&MapEvent::NodeGone { id });
        }
    }

    pub fn nodes(&self) -> Vec<NodeReport> {
        self.lock().sorted()
    }

    pub fn versions(&self) -> Versions {
        self.lock().versions()
    }

    /// The map as it stands (boxes, and the version of each still), and the changes
    /// from that moment on: nothing falls between the two.
    pub fn subscribe(&self) -> (Vec<NodeReport>, Versions, broadcast::Receiver<Arc<str>>) {
        let inner = self.lock();
        (inner.sorted(), inner.versions(), self.feed.subscribe())
    }

    pub fn stream_listed(&self, entry: StreamEntry) {
        self.emit(&MapEvent::Stream { stream: entry });
    }

    pub fn stream_gone(&self, id: &StreamId) {
        self.lock().thumbnails.remove(id);
        self.emit(&MapEvent::StreamGone { id: id.clone() });
    }

    pub fn set_thumbnail(&self, id: &StreamId, jpeg: Bytes) -> u64 {
        let mut inner = self.lock();
        inner.next_version += 1;
        let version = inner.next_version;
        inner
            .thumbnails
            .insert(id.clone(), Thumbnail { jpeg, version });
        drop(inner);
        self.emit(&MapEvent::Thumbnail {
            id: id.clone(),
            version,
        });
        version
    }

    pub fn thumbnail(&self, id: &StreamId) -> Option<Thumbnail> {
        self.lock().thumbnails.get(id).cloned()
    }
}
