use std::time::Duration;

/// Limits and timings of the overlay. The defaults are for real boxes; the
/// simulation and the tests use the same ones unless they say otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Most children a supernode registers (the seed's hard-coded 100).
    pub max_children: usize,
    /// A child that has not announced for this long is forgotten.
    pub lease: Duration,
    /// How often a node announces its holdings when nothing changed; well under `lease`.
    pub announce_interval: Duration,
    /// TTL of a node's own searches, and the most a supernode accepts.
    pub search_ttl: u8,
    pub max_search_ttl: u8,
    /// TTL of the periodic search for a shallower parent: 1 asks the node's own
    /// supernode and its neighbours. With 0 (the own supernode only) the steady state
    /// is quieter (2.5 against 7–9 messages per box per minute at 10^3–10^4 boxes)
    /// but the tree ends a level or two deeper than ⌈log2(N+1)⌉+1.
    pub improve_ttl: u8,
    /// Most neighbour supernodes a search is flooded to.
    pub flood_fanout: usize,
    /// How long a supernode waits for its neighbours per remaining TTL.
    pub flood_wait_per_hop: Duration,
    /// Most candidates a search returns.
    pub max_candidates: usize,
    /// Candidates a node pings before asking for a ticket, and how long it waits.
    pub ping_candidates: usize,
    pub ping_timeout: Duration,
    /// A request with no answer after this long has failed.
    pub call_timeout: Duration,
    /// Retry delays after a search found no parent: doubling from `retry_min`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A pull that does not flow this long after its ticket counts as stalled.
    pub connect_timeout: Duration,
    /// How long a node waits for a parent that says it is repairing itself.
    pub repair_patience: Duration,
    /// How often an attached node looks for a shallower parent.
    pub improve_interval: Duration,
    /// A ticket whose child never connects, or stays disconnected this long, ends.
    pub ticket_idle: Duration,
    /// Longest graceful leave: then the node stops whether or not its children moved.
    pub leave_grace: Duration,
    /// How often a supernode renews its entry on the portal, reports its viewer counts
    /// and refreshes its neighbours.
    pub neighbour_refresh: Duration,
    /// Share of the upload budget given to forwards (the rest is headroom).
    pub upload_share: f64,
    /// Keep a hot-standby feed from the backup parent where it has a free slot (see
    /// `standby.rs`).
    pub standby: bool,
    /// How long a node waits before asking for a standby again, after a refusal or
    /// after its standby went.
    pub standby_retry: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_children: 100,
            lease: Duration::from_secs(90),
            announce_interval: Duration::from_secs(30),
            search_ttl: 2,
            max_search_ttl: 4,
            improve_ttl: 1,
            flood_fanout: 6,
            flood_wait_per_hop: Duration::from_millis(300),
            max_candidates: 8,
            ping_candidates: 3,
            ping_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(2),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(5),
            repair_patience: Duration::from_secs(6),
            improve_interval: Duration::from_secs(60),
            ticket_idle: Duration::from_secs(10),
            leave_grace: Duration::from_secs(5),
            neighbour_refresh: Duration::from_secs(60),
            upload_share: 0.8,
            standby: false,
            standby_retry: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Forward slots a node with this budget gives a stream of `stream_kbps`:
    /// `min(max_forwards, floor(upload_kbps × 0.8 / stream_kbps))`.
    pub fn slots(&self, max_forwards: u8, upload_kbps: u32, stream_kbps: u32) -> u8 {
        if stream_kbps == 0 {
            return max_forwards;
        }
        let by_budget = (f64::from(upload_kbps) * self.upload_share / f64::from(stream_kbps))
            .floor()
            .clamp(0.0, 255.0) as u8;
        by_budget.min(max_forwards)
    }
}
