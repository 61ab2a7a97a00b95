//! What the simulation assumes about the world: the run's shape, latencies, the
//! portal.

use std::collections::HashMap;
use std::time::Duration;

use overlay::{CallError, Time};
use proto::overlay::{NodeId, Peer, Refusal, RefusalKind, Request, Response};
use rand::rngs::StdRng;
use rand::Rng;

/// The media plane's stall timeout (the node's `relay.stall_timeout_ms`).
pub(crate) const STALL: Duration = Duration::from_secs(1);
/// Supernodes the portal lists per answer.
const LISTED: usize = 8;
/// A supernode that has not refreshed its entry for this long is dropped: it
/// refreshes every `neighbour_refresh` (5 min).
const PORTAL_EXPIRY: Duration = Duration::from_secs(11 * 60);

/// `astral sim`: the run's size and shape.
#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Boxes joining (besides the source)
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Churn: percent of the boxes replaced per minute, half by crashes (kill -9),
    /// half by graceful leaves
    #[arg(long, default_value_t = 1.0)]
    pub churn: f64,
    /// Seed of every random choice: same seed, same report
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of boxes with two forward slots; the others have one
    #[arg(long, default_value_t = 0.25)]
    pub two_slot_share: f64,
    /// Most children per supernode
    #[arg(long, default_value_t = 100)]
    pub max_children: usize,
    /// Minutes of churn after the joins
    #[arg(long, default_value_t = 3)]
    pub churn_minutes: u64,
    /// Minutes without churn at the end, where the steady state is measured
    #[arg(long, default_value_t = 2)]
    pub quiet_minutes: u64,
    /// Seconds over which the boxes join [default: 1 ms a box, at least 30 s]
    #[arg(long)]
    pub join_secs: Option<u64>,
}

impl Params {
    /// Joins are spread over this window: 1 ms a box, at least 30 s.
    pub(crate) fn join_window(&self) -> Duration {
        self.join_secs.map_or(
            Duration::from_millis((self.nodes as u64).max(30_000)),
            Duration::from_secs,
        )
    }

    pub(crate) fn churn_start(&self) -> Time {
        Time(1000) + self.join_window() + Duration::from_secs(30)
    }

    pub(crate) fn churn_end(&self) -> Time {
        self.churn_start() + Duration::from_secs(60 * self.churn_minutes)
    }

    pub(crate) fn end(&self) -> Time {
        self.churn_end() + Duration::from_secs(60 * self.quiet_minutes)
    }
}

/// One-way latency between two places on a unit square: 2 ms plus 30 ms across.
pub(crate) fn latency(a: (f64, f64), b: (f64, f64)) -> Duration {
    let d = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    Duration::from_micros(2000 + (d * 30_000.0) as u64)
}

/// The portal's part in the overlay: the list of supernodes.
#[derive(Default)]
pub(crate) struct Portal {
    supernodes: Vec<Peer>,
    seen: HashMap<NodeId, Time>,
}

impl Portal {
    pub(crate) fn handle(
        &mut self,
        request: &Request,
        now: Time,
        rng: &mut StdRng,
    ) -> Result<Response, CallError> {
        let seen = &self.seen;
        self.supernodes.retain(|p| {
            seen.get(&p.id)
                .is_some_and(|t| now.since(*t) < PORTAL_EXPIRY)
        });
        match request {
            Request::Bootstrap => Ok(Response::Supernodes {
                supernodes: self.sample(None, rng),
            }),
            Request::PromoteSupernode { peer, .. } => {
                if self.seen.insert(peer.id.clone(), now).is_none() {
                    self.supernodes.push(peer.clone());
                }
                Ok(Response::Supernodes {
                    supernodes: self.sample(Some(&peer.id), rng),
                })
            }
            Request::RetireSupernode { id } => {
                self.seen.remove(id);
                self.supernodes.retain(|p| &p.id != id);
                Ok(Response::Done)
            }
            _ => Err(CallError::Refused(Refusal::new(
                RefusalKind::NotFound,
                "not a portal request",
            ))),
        }
    }

    fn sample(&self, except: Option<&NodeId>, rng: &mut StdRng) -> Vec<Peer> {
        let n = self.supernodes.len();
        if n <= LISTED + 1 {
            return self
                .supernodes
                .iter()
                .filter(|p| Some(&p.id) != except)
                .cloned()
                .collect();
        }
        let mut picked: Vec<Peer> = Vec::with_capacity(LISTED);
        while picked.len() < LISTED {
            let p = &self.supernodes[rng.gen_range(0..n)];
            if Some(&p.id) != except && !picked.iter().any(|q| q.id == p.id) {
                picked.push(p.clone());
            }
        }
        picked
    }
}
