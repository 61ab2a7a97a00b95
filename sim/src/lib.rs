//! A deterministic simulation of the overlay at 10^4 to 10^6 nodes.
//!
//! It drives the very `overlay::Node` a box runs, one per simulated box, over a
//! modelled network: a one-way latency from each box's place on a map, requests
//! answered or refused as a live or dead box would, a portal that keeps the list of
//! supernodes, and a media plane reduced to who pulls from whom, so that a crash
//! starves a subtree, a stall is seen after the stall timeout, and a move is
//! make-before-break. One seed, one run: every random choice comes from it, and
//! events at the same millisecond run in the order they were made.
//!
//! Must not: read a clock (but to time its own progress lines), touch a socket, or
//! check anything the real node would not see. The figures it prints are measurements of the overlay code.

mod model;
mod queue;
mod report;

use std::collections::HashMap;
use std::time::Duration;

use overlay::{CallError, Input, Node, Output, RequestId, Target, Time};
use proto::overlay::{NodeCard, NodeId, Peer, Request, Response, StreamId, TicketId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use model::Params;
pub use report::Report;

use model::{Portal, STALL};
use queue::Queue;
use report::Stats;

/// The one stream of a simulation, and its bitrate.
const KBPS: u32 = 2500;

/// Runs a simulation and reports what it measured.
pub fn run(params: &Params) -> Report {
    let mut sim = Sim::new(params.clone());
    sim.run();
    sim.stats.report(&sim)
}

struct Box_ {
    engine: Node,
    alive: bool,
    pos: (f64, f64),
    /// When the engine wants `handle_timeout`: one queued timer at a time.
    wake: Time,
    /// The media link: parent box and the ticket it plays with.
    link: Option<(usize, TicketId)>,
    link_gen: u64,
    has_media: bool,
    lost_at: Option<Time>,
    stall_gen: u64,
    media_children: Vec<usize>,
    watching_since: Option<Time>,
    joined: bool,
    /// The crash that starved it, for "viewers affected".
    starved_by: Option<usize>,
}

enum Ev {
    Timer {
        node: usize,
        at: Time,
    },
    Request {
        from: usize,
        call: overlay::CallId,
        to: usize,
        request: Request,
    },
    Reply {
        to: usize,
        call: overlay::CallId,
        result: Result<Response, CallError>,
    },
    Portal {
        from: usize,
        call: overlay::CallId,
        request: Request,
    },
    LinkUp {
        child: usize,
        parent: usize,
        token: String,
        gen: u64,
    },
    StallCheck {
        node: usize,
        gen: u64,
    },
    Spawn,
    Churn,
    Sample,
}

pub(crate) struct Sim {
    params: Params,
    now: Time,
    /// Boxed: an event carries a whole request.
    queue: Queue<Box<Ev>>,
    rng: StdRng,
    boxes: Vec<Box_>,
    by_addr: HashMap<std::net::SocketAddr, usize>,
    requests: HashMap<(usize, RequestId), (usize, overlay::CallId)>,
    next_request: u64,
    portal: Portal,
    stream: StreamId,
    stats: Stats,
    trace: Trace,
}

/// Debugging output on stderr, chosen by environment variables once per run:
/// `ASTRAL_SIM_TRACE` (progress and churn), `ASTRAL_SIM_TRACE_EVENTS` (every engine
/// event), `ASTRAL_SIM_TRACE_NODE=I` (every input and output of box I).
#[derive(Default)]
struct Trace {
    progress: bool,
    /// Wall time since the run began, for the progress lines only.
    started: Option<std::time::Instant>,
    events: bool,
    node: Option<usize>,
}

impl Trace {
    fn from_env() -> Trace {
        Trace {
            progress: std::env::var_os("ASTRAL_SIM_TRACE").is_some(),
            started: Some(std::time::Instant::now()),
            events: std::env::var_os("ASTRAL_SIM_TRACE_EVENTS").is_some(),
            node: std::env::var("ASTRAL_SIM_TRACE_NODE")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

impl Sim {
    fn new(params: Params) -> Sim {
        let rng = StdRng::seed_from_u64(params.seed);
        Sim {
            params,
            now: Time::ZERO,
            queue: Queue::new(),
            rng,
            boxes: Vec::new(),
            by_addr: HashMap::new(),
            requests: HashMap::new(),
            next_request: 0,
            portal: Portal::default(),
            stream: StreamId::new("live").expect("valid"),
            stats: Stats::default(),
            trace: Trace::from_env(),
        }
    }

    fn at(&mut self, at: Time, ev: Ev) {
        self.queue.push(at.as_millis(), Box::new(ev));
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let at = self.now + d;
        self.at(at, ev);
    }

    fn run(&mut self) {
        let source = self.add_box(true);
        self.input(
            source,
            Input::Start {
                supernodes: Vec::new(),
            },
        );
        let stream = self.stream.clone();
        self.input(source, Input::Publish { stream, kbps: KBPS });
        let gap = self.params.join_window().as_millis() as u64 / self.params.nodes.max(1) as u64;
        for i in 0..self.params.nodes {
            self.at(Time(1000 + i as u64 * gap), Ev::Spawn);
        }
        let churn_start = self.params.churn_start();
        if self.params.churn > 0.0 {
            let first = churn_start + self.churn_interval();
            self.at(first, Ev::Churn);
        }
        self.at(Time(10_000), Ev::Sample);
        let end = self.params.end();
        while let Some((at, ev)) = self.queue.pop() {
            let at = Time(at);
            if at > end {
                break;
            }
            self.now = at;
            self.handle(*ev);
        }
        self.now = end;
        let mut stats = std::mem::take(&mut self.stats);
        stats.finish(self);
        self.stats = stats;
    }

    fn churn_interval(&mut self) -> Duration {
        let per_minute = self.params.nodes as f64 * self.params.churn / 100.0;
        let mean_ms = 60_000.0 / per_minute.max(1e-9);
        let ms = -mean_ms * (1.0 - self.rng.gen::<f64>()).ln();
        Duration::from_millis(ms.max(1.0) as u64)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Timer { node, at } => {
                let b = &mut self.boxes[node];
                if b.alive && b.wake == at {
                    b.wake = Time::NEVER;
                    b.engine.handle_timeout(at);
                    self.drain(node);
                    // A deadline handle_timeout leaves in the past would spin forever.
                    assert!(
                        self.boxes[node].wake > at || !self.boxes[node].alive,
                        "box {node} wants a timeout at {:?} again after handling it",
                        at
                    );
                }
            }
            Ev::Request {
                from,
                call,
                to,
                request,
            } => {
                if !self.boxes[to].alive {
                    let back = self.latency(to, from);
                    let result = Err(CallError::Unreachable("connection refused".into()));
                    self.reply_after(back, from, call, result);
                    return;
                }
                self.next_request += 1;
                let id = RequestId(self.next_request);
                self.requests.insert((to, id), (from, call));
                let from_id = self.boxes[from].engine.id().clone();
                self.input(
                    to,
                    Input::Request {
                        id,
                        from: from_id,
                        request,
                    },
                );
            }
            Ev::Reply { to, call, result } => {
                if self.boxes[to].alive {
                    self.input(to, Input::Reply { call, result });
                }
            }
            Ev::Portal {
                from,
                call,
                request,
            } => {
                let result = self.portal.handle(&request, self.now, &mut self.rng);
                let back = self.portal_latency(from);
                self.reply_after(back, from, call, result);
            }
            Ev::LinkUp {
                child,
                parent,
                token,
                gen,
            } => self.link_up(child, parent, &token, gen),
            Ev::StallCheck { node, gen } => {
                let b = &self.boxes[node];
                if b.alive && !b.has_media && b.stall_gen == gen && b.link.is_some() {
                    let stream = self.stream.clone();
                    self.input(node, Input::Stalled { stream });
                }
            }
            Ev::Spawn => self.spawn(),
            // The last interval drawn may end in the quiet minutes, which stay quiet.
            Ev::Churn if self.now >= self.params.churn_end() => {}
            Ev::Churn => {
                self.churn();
                let next = self.churn_interval();
                self.after(next, Ev::Churn);
            }
            Ev::Sample => {
                if self.trace.progress {
                    let alive = self.boxes.iter().filter(|b| b.alive).count();
                    let playing = self.boxes.iter().filter(|b| b.alive && b.has_media).count();
                    let wall = self.trace.started.map(|s| s.elapsed()).unwrap_or_default();
                    eprintln!(
                        "t={:>6}s wall={:.1}s queue={} messages={} alive={alive} playing={playing}",
                        self.now.as_millis() / 1000,
                        wall.as_secs_f64(),
                        self.queue.len(),
                        self.stats.messages
                    );
                }
                let mut stats = std::mem::take(&mut self.stats);
                stats.sample(self);
                self.stats = stats;
                self.after(Duration::from_secs(10), Ev::Sample);
            }
        }
    }

    fn reply_after(
        &mut self,
        d: Duration,
        to: usize,
        call: overlay::CallId,
        result: Result<Response, CallError>,
    ) {
        self.after(d, Ev::Reply { to, call, result });
    }

    fn add_box(&mut self, source: bool) -> usize {
        let i = self.boxes.len();
        let addr =
            std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8000));
        let rtmp =
            std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1935));
        let id = NodeId::new(format!("n{i}")).expect("valid id");
        let two = source || self.rng.gen::<f64>() < self.params.two_slot_share;
        let card = NodeCard {
            peer: Peer::new(id, addr, rtmp),
            max_forwards: 2,
            upload_kbps: if two { 7000 } else { 4000 },
            reachable: true,
            ipv6: false,
        };
        let cfg = overlay::Config {
            max_children: self.params.max_children,
            ..Default::default()
        };
        let seed = self.rng.gen();
        let engine = Node::new(cfg, card, seed, self.now);
        let pos = (self.rng.gen(), self.rng.gen());
        self.by_addr.insert(addr, i);
        self.boxes.push(Box_ {
            engine,
            alive: true,
            pos,
            wake: Time::NEVER,
            link: None,
            link_gen: 0,
            has_media: source,
            lost_at: None,
            stall_gen: 0,
            media_children: Vec::new(),
            watching_since: None,
            joined: source,
            starved_by: None,
        });
        i
    }

    fn spawn(&mut self) {
        let i = self.add_box(false);
        self.input(
            i,
            Input::Start {
                supernodes: Vec::new(),
            },
        );
        let source = self.boxes[0].engine.card().peer.clone();
        self.boxes[i].watching_since = Some(self.now);
        let stream = self.stream.clone();
        self.input(
            i,
            Input::Watch {
                stream,
                kbps: KBPS,
                source: Some(source),
            },
        );
    }

    /// One churn event: a box crashes or leaves, and a new one joins.
    fn churn(&mut self) {
        let alive: Vec<usize> = (1..self.boxes.len())
            .filter(|&i| self.boxes[i].alive)
            .collect();
        if alive.is_empty() {
            return;
        }
        let victim = alive[self.rng.gen_range(0..alive.len())];
        let crash = self.rng.gen::<bool>();
        if self.trace.progress {
            eprintln!(
                "t={}ms {} n{victim}: supernode {}, children {}",
                self.now.as_millis(),
                if crash { "crash" } else { "leave" },
                self.boxes[victim].engine.is_supernode(),
                self.boxes[victim].media_children.len()
            );
        }
        if crash || self.boxes[victim].engine.has_left() {
            self.crash(victim);
        } else {
            self.stats.leaves += 1;
            self.input(victim, Input::Leave);
        }
        self.spawn();
    }

    fn crash(&mut self, i: usize) {
        self.stats.crashes += 1;
        let affected_before = self.stats.affected;
        self.boxes[i].alive = false;
        if let Some((parent, ticket)) = self.boxes[i].link.take() {
            self.boxes[parent].media_children.retain(|&c| c != i);
            let stream = self.stream.clone();
            self.input(parent, Input::PlayerGone { stream, ticket });
        }
        let children = std::mem::take(&mut self.boxes[i].media_children);
        for c in children {
            self.boxes[c].link = None;
            self.lose_media(c, Some(i));
            // Its socket was reset: the pull notices at once.
            let stream = self.stream.clone();
            self.input(c, Input::Stalled { stream });
        }
        self.stats
            .affected_per_crash
            .push(self.stats.affected - affected_before);
    }

    /// Feeds an input to a box and carries out what it asks.
    fn input(&mut self, i: usize, input: Input) {
        if !self.boxes[i].alive {
            return;
        }
        if self.trace.node == Some(i) {
            eprintln!("  t={} n{i} <- {input:?}", self.now.as_millis());
        }
        self.boxes[i].engine.handle_input(self.now, input);
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        while let Some(output) = self.boxes[i].engine.poll_output() {
            self.output(i, output);
            if !self.boxes[i].alive {
                return;
            }
        }
        if let Some(t) = self.boxes[i].engine.poll_timeout() {
            if t != self.boxes[i].wake {
                self.boxes[i].wake = t;
                self.at(t.max(self.now), Ev::Timer { node: i, at: t });
            }
        }
    }

    fn output(&mut self, i: usize, output: Output) {
        if self.trace.node == Some(i) {
            eprintln!("  t={} n{i} -> {output:?}", self.now.as_millis());
        }
        match output {
            Output::Call { call, to, request } => {
                self.stats.messages += 1;
                match to {
                    Target::Portal => {
                        let d = self.portal_latency(i);
                        self.after(
                            d,
                            Ev::Portal {
                                from: i,
                                call,
                                request,
                            },
                        );
                    }
                    Target::Node(peer) => match self.by_addr.get(&peer.api).copied() {
                        Some(to) => {
                            let d = self.latency(i, to);
                            self.after(
                                d,
                                Ev::Request {
                                    from: i,
                                    call,
                                    to,
                                    request,
                                },
                            );
                        }
                        None => {
                            let result = Err(CallError::Unreachable("no such address".into()));
                            self.reply_after(Duration::from_millis(1), i, call, result);
                        }
                    },
                }
            }
            Output::Respond { id, result } => {
                if let Some((to, call)) = self.requests.remove(&(i, id)) {
                    let d = self.latency(i, to);
                    self.reply_after(d, to, call, result.map_err(CallError::Refused));
                }
            }
            Output::Pull { parent, token, .. } => {
                let Some(&p) = self.by_addr.get(&parent.api) else {
                    return;
                };
                self.boxes[i].link_gen += 1;
                let gen = self.boxes[i].link_gen;
                // TCP and RTMP handshakes, connect, createStream, play: about 3 round trips.
                let d = self.latency(i, p) * 6;
                self.after(
                    d,
                    Ev::LinkUp {
                        child: i,
                        parent: p,
                        token,
                        gen,
                    },
                );
            }
            Output::StopPull { .. } => self.cut(i, true),
            // The simulation runs without standbys (`Config::standby` is off).
            Output::Standby { .. } | Output::StopStandby { .. } | Output::Promote { .. } => {}
            // Every simulated box can be connected to: none is asked to dial.
            Output::Dial { .. } => {}
            Output::Kick { ticket, .. } => {
                let child = self.boxes[i].media_children.iter().copied().find(|&c| {
                    self.boxes[c]
                        .link
                        .is_some_and(|(p, t)| p == i && t == ticket)
                });
                if let Some(c) = child {
                    self.cut(c, false);
                    let stream = self.stream.clone();
                    self.input(c, Input::Stalled { stream });
                }
            }
            Output::Event(event) => {
                if self.trace.events {
                    eprintln!("    t={} n{i} {event:?}", self.now.as_millis());
                }
                self.stats.event(&event)
            }
            Output::Left => {
                self.cut(i, true);
                let children = std::mem::take(&mut self.boxes[i].media_children);
                for c in children {
                    self.boxes[c].link = None;
                    self.lose_media(c, None);
                    let stream = self.stream.clone();
                    self.input(c, Input::Stalled { stream });
                }
                self.boxes[i].alive = false;
            }
        }
    }

    fn link_up(&mut self, child: usize, parent: usize, token: &str, gen: u64) {
        if !self.boxes[child].alive || self.boxes[child].link_gen != gen {
            return;
        }
        let stream = self.stream.clone();
        let ticket = if self.boxes[parent].alive {
            let ticket = self.boxes[parent].engine.ticket_for_token(&stream, token);
            ticket.map(|(ticket, _)| ticket)
        } else {
            None
        };
        let Some(ticket) = ticket else {
            // Refused or nobody there: the pull fails at once.
            self.input(child, Input::Stalled { stream });
            return;
        };
        // Make before break: the old upstream goes only now.
        self.cut(child, true);
        self.boxes[child].link = Some((parent, ticket));
        self.boxes[parent].media_children.push(child);
        self.input(
            parent,
            Input::PlayerConnected {
                stream: stream.clone(),
                ticket,
            },
        );
        if self.boxes[parent].has_media {
            if self.boxes[child].has_media {
                self.input(child, Input::Flowing { stream });
            } else {
                self.gain_media(child);
            }
        }
    }

    /// Ends `child`'s media link; the parent sees its player go when `tell_parent`.
    fn cut(&mut self, child: usize, tell_parent: bool) {
        let Some((parent, ticket)) = self.boxes[child].link.take() else {
            return;
        };
        self.boxes[parent].media_children.retain(|&c| c != child);
        if tell_parent {
            let stream = self.stream.clone();
            self.input(parent, Input::PlayerGone { stream, ticket });
        }
        self.lose_media(child, None);
    }

    fn lose_media(&mut self, root: usize, crash: Option<usize>) {
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            let b = &mut self.boxes[i];
            if !b.has_media || !b.alive {
                continue;
            }
            b.has_media = false;
            b.lost_at = Some(self.now);
            b.stall_gen += 1;
            b.starved_by = crash;
            if crash.is_some() {
                self.stats.affected += 1;
            }
            let gen = b.stall_gen;
            stack.extend(b.media_children.iter().copied());
            self.after(STALL, Ev::StallCheck { node: i, gen });
        }
    }

    fn gain_media(&mut self, root: usize) {
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            let b = &mut self.boxes[i];
            if b.has_media || !b.alive {
                continue;
            }
            b.has_media = true;
            if let Some(lost) = b.lost_at.take() {
                let crashed = b.starved_by.take().is_some();
                self.stats.recovered(self.now - lost, crashed);
            } else if !b.joined {
                b.joined = true;
                if let Some(since) = b.watching_since {
                    self.stats.joined(self.now - since);
                }
            }
            stack.extend(b.media_children.iter().copied());
            let stream = self.stream.clone();
            self.input(i, Input::Flowing { stream });
        }
    }

    fn latency(&self, a: usize, b: usize) -> Duration {
        model::latency(self.boxes[a].pos, self.boxes[b].pos)
    }

    fn portal_latency(&self, a: usize) -> Duration {
        model::latency(self.boxes[a].pos, (0.5, 0.5))
    }
}
