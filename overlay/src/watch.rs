//! The child's side: finding a parent for a stream and keeping one.
//!
//! Search → ping the best candidates → ask for a ticket → pull. A stall is checked
//! with the parent first (a parent repairing itself is waited for, so one failure
//! does not send a whole subtree searching), then repaired through the backup parent,
//! then by a new search. Moves (up the tree, or away from a parent that asks) are
//! make-before-break: the old ticket ends only once the new parent's stream flows.

use std::collections::VecDeque;
use std::time::Duration;

use proto::overlay::{Candidate, NodeId, Peer, Refusal, Request, Response, StreamId, Ticket};

use crate::membership::State;
use crate::node::{CallError, CallId, Event, Held, Node, Output, Pending, Target};
use crate::Time;

/// How often a node asks a parent that is repairing itself whether it is done.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a parent caught sending what the source did not seal is kept away from.
pub(crate) const DISTRUST: Duration = Duration::from_secs(600);

pub(crate) struct Watch {
    /// The stream's source, asked directly when a search finds nobody.
    source: Option<Peer>,
    attached: Option<Attached>,
    /// The previous parent's ticket, ended once the new parent's stream flows.
    old: Option<Ticket>,
    seek: Seek,
    /// The claim on a silent parent's slot, sent to the backup with the early ask
    /// (see [`Node::silent`]).
    early_claim: Option<CallId>,
    retry: Duration,
    next_improve: Time,
    pub(crate) standby: crate::standby::Standby,
}

struct Attached {
    ticket: Ticket,
    flowing: bool,
    /// The parent has sent nothing for half the stall timeout.
    silent: bool,
    /// Until when the stream may take to start flowing.
    connect_by: Time,
}

/// Why a node is looking for a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// It has none.
    Join,
    /// Its parent failed.
    Repair,
    /// Its parent asked it to go (it is leaving, or a stronger node took the slot);
    /// the stream still flows meanwhile.
    Move,
    /// A shallower slot may have freed.
    Improve,
}

enum Seek {
    Idle,
    Waiting {
        until: Time,
        purpose: Purpose,
    },
    /// `call` is `None` while the node has no supernode yet, or is its own.
    Searching {
        call: Option<CallId>,
        purpose: Purpose,
    },
    Pinging {
        candidates: Vec<(Candidate, Ping)>,
        sent: Time,
        deadline: Time,
        purpose: Purpose,
    },
    Asking {
        queue: VecDeque<(Peer, Option<NodeId>)>,
        call: Option<CallId>,
        purpose: Purpose,
        then_search: bool,
    },
    Probing {
        call: CallId,
        stalled_at: Time,
        /// The parent said it was repairing itself, and we waited.
        waited: bool,
        /// Sent when the parent fell silent, before the stall.
        early: bool,
    },
    /// The parent fell silent and did not answer: if the stall comes, it is dead.
    Unanswered,
    Patient {
        recheck: Time,
        stalled_at: Time,
    },
}

/// How a search's candidates rank: shallower first, then more free slots (round-trip
/// time breaks ties).
fn rank(c: &Candidate) -> (usize, std::cmp::Reverse<u8>) {
    (c.holding.depth(), std::cmp::Reverse(c.holding.free))
}

#[derive(Clone, Copy)]
enum Ping {
    NotPinged,
    Waiting,
    Answered(Duration),
    Failed,
}

impl Watch {
    fn new(source: Option<Peer>) -> Watch {
        Watch {
            source,
            attached: None,
            old: None,
            seek: Seek::Idle,
            early_claim: None,
            retry: Duration::ZERO,
            next_improve: Time::NEVER,
            standby: Default::default(),
        }
    }

    /// Its stream flows, and it is not looking for another parent.
    fn is_settled(&self) -> bool {
        self.is_flowing() && matches!(self.seek, Seek::Idle)
    }

    /// Only a settled node, or one merely looking for a better place, asks its parent
    /// why it is silent; any other search is already a repair or a move.
    fn may_probe(&self) -> bool {
        match self.seek {
            Seek::Idle => true,
            Seek::Searching { purpose, .. }
            | Seek::Pinging { purpose, .. }
            | Seek::Asking { purpose, .. } => purpose == Purpose::Improve,
            _ => false,
        }
    }

    /// When this node asks for a standby next: once it is settled.
    pub(crate) fn standby_due(&self) -> Option<Time> {
        self.standby.deadline().filter(|_| self.is_settled())
    }

    /// The parent sends: whatever was being asked of it, or waited for, is over.
    fn parent_sends(&mut self) {
        if matches!(
            self.seek,
            Seek::Probing { .. } | Seek::Patient { .. } | Seek::Unanswered
        ) {
            self.seek = Seek::Idle;
        }
    }

    /// The standby's ticket becomes the parent's, its stream already flowing; returns
    /// the old parent's ticket.
    pub(crate) fn promote(&mut self, ticket: Ticket, now: Time) -> Option<Ticket> {
        let old = self.attached.replace(Attached {
            ticket,
            flowing: true,
            silent: false,
            connect_by: now,
        });
        self.parent_sends();
        old.map(|a| a.ticket)
    }

    pub(crate) fn parent(&self) -> Option<&Peer> {
        self.attached.as_ref().map(|a| &a.ticket.parent)
    }

    pub(crate) fn path(&self) -> &[NodeId] {
        self.attached.as_ref().map_or(&[], |a| &a.ticket.path)
    }

    pub(crate) fn ticket(&self) -> Option<&Ticket> {
        self.attached.as_ref().map(|a| &a.ticket)
    }

    pub(crate) fn is_flowing(&self) -> bool {
        self.attached.as_ref().is_some_and(|a| a.flowing)
    }

    /// Flowing, and the parent sent lately: what a ping is told. A child that asks at
    /// its stall whether its parent still has the stream must hear no while the parent
    /// has been silent too, even if the parent's own stall is still to come: then the
    /// child waits for its parent's repair instead of searching.
    pub(crate) fn sends(&self) -> bool {
        self.attached
            .as_ref()
            .is_some_and(|a| a.flowing && !a.silent)
    }

    /// Returns whether anything changed.
    pub(crate) fn set_path(&mut self, path: Vec<NodeId>, backup: Option<Peer>) -> bool {
        let Some(a) = self.attached.as_mut() else {
            return false;
        };
        let changed = a.ticket.path != path || a.ticket.backup != backup;
        a.ticket.path = path;
        a.ticket.backup = backup;
        changed
    }

    pub(crate) fn into_tickets(self) -> Vec<Ticket> {
        let standby = self.standby.ticket().cloned();
        self.attached
            .map(|a| a.ticket)
            .into_iter()
            .chain(self.old)
            .chain(standby)
            .collect()
    }

    fn deadline(&self) -> Option<Time> {
        let seek = match &self.seek {
            Seek::Waiting { until, .. } => Some(*until),
            Seek::Pinging { deadline, .. } => Some(*deadline),
            Seek::Patient { recheck, .. } => Some(*recheck),
            Seek::Idle => {
                let connect = self
                    .attached
                    .as_ref()
                    .filter(|a| !a.flowing)
                    .map(|a| a.connect_by);
                Some(connect.map_or(self.next_improve, |c| c.min(self.next_improve)))
            }
            _ => None,
        };
        seek
    }
}

impl Node {
    pub(crate) fn watch(&mut self, stream: StreamId, kbps: u32, source: Option<Peer>) {
        if let Some(held) = self.streams.get_mut(&stream) {
            held.kbps = kbps;
            if let Some(w) = held.watch.as_mut() {
                w.source = source.or(w.source.take());
            }
            return;
        }
        let watch = Watch::new(source);
        let held = Box::new(Held {
            kbps,
            watch: Some(watch),
            children: Default::default(),
            reserved: None,
            heirs: Vec::new(),
            viewers: 0,
        });
        self.streams.insert(stream.clone(), held);
        self.search(&stream, Purpose::Join);
    }

    pub(crate) fn watch_mut(&mut self, stream: &StreamId) -> Option<&mut Watch> {
        self.streams.get_mut(stream)?.watch.as_mut()
    }

    pub(crate) fn my_slots(&self, stream: &StreamId) -> u8 {
        self.streams.get(stream).map_or(0, |h| self.slots_for(h))
    }

    /// Registered (or promoted): searches that waited for a supernode go out.
    pub(crate) fn membership_ready(&mut self) {
        let waiting: Vec<(StreamId, Purpose)> = self
            .streams
            .iter()
            .filter_map(|(s, h)| match h.watch.as_ref()?.seek {
                Seek::Searching {
                    call: None,
                    purpose,
                } => Some((s.clone(), purpose)),
                _ => None,
            })
            .collect();
        for (stream, purpose) in waiting {
            self.search(&stream, purpose);
        }
    }

    fn search(&mut self, stream: &StreamId, purpose: Purpose) {
        if self.leaving.is_some() {
            if let Some(watch) = self.watch_mut(stream) {
                watch.seek = Seek::Idle;
            }
            return;
        }
        let ttl = if purpose == Purpose::Improve {
            self.cfg.improve_ttl
        } else {
            self.cfg.search_ttl
        };
        let call = match &self.member.state {
            State::Member { supernode } => {
                let request = Request::Search {
                    query: rand::Rng::gen(&mut self.rng),
                    stream: stream.clone(),
                    ttl,
                    requester: self.me.peer.id.clone(),
                    requester_slots: self.my_slots(stream),
                    requester_reachable: self.me.reachable,
                    requester_ipv6: self.me.ipv6,
                };
                // A supernode answers within its flood's wait: one that lost power
                // should not hold a repair for the whole call timeout.
                let timeout = (self.cfg.flood_wait_per_hop * (u32::from(ttl) + 1)
                    + self.cfg.ping_timeout)
                    .min(self.cfg.call_timeout);
                let to = Target::Node(supernode.clone());
                Some(self.call_within(to, request, Pending::Search(stream.clone()), timeout))
            }
            _ => None,
        };
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        watch.seek = Seek::Searching { call, purpose };
        if call.is_none() && self.is_supernode() {
            self.sn_local_search(stream, ttl);
        }
    }

    pub(crate) fn on_search(
        &mut self,
        call: CallId,
        stream: &StreamId,
        result: Result<Response, CallError>,
    ) {
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let purpose = match watch.seek {
            Seek::Searching {
                call: Some(c),
                purpose,
            } if c == call => purpose,
            _ => return,
        };
        let found = match result {
            Ok(Response::Candidates { candidates }) => candidates,
            // Our supernode is gone: the search waits for the next one, which
            // membership finds now rather than at the next announcement.
            Err(CallError::Unreachable(_)) => {
                watch.seek = Seek::Searching {
                    call: None,
                    purpose,
                };
                self.supernode_lost();
                return;
            }
            Err(CallError::Refused(_)) | Ok(_) => Vec::new(),
        };
        self.search_done(stream, found);
    }

    /// Candidates from our supernode (or our own registry, as a supernode).
    pub(crate) fn search_done(&mut self, stream: &StreamId, found: Vec<Candidate>) {
        let me = self.me.peer.id.clone();
        let now = self.now;
        let ping_count = self.cfg.ping_candidates;
        let timeout = self.cfg.ping_timeout;
        let my_slots = self.my_slots(stream);
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Seek::Searching { purpose, .. } = watch.seek else {
            return;
        };
        let depth = watch.path().len();
        let parent = watch.parent().map(|p| p.id.clone());
        let found: Vec<Candidate> = found
            .into_iter()
            .filter(|c| {
                !self.is_distrusted(&c.peer.id)
                    && !c.holding.path.iter().any(|id| self.is_distrusted(id))
            })
            .collect();
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let mut candidates: Vec<Candidate> = found
            .into_iter()
            .filter(|c| {
                c.peer.id != me
                    && !c.holding.path.contains(&me)
                    && Some(&c.peer.id) != parent.as_ref()
            })
            // A move up goes at least two levels up, to a free slot or to the place
            // of a weaker child there (capacity-first placement, after the join).
            .filter(|c| {
                let h = &c.holding;
                let room = h.free > 0 || h.weakest_child.is_some_and(|w| w < my_slots);
                purpose != Purpose::Improve || (room && h.depth() + 1 < depth)
            })
            .collect();
        if candidates.is_empty() {
            let source = watch
                .source
                .clone()
                .filter(|s| Some(&s.id) != parent.as_ref() && s.id != me);
            match (purpose, source) {
                (Purpose::Improve, _) | (_, None) => self.no_parent(stream, purpose),
                (_, Some(source)) => {
                    self.ask(stream, VecDeque::from([(source, None)]), purpose, false)
                }
            }
            return;
        }
        candidates.truncate(self.cfg.max_candidates);
        if purpose == Purpose::Improve {
            // A move up needs no round-trip ranking: depth decides, and it is cheap.
            let queue = candidates.into_iter().map(|c| (c.peer, None)).collect();
            self.ask(stream, queue, purpose, false);
            return;
        }
        let pinged = ping_count.min(candidates.len());
        let list: Vec<(Candidate, Ping)> = candidates
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c,
                    if i < pinged {
                        Ping::Waiting
                    } else {
                        Ping::NotPinged
                    },
                )
            })
            .collect();
        let peers: Vec<Peer> = list
            .iter()
            .take(pinged)
            .map(|(c, _)| c.peer.clone())
            .collect();
        if let Some(watch) = self.watch_mut(stream) {
            watch.seek = Seek::Pinging {
                candidates: list,
                sent: now,
                deadline: now + timeout,
                purpose,
            };
        }
        for (i, peer) in peers.into_iter().enumerate() {
            let request = Request::Ping {
                stream: Some(stream.clone()),
            };
            self.call_within(
                Target::Node(peer),
                request,
                Pending::PingCandidate(stream.clone(), i),
                timeout,
            );
        }
    }

    pub(crate) fn on_candidate_ping(
        &mut self,
        stream: &StreamId,
        i: usize,
        result: Result<Response, CallError>,
    ) {
        let now = self.now;
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Seek::Pinging {
            candidates, sent, ..
        } = &mut watch.seek
        else {
            return;
        };
        if let Some((_, ping)) = candidates.get_mut(i) {
            *ping = match result {
                Ok(Response::Pong {
                    flowing: Some(true),
                }) => Ping::Answered(now - *sent),
                _ => Ping::Failed,
            };
        }
        // Round-trip time breaks ties of rank: a candidate that has not answered yet
        // can only win by a better rank.
        let best = candidates
            .iter()
            .filter(|(_, p)| matches!(p, Ping::Answered(_)))
            .map(|(c, _)| rank(c))
            .min();
        let may_win = |c: &Candidate| best.is_none_or(|b| rank(c) < b);
        if !candidates
            .iter()
            .any(|(c, p)| matches!(p, Ping::Waiting) && may_win(c))
        {
            self.finish_pinging(stream);
        }
    }

    /// Ask the answering candidates in order of depth, free slots and round-trip
    /// time; then, before the ping timeout, the ones still to answer; then the ones
    /// not pinged.
    fn finish_pinging(&mut self, stream: &StreamId) {
        let now = self.now;
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Seek::Pinging {
            candidates,
            purpose,
            deadline,
            ..
        } = std::mem::replace(&mut watch.seek, Seek::Idle)
        else {
            return;
        };
        let timed_out = now >= deadline;
        let mut answered: Vec<(Candidate, Duration)> = candidates
            .iter()
            .filter_map(|(c, p)| match p {
                Ping::Answered(rtt) => Some((c.clone(), *rtt)),
                _ => None,
            })
            .collect();
        answered.sort_by_key(|(c, rtt)| (rank(c), *rtt));
        // The rest in the supernode's order. The ones still to answer rank below the
        // answered (see `on_candidate_ping`); after the timeout they count as dead.
        let rest = candidates.into_iter().filter(|(_, p)| match p {
            Ping::Waiting => !timed_out,
            Ping::NotPinged => true,
            Ping::Answered(_) | Ping::Failed => false,
        });
        let queue = answered
            .into_iter()
            .map(|(c, _)| c)
            .chain(rest.map(|(c, _)| c))
            .map(|c| (c.peer, None))
            .collect();
        self.ask(stream, queue, purpose, purpose == Purpose::Repair);
    }

    fn ask(
        &mut self,
        stream: &StreamId,
        queue: VecDeque<(Peer, Option<NodeId>)>,
        purpose: Purpose,
        then_search: bool,
    ) {
        if let Some(watch) = self.watch_mut(stream) {
            watch.seek = Seek::Asking {
                queue,
                call: None,
                purpose,
                then_search,
            };
            self.ask_next(stream);
        }
    }

    fn ask_next(&mut self, stream: &StreamId) {
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Seek::Asking {
            queue,
            purpose,
            then_search,
            ..
        } = &mut watch.seek
        else {
            return;
        };
        let (purpose, then_search) = (*purpose, *then_search);
        let Some((peer, replaces)) = queue.pop_front() else {
            if then_search {
                self.search(stream, purpose);
            } else {
                self.no_parent(stream, purpose);
            }
            return;
        };
        let call = self.ask_ticket(stream, peer, replaces);
        if let Some(Seek::Asking { call: c, .. }) = self.watch_mut(stream).map(|w| &mut w.seek) {
            *c = Some(call);
        }
    }

    /// Asks `peer` for a ticket for `stream`, saying where we are now (a move or a
    /// repair keeps the stream meanwhile), and taking `replaces`'s slot if named.
    fn ask_ticket(&mut self, stream: &StreamId, peer: Peer, replaces: Option<NodeId>) -> CallId {
        let path = self
            .streams
            .get(stream)
            .and_then(|h| h.watch.as_ref()?.attached.as_ref())
            .map(|a| a.ticket.path.clone());
        let request = Request::Ticket {
            stream: stream.clone(),
            child: self.me.clone(),
            path,
            replaces,
            standby: false,
        };
        self.call(Target::Node(peer), request, Pending::Ticket(stream.clone()))
    }

    pub(crate) fn on_ticket(
        &mut self,
        call: CallId,
        stream: &StreamId,
        result: Result<Response, CallError>,
    ) {
        let Some(watch) = self.watch_mut(stream) else {
            if let Ok(Response::Ticket { ticket }) = result {
                self.release(vec![*ticket]);
            }
            return;
        };
        let purpose = match watch.seek {
            Seek::Asking {
                call: Some(c),
                purpose,
                ..
            } if c == call => purpose,
            _ if watch.early_claim == Some(call) => {
                watch.early_claim = None;
                self.early_claim_answered(stream, result);
                return;
            }
            _ => {
                // An answer that came too late: give the slot back.
                if let Ok(Response::Ticket { ticket }) = result {
                    self.release(vec![*ticket]);
                }
                return;
            }
        };
        match result {
            Ok(Response::Ticket { ticket }) if ticket.stream == *stream => {
                self.attach(stream, *ticket, purpose)
            }
            // A sibling took our dead parent's slot first: it is the next to ask.
            Err(CallError::Refused(Refusal {
                instead: Some(heir),
                ..
            })) if heir.id != self.me.peer.id => {
                if let Some(Seek::Asking { queue, .. }) =
                    self.watch_mut(stream).map(|w| &mut w.seek)
                {
                    queue.push_front((*heir, None));
                }
                self.ask_next(stream)
            }
            _ => self.ask_next(stream),
        }
    }

    fn attach(&mut self, stream: &StreamId, ticket: Ticket, purpose: Purpose) {
        let now = self.now;
        let connect_by = now + self.cfg.connect_timeout;
        let improve = self.jitter(self.cfg.improve_interval);
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let previous = watch.attached.take().map(|a| a.ticket);
        let dead = match purpose {
            // The old parent is gone or stalled: nothing to wait for.
            Purpose::Repair | Purpose::Join => previous,
            Purpose::Move | Purpose::Improve => {
                watch.old = previous;
                None
            }
        };
        let parent = ticket.parent.clone();
        let token = ticket.token.clone();
        let adopt = ticket.adopt.clone();
        let depth = ticket.path.len();
        watch.attached = Some(Attached {
            ticket,
            flowing: false,
            silent: false,
            connect_by,
        });
        watch.seek = Seek::Idle;
        watch.early_claim = None;
        watch.retry = Duration::ZERO;
        watch.next_improve = now + improve;
        if let Some(dead) = dead {
            self.release(vec![dead]);
        }
        if let Some(node) = adopt {
            self.reserve(stream, node);
        }
        self.event(Event::Attached {
            stream: stream.clone(),
            parent: parent.id.clone(),
            depth,
        });
        self.emit(Output::Pull {
            stream: stream.clone(),
            parent,
            token,
        });
        self.check_standby(stream);
        self.paths_changed(stream);
    }

    /// Nobody could take us: try again later, waiting longer each time.
    fn no_parent(&mut self, stream: &StreamId, purpose: Purpose) {
        let now = self.now;
        let (min, max) = (self.cfg.retry_min, self.cfg.retry_max);
        let improve = self.jitter(self.cfg.improve_interval);
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        if purpose == Purpose::Improve {
            watch.seek = Seek::Idle;
            watch.next_improve = now + improve;
            return;
        }
        watch.retry = (watch.retry * 2).clamp(min, max);
        let retry_in = watch.retry;
        watch.seek = Seek::Waiting {
            until: now + retry_in,
            purpose,
        };
        self.event(Event::NoParent {
            stream: stream.clone(),
            retry_in,
        });
    }

    pub(crate) fn flowing(&mut self, stream: &StreamId) {
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Some(a) = watch.attached.as_mut() else {
            return;
        };
        a.flowing = true;
        a.silent = false;
        watch.parent_sends();
        if let Some(old) = watch.old.take() {
            self.release(vec![old]);
        }
    }

    /// The parent has sent nothing for half the stall timeout: a settled node asks it
    /// already whether it is alive, and claims its slot at the backup, which asks the
    /// parent too and gives the slot only if it does not answer. So a parent that lost
    /// power is replaced about when the stall is seen, not a ping timeout later. A
    /// standby takes over at the stall.
    pub(crate) fn silent(&mut self, stream: &StreamId) {
        let now = self.now;
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        if let Some(a) = watch.attached.as_mut() {
            a.silent = true;
        }
        if !watch.is_flowing() || !watch.may_probe() || watch.standby.is_flowing() {
            return;
        }
        let claim = watch.attached.as_ref().and_then(|a| {
            let backup = a.ticket.backup.clone()?;
            Some((backup, a.ticket.parent.id.clone()))
        });
        self.probe(stream, now, false, true);
        if let Some((backup, parent)) = claim {
            let call = self.ask_ticket(stream, backup, Some(parent));
            if let Some(watch) = self.watch_mut(stream) {
                watch.early_claim = Some(call);
            }
        }
    }

    /// The media plane saw no tag for the stall timeout: ask the parent why, unless
    /// it was asked when it fell silent.
    pub(crate) fn stalled(&mut self, stream: &StreamId) {
        if self.promote_standby(stream) {
            return;
        }
        let now = self.now;
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Some(a) = watch.attached.as_mut() else {
            return;
        };
        a.flowing = false;
        match &mut watch.seek {
            // Its answer decides, as a probe's at the stall would.
            Seek::Probing { early, .. } if *early => {
                *early = false;
                return;
            }
            Seek::Unanswered => {
                self.repair(stream, true);
                return;
            }
            _ => {}
        }
        if watch.may_probe() {
            self.probe(stream, now, false, false);
        }
    }

    /// Ask the parent whether `stream` still flows there; `waited` after it said it was
    /// repairing itself.
    fn probe(&mut self, stream: &StreamId, stalled_at: Time, waited: bool, early: bool) {
        let timeout = self.cfg.ping_timeout;
        let Some(parent) = self.watch_mut(stream).and_then(|w| w.parent().cloned()) else {
            return;
        };
        let request = Request::Ping {
            stream: Some(stream.clone()),
        };
        let pending = Pending::Probe(stream.clone());
        let call = self.call_within(Target::Node(parent), request, pending, timeout);
        if let Some(watch) = self.watch_mut(stream) {
            watch.seek = Seek::Probing {
                call,
                stalled_at,
                waited,
                early,
            };
        }
    }

    /// The parent sent what the source did not seal: avoid it, and any place below
    /// it, for [`DISTRUST`], and go to the standby or search (its slot is not
    /// claimed: it is alive).
    pub(crate) fn tampered(&mut self, stream: &StreamId) {
        let Some(parent) = self.watch_mut(stream).and_then(|w| w.parent().cloned()) else {
            return;
        };
        let now = self.now;
        self.distrusted.retain(|_, until| *until > now);
        self.distrusted.insert(parent.id.clone(), now + DISTRUST);
        self.event(Event::Distrusted {
            stream: stream.clone(),
            parent: parent.id,
        });
        if !self.promote_standby(stream) {
            self.stalled_hard(stream);
        }
    }

    fn is_distrusted(&self, id: &NodeId) -> bool {
        self.distrusted
            .get(id)
            .is_some_and(|until| *until > self.now)
    }

    /// The parent cannot be kept (it is in our own subtree): repair at once.
    pub(crate) fn stalled_hard(&mut self, stream: &StreamId) {
        if let Some(a) = self.watch_mut(stream).and_then(|w| w.attached.as_mut()) {
            a.flowing = false;
        }
        self.repair(stream, false);
    }

    pub(crate) fn on_probe(
        &mut self,
        call: CallId,
        stream: &StreamId,
        result: Result<Response, CallError>,
    ) {
        let now = self.now;
        let patience = self.cfg.repair_patience;
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Seek::Probing {
            call: c,
            stalled_at,
            waited,
            early,
        } = watch.seek
        else {
            return;
        };
        if c != call {
            return;
        }
        let patient = Seek::Patient {
            recheck: now + RECHECK,
            stalled_at,
        };
        match result {
            // The parent is alive and has no stream either: it is repairing itself.
            Ok(Response::Pong {
                flowing: Some(false),
            }) if now < stalled_at + patience => watch.seek = patient,
            // It has repaired itself: the frames it sends again on our connection, which
            // the media plane keeps, may be on their way.
            Ok(Response::Pong {
                flowing: Some(true),
            }) if waited && now < stalled_at + patience => watch.seek = patient,
            // A moment's silence from a parent that sends: the stall, if one comes,
            // decides.
            Ok(_) if early => watch.seek = Seek::Idle,
            // The parent has the stream but we do not: it dropped us, or the link is bad.
            Ok(_) => self.repair(stream, false),
            Err(_) if early => watch.seek = Seek::Unanswered,
            Err(_) => self.repair(stream, true),
        }
    }

    /// Find a new parent. A dead parent's slot at our backup (the grandparent) is ours
    /// to take; a live parent's is not, so then we search.
    fn repair(&mut self, stream: &StreamId, parent_dead: bool) {
        self.event(Event::Orphaned {
            stream: stream.clone(),
        });
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Some(a) = watch.attached.as_ref() else {
            self.search(stream, Purpose::Join);
            return;
        };
        if !parent_dead {
            let next = self.now + self.cfg.standby_retry;
            self.drop_standby(stream, next);
            let Some(watch) = self.watch_mut(stream) else {
                return;
            };
            let old = watch.attached.take().map(|a| a.ticket);
            self.release(old.into_iter().collect());
            self.emit(Output::StopPull {
                stream: stream.clone(),
            });
            // The children keep the path they have until we are attached again: ours
            // is unknown meanwhile, and theirs still names us, which keeps them from
            // being taken as our parent.
            self.announce_soon();
            self.search(stream, Purpose::Repair);
            return;
        }
        let dead = a.ticket.parent.id.clone();
        self.parent_dead(stream, &dead);
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        if let Some(call) = watch.early_claim.take() {
            // The claim sent when the parent fell silent answers for this one.
            watch.seek = Seek::Asking {
                queue: VecDeque::new(),
                call: Some(call),
                purpose: Purpose::Repair,
                then_search: true,
            };
            return;
        }
        let Some(a) = watch.attached.as_ref() else {
            return;
        };
        let queue: VecDeque<(Peer, Option<NodeId>)> = a
            .ticket
            .backup
            .clone()
            .map(|b| (b, Some(dead)))
            .into_iter()
            .collect();
        self.ask(stream, queue, Purpose::Repair, true);
    }

    /// What a dead parent ends besides the feed.
    fn parent_dead(&mut self, stream: &StreamId, dead: &NodeId) {
        // A standby that is not flowing yet, from the backup: the claim there makes
        // its ticket the parent's, so it is forgotten here, not ended.
        let now = self.now;
        self.forget_standby(stream, now);
        if self.supernode_id() == Some(dead) {
            // Our parent was our supernode too: find another now, not when a search
            // to the dead one times out.
            self.supernode_lost();
        }
    }

    /// The backup answered the claim sent when the parent fell silent. Granted: the
    /// parent is dead, and we play from the backup. Refused naming the sibling that
    /// took the slot first: the parent is dead, and we ask that sibling. Refused
    /// otherwise (the parent answered the backup): the claim is made again if the
    /// stall comes.
    fn early_claim_answered(&mut self, stream: &StreamId, result: Result<Response, CallError>) {
        let me = self.me.peer.id.clone();
        let Some(dead) = self
            .watch_mut(stream)
            .and_then(|w| w.parent().map(|p| p.id.clone()))
        else {
            if let Ok(Response::Ticket { ticket }) = result {
                self.release(vec![*ticket]);
            }
            return;
        };
        let next = match result {
            Ok(Response::Ticket { ticket }) => Ok(*ticket),
            Err(CallError::Refused(Refusal {
                instead: Some(heir),
                ..
            })) if heir.id != me => Err(heir),
            _ => return,
        };
        self.event(Event::Orphaned {
            stream: stream.clone(),
        });
        self.parent_dead(stream, &dead);
        match next {
            Ok(ticket) => self.attach(stream, ticket, Purpose::Repair),
            Err(heir) => self.ask(
                stream,
                VecDeque::from([(*heir, None)]),
                Purpose::Repair,
                true,
            ),
        }
    }

    /// Our parent ended our ticket, naming where to go: move, keeping the stream
    /// meanwhile.
    pub(crate) fn parent_ended(&mut self, stream: &StreamId, handover: Option<Peer>) {
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        let Some(a) = watch.attached.as_ref() else {
            return;
        };
        let leaving = a.ticket.parent.id.clone();
        let queue = handover.map(|p| (p, Some(leaving))).into_iter().collect();
        self.ask(stream, queue, Purpose::Move, true);
    }

    pub(crate) fn watch_timeout(&mut self) {
        self.standby_timeout();
        let now = self.now;
        let streams: Vec<StreamId> = self.streams.keys().cloned().collect();
        for stream in streams {
            let Some(watch) = self.watch_mut(&stream) else {
                continue;
            };
            let stuck = watch
                .attached
                .as_ref()
                .is_some_and(|a| !a.flowing && a.connect_by <= now);
            match watch.seek {
                Seek::Waiting { until, purpose } if until <= now => self.search(&stream, purpose),
                Seek::Pinging { deadline, .. } if deadline <= now => self.finish_pinging(&stream),
                Seek::Patient {
                    recheck,
                    stalled_at,
                } if recheck <= now => self.probe(&stream, stalled_at, true, false),
                // Its stream never started: repair, which drops the attachment.
                Seek::Idle if stuck => self.repair(&stream, false),
                Seek::Idle if watch.next_improve <= now => {
                    let depth = watch.path().len();
                    if depth >= 2 && watch.is_flowing() && self.leaving.is_none() {
                        self.search(&stream, Purpose::Improve);
                    } else {
                        let next = self.jitter(self.cfg.improve_interval);
                        if let Some(w) = self.watch_mut(&stream) {
                            w.next_improve = now + next;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    pub(crate) fn watch_deadline(&self) -> Option<Time> {
        let standby = self.cfg.standby && self.leaving.is_none();
        self.streams
            .values()
            .filter_map(|h| {
                let w = h.watch.as_ref()?;
                let next_standby = w.standby_due().filter(|_| standby);
                [w.deadline(), next_standby].into_iter().flatten().min()
            })
            .min()
    }
}
