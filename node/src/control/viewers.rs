//! Players that are not boxes and not on the box's own network: a browser the portal
//! sent here, VLC somewhere else. Like a child box, such a player needs a ticket: it
//! asks for one (`POST /streams/{id}/viewers`), which takes a free forward slot, and
//! plays with it within `UNUSED_FOR`. It holds the slot as a child would, so the box
//! never forwards beyond its uplink; the slot is given back when it stops playing.

use std::sync::Arc;
use std::time::Duration;

use overlay::Input;
use proto::overlay::StreamId;
use rand::RngCore;

use crate::{lock, Node};

/// A viewer ticket not played with in this time lapses, and its slot is free again.
pub const UNUSED_FOR: Duration = Duration::from_secs(10);

/// A slot held by a player; dropping it gives the slot back.
pub struct ViewerSlot {
    node: Arc<Node>,
    stream: StreamId,
}

impl Node {
    /// A one-use ticket to play `stream` from here, if a forward slot is free.
    pub fn viewer_ticket(self: &Arc<Self>, stream: &StreamId) -> Option<String> {
        let mut taken = false;
        // The check and the count change in one turn of the engine: two players
        // never take the last slot together.
        self.with_engine(|engine, now| {
            if engine.free(stream) > 0 {
                let count = engine.viewers(stream).saturating_add(1);
                let stream = stream.clone();
                engine.handle_input(now, Input::Viewers { stream, count });
                taken = true;
            }
        });
        if !taken {
            return None;
        }
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        lock(&self.control.viewer_tickets).insert(token.clone(), stream.clone());
        let node = Arc::clone(self);
        let unused = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(UNUSED_FOR).await;
            let lapsed = lock(&node.control.viewer_tickets).remove(&unused);
            if let Some(stream) = lapsed {
                node.release_viewer(stream);
            }
        });
        Some(token)
    }

    /// Plays with a viewer ticket: the slot it took is the player's from now on.
    pub fn redeem_viewer_ticket(self: &Arc<Self>, stream: &str, token: &str) -> Option<ViewerSlot> {
        let mut tickets = lock(&self.control.viewer_tickets);
        if tickets.get(token).is_none_or(|s| s.as_str() != stream) {
            return None;
        }
        let stream = tickets.remove(token)?;
        Some(ViewerSlot {
            node: Arc::clone(self),
            stream,
        })
    }

    fn release_viewer(self: &Arc<Self>, stream: StreamId) {
        self.with_engine(|engine, now| {
            let count = engine.viewers(&stream).saturating_sub(1);
            engine.handle_input(now, Input::Viewers { stream, count });
        });
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        self.node.release_viewer(self.stream.clone());
    }
}
