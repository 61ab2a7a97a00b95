//! The hot-standby parent. With [`crate::Config::standby`], a node whose stream flows
//! searches for a second parent with a free slot, outside its parent's subtree (so
//! that the parent's failure cannot take both), asks it for a standby ticket and plays
//! the stream from there too. Both feeds carry the same source timestamps, and the hub
//! keeps the first copy of each frame, so when the parent fails the stream goes on
//! from the standby without a gap: the standby becomes the parent, and a new standby
//! is sought. A supernode, which searches its own registry, asks its backup (the
//! parent's parent) directly.
//!
//! A standby is a real forward, so it is granted only from a free slot, and it is the
//! first forward to go when a box needs that slot: standbys use upload that would
//! otherwise be idle, never a place in the tree.

use proto::overlay::{Candidate, NodeId, Peer, Request, Response, StreamId, Ticket};

use crate::membership::State;
use crate::node::{CallError, CallId, Node, Output, Pending, Target};
use crate::Time;

/// A node's standby for one stream.
#[derive(Default)]
pub(crate) struct Standby {
    feed: Option<Feed>,
    call: Option<CallId>,
    /// The search's other boxes with a free slot, shallowest first: asked in turn when
    /// one says no (its free slot went to a joiner or to another's standby), before
    /// the next search.
    others: Vec<Peer>,
    /// Not asked for before this.
    next: Time,
}

struct Feed {
    ticket: Ticket,
    flowing: bool,
}

impl Standby {
    pub(crate) fn parent(&self) -> Option<&NodeId> {
        self.feed
            .as_ref()
            .filter(|f| f.flowing)
            .map(|f| &f.ticket.parent.id)
    }

    pub(crate) fn ticket(&self) -> Option<&Ticket> {
        self.feed.as_ref().map(|f| &f.ticket)
    }

    /// The standby parent's place in the tree changed.
    pub(crate) fn set_path(&mut self, path: Vec<NodeId>, backup: Option<proto::overlay::Peer>) {
        if let Some(f) = self.feed.as_mut() {
            f.ticket.path = path;
            f.ticket.backup = backup;
        }
    }

    pub(crate) fn is_flowing(&self) -> bool {
        self.feed.as_ref().is_some_and(|f| f.flowing)
    }

    /// When a node without a standby asks for one next.
    pub(crate) fn deadline(&self) -> Option<Time> {
        (self.feed.is_none() && self.call.is_none()).then_some(self.next)
    }
}

impl Node {
    /// Looks for a standby where one is due: the stream flows, and the node is settled
    /// and not leaving.
    pub(crate) fn standby_timeout(&mut self) {
        if !self.cfg.standby || self.leaving.is_some() {
            return;
        }
        let now = self.now;
        let due: Vec<(StreamId, Option<Peer>)> = self
            .streams
            .iter()
            .filter_map(|(stream, held)| {
                let watch = held.watch.as_ref()?;
                let ticket = watch.ticket()?;
                let wanted = watch.standby_due().is_some_and(|t| t <= now);
                wanted.then(|| (stream.clone(), ticket.backup.clone()))
            })
            .collect();
        for (stream, backup) in due {
            let call = match (&self.member.state, backup) {
                (State::Member { supernode }, _) => {
                    let request = Request::Search {
                        query: rand::Rng::gen(&mut self.rng),
                        stream: stream.clone(),
                        ttl: self.cfg.search_ttl,
                        requester: self.me.peer.id.clone(),
                        requester_slots: 0,
                        requester_reachable: self.me.reachable,
                        requester_ipv6: self.me.ipv6,
                    };
                    let to = Target::Node(supernode.clone());
                    self.call(to, request, Pending::StandbySearch(stream.clone()))
                }
                (_, Some(backup)) => self.ask_standby(&stream, backup),
                (_, None) => {
                    let retry = self.cfg.standby_retry;
                    if let Some(w) = self.watch_mut(&stream) {
                        w.standby.next = now + retry;
                    }
                    continue;
                }
            };
            if let Some(w) = self.watch_mut(&stream) {
                w.standby.call = Some(call);
            }
        }
    }

    fn ask_standby(&mut self, stream: &StreamId, to: Peer) -> CallId {
        let path = self
            .watch_mut(stream)
            .and_then(|w| w.ticket())
            .map(|t| t.path.clone());
        let request = Request::Ticket {
            stream: stream.clone(),
            child: self.me.clone(),
            path,
            replaces: None,
            standby: true,
        };
        self.call(
            Target::Node(to),
            request,
            Pending::StandbyTicket(stream.clone()),
        )
    }

    /// Whether a box on `path` (its ancestors) can be our standby: not our parent and
    /// not below it, nor below us.
    fn standby_fits(&self, stream: &StreamId, peer: &NodeId, path: &[NodeId]) -> bool {
        let me = &self.me.peer.id;
        let parent = self
            .streams
            .get(stream)
            .and_then(|h| h.parent())
            .map(|p| p.id.clone());
        peer != me
            && parent
                .as_ref()
                .is_some_and(|p| p != peer && !path.contains(p))
            && !path.contains(me)
    }

    pub(crate) fn on_standby_search(
        &mut self,
        call: CallId,
        stream: &StreamId,
        result: Result<Response, CallError>,
    ) {
        let now = self.now;
        let retry = self.cfg.standby_retry;
        match self.watch_mut(stream) {
            Some(w) if w.standby.call == Some(call) => w.standby.call = None,
            _ => return,
        }
        let mut found: Vec<Candidate> = match result {
            Ok(Response::Candidates { candidates }) => candidates,
            _ => Vec::new(),
        };
        found.retain(|c| {
            c.holding.free > 0 && self.standby_fits(stream, &c.peer.id, &c.holding.path)
        });
        // Stable: the supernode's random order among equals stays.
        found.sort_by_key(|c| c.holding.depth());
        let others = found.into_iter().rev().map(|c| c.peer).collect();
        if let Some(w) = self.watch_mut(stream) {
            w.standby.others = others;
        }
        self.ask_next_standby(stream, now + retry);
    }

    /// Asks the next box the search found for a standby ticket; none left, the next
    /// search is at `next`.
    fn ask_next_standby(&mut self, stream: &StreamId, next: Time) {
        let Some(peer) = self.watch_mut(stream).and_then(|w| w.standby.others.pop()) else {
            self.drop_standby(stream, next);
            return;
        };
        let call = self.ask_standby(stream, peer);
        if let Some(w) = self.watch_mut(stream) {
            w.standby.call = Some(call);
        }
    }

    pub(crate) fn on_standby_ticket(
        &mut self,
        call: CallId,
        stream: &StreamId,
        result: Result<Response, CallError>,
    ) {
        let now = self.now;
        let retry = self.cfg.standby_retry;
        let asked = self
            .watch_mut(stream)
            .is_some_and(|w| w.standby.call == Some(call));
        if !asked {
            if let Ok(Response::Ticket { ticket }) = result {
                self.release(vec![*ticket]);
            }
            return;
        }
        let fits = |n: &Node, t: &Ticket| {
            t.stream == *stream
                && n.standby_fits(
                    stream,
                    &t.parent.id,
                    &t.path[..t.path.len().saturating_sub(1)],
                )
        };
        let ticket = match result {
            Ok(Response::Ticket { ticket }) if fits(self, &ticket) => *ticket,
            Ok(Response::Ticket { ticket }) => {
                // Our parent changed while we asked.
                self.release(vec![*ticket]);
                self.drop_standby(stream, now);
                return;
            }
            _ => {
                if let Some(w) = self.watch_mut(stream) {
                    w.standby.call = None;
                }
                self.ask_next_standby(stream, now + retry);
                return;
            }
        };
        let Some(watch) = self.watch_mut(stream) else {
            return;
        };
        watch.standby.call = None;
        watch.standby.others.clear();
        let (parent, token) = (ticket.parent.clone(), ticket.token.clone());
        watch.standby.feed = Some(Feed {
            ticket,
            flowing: false,
        });
        self.emit(Output::Standby {
            stream: stream.clone(),
            parent,
            token,
        });
    }

    pub(crate) fn standby_flowing(&mut self, stream: &StreamId) {
        if let Some(feed) = self.watch_mut(stream).and_then(|w| w.standby.feed.as_mut()) {
            feed.flowing = true;
        }
    }

    /// The standby's feed failed: it ends, and another is asked for later.
    pub(crate) fn standby_lost(&mut self, stream: &StreamId) {
        let next = self.now + self.cfg.standby_retry;
        self.drop_standby(stream, next);
    }

    /// Ends the standby, if any, and its ticket; the next is asked for at `next`.
    pub(crate) fn drop_standby(&mut self, stream: &StreamId, next: Time) {
        if let Some(ticket) = self.forget_standby(stream, next) {
            self.release(vec![ticket]);
        }
    }

    /// Stops the standby's feed without ending its ticket (its parent ended it, or
    /// is about to make it the parent's), which it returns; the next standby is asked
    /// for at `next`.
    pub(crate) fn forget_standby(&mut self, stream: &StreamId, next: Time) -> Option<Ticket> {
        let watch = self.watch_mut(stream)?;
        let feed = std::mem::replace(
            &mut watch.standby,
            Standby {
                next,
                ..Standby::default()
            },
        )
        .feed?;
        self.emit(Output::StopStandby {
            stream: stream.clone(),
        });
        Some(feed.ticket)
    }

    /// The parent stalled: if the standby flows, it is the parent from now on, with
    /// not a frame lost. Returns whether it took over.
    pub(crate) fn promote_standby(&mut self, stream: &StreamId) -> bool {
        let now = self.now;
        let me = self.me.clone();
        let Some(watch) = self.watch_mut(stream) else {
            return false;
        };
        if !watch.standby.is_flowing() {
            return false;
        }
        let feed = watch.standby.feed.take().expect("flowing");
        watch.standby.next = now;
        let parent = feed.ticket.parent.id.clone();
        let depth = feed.ticket.path.len();
        // The standby parent still counts us as a standby, the first forward to go:
        // asking it for the ticket we hold makes that a child's ticket.
        let confirm = Request::Ticket {
            stream: stream.clone(),
            child: me,
            path: Some(feed.ticket.path.clone()),
            replaces: None,
            standby: false,
        };
        let to = feed.ticket.parent.clone();
        let old = watch.promote(feed.ticket, now);
        self.release(old.into_iter().collect());
        self.emit(Output::Promote {
            stream: stream.clone(),
        });
        self.call(Target::Node(to), confirm, Pending::Confirm(stream.clone()));
        self.event(crate::node::Event::Attached {
            stream: stream.clone(),
            parent,
            depth,
        });
        self.paths_changed(stream);
        true
    }

    /// The promoted standby's parent answered: a ticket other than ours (it had
    /// let the standby go meanwhile, and granted a new one) is given back; ours
    /// stays, and a refusal shows when the pull is refused.
    pub(crate) fn on_confirm(&mut self, stream: &StreamId, result: Result<Response, CallError>) {
        if let Ok(Response::Ticket { ticket }) = result {
            let ours = self
                .watch_mut(stream)
                .and_then(|w| w.ticket())
                .is_some_and(|t| t.id == ticket.id);
            if !ours {
                self.release(vec![*ticket]);
            }
        }
    }

    /// Our parent or the standby's place changed: a standby that no longer fits (it
    /// is our parent now, or below it, or below us) ends, and another is sought.
    pub(crate) fn check_standby(&mut self, stream: &StreamId) {
        let now = self.now;
        let Some(t) = self
            .streams
            .get(stream)
            .and_then(|h| h.watch.as_ref()?.standby.ticket().cloned())
        else {
            return;
        };
        let ancestors = &t.path[..t.path.len().saturating_sub(1)];
        if !self.standby_fits(stream, &t.parent.id, ancestors) {
            self.drop_standby(stream, now);
        }
    }

    /// `DELETE /tickets/{id}` or `PUT /tickets/{id}` from our standby parent, if
    /// `ticket` is a standby's: the stream it belongs to.
    pub(crate) fn standby_of(
        &self,
        ticket: proto::overlay::TicketId,
        token: &str,
    ) -> Option<StreamId> {
        self.streams.iter().find_map(|(s, h)| {
            let t = h.watch.as_ref()?.standby.ticket()?;
            (t.id == ticket && t.token == token).then(|| s.clone())
        })
    }
}
