//! Joining the overlay: a supernode to belong to, or becoming one.
//!
//! As in the seed: static config, then the portal's partial list of supernodes,
//! ranked by measured round-trip time; register with the first that accepts; if
//! none does, promote yourself and tell the portal.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proto::overlay::{NodeId, Peer, RefusalKind, Request, Response};

use crate::node::{CallError, Event, Node, Pending, Target};
use crate::supernode::Supernode;
use crate::Time;

/// A supernode that failed is skipped for this long when bootstrapping again.
const AVOID: Duration = Duration::from_secs(60);
/// Most supernodes pinged while bootstrapping.
const MAX_PINGED: usize = 8;

#[derive(Default)]
pub(crate) struct Membership {
    pub state: State,
    statics: Vec<Peer>,
    avoid: HashMap<NodeId, Time>,
}

#[derive(Default)]
pub(crate) enum State {
    #[default]
    Offline,
    /// Asking the portal for supernodes.
    Listing,
    /// Pinging them: each one's round-trip time once it answers.
    Ranking {
        peers: Vec<(Peer, Option<Duration>)>,
        sent: Time,
        deadline: Time,
    },
    Registering {
        queue: VecDeque<Peer>,
    },
    Member {
        supernode: Peer,
    },
    Supernode,
}

impl Node {
    pub fn is_supernode(&self) -> bool {
        matches!(self.member.state, State::Supernode)
    }

    /// The supernode this node is registered with (itself, when it is one).
    pub fn supernode_id(&self) -> Option<&NodeId> {
        match &self.member.state {
            State::Member { supernode } => Some(&supernode.id),
            State::Supernode => Some(self.id()),
            _ => None,
        }
    }

    pub(crate) fn start(&mut self, statics: Vec<Peer>) {
        self.member.statics = statics;
        self.rebootstrap();
    }

    fn rebootstrap(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        self.member.state = State::Listing;
        self.call(Target::Portal, Request::Bootstrap, Pending::Bootstrap);
    }

    pub(crate) fn on_bootstrap(&mut self, result: Result<Response, CallError>) {
        if !matches!(self.member.state, State::Listing) {
            return;
        }
        let from_portal = match result {
            Ok(Response::Supernodes { supernodes }) => supernodes,
            _ => Vec::new(),
        };
        let now = self.now;
        self.member.avoid.retain(|_, until| *until > now);
        let mut list: Vec<Peer> = Vec::new();
        for peer in self.member.statics.iter().chain(&from_portal) {
            if peer.id != self.me.peer.id
                && !self.member.avoid.contains_key(&peer.id)
                && !list.iter().any(|p| p.id == peer.id)
            {
                list.push(peer.clone());
            }
        }
        list.truncate(MAX_PINGED);
        if list.is_empty() {
            self.promote();
            return;
        }
        for (i, peer) in list.iter().enumerate() {
            let to = Target::Node(peer.clone());
            let timeout = self.cfg.ping_timeout;
            self.call_within(
                to,
                Request::Ping { stream: None },
                Pending::PingSupernode(i),
                timeout,
            );
        }
        self.member.state = State::Ranking {
            peers: list.into_iter().map(|p| (p, None)).collect(),
            sent: self.now,
            deadline: self.now + self.cfg.ping_timeout,
        };
    }

    pub(crate) fn on_supernode_ping(&mut self, i: usize, result: Result<Response, CallError>) {
        let now = self.now;
        let State::Ranking { peers, sent, .. } = &mut self.member.state else {
            return;
        };
        if result.is_ok() {
            if let Some(entry) = peers.get_mut(i) {
                entry.1 = Some(now - *sent);
            }
        }
        if peers.iter().all(|(_, rtt)| rtt.is_some()) {
            self.finish_ranking();
        }
    }

    /// Register with the answering supernodes, nearest first.
    fn finish_ranking(&mut self) {
        let State::Ranking { peers, .. } = std::mem::take(&mut self.member.state) else {
            return;
        };
        let mut ranked: Vec<(Duration, Peer)> = peers
            .into_iter()
            .filter_map(|(p, rtt)| Some((rtt?, p)))
            .collect();
        ranked.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        self.member.state = State::Registering {
            queue: ranked.into_iter().map(|(_, p)| p).collect(),
        };
        self.register_next();
    }

    fn register_next(&mut self) {
        let State::Registering { queue } = &mut self.member.state else {
            return;
        };
        match queue.front().cloned() {
            Some(peer) => {
                let request = Request::Register {
                    node: self.me.clone(),
                };
                self.call(Target::Node(peer), request, Pending::Register);
            }
            None => self.promote(),
        }
    }

    pub(crate) fn on_register(&mut self, result: Result<Response, CallError>) {
        let State::Registering { queue } = &mut self.member.state else {
            return;
        };
        let Some(peer) = queue.pop_front() else {
            return;
        };
        match result {
            Ok(Response::Registered { .. }) => {
                self.event(Event::Registered {
                    supernode: peer.id.clone(),
                });
                self.member.state = State::Member { supernode: peer };
                self.announce_soon();
                self.membership_ready();
            }
            Ok(_) | Err(_) => self.register_next(),
        }
    }

    /// Tell the supernode what this node holds; renews the lease.
    pub(crate) fn announce(&mut self) {
        let interval = self.jitter(self.cfg.announce_interval);
        self.announce_at = self.now + interval;
        let holdings = self.holdings();
        match &self.member.state {
            State::Member { supernode } => {
                let request = Request::Announce {
                    node: self.me.peer.id.clone(),
                    holdings,
                };
                self.call(Target::Node(supernode.clone()), request, Pending::Announce);
            }
            State::Supernode => self.sn_own_holdings(holdings),
            _ => {}
        }
    }

    pub(crate) fn on_announce(&mut self, result: Result<Response, CallError>) {
        let State::Member { supernode } = &self.member.state else {
            return;
        };
        match result {
            Ok(_) => {}
            // The supernode forgot us (restart, lease): register again.
            Err(CallError::Refused(r)) if r.kind == RefusalKind::NotFound => {
                let peer = supernode.clone();
                self.member.state = State::Registering {
                    queue: VecDeque::from([peer]),
                };
                self.register_next();
            }
            Err(_) => self.supernode_lost(),
        }
    }

    /// Our supernode does not answer: avoid it for a while and find another.
    pub(crate) fn supernode_lost(&mut self) {
        let State::Member { supernode } = &self.member.state else {
            return;
        };
        let until = self.now + AVOID;
        self.member.avoid.insert(supernode.id.clone(), until);
        self.rebootstrap();
    }

    fn promote(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        self.member.state = State::Supernode;
        self.supernode = Some(Supernode::new(self.now));
        self.event(Event::Promoted);
        let request = self.promote_request();
        self.call(Target::Portal, request, Pending::Promote);
        self.announce_soon();
        self.membership_ready();
    }

    /// A hand-off made this node a supernode.
    pub(crate) fn become_supernode(&mut self) {
        if !self.is_supernode() {
            self.promote();
        }
    }

    /// The portal's list of supernodes, for a supernode: its neighbours.
    pub(crate) fn on_neighbours(&mut self, result: Result<Response, CallError>) {
        let me = self.me.peer.id.clone();
        let retry = self.now + Duration::from_secs(10);
        let refresh = self.now + self.cfg.neighbour_refresh;
        let Some(sn) = self.supernode.as_mut() else {
            return;
        };
        match result {
            Ok(Response::Supernodes { supernodes }) => {
                let new: Vec<Peer> = supernodes
                    .iter()
                    .filter(|p| p.id != me && !sn.knows(&p.id))
                    .cloned()
                    .collect();
                sn.set_neighbours(supernodes.into_iter().filter(|p| p.id != me).collect());
                sn.next_refresh = refresh;
                // The ones new to us may not know us yet: the portal tells them only
                // at their next refresh.
                let hello = Request::Neighbour {
                    peer: self.me.peer.clone(),
                };
                for peer in new {
                    self.call(Target::Node(peer), hello.clone(), Pending::Quiet);
                }
            }
            _ => sn.next_refresh = retry,
        }
    }

    pub(crate) fn refresh_neighbours(&mut self) {
        let request = self.promote_request();
        let now = self.now;
        if let (Some(sn), Request::PromoteSupernode { viewers, .. }) =
            (self.supernode.as_mut(), &request)
        {
            sn.reporting(viewers, now);
        }
        self.call(Target::Portal, request, Pending::Refresh);
    }

    fn promote_request(&self) -> Request {
        Request::PromoteSupernode {
            peer: self.me.peer.clone(),
            viewers: self
                .supernode
                .as_ref()
                .map(|sn| sn.viewers())
                .unwrap_or_default(),
        }
    }

    /// A leaving supernode sent us to its successor.
    pub(crate) fn rehome(&mut self, supernode: Peer) -> Result<Response, proto::overlay::Refusal> {
        if supernode.id != self.me.peer.id && !self.is_supernode() {
            self.member.state = State::Registering {
                queue: VecDeque::from([supernode]),
            };
            self.register_next();
        }
        Ok(Response::Done)
    }

    pub(crate) fn membership_timeout(&mut self) {
        if let State::Ranking { deadline, .. } = self.member.state {
            if deadline <= self.now {
                self.finish_ranking();
            }
        }
    }

    pub(crate) fn membership_deadline(&self) -> Option<Time> {
        match self.member.state {
            State::Ranking { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Leaving: the supernode hears it, or a supernode hands its children on.
    pub(crate) fn leave_membership(&mut self) {
        match std::mem::take(&mut self.member.state) {
            State::Member { supernode } => {
                let request = Request::Unregister {
                    node: self.me.peer.id.clone(),
                };
                self.call(Target::Node(supernode), request, Pending::Quiet);
            }
            State::Supernode => self.sn_hand_off(),
            _ => {}
        }
    }
}
