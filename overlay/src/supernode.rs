//! The supernode role: a registry of children with leases and holdings, and search
//! by flooding among neighbour supernodes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proto::overlay::{
    Candidate, Holding, NodeCard, NodeId, Peer, Refusal, RefusalKind, Request, Response, StreamId,
};
use rand::seq::SliceRandom;

use crate::holdings::Holdings;
use crate::node::{CallError, Node, Pending, RequestId, Target};
use crate::Time;

/// Query ids are remembered this long: longer than any search can last.
const SEEN_FOR: Duration = Duration::from_secs(30);
/// Most holdings in one announcement, and most ancestors in one path.
pub(crate) const MAX_HOLDINGS: usize = 64;
pub const MAX_PATH: usize = 64;
/// Most neighbour supernodes kept.
const MAX_NEIGHBOURS: usize = 32;
/// Leases and remembered query ids are swept this often, not each at its own time:
/// a lease of 90 s may run a second over, and a supernode's next deadline costs
/// nothing to find.
const SWEEP: Duration = Duration::from_secs(1);

/// A read-only view of a supernode's registry, for the API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub children: Vec<(NodeCard, Vec<Holding>)>,
    pub neighbours: Vec<Peer>,
}

pub(crate) struct Supernode {
    children: BTreeMap<NodeId, Registered>,
    neighbours: Vec<Peer>,
    /// Every holding here, the supernode's own (it is a node like its children) and
    /// its children's, in one flat list: a search scans it instead of chasing each
    /// child's holdings and stream names through the heap, which at 10^5 boxes
    /// missed the cache at every step.
    holdings: Holdings,
    floods: HashMap<u64, Flood>,
    seen: HashMap<u64, Time>,
    pub next_refresh: Time,
    next_sweep: Time,
    /// The viewer counts the portal last heard, and when; a change is reported
    /// within [`VIEWERS_EVERY`] (at `report_at`), not at the next refresh only.
    reported: BTreeMap<StreamId, u32>,
    last_report: Time,
    report_at: Option<Time>,
}

/// Most often a supernode tells the portal that its viewer counts changed.
const VIEWERS_EVERY: Duration = Duration::from_secs(5);

struct Registered {
    card: NodeCard,
    lease_until: Time,
    since: Time,
}

struct Flood {
    origin: Origin,
    found: Vec<Candidate>,
    outstanding: usize,
    deadline: Time,
}

/// Who a search is for.
pub(crate) struct Requester {
    pub(crate) id: NodeId,
    /// Its slots for the stream: a parent with a weaker child counts.
    pub(crate) slots: u8,
    /// Whether it can be connected to: if not, only parents it can connect to count.
    pub(crate) reachable: bool,
    /// Whether it has IPv6, and so connects to parents reached there.
    pub(crate) ipv6: bool,
}

enum Origin {
    Remote(RequestId),
    /// The supernode's own search for a stream it wants.
    Local(StreamId),
}

impl Supernode {
    pub(crate) fn new(now: Time) -> Supernode {
        Supernode {
            children: BTreeMap::new(),
            neighbours: Vec::new(),
            holdings: Holdings::default(),
            floods: HashMap::new(),
            seen: HashMap::new(),
            next_refresh: now + Duration::from_secs(10),
            next_sweep: now + SWEEP,
            reported: BTreeMap::new(),
            last_report: now,
            report_at: None,
        }
    }

    /// The portal hears these viewer counts now.
    pub(crate) fn reporting(&mut self, viewers: &BTreeMap<StreamId, u32>, now: Time) {
        self.reported = viewers.clone();
        self.last_report = now;
    }

    /// The registry's holdings changed: the viewer counts may have.
    fn touched(&mut self, now: Time) {
        // Half a second later at least, so that a burst of changes is one report.
        if self.report_at.is_none() {
            self.report_at =
                Some((now + Duration::from_millis(500)).max(self.last_report + VIEWERS_EVERY));
        }
    }

    /// Boxes registered here (this one included) watching each stream: holding it,
    /// and not its source.
    pub(crate) fn viewers(&self) -> BTreeMap<StreamId, u32> {
        let mut viewers = BTreeMap::new();
        for (_, holding) in self.holdings.iter().filter(|(_, h)| !h.path.is_empty()) {
            *viewers.entry(holding.stream.clone()).or_default() += 1;
        }
        viewers
    }

    pub(crate) fn knows(&self, id: &NodeId) -> bool {
        self.neighbours.iter().any(|n| &n.id == id)
    }

    pub(crate) fn set_neighbours(&mut self, mut neighbours: Vec<Peer>) {
        neighbours.truncate(MAX_NEIGHBOURS);
        self.neighbours = neighbours;
    }
}

impl Node {
    /// `POST /supernode/neighbours`: a supernode that is new introduces itself, so
    /// that searches flood to it before the next refresh from the portal.
    pub(crate) fn sn_neighbour(&mut self, peer: Peer) -> Result<Response, Refusal> {
        let me = self.me.peer.id.clone();
        let sn = self.sn()?;
        if peer.id != me && !sn.knows(&peer.id) {
            let mut all = sn.neighbours.clone();
            all.push(peer);
            sn.set_neighbours(all);
        }
        Ok(Response::Done)
    }

    /// Children registered here, when this node is a supernode.
    pub fn registered(&self) -> Option<usize> {
        self.supernode.as_ref().map(|sn| sn.children.len())
    }

    /// The boxes registered here with what they last announced, and the neighbour
    /// supernodes, when this node is a supernode.
    pub fn registry(&self) -> Option<Registry> {
        let sn = self.supernode.as_ref()?;
        Some(Registry {
            children: sn
                .children
                .values()
                .map(|c| (c.card.clone(), sn.holdings.of(&c.card.peer.id)))
                .collect(),
            neighbours: sn.neighbours.clone(),
        })
    }

    fn sn(&mut self) -> Result<&mut Supernode, Refusal> {
        self.supernode
            .as_mut()
            .ok_or_else(|| Refusal::new(RefusalKind::Unavailable, "this node is not a supernode"))
    }

    pub(crate) fn sn_register(&mut self, card: NodeCard) -> Result<Response, Refusal> {
        let now = self.now;
        let lease = self.cfg.lease;
        let max = self.cfg.max_children;
        let me = self.me.peer.id.clone();
        let sn = self.sn()?;
        if card.peer.id == me {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "a supernode does not register with itself",
            ));
        }
        if !sn.children.contains_key(&card.peer.id) && sn.children.len() >= max {
            return Err(Refusal::new(
                RefusalKind::Full,
                format!("this supernode has its {max} children; try the next one"),
            ));
        }
        let entry = sn
            .children
            .entry(card.peer.id.clone())
            .or_insert(Registered {
                card: card.clone(),
                lease_until: now,
                since: now,
            });
        entry.card = card;
        entry.lease_until = now + lease;
        Ok(Response::Registered {
            lease_ms: lease.as_millis() as u64,
        })
    }

    pub(crate) fn sn_announce(
        &mut self,
        node: NodeId,
        holdings: Vec<Holding>,
    ) -> Result<Response, Refusal> {
        check_holdings(&holdings)?;
        let now = self.now;
        let lease = self.cfg.lease;
        let sn = self.sn()?;
        let child = sn.children.get_mut(&node).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                format!("node {node} is not registered here"),
            )
        })?;
        child.lease_until = now + lease;
        let peer = child.card.peer.clone();
        sn.holdings.set(&peer, holdings);
        sn.touched(now);
        Ok(Response::Done)
    }

    pub(crate) fn sn_unregister(&mut self, node: &NodeId) -> Result<Response, Refusal> {
        let now = self.now;
        let sn = self.sn()?;
        sn.children.remove(node);
        sn.holdings.forget(node);
        sn.touched(now);
        Ok(Response::Done)
    }

    pub(crate) fn sn_own_holdings(&mut self, holdings: Vec<Holding>) {
        let now = self.now;
        if let Some(sn) = self.supernode.as_mut() {
            sn.holdings.set(&self.me.peer, holdings);
            sn.touched(now);
        }
    }

    /// A search from a node or a neighbour supernode: answered now from the registry,
    /// or later, once the neighbours have answered or their time is up.
    pub(crate) fn sn_search(
        &mut self,
        id: RequestId,
        query: u64,
        stream: StreamId,
        ttl: u8,
        requester: Requester,
    ) -> Option<Result<Response, Refusal>> {
        if ttl > self.cfg.max_search_ttl {
            let max = self.cfg.max_search_ttl;
            return Some(Err(Refusal::new(
                RefusalKind::Invalid,
                format!("search TTL {ttl} is over {max}"),
            )));
        }
        if let Err(e) = self.sn() {
            return Some(Err(e));
        }
        let origin = Origin::Remote(id);
        self.start_flood(query, origin, &stream, ttl, &requester)
            .map(|candidates| Ok(Response::Candidates { candidates }))
    }

    /// This supernode's own search for a stream it wants; the result goes to
    /// `search_done` now or when the flood ends.
    pub(crate) fn sn_local_search(&mut self, stream: &StreamId, ttl: u8) {
        let query = rand::Rng::gen(&mut self.rng);
        let me = Requester {
            id: self.me.peer.id.clone(),
            // The slots this box has for the stream, as a child's search says (not
            // its `max_forwards`, which the budget may cut).
            slots: self.my_slots(stream),
            reachable: self.me.reachable,
            ipv6: self.me.ipv6,
        };
        if let Some(found) =
            self.start_flood(query, Origin::Local(stream.clone()), stream, ttl, &me)
        {
            self.search_done(stream, found);
        }
    }

    /// Candidates from the registry, and a flood to neighbours when TTL is left.
    /// Returns the answer if it is ready now.
    fn start_flood(
        &mut self,
        query: u64,
        origin: Origin,
        stream: &StreamId,
        ttl: u8,
        requester: &Requester,
    ) -> Option<Vec<Candidate>> {
        let now = self.now;
        let fanout = self.cfg.flood_fanout;
        let wait = self.cfg.flood_wait_per_hop * u32::from(ttl);
        let max = self.cfg.max_candidates;
        let sn = self.supernode.as_mut()?;
        if sn.seen.insert(query, now + SEEN_FOR).is_some() {
            return Some(Vec::new());
        }
        let found = sn.holdings.best(stream, requester, max, &mut self.rng);
        if ttl == 0 || sn.neighbours.is_empty() {
            return Some(rank(found, max));
        }
        let mut neighbours = sn.neighbours.clone();
        neighbours.shuffle(&mut self.rng);
        neighbours.truncate(fanout);
        let outstanding = neighbours.len();
        for peer in neighbours {
            let request = Request::Search {
                query,
                stream: stream.clone(),
                ttl: ttl - 1,
                requester: requester.id.clone(),
                requester_slots: requester.slots,
                requester_reachable: requester.reachable,
                requester_ipv6: requester.ipv6,
            };
            self.call_within(Target::Node(peer), request, Pending::Flood(query), wait);
        }
        let flood = Flood {
            origin,
            found,
            outstanding,
            deadline: now + wait,
        };
        self.supernode.as_mut()?.floods.insert(query, flood);
        None
    }

    pub(crate) fn on_flood_reply(&mut self, query: u64, result: Result<Response, CallError>) {
        let Some(flood) = self
            .supernode
            .as_mut()
            .and_then(|sn| sn.floods.get_mut(&query))
        else {
            return;
        };
        if let Ok(Response::Candidates { candidates }) = result {
            flood.found.extend(candidates);
        }
        flood.outstanding -= 1;
        if flood.outstanding == 0 {
            self.finish_flood(query);
        }
    }

    fn finish_flood(&mut self, query: u64) {
        let Some(flood) = self
            .supernode
            .as_mut()
            .and_then(|sn| sn.floods.remove(&query))
        else {
            return;
        };
        let found = rank(flood.found, self.cfg.max_candidates);
        match flood.origin {
            Origin::Remote(id) => self.respond(id, Ok(Response::Candidates { candidates: found })),
            Origin::Local(stream) => self.search_done(&stream, found),
        }
    }

    /// Leases, finished floods, remembered queries, the neighbour list.
    pub(crate) fn supernode_timeout(&mut self) {
        let now = self.now;
        let Some(sn) = self.supernode.as_mut() else {
            return;
        };
        if sn.next_sweep <= now {
            let before = sn.children.len();
            sn.children.retain(|_, c| c.lease_until > now);
            if sn.children.len() < before {
                let me = &self.me.peer.id;
                let children = &sn.children;
                sn.holdings
                    .retain(|peer| &peer.id == me || children.contains_key(&peer.id));
                sn.touched(now);
            }
            sn.seen.retain(|_, until| *until > now);
            sn.next_sweep = now + SWEEP;
        }
        let due: Vec<u64> = sn
            .floods
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        let mut refresh = sn.next_refresh <= now;
        if sn.report_at.is_some_and(|t| t <= now) {
            sn.report_at = None;
            refresh |= sn.viewers() != sn.reported;
        }
        if refresh {
            sn.next_refresh = now + self.cfg.neighbour_refresh;
        }
        for query in due {
            self.finish_flood(query);
        }
        if refresh && self.leaving.is_none() {
            self.refresh_neighbours();
        }
    }

    pub(crate) fn supernode_deadline(&self) -> Option<Time> {
        let sn = self.supernode.as_ref()?;
        let sweep = (!sn.children.is_empty() || !sn.seen.is_empty()).then_some(sn.next_sweep);
        [
            sweep,
            sn.floods.values().map(|f| f.deadline).min(),
            Some(sn.next_refresh),
            sn.report_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A leaving supernode's successor takes over its registry.
    pub(crate) fn sn_adopt(
        &mut self,
        children: Vec<(NodeCard, Vec<Holding>)>,
        neighbours: Vec<Peer>,
    ) -> Result<Response, Refusal> {
        if children.len() > self.cfg.max_children {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "more children than a supernode takes",
            ));
        }
        for (_, holdings) in &children {
            check_holdings(holdings)?;
        }
        self.become_supernode();
        let now = self.now;
        let lease = self.cfg.lease;
        let me = self.me.peer.id.clone();
        let sn = self.sn()?;
        for (card, holdings) in children {
            if card.peer.id != me {
                let id = card.peer.id.clone();
                sn.holdings.set(&card.peer, holdings);
                sn.children.insert(
                    id,
                    Registered {
                        card,
                        lease_until: now + lease,
                        since: now,
                    },
                );
            }
        }
        let mut all = sn.neighbours.clone();
        all.extend(
            neighbours
                .into_iter()
                .filter(|p| p.id != me && !sn.neighbours.contains(p)),
        );
        sn.set_neighbours(all);
        Ok(Response::Done)
    }

    /// On leave: the strongest, oldest child that can be connected to becomes
    /// supernode and the others move to it.
    pub(crate) fn sn_hand_off(&mut self) {
        let Some(sn) = self.supernode.take() else {
            return;
        };
        self.call(
            Target::Portal,
            Request::RetireSupernode {
                id: self.me.peer.id.clone(),
            },
            Pending::Quiet,
        );
        let successor = sn
            .children
            .values()
            .max_by_key(|c| {
                let card = &c.card;
                (
                    card.reachable,
                    card.max_forwards,
                    card.upload_kbps,
                    Reverse(c.since),
                )
            })
            .map(|c| c.card.peer.clone());
        let Some(successor) = successor else {
            return;
        };
        let others: Vec<(NodeCard, Vec<Holding>)> = sn
            .children
            .values()
            .filter(|c| c.card.peer.id != successor.id)
            .map(|c| (c.card.clone(), sn.holdings.of(&c.card.peer.id)))
            .collect();
        let rehome: Vec<Peer> = others.iter().map(|(c, _)| c.peer.clone()).collect();
        let request = Request::Adopt {
            children: others,
            neighbours: sn.neighbours.clone(),
        };
        let pending = Pending::Adopt {
            successor: successor.clone(),
            children: rehome,
        };
        self.call(Target::Node(successor), request, pending);
    }

    /// The successor has adopted our children (or not): send them there. Sent only
    /// once it answered, so that their registration never arrives first. Refused, the
    /// children find out when their lease here fails and join again.
    pub(crate) fn on_adopt(
        &mut self,
        successor: Peer,
        children: Vec<Peer>,
        result: Result<Response, CallError>,
    ) {
        if !matches!(result, Ok(Response::Done)) {
            return;
        }
        for peer in children {
            let request = Request::Rehome {
                supernode: successor.clone(),
            };
            self.call(Target::Node(peer), request, Pending::Quiet);
        }
    }
}

/// Shallowest first, then most free slots; one entry per node; at most `max`.
pub(crate) fn rank(mut found: Vec<Candidate>, max: usize) -> Vec<Candidate> {
    // Stable: equals keep their order, which each supernode shuffled.
    found.sort_by_key(|c| (c.holding.depth(), Reverse(c.holding.free)));
    let mut best: Vec<Candidate> = Vec::with_capacity(max.min(found.len()));
    for c in found {
        if best.len() == max {
            break;
        }
        if !best.iter().any(|b| b.peer.id == c.peer.id) {
            best.push(c);
        }
    }
    best
}

fn check_holdings(holdings: &[Holding]) -> Result<(), Refusal> {
    if holdings.len() > MAX_HOLDINGS {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            format!("more than {MAX_HOLDINGS} holdings"),
        ));
    }
    if holdings
        .iter()
        .any(|h| h.path.len() > MAX_PATH || h.free > h.slots)
    {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            format!("a holding has a path over {MAX_PATH} or more free slots than slots"),
        ));
    }
    Ok(())
}
