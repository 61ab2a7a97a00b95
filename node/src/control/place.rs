//! This box's place in the network, as the portal's map and `GET /map` show it: the
//! supernode it registered with, and in each stream's tree its parent, depth and
//! children (the tickets it granted).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::overlay::Peer;
use proto::portal::{NodeReport, TreePlace, MAP_REFRESH_SECS};
use tokio::time::Instant;

use super::{http, Control};
use crate::{lock, Node};

/// How often the place is looked at for a change worth reporting at once.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Control {
    /// This box's own report, read from the engine under one lock.
    pub fn place(&self) -> NodeReport {
        let state = lock(&self.state);
        let engine = &state.engine;
        NodeReport {
            peer: self.me(),
            name: self.name.clone(),
            supernode: engine.supernode_id().cloned(),
            is_supernode: engine.is_supernode(),
            streams: engine
                .held()
                .into_iter()
                .map(|held| TreePlace {
                    parent: held.parent,
                    depth: held.path.len() as u32,
                    slots: held.slots,
                    children: held.children.into_iter().map(|t| t.child).collect(),
                    flowing: held.flowing,
                    viewers: held.viewers,
                    stream: held.stream,
                })
                .collect(),
        }
    }

    /// What this box knows of the network: itself, and on a supernode the boxes
    /// registered with it (as they announced themselves) and its neighbours.
    pub fn partial_map(&self) -> Vec<NodeReport> {
        let me = self.place();
        let mut nodes = Vec::new();
        if let Some(registry) = self.registry() {
            for (card, holdings) in registry.children {
                nodes.push(NodeReport {
                    peer: card.peer,
                    name: String::new(),
                    supernode: Some(me.peer.id.clone()),
                    is_supernode: false,
                    streams: holdings
                        .into_iter()
                        .map(|h| TreePlace {
                            parent: h.path.last().cloned(),
                            depth: h.path.len() as u32,
                            slots: h.slots,
                            // A supernode hears of free slots, not of whom they went to.
                            children: Vec::new(),
                            flowing: true,
                            viewers: 0,
                            stream: h.stream,
                        })
                        .collect(),
                });
            }
            nodes.extend(
                registry
                    .neighbours
                    .into_iter()
                    .map(|peer: Peer| NodeReport {
                        peer,
                        name: String::new(),
                        supernode: None,
                        is_supernode: true,
                        streams: Vec::new(),
                    }),
            );
        }
        nodes.retain(|n| n.peer.id != me.peer.id);
        nodes.insert(0, me);
        nodes
    }
}

/// Keeps this box on the portal's map: reports its place when it changes (looked at
/// every second) and every `MAP_REFRESH_SECS` in any case.
pub async fn report_place(node: Arc<Node>) {
    let Some(portal) = node.control.portal.clone() else {
        return;
    };
    let refresh = Duration::from_secs(MAP_REFRESH_SECS);
    let mut last: Option<(NodeReport, Instant)> = None;
    let mut failing = false;
    let mut every = tokio::time::interval(LOOK_EVERY);
    loop {
        every.tick().await;
        // A leaving box took itself off the map: it does not come back as a ghost.
        if !node.control.is_running() || node.control.leaving.load(Ordering::Relaxed) {
            continue;
        }
        let place = node.control.place();
        let due = match &last {
            Some((sent, at)) => *sent != place || at.elapsed() >= refresh,
            None => true,
        };
        if !due {
            continue;
        }
        match http::report_place(&node.control.client, &portal, &place).await {
            Ok(()) => {
                if failing {
                    tracing::info!("on the portal's map again");
                }
                failing = false;
                last = Some((place, Instant::now()));
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("cannot report this box's place to the portal's map: {e}");
                }
                failing = true;
            }
        }
    }
}

/// Takes this box off the portal's map, as it leaves.
pub async fn forget_place(node: &Node) {
    if let Some(portal) = node.control.portal() {
        if let Err(e) =
            http::forget_place(&node.control.client, portal, &node.control.me().id).await
        {
            tracing::debug!("cannot take this box off the portal's map: {e}");
        }
    }
}
