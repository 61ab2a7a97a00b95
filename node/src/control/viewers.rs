//! Players that are not boxes and not on the box's own network: a browser the portal
//! sent here, VLC somewhere else. Like a child box, such a player needs a ticket: it
//! asks for one (`POST /streams/{id}/viewers`), which takes a free forward slot, and
//! plays with it within `UNUSED_FOR`. It holds the slot as a child would, so the box
//! never forwards beyond its uplink; the slot is given back when it stops playing.
//!
//! The driver knows each ticket and each player (under the engine's lock) and tells
//! the engine how many there are (`Input::Viewers`, an absolute count), so the count
//! cannot drift. When the box stops holding a stream, its players are sent away, as
//! child boxes are.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use overlay::Input;
use proto::overlay::StreamId;
use rand::RngCore;
use tokio::sync::oneshot;

use super::State;
use crate::Node;

/// A viewer ticket not played with in this time lapses, and its slot is free again.
pub const UNUSED_FOR: Duration = Duration::from_secs(10);
/// Tickets and players of one stream one address may hold: no one takes every slot.
pub const PER_ADDRESS: usize = 2;

/// Why no viewer ticket.
#[derive(Debug, thiserror::Error)]
pub enum TicketRefused {
    #[error("this box has no forward slot free for {0}; ask the portal for another box")]
    NoSlot(StreamId),
    #[error("this address already holds {PER_ADDRESS} tickets or players of {0}")]
    TooMany(StreamId),
}

/// Viewer tickets and players, by stream.
#[derive(Default)]
pub(super) struct Viewers {
    /// Tickets handed out and not yet played with, and who asked.
    tickets: BTreeMap<String, (StreamId, IpAddr)>,
    /// Players, each with its address and the sender whose drop ends its connection.
    playing: BTreeMap<StreamId, BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>>,
    next: u64,
}

impl Viewers {
    fn count(&self, stream: &StreamId) -> u8 {
        let tickets = self.tickets.values().filter(|(s, _)| s == stream).count();
        let playing = self.playing.get(stream).map_or(0, BTreeMap::len);
        u8::try_from(tickets + playing).unwrap_or(u8::MAX)
    }

    fn held_by(&self, stream: &StreamId, ip: IpAddr) -> usize {
        let tickets = self
            .tickets
            .values()
            .filter(|(s, from)| s == stream && *from == ip)
            .count();
        let playing = self
            .playing
            .get(stream)
            .map_or(0, |p| p.values().filter(|(from, _)| *from == ip).count());
        tickets + playing
    }
}

/// A slot held by a player; dropping it gives the slot back.
pub struct ViewerSlot {
    node: Arc<Node>,
    stream: StreamId,
    id: u64,
}

/// Tells the engine how many viewers `stream` has now.
fn recount(state: &mut State, stream: &StreamId, now: overlay::Time) {
    let count = state.viewers.count(stream);
    let stream = stream.clone();
    state
        .engine
        .handle_input(now, Input::Viewers { stream, count });
}

impl Node {
    /// A one-use ticket for the player at `ip` to play `stream` from here, if a
    /// forward slot is free.
    pub fn viewer_ticket(
        self: &Arc<Self>,
        stream: &StreamId,
        ip: IpAddr,
    ) -> Result<String, TicketRefused> {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // The check and the count change in one turn of the engine: two players
        // never take the last slot together.
        self.with_state(|state, now| {
            if state.viewers.held_by(stream, ip) >= PER_ADDRESS {
                return Err(TicketRefused::TooMany(stream.clone()));
            }
            if !state.engine.room_for_viewer(now, stream) {
                return Err(TicketRefused::NoSlot(stream.clone()));
            }
            state
                .viewers
                .tickets
                .insert(token.clone(), (stream.clone(), ip));
            recount(state, stream, now);
            Ok(())
        })?;
        let node = Arc::clone(self);
        let unused = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(UNUSED_FOR).await;
            node.with_state(|state, now| {
                if let Some((stream, _)) = state.viewers.tickets.remove(&unused) {
                    recount(state, &stream, now);
                }
            });
        });
        Ok(token)
    }

    /// Plays with a viewer ticket: the slot it took is the player's from now on. The
    /// receiver completes when the player must go (the box no longer holds the stream).
    pub fn redeem_viewer_ticket(
        self: &Arc<Self>,
        stream: &str,
        token: &str,
    ) -> Option<(oneshot::Receiver<()>, ViewerSlot)> {
        let (tx, rx) = oneshot::channel();
        let (stream, id) = self.with_state(|state, _| {
            let viewers = &mut state.viewers;
            if viewers
                .tickets
                .get(token)
                .is_none_or(|(s, _)| s.as_str() != stream)
            {
                return None;
            }
            let (stream, ip) = viewers.tickets.remove(token)?;
            viewers.next += 1;
            let id = viewers.next;
            viewers
                .playing
                .entry(stream.clone())
                .or_default()
                .insert(id, (ip, tx));
            // The same count: the ticket's slot became the player's.
            Some((stream, id))
        })?;
        let slot = ViewerSlot {
            node: Arc::clone(self),
            stream,
            id,
        };
        Some((rx, slot))
    }

    /// Sends away the viewers of a stream this box no longer holds, and voids its
    /// tickets.
    pub(super) fn end_viewers(self: &Arc<Self>, stream: &StreamId) {
        self.with_state(|state, now| {
            state.viewers.tickets.retain(|_, (s, _)| s != stream);
            // Dropping the senders ends the players' connections.
            state.viewers.playing.remove(stream);
            recount(state, stream, now);
        });
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        let (stream, id) = (&self.stream, self.id);
        self.node.with_state(|state, now| {
            let playing = &mut state.viewers.playing;
            let gone = playing.get_mut(stream).and_then(|p| p.remove(&id));
            if playing.get(stream).is_some_and(BTreeMap::is_empty) {
                playing.remove(stream);
            }
            if gone.is_some() {
                recount(state, stream, now);
            }
        });
    }
}
