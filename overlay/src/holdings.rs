//! What the boxes registered at a supernode hold, kept for search.
//!
//! A supernode answers several searches a second, each over its hundred boxes. A
//! search reads only `ranks`: twelve bytes per holding, in one array, with names
//! replaced by hashes. The holdings themselves, with their names and paths, are
//! read for the few that make the answer. Scanning each child's holdings through
//! the heap instead missed the cache at every step and made 10^5 simulated boxes
//! four times slower.

use std::cmp::Reverse;
use std::hash::{Hash, Hasher};

use proto::overlay::{Candidate, Holding, NodeId, Peer, StreamId};

use crate::supernode::Requester;

#[derive(Default)]
pub(crate) struct Holdings {
    /// In the same order as `entries`.
    ranks: Vec<Rank>,
    entries: Vec<Entry>,
}

/// What ranking needs. `stream` hashes the stream's name, checked against the name
/// for the holdings that make an answer.
#[derive(Clone, Copy)]
struct Rank {
    stream: u32,
    depth: u8,
    free: u8,
    weakest_child: Option<u8>,
    reachable: bool,
    /// Reached over IPv6 (`Peer::rtmp_v6`).
    ipv6: bool,
}

struct Entry {
    /// Hashes of the node's id and a one-word Bloom filter of the path's ids.
    node: u64,
    ancestors: u64,
    peer: Peer,
    holding: Holding,
}

impl Holdings {
    /// What `peer` holds now, in place of what it held.
    pub(crate) fn set(&mut self, peer: &Peer, holdings: Vec<Holding>) {
        self.forget(&peer.id);
        let node = hash(&peer.id);
        for holding in holdings {
            self.ranks.push(Rank {
                stream: hash(&holding.stream) as u32,
                depth: holding.depth().min(usize::from(u8::MAX)) as u8,
                free: holding.free,
                weakest_child: holding.weakest_child,
                reachable: holding.reachable,
                ipv6: peer.rtmp_v6.is_some(),
            });
            self.entries.push(Entry {
                node,
                ancestors: holding.path.iter().fold(0, |bits, id| bits | bloom_bit(id)),
                peer: peer.clone(),
                holding,
            });
        }
    }

    pub(crate) fn forget(&mut self, node: &NodeId) {
        let key = hash(node);
        self.retain_entries(|e| e.node != key || e.peer.id != *node);
    }

    /// Keeps the holdings of the nodes `keep` accepts.
    pub(crate) fn retain(&mut self, keep: impl Fn(&Peer) -> bool) {
        self.retain_entries(|e| keep(&e.peer));
    }

    /// Order is not kept.
    fn retain_entries(&mut self, keep: impl Fn(&Entry) -> bool) {
        let mut i = 0;
        while i < self.entries.len() {
            if keep(&self.entries[i]) {
                i += 1;
            } else {
                self.entries.swap_remove(i);
                self.ranks.swap_remove(i);
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Peer, &Holding)> {
        self.entries.iter().map(|e| (&e.peer, &e.holding))
    }

    /// What `node` holds, as it last announced.
    pub(crate) fn of(&self, node: &NodeId) -> Vec<Holding> {
        self.iter()
            .filter(|(peer, _)| peer.id == *node)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// The best `max` holders of `stream` for `requester`: shallowest first, then
    /// most free slots, equals in random order, so that boxes joining together do
    /// not all ask the same parent. A holder must have a free slot, or a child
    /// with fewer slots than the requester's that the requester may displace; and
    /// for a requester that cannot be connected to, be one it can connect to.
    pub(crate) fn best(
        &self,
        stream: &StreamId,
        requester: &Requester,
        max: usize,
        rng: &mut impl rand::Rng,
    ) -> Vec<Candidate> {
        let key = hash(stream) as u32;
        let id = &requester.id;
        let (node, bit) = (hash(id), bloom_bit(id));
        // The requester and its descendants cannot be its parent. They are rarely
        // here (a repairing box's subtree): look for them only if the best list
        // turns out to hold one.
        let excluded = |i: usize| {
            let e = &self.entries[i];
            (e.node == node && e.peer.id == *id)
                || (e.ancestors & bit != 0 && e.holding.path.contains(id))
                || e.holding.stream != *stream
        };
        let mut best = self.scan(key, requester, max, rng, |_| false);
        if best.iter().any(|&i| excluded(i)) {
            best = self.scan(key, requester, max, rng, excluded);
        }
        best.into_iter()
            .map(|i| Candidate {
                peer: self.entries[i].peer.clone(),
                holding: self.entries[i].holding.clone(),
            })
            .collect()
    }

    /// One pass keeping the best `max` so far, with a random tie-breaker for equals.
    fn scan(
        &self,
        stream: u32,
        requester: &Requester,
        max: usize,
        rng: &mut impl rand::Rng,
        excluded: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        // Two boxes that cannot be connected to cannot connect to each other, unless
        // both have IPv6 and the holder is reached there.
        let open = self.ranks.iter().enumerate().filter(|(_, r)| {
            r.stream == stream
                && (r.free > 0 || r.weakest_child.is_some_and(|w| w < requester.slots))
                && (r.reachable || requester.reachable || (r.ipv6 && requester.ipv6))
        });
        // Depth, free slots, tie-breaker; and the index.
        type Order = (u8, Reverse<u8>, u32);
        let mut best: Vec<(Order, usize)> = Vec::with_capacity(max + 1);
        for (i, r) in open {
            let rank = (r.depth, Reverse(r.free));
            if best.len() == max && rank > (best[max - 1].0 .0, best[max - 1].0 .1) {
                continue;
            }
            let rank = (rank.0, rank.1, rng.gen::<u32>());
            let at = best.partition_point(|(b, _)| *b <= rank);
            if at >= max || excluded(i) {
                continue;
            }
            best.insert(at, (rank, i));
            best.truncate(max);
        }
        best.into_iter().map(|(_, i)| i).collect()
    }
}

fn hash(name: &impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

fn bloom_bit(id: &NodeId) -> u64 {
    1 << (hash(id) % 64)
}
