//! The parent's side: tickets granted, slots within the upload budget, capacity-first
//! placement, path updates down the tree, and the graceful leave.

use std::cmp::Reverse;
use std::time::Duration;

use proto::overlay::{
    can_connect_to, Holding, NodeCard, NodeId, Peer, Refusal, RefusalKind, Request, Response,
    StreamId, Ticket, TicketId,
};
use rand::Rng;

use crate::node::{CallError, Event, Held, Node, Output, Pending, RequestId, Target};
use crate::supernode::MAX_PATH;
use crate::Time;

/// A forward granted to a child.
pub(crate) struct Child {
    pub card: NodeCard,
    pub token: String,
    /// Its player is connected to the media plane.
    pub connected: bool,
    /// Since when it is disconnected (or granted and not yet connected).
    pub idle_since: Time,
    /// We asked it to move (displaced by a stronger joiner, or we are leaving); it
    /// keeps the stream until it ends the ticket from its new parent.
    pub moving_since: Option<Time>,
    /// The child is leaving and named this node to take its slot.
    pub successor: Option<NodeId>,
    /// This child displaced that one (capacity-first placement), which is sent to it
    /// once this child's player is here: before, the adopter may not hold the stream
    /// yet, and the displaced child would find no one to move to.
    pub evicts: Option<TicketId>,
    /// A hot standby: a child of another parent, fed here too; the first forward to
    /// go when a box needs its slot.
    pub standby: bool,
}

/// A graceful leave in progress.
pub(crate) struct Leaving {
    deadline: Time,
    /// When the strongest child is sent to take this node's slot at its parent.
    successors_at: Time,
    successors_sent: bool,
    done: bool,
}

/// A ticket request held while we ask whether the child whose slot it claims is
/// alive (see [`Node::grant_or_verify`]).
pub(crate) struct Claim {
    request: RequestId,
    stream: StreamId,
    child: NodeCard,
    path: Option<Vec<NodeId>>,
    claimed: TicketId,
    dead: NodeId,
}

/// A child that took the slot of a failed child: the failed child's other children,
/// claiming the same slot too late, are sent to it rather than to a search.
pub(crate) struct Heir {
    pub dead: NodeId,
    pub heir: Peer,
    pub until: Time,
}

/// How long a parent remembers who took a failed child's slot: the failed child's
/// children notice the failure within a stall timeout of each other.
const HEIR_MEMORY: Duration = Duration::from_secs(10);

/// A slot kept for a child displaced to make room for this node.
pub(crate) struct Reservation {
    pub node: NodeId,
    pub until: Time,
}

impl Node {
    /// Slots this node gives `held`'s stream, before counting the children.
    pub(crate) fn slots_for(&self, held: &Held) -> u8 {
        self.cfg
            .slots(self.me.max_forwards, self.me.upload_kbps, held.kbps)
    }

    /// Free slots for `stream`: within its own slots and within the whole upload
    /// budget, which the node's other streams share.
    pub(crate) fn free_slots(&self, stream: &StreamId) -> u8 {
        let Some(held) = self.streams.get(stream) else {
            return 0;
        };
        // A child here would be deeper than a path may go.
        if held.path().len() >= MAX_PATH {
            return 0;
        }
        let reserved = u8::from(held.reserved.as_ref().is_some_and(|r| r.until > self.now));
        let by_slots = self.slots_for(held).saturating_sub(
            (held.children.len() as u8)
                .saturating_add(reserved)
                .saturating_add(held.viewers),
        );
        let (budget, used) = self.upload_budget();
        let by_budget = if held.kbps == 0 {
            u8::MAX
        } else {
            ((budget - used) / f64::from(held.kbps))
                .floor()
                .clamp(0.0, 255.0) as u8
        };
        by_slots.min(by_budget)
    }

    /// The upload this node gives forwards, and what its children and viewers of
    /// every stream take of it, kbit/s.
    fn upload_budget(&self) -> (f64, f64) {
        let budget = f64::from(self.me.upload_kbps) * self.cfg.upload_share;
        let used = self
            .streams
            .values()
            .map(|h| f64::from(h.kbps) * (h.children.len() + usize::from(h.viewers)) as f64)
            .sum();
        (budget, used)
    }

    fn child_slots(&self, card: &NodeCard, kbps: u32) -> u8 {
        self.cfg.slots(card.max_forwards, card.upload_kbps, kbps)
    }

    /// What this node announces to its supernode.
    pub(crate) fn holdings(&self) -> Vec<Holding> {
        self.streams
            .iter()
            .filter(|(_, held)| held.holds() && self.leaving.is_none())
            .map(|(stream, held)| Holding {
                stream: stream.clone(),
                path: held.path().into(),
                slots: self.slots_for(held),
                // A standby's slot is there for any box that needs it.
                free: self
                    .free_slots(stream)
                    .saturating_add(held.children.values().filter(|c| c.standby).count() as u8),
                weakest_child: held
                    .children
                    .values()
                    .filter(|c| c.moving_since.is_none() && !c.standby)
                    .map(|c| self.child_slots(&c.card, held.kbps))
                    .min(),
                reachable: self.me.reachable,
            })
            .collect()
    }

    pub(crate) fn publish(&mut self, stream: StreamId, kbps: u32) {
        let held = self.streams.entry(stream).or_insert_with(|| {
            Box::new(Held {
                kbps,
                watch: None,
                children: Default::default(),
                reserved: None,
                heirs: Vec::new(),
                viewers: 0,
            })
        });
        held.kbps = kbps;
        held.watch = None;
        self.announce_soon();
    }

    /// `POST /tickets`: a child asks for a forward.
    /// `POST /tickets`. A child that claims the slot of its parent, one of our
    /// children, gets it at once if that parent's player is gone. If the player still
    /// looks connected (a box that lost power leaves its socket open until TCP gives
    /// up, which takes many seconds) we ask the parent ourselves: a parent that does
    /// not answer within the ping timeout is dead, and the claim stands; one that
    /// answers keeps its slot. So a claim alone never pushes out a live child.
    pub(crate) fn grant_or_verify(
        &mut self,
        request: RequestId,
        stream: StreamId,
        child: NodeCard,
        path: Option<Vec<NodeId>>,
        replaces: Option<NodeId>,
    ) -> Option<Result<Response, Refusal>> {
        let claimed = replaces.as_ref().and_then(|x| {
            let from_its_child = path.as_ref().and_then(|p| p.last()) == Some(x);
            let held = self.streams.get(&stream)?;
            let (id, c) = held.child_named(x)?;
            let silent_claim = from_its_child
                && c.connected
                && c.successor.as_ref() != Some(&child.peer.id)
                && self.free_slots(&stream) == 0;
            silent_claim.then(|| (id, c.card.peer.clone()))
        });
        let Some((claimed, parent)) = claimed else {
            return Some(self.grant(stream, child, path, replaces));
        };
        let key = self.rng.gen();
        let ping = Request::Ping {
            stream: Some(stream.clone()),
        };
        self.claims.insert(
            key,
            Claim {
                request,
                stream,
                child,
                path,
                claimed,
                dead: parent.id.clone(),
            },
        );
        let timeout = self.cfg.ping_timeout;
        self.call_within(Target::Node(parent), ping, Pending::Claim(key), timeout);
        None
    }

    /// The claimed parent answered, or did not.
    pub(crate) fn on_claim(&mut self, key: u64, result: Result<Response, CallError>) {
        let Some(claim) = self.claims.remove(&key) else {
            return;
        };
        let answer = match result {
            Err(CallError::Unreachable(_)) => {
                // Dead: its slot is free, and its connection goes. (Another of its
                // children may have been first: then `grant` names that one.)
                self.remove_child(&claim.stream, claim.claimed);
                self.grant(claim.stream, claim.child, claim.path, Some(claim.dead))
            }
            Ok(_) | Err(CallError::Refused(_)) => Err(Refusal::new(
                RefusalKind::Full,
                "the parent whose slot is claimed is alive",
            )),
        };
        self.respond(claim.request, answer);
    }

    pub(crate) fn grant(
        &mut self,
        stream: StreamId,
        child: NodeCard,
        path: Option<Vec<NodeId>>,
        replaces: Option<NodeId>,
    ) -> Result<Response, Refusal> {
        let child_id = child.peer.id.clone();
        if child_id == self.me.peer.id {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "a node cannot be its own child",
            ));
        }
        self.can_connect(&child)?;
        if path.as_ref().is_some_and(|p| p.len() > MAX_PATH) {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!("a path has at most {MAX_PATH} nodes"),
            ));
        }
        let Some(held) = self.streams.get(&stream).filter(|h| h.holds()) else {
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!("this node does not hold stream {stream}"),
            ));
        };
        if held.path().len() >= MAX_PATH {
            return Err(Refusal::new(
                RefusalKind::Full,
                format!("this node is as deep as a path may go ({MAX_PATH})"),
            ));
        }
        if held.path().contains(&child_id) {
            return Err(Refusal::new(
                RefusalKind::Loop,
                format!("{child_id} is upstream of this node in stream {stream}"),
            ));
        }
        if let Some((id, existing)) = held.child_named(&child_id) {
            let token = existing.token.clone();
            // A standby whose parent failed: its ticket is a real one from now on.
            if let Some(c) = self.child_mut(&stream, id) {
                c.standby = false;
            }
            return Ok(Response::Ticket {
                ticket: Box::new(self.ticket(&stream, id, token, None)),
            });
        }
        let kbps = held.kbps;
        // The slot of a child that failed (its player is gone) or is leaving (it named
        // the requester), taken over by one of its children. A live child is never
        // pushed out by a claim alone.
        let replaced = replaces.as_ref().and_then(|x| {
            let from_its_child = path.as_ref().and_then(|p| p.last()) == Some(x);
            let (id, c) = held.child_named(x)?;
            let vacant = !c.connected || c.successor.as_ref() == Some(&child_id);
            (from_its_child && vacant).then_some(id)
        });
        if let Some(old) = replaced {
            self.remove_child(&stream, old);
        } else if self.reserved_for(&stream, &child_id) {
            self.streams.get_mut(&stream).expect("held").reserved = None;
        } else if self.free_slots(&stream) == 0 {
            if let Some(id) = self.standby_child(&stream) {
                // A standby gives its slot to a box that needs one.
                self.end_child(&stream, id);
                return Ok(Response::Ticket {
                    ticket: Box::new(self.add_child(&stream, child, None)),
                });
            }
            // Capacity-first: a joiner stronger than our weakest child takes its place
            // and adopts it.
            let strength = self.child_slots(&child, kbps);
            let weakest = self.weakest_child(&stream);
            match weakest {
                Some((id, slots)) if slots < strength && strength > 0 => {
                    return Ok(self.displace(&stream, id, child));
                }
                _ => {
                    let refusal = Refusal::new(
                        RefusalKind::Full,
                        format!("no free slot for stream {stream} here"),
                    );
                    return Err(match replaces.and_then(|x| self.heir_of(&stream, &x)) {
                        Some(heir) => refusal.ask_instead(heir),
                        None => refusal,
                    });
                }
            }
        }
        if let Some(dead) = replaces {
            // Only the slot the claimed child had, not a free one beside it.
            let still_here = self
                .streams
                .get(&stream)
                .is_some_and(|h| h.child_named(&dead).is_some());
            if !still_here {
                self.remember_heir(&stream, dead, child.peer.clone());
            }
        }
        Ok(Response::Ticket {
            ticket: Box::new(self.add_child(&stream, child, None)),
        })
    }

    /// `heir` took the slot `dead` had here.
    fn remember_heir(&mut self, stream: &StreamId, dead: NodeId, heir: Peer) {
        let until = self.now + HEIR_MEMORY;
        let now = self.now;
        if let Some(held) = self.streams.get_mut(stream) {
            held.heirs.retain(|h| h.until > now && h.dead != dead);
            held.heirs.push(Heir { dead, heir, until });
        }
    }

    /// Who took the slot `dead` had here, lately.
    fn heir_of(&self, stream: &StreamId, dead: &NodeId) -> Option<Peer> {
        let held = self.streams.get(stream)?;
        held.heirs
            .iter()
            .find(|h| &h.dead == dead && h.until > self.now)
            .map(|h| h.heir.clone())
    }

    /// `POST /tickets` with `standby`: a second feed for a child of another parent,
    /// from a free slot only.
    pub(crate) fn grant_standby(
        &mut self,
        stream: StreamId,
        child: NodeCard,
        path: Option<Vec<NodeId>>,
    ) -> Result<Response, Refusal> {
        let child_id = child.peer.id.clone();
        self.can_connect(&child)?;
        let Some(held) = self.streams.get(&stream).filter(|h| h.holds()) else {
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!("this node does not hold stream {stream}"),
            ));
        };
        if child_id == self.me.peer.id
            || held.path().contains(&child_id)
            || path.as_ref().is_none_or(|p| p.len() > MAX_PATH)
        {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "a standby is for a box with a parent, from outside its own subtree",
            ));
        }
        if held.child_named(&child_id).is_some() {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!("{child_id} already has a ticket for stream {stream} here"),
            ));
        }
        if self.free_slots(&stream) == 0 {
            return Err(Refusal::new(
                RefusalKind::Full,
                format!("no free slot for a standby of stream {stream} here"),
            ));
        }
        let ticket = self.add_child(&stream, child, None);
        if let Some(c) = self.child_mut(&stream, ticket.id) {
            c.standby = true;
        }
        Ok(Response::Ticket {
            ticket: Box::new(ticket),
        })
    }

    pub(crate) fn standby_child(&self, stream: &StreamId) -> Option<TicketId> {
        let held = self.streams.get(stream)?;
        held.children
            .iter()
            .find(|(_, c)| c.standby)
            .map(|(id, _)| *id)
    }

    /// Ends a child's ticket on its side and ours, naming no one to go to.
    pub(crate) fn end_child(&mut self, stream: &StreamId, id: TicketId) {
        self.send_child_away(stream, id, None, Pending::Quiet);
        self.remove_child(stream, id);
    }

    fn reserved_for(&self, stream: &StreamId, node: &NodeId) -> bool {
        self.streams
            .get(stream)
            .and_then(|h| h.reserved.as_ref())
            .is_some_and(|r| &r.node == node && r.until > self.now)
    }

    /// The child with the fewest slots that is not already moving, newest first.
    fn weakest_child(&self, stream: &StreamId) -> Option<(TicketId, u8)> {
        let held = self.streams.get(stream)?;
        let evicted: Vec<TicketId> = held.children.values().filter_map(|c| c.evicts).collect();
        held.children
            .iter()
            .filter(|(id, c)| c.moving_since.is_none() && !evicted.contains(id))
            .map(|(id, c)| (*id, self.child_slots(&c.card, held.kbps), c.idle_since))
            .min_by_key(|(_, slots, since)| (*slots, Reverse(*since)))
            .map(|(id, slots, _)| (id, slots))
    }

    /// Grant `child` a ticket; the displaced child is sent to it once it plays here.
    fn displace(&mut self, stream: &StreamId, displaced: TicketId, child: NodeCard) -> Response {
        let adopt = self.streams[stream].children[&displaced]
            .card
            .peer
            .id
            .clone();
        let ticket = self.add_child(stream, child, Some(adopt));
        if let Some(adopter) = self.child_mut(stream, ticket.id) {
            adopter.evicts = Some(displaced);
        }
        Response::Ticket {
            ticket: Box::new(ticket),
        }
    }

    fn child_mut(&mut self, stream: &StreamId, id: TicketId) -> Option<&mut Child> {
        self.streams.get_mut(stream)?.children.get_mut(&id)
    }

    /// The path a child of `held` gets: ours, then us.
    fn child_path(&self, held: &Held) -> Vec<NodeId> {
        let mut path = held.path().to_vec();
        path.push(self.me.peer.id.clone());
        path
    }

    fn add_child(&mut self, stream: &StreamId, card: NodeCard, adopt: Option<NodeId>) -> Ticket {
        let id = TicketId(self.rng.gen());
        let token = self.token();
        let child = card.peer.id.clone();
        let now = self.now;
        self.streams.get_mut(stream).expect("held").children.insert(
            id,
            Child {
                card,
                token: token.clone(),
                connected: false,
                idle_since: now,
                moving_since: None,
                successor: None,
                evicts: None,
                standby: false,
            },
        );
        self.event(Event::Granted {
            stream: stream.clone(),
            child,
            ticket: id,
        });
        self.announce_soon();
        self.ticket(stream, id, token, adopt)
    }

    fn ticket(
        &self,
        stream: &StreamId,
        id: TicketId,
        token: String,
        adopt: Option<NodeId>,
    ) -> Ticket {
        let held = &self.streams[stream];
        let path = self.child_path(held);
        Ticket {
            id,
            token,
            stream: stream.clone(),
            parent: self.me.peer.clone(),
            path,
            backup: held.parent().cloned(),
            adopt,
        }
    }

    fn remove_child(&mut self, stream: &StreamId, id: TicketId) {
        let Some(child) = self
            .streams
            .get_mut(stream)
            .and_then(|h| h.children.remove(&id))
        else {
            return;
        };
        self.emit(Output::Kick {
            stream: stream.clone(),
            ticket: id,
        });
        self.event(Event::Ended {
            stream: stream.clone(),
            child: child.card.peer.id,
            ticket: id,
        });
        self.announce_soon();
    }

    /// Whether this box and `child` can connect: the child connects here (over IPv6
    /// if both have it and this box is reached there), or this box dials a child that
    /// accepts connections (`Request::Dial`).
    fn can_connect(&self, child: &NodeCard) -> Result<(), Refusal> {
        let me = &self.me;
        if can_connect_to(child.ipv6, me.reachable, &me.peer) || child.reachable {
            return Ok(());
        }
        Err(Refusal::new(
            RefusalKind::Unavailable,
            "neither this box nor the child can be connected to from beyond its router",
        ))
    }

    /// `POST /dial`: our child cannot connect to us, so we connect to it.
    pub(crate) fn dial(
        &mut self,
        stream: StreamId,
        token: &str,
        nonce: String,
    ) -> Result<Response, Refusal> {
        let child = self
            .ticket_for_token(&stream, token)
            .map(|(ticket, child)| (ticket, child.clone()));
        let Some((ticket, child)) = child else {
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!("no ticket for stream {stream} with that token here"),
            ));
        };
        self.emit(Output::Dial {
            stream,
            ticket,
            child,
            nonce,
        });
        Ok(Response::Done)
    }

    /// `DELETE /tickets/{id}`: a child ends its ticket, or our parent ends ours.
    pub(crate) fn end_ticket(
        &mut self,
        ticket: TicketId,
        token: &str,
        handover: Option<Peer>,
    ) -> Result<Response, Refusal> {
        let mine = self.streams.iter().find_map(|(s, h)| {
            h.children
                .get(&ticket)
                .map(|c| (s.clone(), c.token == token))
        });
        if let Some((stream, ok)) = mine {
            if !ok {
                return Err(forbidden());
            }
            match handover {
                // A leaving child: keep forwarding until its successor takes the slot.
                Some(successor) => {
                    let now = self.now;
                    if let Some(c) = self.child_mut(&stream, ticket) {
                        c.moving_since = Some(now);
                        c.successor = Some(successor.id);
                    }
                }
                None => self.remove_child(&stream, ticket),
            }
            return Ok(Response::Done);
        }
        if let Some(stream) = self.standby_of(ticket, token) {
            // The standby parent let our standby go: forget it, ask again later.
            let next = self.now + self.cfg.standby_retry;
            self.forget_standby(&stream, next);
            return Ok(Response::Done);
        }
        let stream = self.stream_of_our_ticket(ticket, token)?;
        self.parent_ended(&stream, handover);
        Ok(Response::Done)
    }

    /// The stream we hold through `ticket` from our parent, if `token` is its token.
    fn stream_of_our_ticket(&self, ticket: TicketId, token: &str) -> Result<StreamId, Refusal> {
        let ours = self.streams.iter().find_map(|(s, h)| {
            let t = h.watch.as_ref()?.ticket()?;
            (t.id == ticket).then(|| (s.clone(), t.token == token))
        });
        match ours {
            Some((_, false)) => Err(forbidden()),
            Some((stream, true)) => Ok(stream),
            None => Err(Refusal::new(
                RefusalKind::NotFound,
                format!("no ticket {ticket} here"),
            )),
        }
    }

    /// `PUT /tickets/{id}`: our parent's place in the tree changed.
    pub(crate) fn path_changed(
        &mut self,
        ticket: TicketId,
        token: &str,
        path: Vec<NodeId>,
        backup: Option<Peer>,
    ) -> Result<Response, Refusal> {
        if path.len() > MAX_PATH {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!("a path has at most {MAX_PATH} nodes"),
            ));
        }
        if let Some(stream) = self.standby_of(ticket, token) {
            if path.contains(&self.me.peer.id) {
                let now = self.now;
                self.drop_standby(&stream, now);
            } else if let Some(w) = self.watch_mut(&stream) {
                w.standby.set_path(path, backup);
                self.check_standby(&stream);
            }
            return Ok(Response::Done);
        }
        let stream = self.stream_of_our_ticket(ticket, token)?;
        if path.contains(&self.me.peer.id) {
            // Our parent descends from us: a loop closed somewhere. Break it here.
            self.stalled_hard(&stream);
            return Ok(Response::Done);
        }
        let watch = self
            .streams
            .get_mut(&stream)
            .and_then(|h| h.watch.as_mut())
            .expect("watched");
        if watch.set_path(path, backup) {
            self.check_standby(&stream);
            self.paths_changed(&stream);
        }
        Ok(Response::Done)
    }

    /// Tell every child of `stream` its new path, and the supernode our new depth.
    pub(crate) fn paths_changed(&mut self, stream: &StreamId) {
        let Some(held) = self.streams.get(stream) else {
            return;
        };
        let path = self.child_path(held);
        let backup = held.parent().cloned();
        let calls: Vec<(Peer, Request)> = held
            .children
            .iter()
            .map(|(id, c)| {
                let request = Request::Path {
                    ticket: *id,
                    token: c.token.clone(),
                    path: path.clone(),
                    backup: backup.clone(),
                };
                (c.card.peer.clone(), request)
            })
            .collect();
        for (peer, request) in calls {
            self.call(Target::Node(peer), request, Pending::Quiet);
        }
        self.announce_soon();
    }

    pub(crate) fn player(&mut self, stream: &StreamId, ticket: TicketId, connected: bool) {
        let now = self.now;
        let Some(child) = self.child_mut(stream, ticket) else {
            return;
        };
        child.connected = connected;
        child.idle_since = now;
        // An adopter that now plays from us holds the stream: the child it displaced
        // moves to it. Break-before-make, so that this node never forwards more than
        // its slots: the displaced child's ticket and player end as it is told where
        // to go, and the adopter's cached GOP fills the gap (a resumed pull).
        if connected {
            if let Some(displaced) = child.evicts.take() {
                let adopter = child.card.peer.clone();
                self.send_child_away(stream, displaced, Some(adopter), Pending::Quiet);
                self.remove_child(stream, displaced);
            }
        }
    }

    /// The stream's rate went up or our upload down: children beyond the slots that
    /// are left go, standbys first, then the weakest, the newest among equals, each
    /// told to search. A node never forwards more than its slots.
    pub(crate) fn shed_excess(&mut self, stream: &StreamId) {
        loop {
            let Some(held) = self.streams.get(stream) else {
                return;
            };
            let (budget, used) = self.upload_budget();
            let forwards = held.children.len() + usize::from(held.viewers);
            let over_slots = forwards > usize::from(self.slots_for(held));
            if !over_slots && used <= budget {
                return;
            }
            let Some(id) = held
                .children
                .iter()
                .min_by_key(|(_, c)| {
                    (
                        !c.standby,
                        self.child_slots(&c.card, held.kbps),
                        Reverse(c.idle_since),
                    )
                })
                .map(|(id, _)| *id)
            else {
                // Only viewers: the driver caps them at the free slots.
                return;
            };
            self.end_child(stream, id);
        }
    }

    /// The ticket of `stream` with this token, and the child it was granted to.
    pub fn ticket_for_token(&self, stream: &StreamId, token: &str) -> Option<(TicketId, &Peer)> {
        let held = self.streams.get(stream)?;
        held.children
            .iter()
            .find(|(_, c)| c.token == token)
            .map(|(id, c)| (*id, &c.card.peer))
    }

    /// Unwatch or unpublish: children are sent on, our parent released.
    pub(crate) fn drop_stream(&mut self, stream: &StreamId) {
        let Some(held) = self.streams.remove(stream) else {
            return;
        };
        let handover = held.parent().cloned();
        for (id, child) in held.children {
            let request = Request::EndTicket {
                ticket: id,
                token: child.token,
                handover: handover.clone(),
            };
            self.call(Target::Node(child.card.peer), request, Pending::Quiet);
            self.emit(Output::Kick {
                stream: stream.clone(),
                ticket: id,
            });
        }
        if let Some(watch) = held.watch {
            self.release(watch.into_tickets());
            self.emit(Output::StopPull {
                stream: stream.clone(),
            });
        }
        self.announce_soon();
    }

    /// End our own tickets with their parents.
    pub(crate) fn release(&mut self, tickets: Vec<Ticket>) {
        for t in tickets {
            let request = Request::EndTicket {
                ticket: t.id,
                token: t.token,
                handover: None,
            };
            self.call(Target::Node(t.parent), request, Pending::Quiet);
        }
    }

    /// Tickets never used, children gone for good, moves that never happened,
    /// reservations nobody claimed.
    pub(crate) fn forward_timeout(&mut self) {
        let now = self.now;
        let idle = self.cfg.ticket_idle;
        let moving = self.cfg.leave_grace;
        let mut ended = Vec::new();
        let mut standbys = Vec::new();
        for (stream, held) in &mut self.streams {
            if held.reserved.as_ref().is_some_and(|r| r.until <= now) {
                held.reserved = None;
            }
            for (id, c) in &held.children {
                let unused = !c.connected && c.idle_since + idle <= now;
                let never_moved = c.moving_since.is_some_and(|t| t + moving * 2 <= now);
                if unused && c.standby && !never_moved {
                    standbys.push((stream.clone(), *id));
                } else if unused || never_moved {
                    ended.push((stream.clone(), *id));
                }
            }
        }
        for (stream, id) in ended {
            self.remove_child(&stream, id);
        }
        for (stream, id) in standbys {
            self.check_idle_standby(&stream, id);
        }
    }

    /// An idle standby plays nothing until its box needs it, so its ticket is not
    /// ended for going unused; instead the box is asked, with our path, whether it
    /// still keeps it, once per `ticket_idle`. No answer, or no such standby there,
    /// and it ends.
    fn check_idle_standby(&mut self, stream: &StreamId, id: TicketId) {
        let now = self.now;
        let Some(held) = self.streams.get(stream) else {
            return;
        };
        let path = self.child_path(held);
        let backup = held.parent().cloned();
        let Some(child) = self.child_mut(stream, id) else {
            return;
        };
        child.idle_since = now;
        let request = Request::Path {
            ticket: id,
            token: child.token.clone(),
            path,
            backup,
        };
        let peer = child.card.peer.clone();
        self.call(
            Target::Node(peer),
            request,
            Pending::StandbyCheck(stream.clone(), id),
        );
    }

    pub(crate) fn on_standby_check(
        &mut self,
        stream: &StreamId,
        id: TicketId,
        result: Result<Response, CallError>,
    ) {
        if result.is_err() {
            self.remove_child(stream, id);
        }
    }

    pub(crate) fn forward_deadline(&self) -> Option<Time> {
        let idle = self.cfg.ticket_idle;
        let moving = self.cfg.leave_grace * 2;
        let children = self.streams.values().flat_map(|h| {
            let reserved = h.reserved.as_ref().map(|r| r.until);
            h.children
                .values()
                .flat_map(move |c| {
                    [
                        (!c.connected).then(|| c.idle_since + idle),
                        c.moving_since.map(|t| t + moving),
                    ]
                })
                .flatten()
                .chain(reserved)
        });
        let leaving = self.leaving.as_ref().filter(|l| !l.done).map(|l| {
            if l.successors_sent {
                l.deadline
            } else {
                l.deadline.min(l.successors_at)
            }
        });
        children.chain(leaving).min()
    }

    /// Keep a slot for the child this node displaced at its new parent, if it has one
    /// free: a node that moved with its own children may have none, and then the
    /// displaced child finds another parent.
    pub(crate) fn reserve(&mut self, stream: &StreamId, node: NodeId) {
        if self.free_slots(stream) == 0 {
            return;
        }
        let until = self.now + self.cfg.ticket_idle;
        if let Some(held) = self.streams.get_mut(stream) {
            held.reserved = Some(Reservation { node, until });
        }
    }

    pub(crate) fn leave(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        let grace = self.cfg.leave_grace;
        self.leaving = Some(Leaving {
            deadline: self.now + grace,
            successors_at: self.now + grace / 2,
            successors_sent: false,
            done: false,
        });
        // Every child but the strongest goes first, to that strongest sibling.
        let streams: Vec<StreamId> = self.streams.keys().cloned().collect();
        for stream in streams {
            let Some(successor) = self.successor(&stream) else {
                continue;
            };
            let held = &self.streams[&stream];
            let hint = held.children.get(&successor).map(|c| c.card.peer.clone());
            let others: Vec<TicketId> = held
                .children
                .keys()
                .copied()
                .filter(|id| *id != successor)
                .collect();
            for id in others {
                self.send_child_away(&stream, id, hint.clone(), Pending::Quiet);
            }
        }
        self.announce_soon();
    }

    /// The child that takes this node's place: most slots, then longest connected.
    fn successor(&self, stream: &StreamId) -> Option<TicketId> {
        let held = self.streams.get(stream)?;
        held.children
            .iter()
            .max_by_key(|(_, c)| (self.child_slots(&c.card, held.kbps), Reverse(c.idle_since)))
            .map(|(id, _)| *id)
    }

    /// Ends a child's ticket, naming where it may go; it is `moving` until it has.
    fn send_child_away(
        &mut self,
        stream: &StreamId,
        id: TicketId,
        handover: Option<Peer>,
        pending: Pending,
    ) {
        let now = self.now;
        let Some(child) = self.child_mut(stream, id) else {
            return;
        };
        child.moving_since = Some(now);
        let request = Request::EndTicket {
            ticket: id,
            token: child.token.clone(),
            handover,
        };
        let peer = child.card.peer.clone();
        self.call(Target::Node(peer), request, pending);
    }

    /// Called after every input: the next step of a graceful leave.
    pub(crate) fn leave_progress(&mut self) {
        let Some(leaving) = &self.leaving else {
            return;
        };
        if leaving.done {
            return;
        }
        let now = self.now;
        let (deadline, successors_at, sent) = (
            leaving.deadline,
            leaving.successors_at,
            leaving.successors_sent,
        );
        let only_successors_left = self.streams.keys().all(|s| {
            let successor = self.successor(s);
            self.streams[s]
                .children
                .iter()
                .all(|(id, c)| Some(*id) == successor || c.moving_since.is_none())
                && self.streams[s].children.len() <= 1
        });
        if !sent && (only_successors_left || successors_at <= now) {
            self.leaving.as_mut().expect("leaving").successors_sent = true;
            let streams: Vec<StreamId> = self.streams.keys().cloned().collect();
            for stream in streams {
                let held = &self.streams[&stream];
                let parent = held.parent().cloned();
                let ids: Vec<TicketId> = held
                    .children
                    .iter()
                    .filter(|(_, c)| c.moving_since.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                // Our parent keeps our slot for the successor, and feeds us until then.
                let successor = ids
                    .first()
                    .and_then(|id| held.children.get(id))
                    .map(|c| c.card.peer.clone());
                let ours = held.watch.as_ref().and_then(|w| w.ticket()).cloned();
                if let (Some(successor), Some(t)) = (successor, ours) {
                    let request = Request::EndTicket {
                        ticket: t.id,
                        token: t.token,
                        handover: Some(successor),
                    };
                    self.call(Target::Node(t.parent), request, Pending::Quiet);
                }
                for id in ids {
                    self.send_child_away(&stream, id, parent.clone(), Pending::Quiet);
                }
            }
        }
        let no_children = self.streams.values().all(|h| h.children.is_empty());
        if (sent && no_children) || deadline <= now {
            self.finish_leave();
        }
    }

    fn finish_leave(&mut self) {
        if let Some(l) = self.leaving.as_mut() {
            l.done = true;
        }
        let streams = std::mem::take(&mut self.streams);
        for (stream, held) in streams {
            for id in held.children.keys() {
                self.emit(Output::Kick {
                    stream: stream.clone(),
                    ticket: *id,
                });
            }
            if let Some(watch) = held.watch {
                self.release(watch.into_tickets());
                self.emit(Output::StopPull { stream });
            }
        }
        self.leave_membership();
        self.announce_at = Time::NEVER;
        self.emit(Output::Left);
    }

    /// Whether a graceful leave has finished.
    pub fn has_left(&self) -> bool {
        self.leaving.as_ref().is_some_and(|l| l.done)
    }
}

fn forbidden() -> Refusal {
    Refusal::new(RefusalKind::Forbidden, "the ticket's token does not match")
}
