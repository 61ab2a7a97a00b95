//! How often other boxes may call this one. Keys are free, so a box that changed its
//! key for each request would pass any limit per key: every request is first counted
//! against its address, before its signature is even checked, and then searches and
//! ticket requests against the box that signed them.
//!
//! A household's boxes share one address behind NAT, and a supernode forwards the
//! searches of its whole area: the limits are far above what a well-behaved box
//! sends, and only stop floods. A refused request gets 429, the time to wait, and
//! changes nothing.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use proto::overlay::{NodeId, Request};

/// A rate: so many a second on average, and so many at once.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: u32,
    burst: u32,
}

/// Every request one address sends: an announce every 30 s, pings, tickets and
/// searches, for each box behind the address.
const PER_ADDRESS: Rate = Rate {
    per_second: 100,
    burst: 400,
};
/// A box's own searches (it searches when it joins, when a parent fails, with a
/// doubling back-off when none is found, and once a minute for a shallower parent).
const OWN_SEARCHES: Rate = Rate {
    per_second: 2,
    burst: 10,
};
/// Searches a neighbour supernode forwards for the boxes of its area.
const FORWARDED_SEARCHES: Rate = Rate {
    per_second: 50,
    burst: 200,
};
/// A child's ticket requests (a ticket, a standby, a retry after a refusal).
const TICKETS: Rate = Rate {
    per_second: 2,
    burst: 10,
};

/// Past this many keys, a limiter forgets those that are back to a full burst.
const SWEEP_ABOVE: usize = 10_000;

/// A refused request: what was limited, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub error: String,
    pub retry_after: Duration,
}

pub struct Limits {
    addresses: Limiter<IpAddr>,
    own_searches: Limiter<NodeId>,
    forwarded_searches: Limiter<NodeId>,
    tickets: Limiter<NodeId>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            addresses: Limiter::new("requests from this address", PER_ADDRESS),
            own_searches: Limiter::new("searches from this box", OWN_SEARCHES),
            forwarded_searches: Limiter::new("searches forwarded by this box", FORWARDED_SEARCHES),
            tickets: Limiter::new("ticket requests from this box", TICKETS),
        }
    }
}

impl Limits {
    /// Counts a request from `ip`, before its signature is checked.
    pub fn address(&self, ip: IpAddr) -> Result<(), Limited> {
        self.addresses.check(&ip.to_canonical())
    }

    /// Counts a search or a ticket request, signed by `signer`.
    pub fn request(&self, signer: &NodeId, request: &Request) -> Result<(), Limited> {
        match request {
            Request::Search { requester, .. } if requester == signer => {
                self.own_searches.check(signer)
            }
            Request::Search { .. } => self.forwarded_searches.check(signer),
            Request::Ticket { .. } => self.tickets.check(signer),
            _ => Ok(()),
        }
    }
}

struct Limiter<K: std::hash::Hash + Eq + Clone> {
    what: &'static str,
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<K>,
    next_sweep: Mutex<Instant>,
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    fn new(what: &'static str, rate: Rate) -> Limiter<K> {
        let nonzero = |n: u32| NonZeroU32::new(n).expect("rates are not zero");
        let quota = Quota::per_second(nonzero(rate.per_second)).allow_burst(nonzero(rate.burst));
        Limiter {
            what,
            rate,
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            next_sweep: Mutex::new(Instant::now()),
        }
    }

    fn check(&self, key: &K) -> Result<(), Limited> {
        self.sweep();
        self.limiter.check_key(key).map_err(|not_until| {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            Limited {
                error: format!(
                    "too many {}: at most {} a second, {} at once; try again in {} ms",
                    self.what,
                    self.rate.per_second,
                    self.rate.burst,
                    retry_after.as_millis().max(1)
                ),
                retry_after,
            }
        })
    }

    /// Forgets keys that are back to a full burst, at most once a second, so that a
    /// flood of new keys cannot grow the table for long.
    fn sweep(&self) {
        if self.limiter.len() <= SWEEP_ABOVE {
            return;
        }
        let mut next = self
            .next_sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if now >= *next {
            self.limiter.retain_recent();
            *next = now + Duration::from_secs(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::overlay::StreamId;

    fn search(requester: &NodeId) -> Request {
        Request::Search {
            query: 1,
            stream: StreamId::new("live").unwrap(),
            ttl: 1,
            requester: requester.clone(),
            requester_slots: 1,
            requester_reachable: true,
            requester_ipv6: false,
        }
    }

    #[test]
    fn a_burst_of_own_searches_is_taken_then_refused_with_the_wait() {
        let limits = Limits::default();
        let a = NodeId::new("a".repeat(32)).unwrap();
        let b = NodeId::new("b".repeat(32)).unwrap();
        for _ in 0..OWN_SEARCHES.burst {
            limits.request(&a, &search(&a)).unwrap();
        }
        let refused = limits.request(&a, &search(&a)).unwrap_err();
        assert!(refused.error.starts_with("too many searches from this box"));
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_millis(500));
        // Another box, and a supernode forwarding a's searches, are counted apart.
        limits.request(&b, &search(&b)).unwrap();
        limits.request(&b, &search(&a)).unwrap();
        // Ticket requests have a limit of their own.
        let ticket: Request = serde_json::from_value(serde_json::json!({
            "type": "ticket", "stream": "live", "path": null, "replaces": null,
            "child": {"peer": {"id": a, "api": "127.0.0.1:1", "rtmp": "127.0.0.1:2"},
                      "max_forwards": 1, "upload_kbps": 1000}
        }))
        .unwrap();
        for _ in 0..TICKETS.burst {
            limits.request(&a, &ticket).unwrap();
        }
        let refused = limits.request(&a, &ticket).unwrap_err();
        assert!(refused.error.starts_with("too many ticket requests"));
        // Other requests are not limited per box.
        limits.request(&a, &Request::Ping { stream: None }).unwrap();
    }

    #[test]
    fn addresses_are_counted_as_one_whatever_their_form() {
        let limits = Limits::default();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        for i in 0..PER_ADDRESS.burst {
            limits
                .address(if i % 2 == 0 { v4 } else { mapped })
                .unwrap();
        }
        assert!(limits.address(v4).is_err());
        assert!(limits.address("192.0.2.2".parse().unwrap()).is_ok());
    }
}
