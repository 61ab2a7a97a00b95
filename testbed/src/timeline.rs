//! The testbed over time: every box sampled a few times a second while something
//! happens to the network (joins, kills, leaves), and the faults the driver caused,
//! on one clock. From these come continuity over time, the forwards of every box at
//! every moment against its slots and upload, and each box's stalls (which the box
//! times itself, to the millisecond).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::{Continuity, Stall};

use crate::{get, Api, STREAM};

/// A box on the bridge answers within milliseconds; one that does not within this
/// long is down (a power cut takes its link), and the sample goes on without it.
const PROBE_LIMIT: Duration = Duration::from_millis(500);

/// One box as one sample saw it.
#[derive(Debug, Clone, Default)]
pub struct BoxState {
    /// The box's node id and the name it was started with.
    pub id: String,
    pub name: String,
    pub flowing: bool,
    /// Its parent, by name (by node id if the parent was never sampled).
    pub parent: Option<String>,
    /// Its hot-standby parent, when its feed flows.
    pub standby: Option<String>,
    pub depth: Option<u64>,
    pub is_supernode: bool,
    pub slots: u64,
    /// Children whose players are connected, and players from elsewhere: what the box
    /// sends the stream to.
    pub forwards: u64,
    pub seen: Continuity,
    /// A restart (or the stream dropped and watched again) starts the counts anew.
    pub uptime_secs: u64,
}

/// The node id and name a box's `/status` gives.
pub(crate) fn id_and_name(status: &serde_json::Value) -> Option<(String, String)> {
    let id = status["peer"]["id"].as_str()?;
    let name = status["name"].as_str()?;
    Some((id.to_owned(), name.to_owned()))
}

impl BoxState {
    /// Gives its parent and standby by name, where `names` (node id to name) knows them.
    pub(crate) fn name_parents(&mut self, names: &HashMap<String, String>) {
        for id in [&mut self.parent, &mut self.standby].into_iter().flatten() {
            if let Some(name) = names.get(id.as_str()) {
                id.clone_from(name);
            }
        }
    }

    /// Whether `later` counts on from this state, rather than from a restart.
    fn continues(&self, later: &BoxState) -> bool {
        later.uptime_secs >= self.uptime_secs && later.seen.frames >= self.seen.frames
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the timeline began.
    pub at: Duration,
    pub stream_kbps: u64,
    /// In the testbed's order; `None` for a box that did not answer.
    pub boxes: Vec<Option<BoxState>>,
}

/// A fault the driver caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of a box that forwards.
    Killed,
    /// A supernode's power cut: link down, then `kill -9`.
    SupernodeKilled,
    /// SIGTERM: the box leaves gracefully.
    Left,
    /// A killed box started again and watches again.
    Restarted,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub host: usize,
    pub fault: Fault,
}

/// Samples every box in the background until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
    start: Instant,
    start_unix_ms: u64,
}

/// A box's state from its API at `api`; `None` when it does not answer.
pub(crate) fn probe(api: &Api) -> Option<BoxState> {
    let status = api.get("/status", PROBE_LIMIT).ok()?;
    let overlay = &status["overlay"];
    let place = &overlay["streams"][0];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let connected = place["tickets"].as_array().map_or(0, |t| {
        t.iter().filter(|t| t["connected"] == true).count() as u64
    });
    let seen = api
        .get(&format!("/streams/{STREAM}"), PROBE_LIMIT)
        .ok()
        .and_then(|info| serde_json::from_value(info["continuity"].clone()).ok())
        .unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    Some(BoxState {
        id: text(&status["peer"]["id"]),
        name: text(&status["name"]),
        flowing: place["flowing"] == true && place["depth"].as_u64() >= Some(1),
        parent: place["parent"].as_str().map(String::from),
        standby: place["standby"].as_str().map(String::from),
        depth: place["depth"].as_u64(),
        is_supernode: overlay["is_supernode"] == true,
        slots: n(&place["slots"]),
        forwards: connected + n(&place["viewers"]),
        seen,
        uptime_secs: n(&status["uptime_secs"]),
    })
}

/// Every box at once, so that one sample is one moment: a box that has not answered
/// when the others have had their time is `None`, whatever its connection is waiting
/// for (its thread finishes on its own).
fn probe_all(apis: &[Api]) -> Vec<Option<BoxState>> {
    let (tx, rx) = mpsc::channel();
    for (i, api) in apis.iter().enumerate() {
        let (tx, api) = (tx.clone(), api.clone());
        std::thread::spawn(move || {
            let _ = tx.send((i, probe(&api)));
        });
    }
    drop(tx);
    // Two requests per box.
    let deadline = Instant::now() + PROBE_LIMIT * 2 + Duration::from_millis(100);
    let mut states: Vec<Option<BoxState>> = vec![None; apis.len()];
    while let Ok((i, state)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        states[i] = state;
    }
    states
}

impl Sampler {
    /// Samples the boxes at the APIs `boxes` every `period`, and the stream's bitrate
    /// at the source's API.
    pub(crate) fn start(boxes: Vec<Api>, source: String, period: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            // Boxes name each other by node id; the report names them as started.
            let mut names: HashMap<String, String> = HashMap::new();
            let status = get(&format!("{source}/status")).ok();
            names.extend(status.as_ref().and_then(id_and_name));
            while !flag.load(Ordering::Relaxed) {
                let began = Instant::now();
                let stream_kbps = get(&format!("{source}/streams/{STREAM}"))
                    .map_or(0, |i| i["bitrate_kbps"].as_u64().unwrap_or(0));
                let mut boxes = probe_all(&boxes);
                for b in boxes.iter().flatten() {
                    names.entry(b.id.clone()).or_insert_with(|| b.name.clone());
                }
                for b in boxes.iter_mut().flatten() {
                    b.name_parents(&names);
                }
                samples.push(Sample {
                    at: began - start,
                    stream_kbps,
                    boxes,
                });
                std::thread::sleep(period.saturating_sub(began.elapsed()));
            }
            samples
        });
        Sampler {
            stop,
            thread: Some(thread),
            start,
            start_unix_ms: unix_ms(),
        }
    }

    pub fn start_instant(&self) -> Instant {
        self.start
    }

    /// Stops sampling; `events` are the faults the driver caused meanwhile.
    pub fn finish(mut self, events: Vec<(Instant, usize, Fault)>) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let events = events
            .into_iter()
            .map(|(at, host, fault)| Event {
                at: at.saturating_duration_since(self.start),
                host,
                fault,
            })
            .collect();
        Timeline {
            samples,
            events,
            start_unix_ms: self.start_unix_ms,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Timeline {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    start_unix_ms: u64,
}

/// A box forwarding beyond its slots or its upload at one sample.
#[derive(Debug, Clone)]
pub struct Overrun {
    pub at: Duration,
    pub host: usize,
    pub forwards: u64,
    pub slots: u64,
    pub kbps: u64,
}

/// One box's stall, on the timeline's clock.
#[derive(Debug, Clone, Copy)]
pub struct BoxStall {
    pub host: usize,
    /// When it ended, since the timeline began.
    pub ended: Duration,
    pub length: Duration,
}

impl Timeline {
    /// Per interval between samples: the share of due frames that arrived on time
    /// for a player with `buffer_ms`, over every box that answered both times (and
    /// did not restart between them).
    pub fn continuity_over_time(&self, buffer_ms: u32) -> Vec<(Duration, f64)> {
        self.samples
            .windows(2)
            .filter_map(|w| {
                let (mut on_time, mut due) = (0u64, 0u64);
                for (a, b) in w[0].boxes.iter().zip(&w[1].boxes) {
                    let (Some(a), Some(b)) = (a, b) else { continue };
                    if !a.continues(b) {
                        continue;
                    }
                    let d = b.seen.since(&a.seen);
                    due += d.frames + d.missing;
                    on_time += d.frames - d.late(buffer_ms).min(d.frames);
                }
                (due > 0).then(|| (w[1].at, on_time as f64 / due as f64))
            })
            .collect()
    }

    /// What each box saw from `from` to the end, for the boxes that answered at both
    /// ends without restarting between: the surviving viewers.
    pub fn seen_per_box(&self, from: Duration) -> Vec<(usize, Continuity)> {
        let (Some(first), Some(last)) = (
            self.samples.iter().find(|s| s.at >= from),
            self.samples.last(),
        ) else {
            return Vec::new();
        };
        first
            .boxes
            .iter()
            .zip(&last.boxes)
            .enumerate()
            .filter_map(|(i, (a, b))| {
                let (a, b) = (a.as_ref()?, b.as_ref()?);
                a.continues(b).then(|| (i, b.seen.since(&a.seen)))
            })
            .collect()
    }

    /// Every sample at which a box sent the stream to more players than its slots, or
    /// more than its upload carries.
    pub fn overruns(&self, uplinks_kbps: &[u32]) -> Vec<Overrun> {
        let mut found = Vec::new();
        for s in &self.samples {
            for (i, b) in s.boxes.iter().enumerate() {
                let Some(b) = b else { continue };
                let kbps = b.forwards * s.stream_kbps;
                if b.forwards > b.slots || kbps > u64::from(uplinks_kbps[i]) {
                    found.push(Overrun {
                        at: s.at,
                        host: i,
                        forwards: b.forwards,
                        slots: b.slots,
                        kbps,
                    });
                }
            }
        }
        found
    }

    /// Every stall a box timed that ended while the timeline ran.
    pub fn stalls(&self) -> Vec<BoxStall> {
        let mut seen: Vec<(usize, Stall)> = Vec::new();
        for s in &self.samples {
            for (i, b) in s.boxes.iter().enumerate() {
                let Some(b) = b else { continue };
                for stall in &b.seen.stalls {
                    if stall.ended_unix_ms >= self.start_unix_ms && !seen.contains(&(i, *stall)) {
                        seen.push((i, *stall));
                    }
                }
            }
        }
        seen.into_iter()
            .map(|(host, s)| BoxStall {
                host,
                ended: Duration::from_millis(s.ended_unix_ms - self.start_unix_ms),
                length: Duration::from_millis(s.ms),
            })
            .collect()
    }

    /// Every sample of every box as CSV, one line each, the boxes named `names`.
    pub fn csv(&self, names: &[String]) -> String {
        use std::fmt::Write;
        let mut out = String::from(
            "t_s,box,answered,flowing,parent,standby,depth,forwards,slots,frames,missing,late_500ms,late_1s,late_2s,behind_ms\n",
        );
        for s in &self.samples {
            for (name, b) in names.iter().zip(&s.boxes) {
                let t = s.at.as_secs_f64();
                let _ = match b {
                    None => writeln!(out, "{t:.2},{name},0,0,,,,,,,,,,,"),
                    Some(b) => writeln!(
                        out,
                        "{t:.2},{name},1,{},{},{},{},{},{},{},{},{},{},{},{}",
                        u8::from(b.flowing),
                        b.parent.as_deref().unwrap_or(""),
                        b.standby.as_deref().unwrap_or(""),
                        b.depth.map_or(String::new(), |d| d.to_string()),
                        b.forwards,
                        b.slots,
                        b.seen.frames,
                        b.seen.missing,
                        b.seen.late_500ms,
                        b.seen.late_1s,
                        b.seen.late_2s,
                        b.seen.behind_ms,
                    ),
                };
            }
        }
        out
    }

    /// How many boxes sat at each depth (from 1) at the last sample.
    pub fn depths(&self) -> Vec<usize> {
        let Some(last) = self.samples.last() else {
            return Vec::new();
        };
        let depths: Vec<u64> = last
            .boxes
            .iter()
            .flatten()
            .filter_map(|b| b.depth)
            .collect();
        let deepest = depths.iter().copied().max().unwrap_or(0);
        (1..=deepest)
            .map(|d| depths.iter().filter(|&&x| x == d).count())
            .collect()
    }
}

/// What a run with faults came to, from `from` (the faults' start) to the end.
#[derive(Debug, Clone)]
pub struct Summary {
    pub boxes: usize,
    pub kills: usize,
    pub supernode_kills: usize,
    pub leaves: usize,
    pub restarts: usize,
    /// Viewers that ran throughout, and their continuity for a 0.5, 1 and 2 s buffer.
    pub survivors: Vec<(usize, [f64; 3])>,
    /// Frames that never reached a surviving viewer.
    pub lost: u64,
    /// Every stall a box saw, longest last.
    pub stalls: Vec<BoxStall>,
    pub overruns: Vec<Overrun>,
    pub samples: usize,
    pub depths: Vec<usize>,
    /// Boxes playing with a hot standby at the last sample.
    pub with_standby: usize,
}

impl Timeline {
    pub fn summary(&self, from: Duration, uplinks_kbps: &[u32]) -> Summary {
        let count = |f: Fault| self.events.iter().filter(|e| e.fault == f).count();
        let seen = self.seen_per_box(from);
        let survivors = seen
            .iter()
            .map(|(i, c)| (*i, [500, 1000, 2000].map(|b| c.index(b))))
            .collect();
        let lost = seen.iter().map(|(_, c)| c.missing).sum();
        let mut stalls: Vec<BoxStall> = self
            .stalls()
            .into_iter()
            .filter(|s| s.ended >= from)
            .collect();
        stalls.sort_by_key(|s| s.length);
        Summary {
            boxes: uplinks_kbps.len(),
            kills: count(Fault::Killed),
            supernode_kills: count(Fault::SupernodeKilled),
            leaves: count(Fault::Left),
            restarts: count(Fault::Restarted),
            survivors,
            lost,
            stalls,
            overruns: self
                .overruns(uplinks_kbps)
                .into_iter()
                .filter(|o| o.at >= from)
                .collect(),
            samples: self.samples.iter().filter(|s| s.at >= from).count(),
            depths: self.depths(),
            with_standby: self.samples.last().map_or(0, |s| {
                s.boxes
                    .iter()
                    .flatten()
                    .filter(|b| b.standby.is_some())
                    .count()
            }),
        }
    }
}

/// Issue 7's goals at every box that runs throughout the faults: continuity at least
/// this for a player with a 1 s buffer...
pub const CONTINUITY_GOAL: f64 = 0.995;
/// ...and no wait for a frame longer than this.
pub const LONGEST_WAIT_GOAL: Duration = Duration::from_secs(2);

impl Summary {
    /// The surviving viewers whose continuity at 1 s falls short of the goal, with
    /// their continuity at 0.5, 1 and 2 s.
    pub fn short_of_goal(&self) -> impl Iterator<Item = &(usize, [f64; 3])> {
        self.survivors
            .iter()
            .filter(|(_, index)| index[1] < CONTINUITY_GOAL)
    }

    /// The waits for a frame longer than the goal.
    pub fn waits_over_goal(&self) -> impl Iterator<Item = &BoxStall> {
        self.stalls.iter().filter(|s| s.length > LONGEST_WAIT_GOAL)
    }

    /// The worst surviving viewer's continuity for buffer `k` (0: 0.5 s, 1: 1 s, 2: 2 s).
    pub fn worst(&self, k: usize) -> f64 {
        self.survivors.iter().map(|(_, c)| c[k]).fold(1.0, f64::min)
    }

    pub fn longest_stall(&self) -> Duration {
        self.stalls.last().map_or(Duration::ZERO, |s| s.length)
    }

    /// The table the testbed prints and docs/BENCHMARKS.md shows.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let q = |p: f64| {
            let n = self.stalls.len();
            if n == 0 {
                return 0;
            }
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            self.stalls[i].length.as_millis()
        };
        let median = |k: usize| {
            let mut v: Vec<f64> = self.survivors.iter().map(|(_, c)| c[k]).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(1.0)
        };
        let mut t = String::new();
        let _ = writeln!(t, "| figure | value | goal |");
        let _ = writeln!(t, "|---|---:|---|");
        let _ = writeln!(
            t,
            "| boxes; killed (relays) / supernodes killed / left / started again | {}; {} / {} / {} / {} | |",
            self.boxes, self.kills, self.supernode_kills, self.leaves, self.restarts
        );
        let _ = writeln!(t, "| surviving viewers | {} | |", self.survivors.len());
        for (k, buffer) in ["0.5 s", "1 s", "2 s"].iter().enumerate() {
            let _ = writeln!(
                t,
                "| continuity, {buffer} buffer: worst / median | {:.4} / {:.4} | {} |",
                self.worst(k),
                median(k),
                if k == 1 {
                    format!("≥ {CONTINUITY_GOAL}")
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            t,
            "| stalls ≥ 0.5 s at any box; p50 / p95 / longest (ms) | {}; {} / {} / {} | longest ≤ {} |",
            self.stalls.len(),
            q(0.5),
            q(0.95),
            q(1.0),
            LONGEST_WAIT_GOAL.as_millis()
        );
        let _ = writeln!(
            t,
            "| frames lost at surviving boxes; per stall | {}; {:.1} | 0 |",
            self.lost,
            self.lost as f64 / self.stalls.len().max(1) as f64
        );
        let _ = writeln!(
            t,
            "| samples with a box over its slots or upload | {} of {} | 0 |",
            self.overruns.len(),
            self.samples
        );
        let _ = writeln!(t, "| boxes per depth at the end | {:?} | |", self.depths);
        let _ = writeln!(
            t,
            "| boxes with a hot standby at the end | {} | |",
            self.with_standby
        );
        t
    }
}
