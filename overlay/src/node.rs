//! The engine: one [`Node`] per box, owning membership, the supernode role, the
//! streams it holds and the tickets it granted. Each concern lives in its own module
//! as an `impl Node` block; this one routes inputs, replies and timeouts to them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use proto::overlay::{
    NodeCard, NodeId, Peer, Refusal, RefusalKind, Request, Response, StreamId, TicketId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::forward::Child;
use crate::membership::Membership;
use crate::supernode::Supernode;
use crate::watch::Watch;
use crate::{Config, Time};

/// An outgoing request, matched with its [`Input::Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// An incoming request, matched with its [`Output::Respond`]; the driver numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Node(Peer),
    Portal,
}

/// Why a call brought no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The peer answered no.
    Refused(Refusal),
    /// No answer: connection refused or reset, timeout, garbage.
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Join the overlay through these supernodes first, then the portal's.
    Start {
        supernodes: Vec<Peer>,
    },
    /// A stream published on this box: the node is its source.
    Publish {
        stream: StreamId,
        kbps: u32,
    },
    Unpublish {
        stream: StreamId,
    },
    /// Watch or seed a stream: find a parent and keep one. `source` is the stream's
    /// source box from the portal's directory, asked when a search finds nobody.
    Watch {
        stream: StreamId,
        kbps: u32,
        source: Option<Peer>,
    },
    Unwatch {
        stream: StreamId,
    },
    /// The stream's bitrate as measured, which changes the slots it gets.
    StreamRate {
        stream: StreamId,
        kbps: u32,
    },
    /// The owner changed what this box may forward, or the box learnt whether boxes
    /// beyond its router can connect to it. Children beyond the new slots keep their
    /// tickets until they end; no new child is taken until there is room.
    Capacity {
        max_forwards: u8,
        upload_kbps: u32,
        reachable: bool,
    },
    /// The media plane admitted players that are not boxes into free slots, or some
    /// went away: this many play `stream` now.
    Viewers {
        stream: StreamId,
        count: u8,
    },
    /// Leave gracefully; [`Output::Left`] says when done.
    Leave,
    /// A peer's request. `from` is the node that signed it, which the caller has
    /// checked (`proto::identity`): the engine takes it as the sender.
    Request {
        id: RequestId,
        from: NodeId,
        request: Request,
    },
    Reply {
        call: CallId,
        result: Result<Response, CallError>,
    },
    /// The media plane: the first tag from the current parent arrived.
    Flowing {
        stream: StreamId,
    },
    /// The media plane: no tag from the parent for the stall timeout, or the
    /// connection closed.
    Stalled {
        stream: StreamId,
    },
    /// The media plane: no tag from the parent for half the stall timeout (a stall
    /// may be coming).
    Silent {
        stream: StreamId,
    },
    /// The media plane caught the parent sending what the source did not seal
    /// (altered or injected video, or seals withheld), and hung up on it.
    Tampered {
        stream: StreamId,
    },
    /// The media plane: the standby parent's first tag arrived.
    StandbyFlowing {
        stream: StreamId,
    },
    /// The media plane: the standby parent went silent, or refused.
    StandbyLost {
        stream: StreamId,
    },
    /// The media plane: a child's player connected with this ticket, or went away.
    PlayerConnected {
        stream: StreamId,
        ticket: TicketId,
    },
    PlayerGone {
        stream: StreamId,
        ticket: TicketId,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Call {
        call: CallId,
        to: Target,
        request: Request,
    },
    Respond {
        id: RequestId,
        result: Result<Response, Refusal>,
    },
    /// Play `stream` from `parent` with `token` and feed the hub from it, keeping the
    /// current upstream until the new one flows.
    Pull {
        stream: StreamId,
        parent: Peer,
        token: String,
    },
    /// Stop pulling `stream`.
    StopPull {
        stream: StreamId,
    },
    /// Also play `stream` from `parent` with `token`, a hot standby feeding the same
    /// hub (which keeps the first copy of each frame).
    Standby {
        stream: StreamId,
        parent: Peer,
        token: String,
    },
    StopStandby {
        stream: StreamId,
    },
    /// The parent failed: the standby is the parent now.
    Promote {
        stream: StreamId,
    },
    /// Connect to `child`'s RTMP server, say `nonce`, and serve its play of `stream`
    /// on that connection: it cannot connect to this box (connection reversal).
    Dial {
        stream: StreamId,
        ticket: TicketId,
        child: Peer,
        nonce: String,
    },
    /// Stop forwarding `stream` to the player holding `ticket`.
    Kick {
        stream: StreamId,
        ticket: TicketId,
    },
    Event(Event),
    /// A graceful leave is complete.
    Left,
}

/// What happened, for logs, the API and the simulation's figures.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Registered {
        supernode: NodeId,
    },
    Promoted,
    Attached {
        stream: StreamId,
        parent: NodeId,
        depth: usize,
    },
    Orphaned {
        stream: StreamId,
    },
    NoParent {
        stream: StreamId,
        retry_in: Duration,
    },
    Granted {
        stream: StreamId,
        child: NodeId,
        ticket: TicketId,
    },
    Ended {
        stream: StreamId,
        child: NodeId,
        ticket: TicketId,
    },
    /// The parent sent what the source did not seal: it is avoided for a while.
    Distrusted {
        stream: StreamId,
        parent: NodeId,
    },
}

/// What a call was for, so that its reply goes to the right place.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Bootstrap,
    PingSupernode(usize),
    Register,
    Announce,
    Promote,
    Refresh,
    Search(StreamId),
    PingCandidate(StreamId, usize),
    Ticket(StreamId),
    Probe(StreamId),
    /// A child claims the slot of its parent, our child, which still looks connected:
    /// is that parent alive?
    Claim(u64),
    Flood(u64),
    StandbySearch(StreamId),
    StandbyTicket(StreamId),
    /// A promoted standby tells its parent it is a child now.
    Confirm(StreamId),
    /// An unused standby's box was asked whether it still keeps it.
    StandbyCheck(StreamId, TicketId),
    /// A leaving supernode handed its children to a successor: once it has them,
    /// they are sent there.
    Adopt {
        successor: Peer,
        children: Vec<Peer>,
    },
    /// Fire and forget: the answer changes nothing.
    Quiet,
}

/// A stream this node holds or wants, and the forwards it grants.
pub(crate) struct Held {
    pub kbps: u32,
    /// `None` at the source.
    pub watch: Option<Watch>,
    pub children: BTreeMap<TicketId, Child>,
    pub reserved: Option<crate::forward::Reservation>,
    /// Players that are not boxes (browsers and VLC from elsewhere), admitted by the
    /// media plane into free slots: they use upload as children do.
    pub viewers: u8,
    /// Children that took the slot of a child that failed, for a while (see
    /// [`crate::forward::Heir`]).
    pub heirs: Vec<crate::forward::Heir>,
}

/// A read-only view of one held stream, for the API and the simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldStream {
    pub stream: StreamId,
    /// `None` while the node has no parent (and always at the source).
    pub parent: Option<NodeId>,
    pub path: Vec<NodeId>,
    pub is_source: bool,
    pub flowing: bool,
    pub slots: u8,
    pub children: Vec<TicketView>,
    /// Players that are not boxes, in slots of their own.
    pub viewers: u8,
    /// The hot-standby parent, once its feed flows.
    pub standby: Option<NodeId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TicketView {
    pub id: TicketId,
    pub child: NodeId,
    pub connected: bool,
    /// Asked to move, or about to be (displaced, or this node is leaving); it keeps
    /// the stream until it has a new parent.
    pub moving: bool,
    /// A hot standby of a child of another parent.
    pub standby: bool,
}

pub struct Node {
    pub(crate) cfg: Config,
    pub(crate) me: NodeCard,
    pub(crate) now: Time,
    pub(crate) rng: StdRng,
    next_call: u64,
    calls: HashMap<CallId, (Time, Pending)>,
    outputs: VecDeque<Output>,
    pub(crate) member: Membership,
    pub(crate) supernode: Option<Supernode>,
    /// Boxed: a map's node has room for eleven entries, and a box holds one or two
    /// streams.
    pub(crate) streams: BTreeMap<StreamId, Box<Held>>,
    pub(crate) leaving: Option<crate::forward::Leaving>,
    pub(crate) claims: HashMap<u64, crate::forward::Claim>,
    /// Parents caught sending what the source did not seal, kept away from until then.
    pub(crate) distrusted: HashMap<NodeId, Time>,
    pub(crate) announce_at: Time,
    pub(crate) messages_sent: u64,
}

impl Node {
    /// A node for `me`; `seed` feeds its randomness (ticket tokens, query ids, jitter),
    /// so the simulation is reproducible. A box seeds it from the OS.
    pub fn new(cfg: Config, me: NodeCard, seed: u64, now: Time) -> Node {
        Node {
            cfg,
            me,
            now,
            rng: StdRng::seed_from_u64(seed),
            next_call: 0,
            calls: HashMap::new(),
            outputs: VecDeque::new(),
            member: Membership::default(),
            supernode: None,
            streams: BTreeMap::new(),
            leaving: None,
            claims: HashMap::new(),
            distrusted: HashMap::new(),
            announce_at: Time::NEVER,
            messages_sent: 0,
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.me.peer.id
    }

    pub fn card(&self) -> &NodeCard {
        &self.me
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Calls this node has made since it started.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    pub fn handle_input(&mut self, now: Time, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Start { supernodes } => self.start(supernodes),
            Input::Publish { stream, kbps } => self.publish(stream, kbps),
            Input::Unpublish { stream } => self.drop_stream(&stream),
            Input::Watch {
                stream,
                kbps,
                source,
            } => self.watch(stream, kbps, source),
            Input::Unwatch { stream } => self.drop_stream(&stream),
            Input::StreamRate { stream, kbps } => {
                if let Some(held) = self.streams.get_mut(&stream) {
                    if held.kbps != kbps {
                        held.kbps = kbps;
                        self.shed_excess(&stream);
                        self.announce_soon();
                    }
                }
            }
            Input::Capacity {
                max_forwards,
                upload_kbps,
                reachable,
            } => {
                let now = (max_forwards, upload_kbps, reachable);
                if (self.me.max_forwards, self.me.upload_kbps, self.me.reachable) != now {
                    self.me.max_forwards = max_forwards;
                    self.me.upload_kbps = upload_kbps;
                    self.me.reachable = reachable;
                    let streams: Vec<StreamId> = self.streams.keys().cloned().collect();
                    for stream in streams {
                        self.shed_excess(&stream);
                    }
                    self.announce_soon();
                }
            }
            Input::Viewers { stream, count } => {
                if let Some(held) = self.streams.get_mut(&stream) {
                    if held.viewers != count {
                        held.viewers = count;
                        self.announce_soon();
                    }
                }
            }
            Input::Leave => self.leave(),
            Input::Request { id, from, request } => {
                let result = match self.check_sender(&from, &request) {
                    Ok(()) => self.handle_request(id, request),
                    Err(refusal) => Some(Err(refusal)),
                };
                if let Some(result) = result {
                    self.respond(id, result);
                }
            }
            Input::Reply { call, result } => {
                if let Some((_, pending)) = self.calls.remove(&call) {
                    self.handle_reply(call, pending, result);
                }
            }
            Input::Flowing { stream } => self.flowing(&stream),
            Input::Stalled { stream } => self.stalled(&stream),
            Input::Silent { stream } => self.silent(&stream),
            Input::Tampered { stream } => self.tampered(&stream),
            Input::StandbyFlowing { stream } => self.standby_flowing(&stream),
            Input::StandbyLost { stream } => self.standby_lost(&stream),
            Input::PlayerConnected { stream, ticket } => self.player(&stream, ticket, true),
            Input::PlayerGone { stream, ticket } => self.player(&stream, ticket, false),
        }
        self.settle();
    }

    /// Everything due at `now`: call timeouts, leases, retries, announcements.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        let expired: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for call in expired {
            if let Some((_, pending)) = self.calls.remove(&call) {
                let error = CallError::Unreachable("no answer in time".into());
                self.handle_reply(call, pending, Err(error));
            }
        }
        self.membership_timeout();
        self.supernode_timeout();
        self.watch_timeout();
        self.forward_timeout();
        self.settle();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Node::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let next = [
            self.calls.values().map(|(t, _)| *t).min(),
            Some(self.announce_at),
            self.membership_deadline(),
            self.supernode_deadline(),
            self.watch_deadline(),
            self.forward_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Time::NEVER);
        (next != Time::NEVER).then_some(next)
    }

    /// Changes the addresses this node gives others, and whether it has IPv6, before
    /// it joins: a box learns where it is reached (its router's address, mapped ports,
    /// its own IPv6 address) only once it serves.
    pub fn readdress(&mut self, peer: Peer, ipv6: bool) {
        debug_assert!(
            self.supernode_id().is_none(),
            "a node is readdressed before it joins"
        );
        debug_assert_eq!(peer.id, self.me.peer.id, "a node keeps its id");
        self.me.peer = peer;
        self.me.ipv6 = ipv6;
    }

    /// Streams this node holds or wants.
    pub fn held(&self) -> Vec<HeldStream> {
        self.streams
            .iter()
            .map(|(stream, held)| HeldStream {
                stream: stream.clone(),
                parent: held.parent().map(|p| p.id.clone()),
                path: held.path().to_vec(),
                is_source: held.watch.is_none(),
                flowing: held.watch.as_ref().is_none_or(|w| w.is_flowing()),
                slots: self.slots_for(held),
                children: held
                    .children
                    .iter()
                    .map(|(id, c)| TicketView {
                        id: *id,
                        child: c.card.peer.id.clone(),
                        connected: c.connected,
                        moving: c.moving_since.is_some()
                            || held.children.values().any(|o| o.evicts == Some(*id)),
                        standby: c.standby,
                    })
                    .collect(),
                viewers: held.viewers,
                standby: held
                    .watch
                    .as_ref()
                    .and_then(|w| w.standby.parent())
                    .cloned(),
            })
            .collect()
    }

    /// The source of `stream`, the first of this node's path in its tree; `None`
    /// before it has a parent, and at the source.
    pub fn source_of(&self, stream: &StreamId) -> Option<&NodeId> {
        self.streams.get(stream)?.path().first()
    }

    /// The parent `stream` plays from here; `None` at the source and while unattached.
    pub fn parent_of(&self, stream: &StreamId) -> Option<&NodeId> {
        Some(&self.streams.get(stream)?.parent()?.id)
    }

    /// Slots of `stream` free for a new child or viewer now.
    pub fn free(&self, stream: &StreamId) -> u8 {
        self.free_slots(stream)
    }

    /// Whether a player that is not a box may take a slot of `stream` now: a free one,
    /// or a standby's, which is ended for it (standbys hold only slots nobody needs).
    pub fn room_for_viewer(&mut self, now: Time, stream: &StreamId) -> bool {
        self.now = self.now.max(now);
        if self.free_slots(stream) > 0 {
            return true;
        }
        let Some(id) = self.standby_child(stream) else {
            return false;
        };
        self.end_child(stream, id);
        true
    }

    /// Players of `stream` that are not boxes, as the media plane last said.
    pub fn viewers(&self, stream: &StreamId) -> u8 {
        self.streams.get(stream).map_or(0, |h| h.viewers)
    }

    pub(crate) fn emit(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    pub(crate) fn call(&mut self, to: Target, request: Request, pending: Pending) -> CallId {
        self.call_within(to, request, pending, self.cfg.call_timeout)
    }

    pub(crate) fn call_within(
        &mut self,
        to: Target,
        request: Request,
        pending: Pending,
        timeout: Duration,
    ) -> CallId {
        self.next_call += 1;
        self.messages_sent += 1;
        let call = CallId(self.next_call);
        self.calls.insert(call, (self.now + timeout, pending));
        self.outputs.push_back(Output::Call { call, to, request });
        call
    }

    pub(crate) fn respond(&mut self, id: RequestId, result: Result<Response, Refusal>) {
        self.outputs.push_back(Output::Respond { id, result });
    }

    /// `base` stretched by up to a quarter, so that boxes started together drift apart.
    pub(crate) fn jitter(&mut self, base: Duration) -> Duration {
        let ms = base.as_millis() as u64;
        Duration::from_millis(ms + self.rng.gen_range(0..=ms / 4))
    }

    pub(crate) fn token(&mut self) -> String {
        format!("{:032x}", self.rng.gen::<u128>())
    }

    pub(crate) fn announce_soon(&mut self) {
        self.announce_at = self.announce_at.min(self.now);
    }

    /// A request that speaks for a node must come from it; a supernode's orders to
    /// its children (adopt them, register elsewhere) from this node's supernode.
    fn check_sender(&self, from: &NodeId, request: &Request) -> Result<(), Refusal> {
        if let Some(claimed) = request.speaks_for() {
            if claimed != from {
                return Err(Refusal::new(
                    RefusalKind::Forbidden,
                    format!("{from} cannot speak for {claimed}"),
                ));
            }
        }
        if matches!(request, Request::Adopt { .. } | Request::Rehome { .. })
            && self.supernode_id() != Some(from)
        {
            return Err(Refusal::new(
                RefusalKind::Forbidden,
                format!("{from} is not this node's supernode"),
            ));
        }
        Ok(())
    }

    fn handle_request(
        &mut self,
        id: RequestId,
        request: Request,
    ) -> Option<Result<Response, Refusal>> {
        if self.leaving.is_some()
            && matches!(
                request,
                Request::Ticket { .. } | Request::Register { .. } | Request::Adopt { .. }
            )
        {
            return Some(Err(Refusal::new(
                RefusalKind::Unavailable,
                "this node is leaving",
            )));
        }
        Some(match request {
            Request::Register { node } => self.sn_register(node),
            Request::Announce { node, holdings } => self.sn_announce(node, holdings),
            Request::Unregister { node } => self.sn_unregister(&node),
            Request::Search {
                query,
                stream,
                ttl,
                requester,
                requester_slots,
                requester_reachable,
                requester_ipv6,
            } => {
                let requester = crate::supernode::Requester {
                    id: requester,
                    slots: requester_slots,
                    reachable: requester_reachable,
                    ipv6: requester_ipv6,
                };
                return self.sn_search(id, query, stream, ttl, requester);
            }
            Request::Ticket {
                stream,
                child,
                path,
                replaces,
                standby: false,
            } => return self.grant_or_verify(id, stream, child, path, replaces),
            Request::Ticket {
                stream,
                child,
                path,
                standby: true,
                ..
            } => self.grant_standby(stream, child, path),
            Request::EndTicket {
                ticket,
                token,
                handover,
            } => self.end_ticket(ticket, &token, handover),
            Request::Path {
                ticket,
                token,
                path,
                backup,
            } => self.path_changed(ticket, &token, path, backup),
            Request::Dial {
                stream,
                token,
                nonce,
            } => self.dial(stream, &token, nonce),
            Request::Ping { stream } => Ok(Response::Pong {
                flowing: stream.map(|s| self.streams.get(&s).is_some_and(|h| h.sends())),
            }),
            Request::Adopt {
                children,
                neighbours,
            } => self.sn_adopt(children, neighbours),
            Request::Rehome { supernode } => self.rehome(supernode),
            Request::Neighbour { peer } => self.sn_neighbour(peer),
            Request::Bootstrap
            | Request::PromoteSupernode { .. }
            | Request::RetireSupernode { .. } => Err(Refusal::new(
                RefusalKind::NotFound,
                "that is a portal request; this is a node",
            )),
        })
    }

    fn handle_reply(
        &mut self,
        call: CallId,
        pending: Pending,
        result: Result<Response, CallError>,
    ) {
        match pending {
            Pending::Bootstrap => self.on_bootstrap(result),
            Pending::PingSupernode(i) => self.on_supernode_ping(i, result),
            Pending::Register => self.on_register(result),
            Pending::Announce => self.on_announce(result),
            Pending::Promote | Pending::Refresh => self.on_neighbours(result),
            Pending::Search(stream) => self.on_search(call, &stream, result),
            Pending::PingCandidate(stream, i) => self.on_candidate_ping(&stream, i, result),
            Pending::Ticket(stream) => self.on_ticket(call, &stream, result),
            Pending::Probe(stream) => self.on_probe(call, &stream, result),
            Pending::Claim(key) => self.on_claim(key, result),
            Pending::Flood(query) => self.on_flood_reply(query, result),
            Pending::StandbySearch(stream) => self.on_standby_search(call, &stream, result),
            Pending::StandbyTicket(stream) => self.on_standby_ticket(call, &stream, result),
            Pending::Confirm(stream) => self.on_confirm(&stream, result),
            Pending::StandbyCheck(stream, id) => self.on_standby_check(&stream, id, result),
            Pending::Adopt {
                successor,
                children,
            } => self.on_adopt(successor, children, result),
            Pending::Quiet => {}
        }
    }

    /// After every input: announcements due now go out.
    fn settle(&mut self) {
        if self.announce_at <= self.now {
            self.announce();
        }
        self.leave_progress();
    }
}

impl Held {
    pub(crate) fn parent(&self) -> Option<&Peer> {
        self.watch.as_ref().and_then(|w| w.parent())
    }

    /// The node's ancestors in this stream's tree; empty at the source and while
    /// unattached.
    pub(crate) fn path(&self) -> &[NodeId] {
        self.watch.as_ref().map_or(&[], |w| w.path())
    }

    /// Whether the node has the stream to give: the source always, a viewer once
    /// attached.
    pub(crate) fn holds(&self) -> bool {
        self.watch.as_ref().is_none_or(|w| w.parent().is_some())
    }

    /// The child that is node `node`, and its ticket.
    pub(crate) fn child_named(&self, node: &NodeId) -> Option<(TicketId, &crate::forward::Child)> {
        self.children
            .iter()
            .find(|(_, c)| &c.card.peer.id == node)
            .map(|(&id, c)| (id, c))
    }

    /// See [`Watch::sends`]; the source always does.
    pub(crate) fn sends(&self) -> bool {
        self.watch.as_ref().is_none_or(Watch::sends)
    }
}
