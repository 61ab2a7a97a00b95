//! The overlay's driver: runs this box's [`overlay::Node`] against real time, HTTP and
//! RTMP.
//!
//! The engine sits behind one mutex. Whoever has something to tell it (an API handler
//! with a peer's request, a finished HTTP call, the media plane, the timer task) locks
//! it, feeds the input, drains the outputs and carries them out after unlocking:
//! calls become HTTP requests on tasks of their own, answers go back to the waiting
//! handler, `Pull` and `Kick` go to the media plane. One timer task sleeps until the
//! engine's next deadline, or until an input may have moved it.

pub(crate) mod http;
mod place;
mod pull;
mod report;
mod seals;
mod streams;
mod viewers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use overlay::{Event, Input, Output, RequestId, Target, Time};
use proto::overlay::{NodeCard, Peer, Refusal, RefusalKind, Request, Response, StreamId};
use proto::portal::StreamUpdate;
use rand::RngCore;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

pub use http::PortalError;
pub use place::{forget_place, report_place};
use pull::{SteeredPull, Upstream};
pub use report::{EventLine, HeldReport, Report, TicketReport};
pub use streams::{drop_idle_views, list_streams, PublishGuard, RelistError, Role, WatchError};
pub use viewers::{TicketRefused, ViewerSlot, UNUSED_FOR as VIEWER_TICKET_LIFETIME};

use crate::{lock, Node};

/// Longest wait for the engine's answer to a peer's request (a search floods for up
/// to a second or two).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Recent events kept for `GET /status`.
const EVENTS_KEPT: usize = 32;
/// How often the measured bitrate of held streams is fed to the engine.
const RATE_INTERVAL: Duration = Duration::from_secs(10);

/// The driver's state: the engine and what waits on it.
pub struct Control {
    state: Mutex<State>,
    wake: Notify,
    pub(crate) client: http::Client,
    portal: Option<String>,
    started: Instant,
    /// This box as others reach it: set once more before it joins (`readdress`).
    me: Mutex<Peer>,
    /// Whether the box has IPv6 (`crate::reach::ipv6`).
    ipv6: std::sync::atomic::AtomicBool,
    /// The name the owner gave the box, for the map.
    name: String,
    left: watch::Sender<bool>,
    /// Set once a graceful leave begins: the box no longer reports its place.
    leaving: std::sync::atomic::AtomicBool,
    /// Calls on their way; a leaving node waits for its goodbyes to arrive.
    in_flight: watch::Sender<usize>,
    /// Streams published here, with their directory listing.
    published: Mutex<BTreeMap<StreamId, StreamUpdate>>,
    /// Listings of streams given a publish key, for when their publisher comes.
    drafts: Mutex<BTreeMap<StreamId, StreamUpdate>>,
    publish_changed: Notify,
}

struct State {
    engine: overlay::Node,
    waiting: HashMap<RequestId, oneshot::Sender<Result<Response, Refusal>>>,
    next_request: u64,
    roles: BTreeMap<StreamId, Role>,
    pulls: BTreeMap<StreamId, SteeredPull>,
    /// Media connections of children, by ticket: dropping the sender ends one.
    players: HashMap<(StreamId, proto::overlay::TicketId), (u64, oneshot::Sender<()>)>,
    next_player: u64,
    events: VecDeque<EventLine>,
    running: bool,
    viewers: viewers::Viewers,
}

impl Control {
    pub fn new(
        cfg: overlay::Config,
        card: NodeCard,
        name: String,
        portal: Option<String>,
        client_address: Option<IpAddr>,
        key: proto::identity::NodeKey,
        started: Instant,
    ) -> Control {
        let me = card.peer.clone();
        let seed = rand::rngs::OsRng.next_u64();
        Control {
            state: Mutex::new(State {
                engine: overlay::Node::new(cfg, card, seed, Time::ZERO),
                waiting: HashMap::new(),
                next_request: 0,
                roles: BTreeMap::new(),
                pulls: BTreeMap::new(),
                players: HashMap::new(),
                next_player: 0,
                events: VecDeque::new(),
                running: false,
                viewers: viewers::Viewers::default(),
            }),
            wake: Notify::new(),
            client: http::Client::new(client_address, key),
            portal: portal.map(|p| p.trim_end_matches('/').to_owned()),
            started,
            me: Mutex::new(me),
            ipv6: Default::default(),
            name,
            left: watch::Sender::new(false),
            leaving: std::sync::atomic::AtomicBool::new(false),
            in_flight: watch::Sender::new(0),
            published: Mutex::default(),
            drafts: Mutex::default(),
            publish_changed: Notify::new(),
        }
    }

    /// This box as other boxes reach it.
    pub fn me(&self) -> Peer {
        lock(&self.me).clone()
    }

    /// Gives the box the addresses others reach it at, and says whether it has IPv6,
    /// before it joins.
    pub fn readdress(&self, me: Peer, ipv6: bool) {
        self.ipv6.store(ipv6, std::sync::atomic::Ordering::Relaxed);
        *lock(&self.me) = me.clone();
        lock(&self.state).engine.readdress(me, ipv6);
    }

    /// Whether this box connects to boxes over IPv6 where they are reached there.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn portal(&self) -> Option<&str> {
        self.portal.as_deref()
    }

    /// The HTTP client calls to peers and the portal leave from.
    pub(crate) fn client(&self) -> &http::Client {
        &self.client
    }

    /// Puts the node in the overlay: from now on it takes watches and publications,
    /// which the engine keeps until it has joined.
    pub fn enable(&self) {
        lock(&self.state).running = true;
    }

    /// Whether this node is in an overlay (it has a portal or supernodes).
    pub fn is_running(&self) -> bool {
        lock(&self.state).running
    }

    fn now(&self) -> Time {
        Time::from_millis(self.started.elapsed().as_millis() as u64)
    }

    /// The boxes registered here and the neighbour supernodes, when this node is a
    /// supernode.
    pub fn registry(&self) -> Option<overlay::Registry> {
        lock(&self.state).engine.registry()
    }

    /// The ticket a child's player presents, if it is a live one for `stream`.
    /// The ticket of `stream` with this token, and the child box it was granted to.
    pub fn ticket_for_token(
        &self,
        stream: &StreamId,
        token: &str,
    ) -> Option<(proto::overlay::TicketId, proto::overlay::NodeId)> {
        let state = lock(&self.state);
        let (ticket, child) = state.engine.ticket_for_token(stream, token)?;
        Some((ticket, child.id.clone()))
    }

    /// The source of `stream`, as this box's place in its tree says (the first of its
    /// path); `None` before it has a parent, or at the source.
    pub fn source_of(&self, stream: &StreamId) -> Option<proto::overlay::NodeId> {
        lock(&self.state).engine.source_of(stream).cloned()
    }

    /// The parent `stream` plays from here, if it has one.
    pub fn parent_of(&self, stream: &StreamId) -> Option<proto::overlay::NodeId> {
        lock(&self.state).engine.parent_of(stream).cloned()
    }

    /// Tells the portal that a parent tampered with a stream. Best effort: a box that
    /// cannot reach the portal says so in its log, and has logged the tampering itself.
    pub async fn report_tamper(&self, report: proto::portal::TamperReport) {
        let Some(portal) = self.portal.as_deref() else {
            return;
        };
        match http::report_tamper(&self.client, portal, &self.me().id, &report).await {
            Ok(()) => tracing::info!(parent = %report.parent, "reported to the portal"),
            Err(e) => tracing::warn!(
                parent = %report.parent,
                "cannot report the tampering to the portal: {e}"
            ),
        }
    }

    /// The node's key, which its requests and its plays are signed with.
    pub fn key(&self) -> &proto::identity::NodeKey {
        self.client.key()
    }

    /// Completes once a graceful leave is done.
    pub async fn left(&self) {
        let mut left = self.left.subscribe();
        let _ = left.wait_for(|left| *left).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    /// Feeds the engine one input and carries out what it decided.
    pub fn overlay_input(self: &Arc<Self>, input: Input) {
        self.with_engine(|engine, now| engine.handle_input(now, input));
    }

    fn with_engine(self: &Arc<Self>, f: impl FnOnce(&mut overlay::Node, Time)) {
        self.with_state(|state, now| f(&mut state.engine, now));
    }

    /// Runs `f` on the driver's state under its lock, then carries out what the
    /// engine asked for meanwhile.
    fn with_state<R>(self: &Arc<Self>, f: impl FnOnce(&mut State, Time) -> R) -> R {
        let control = &self.control;
        let (result, outputs): (R, Vec<Output>) = {
            let mut state = lock(&control.state);
            let result = f(&mut state, control.now());
            let outputs = std::iter::from_fn(|| state.engine.poll_output()).collect();
            (result, outputs)
        };
        for output in outputs {
            self.execute(output);
        }
        control.wake.notify_one();
        result
    }

    /// A peer's request, signed by `from`: the engine's answer, or why there is none.
    pub async fn overlay_request(
        self: &Arc<Self>,
        from: proto::overlay::NodeId,
        request: Request,
    ) -> Result<Response, Refusal> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = lock(&self.control.state);
            state.next_request += 1;
            let id = RequestId(state.next_request);
            state.waiting.insert(id, tx);
            id
        };
        self.overlay_input(Input::Request { id, from, request });
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        lock(&self.control.state).waiting.remove(&id);
        match answer {
            Ok(Ok(result)) => result,
            _ => Err(Refusal::new(
                RefusalKind::Unavailable,
                "the node did not answer in time; try again",
            )),
        }
    }

    fn execute(self: &Arc<Self>, output: Output) {
        match output {
            Output::Call { call, to, request } => {
                let node = Arc::clone(self);
                self.control.in_flight.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    let control = &node.control;
                    let result =
                        http::call(&control.client, control.portal.as_deref(), &to, &request).await;
                    if let Err(e) = &result {
                        let to = match &to {
                            Target::Node(peer) => peer.id.to_string(),
                            Target::Portal => "the portal".into(),
                        };
                        tracing::debug!(%to, "{} failed: {e:?}", http::describe(&request));
                    }
                    node.overlay_input(Input::Reply { call, result });
                    node.control.in_flight.send_modify(|n| *n -= 1);
                });
            }
            Output::Respond { id, result } => {
                if let Some(tx) = lock(&self.control.state).waiting.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Output::Pull {
                stream,
                parent,
                token,
            } => self.steer_pull(stream, parent, token),
            Output::Standby {
                stream,
                parent,
                token,
            } => {
                let upstream = Upstream::new(&stream, parent, token, self.control.has_ipv6());
                let pulled = lock(&self.control.state)
                    .pulls
                    .get(&stream)
                    .map(|pull| pull.standby(Some(upstream)))
                    .is_some();
                if !pulled {
                    self.overlay_input(Input::StandbyLost { stream });
                }
            }
            Output::StopStandby { stream } => {
                if let Some(pull) = lock(&self.control.state).pulls.get(&stream) {
                    pull.standby(None);
                }
            }
            Output::Promote { stream } => {
                if let Some(pull) = lock(&self.control.state).pulls.get(&stream) {
                    pull.promote();
                }
            }
            Output::StopPull { stream } => {
                if lock(&self.control.state).pulls.remove(&stream).is_some() {
                    tracing::info!(%stream, "stopped relaying");
                }
            }
            Output::Dial {
                stream,
                ticket,
                child,
                nonce,
            } => {
                let node = Arc::clone(self);
                let bind = self.config().rtmp.ip();
                let span = tracing::info_span!("dial", %stream, child = %child.id);
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        tracing::info!(%ticket, to = %child.rtmp, "the child cannot connect here: dialling it");
                        let served = match crate::rtmp::dial::call_child(bind, child.rtmp, &nonce)
                            .await
                        {
                            Ok(socket) => crate::rtmp::server::serve_dialled(socket, node).await,
                            Err(e) => Err(e),
                        };
                        match served {
                            Ok(()) => tracing::debug!("closed"),
                            Err(e) => tracing::info!("closed: {e}"),
                        }
                    },
                    span,
                ));
            }
            Output::Kick { stream, ticket } => {
                if lock(&self.control.state)
                    .players
                    .remove(&(stream.clone(), ticket))
                    .is_some()
                {
                    tracing::info!(%stream, %ticket, "ended a child's connection");
                }
            }
            Output::Event(event) => self.record(event),
            Output::Left => {
                tracing::info!("left the overlay");
                self.control.left.send_replace(true);
            }
        }
    }

    fn record(&self, event: Event) {
        let line = match &event {
            Event::Registered { supernode } => format!("registered with supernode {supernode}"),
            Event::Promoted => "became a supernode".into(),
            Event::Attached {
                stream,
                parent,
                depth,
            } => format!("{stream}: attached to {parent} at depth {depth}"),
            Event::Orphaned { stream } => format!("{stream}: lost its parent, repairing"),
            Event::NoParent { stream, retry_in } => format!(
                "{stream}: no parent with a free slot; searching again in {:.1} s",
                retry_in.as_secs_f32()
            ),
            Event::Granted {
                stream,
                child,
                ticket,
            } => format!("{stream}: granted ticket {ticket} to {child}"),
            Event::Ended {
                stream,
                child,
                ticket,
            } => format!("{stream}: ticket {ticket} of {child} ended"),
            Event::Distrusted { stream, parent } => format!(
                "{stream}: parent {parent} sent what the source did not seal; \
                 keeping away from it"
            ),
        };
        match event {
            Event::NoParent { .. } | Event::Orphaned { .. } | Event::Distrusted { .. } => {
                tracing::warn!("{line}")
            }
            _ => tracing::info!("{line}"),
        }
        let mut state = lock(&self.control.state);
        if state.events.len() == EVENTS_KEPT {
            state.events.pop_front();
        }
        state.events.push_back(EventLine {
            at: unix_now(),
            event: line,
        });
    }

    fn steer_pull(self: &Arc<Self>, stream: StreamId, parent: Peer, token: String) {
        let upstream = Upstream::new(&stream, parent, token, self.control.has_ipv6());
        let mut state = lock(&self.control.state);
        if let Some(pull) = state.pulls.get(&stream) {
            pull.steer(upstream);
            return;
        }
        let hub = self.hub_or_create(stream.as_str());
        let stall = self.config().stall_timeout;
        match SteeredPull::spawn(self, &hub, stream.clone(), upstream, stall) {
            Ok(pull) => {
                state.pulls.insert(stream, pull);
            }
            Err(e) => {
                drop(state);
                tracing::warn!(%stream, "cannot relay: {e}");
                self.overlay_input(Input::Stalled { stream });
            }
        }
    }

    /// A child's player presented a live ticket. The returned receiver completes when
    /// the connection must end (the ticket ended, or a newer connection took it); the
    /// guard tells the engine when the player goes.
    pub fn child_connected(
        self: &Arc<Self>,
        stream: StreamId,
        ticket: proto::overlay::TicketId,
    ) -> (oneshot::Receiver<()>, ChildGuard) {
        let (tx, rx) = oneshot::channel();
        let serial = {
            let mut state = lock(&self.control.state);
            state.next_player += 1;
            let serial = state.next_player;
            // A reconnect with the same ticket replaces (and so ends) the old one.
            state.players.insert((stream.clone(), ticket), (serial, tx));
            serial
        };
        self.overlay_input(Input::PlayerConnected {
            stream: stream.clone(),
            ticket,
        });
        let guard = ChildGuard {
            node: Arc::clone(self),
            stream,
            ticket,
            serial,
        };
        (rx, guard)
    }

    /// Whether a player at `ip` may play without a ticket.
    pub fn plays_without_ticket(&self, ip: IpAddr) -> bool {
        self.config()
            .play_without_ticket
            .iter()
            .any(|net| net.contains(ip))
    }

    /// Joins the overlay: resolves the configured supernodes, then starts the engine.
    /// Streams published before this call are announced once it runs.
    pub async fn join_overlay(self: &Arc<Self>) {
        let mut supernodes = Vec::new();
        for addr in &self.config().supernodes {
            match http::status_peer(&self.control.client, *addr).await {
                Ok(peer) if peer.id != self.control.me().id => supernodes.push(peer),
                Ok(_) => {}
                Err(e) => tracing::warn!(%addr, "supernode from the config is unreachable: {e}"),
            }
        }
        tracing::info!(
            supernodes = supernodes.len(),
            portal = self.control.portal.as_deref().unwrap_or("none"),
            "joining the overlay"
        );
        self.overlay_input(Input::Start { supernodes });
    }

    /// Leaves the overlay gracefully: children are sent elsewhere, the parent and the
    /// supernode told. Returns when done, or after the engine's grace period.
    pub async fn leave_overlay(self: &Arc<Self>) {
        if !self.control.is_running() {
            return;
        }
        tracing::info!("leaving the overlay");
        let published: Vec<StreamId> = lock(&self.control.published).keys().cloned().collect();
        for stream in published {
            if let Some(portal) = self.control.portal() {
                let _ = http::unlist_stream(&self.control.client, portal, &stream).await;
            }
        }
        self.control
            .leaving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        place::forget_place(self).await;
        self.overlay_input(Input::Leave);
        let grace = self
            .control
            .state
            .lock()
            .map_or(Duration::from_secs(5), |s| s.engine.config().leave_grace);
        let mut in_flight = self.control.in_flight.subscribe();
        let done = async {
            self.control.left().await;
            let _ = in_flight.wait_for(|n| *n == 0).await;
        };
        if tokio::time::timeout(grace + Duration::from_secs(2), done)
            .await
            .is_err()
        {
            tracing::warn!("the graceful leave did not finish in time; stopping anyway");
        }
    }
}

/// Held while a child's player is connected; dropping it tells the engine.
pub struct ChildGuard {
    node: Arc<Node>,
    stream: StreamId,
    ticket: proto::overlay::TicketId,
    serial: u64,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let key = (self.stream.clone(), self.ticket);
        {
            let mut state = lock(&self.node.control.state);
            // A newer connection with the same ticket is not ours to forget.
            match state.players.get(&key) {
                Some((serial, _)) if *serial == self.serial => {
                    state.players.remove(&key);
                }
                Some(_) => return,
                None => {}
            }
        }
        self.node.overlay_input(Input::PlayerGone {
            stream: self.stream.clone(),
            ticket: self.ticket,
        });
    }
}

/// The engine's clock: sleeps until its next deadline, or until an input may have
/// moved it. Also feeds the measured bitrates of held streams.
pub async fn drive(node: Arc<Node>) {
    let mut next_rates = Instant::now() + RATE_INTERVAL;
    loop {
        let deadline = {
            let state = lock(&node.control.state);
            state
                .engine
                .poll_timeout()
                .map(|t| node.control.started + Duration::from_millis(t.as_millis()))
        };
        let deadline = deadline.map_or(next_rates, |d| d.min(next_rates));
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = node.control.wake.notified() => continue,
        }
        if Instant::now() >= next_rates {
            next_rates = Instant::now() + RATE_INTERVAL;
            node.feed_rates();
        }
        node.with_engine(|engine, now| {
            if engine.poll_timeout().is_some_and(|t| t <= now) {
                engine.handle_timeout(now);
            }
        });
    }
}

impl Node {
    fn feed_rates(self: &Arc<Self>) {
        let held: Vec<StreamId> = {
            let state = lock(&self.control.state);
            state.engine.held().into_iter().map(|h| h.stream).collect()
        };
        for stream in held {
            let Some(hub) = self.hub(stream.as_str()) else {
                continue;
            };
            let kbps = hub.snapshot().bitrate_kbps;
            if kbps > 0 {
                // Rounded up to 100 kbit/s, so that noise does not move the slots.
                let kbps = kbps.div_ceil(100) * 100;
                self.overlay_input(Input::StreamRate { stream, kbps });
            }
        }
    }
}

impl Control {
    /// Stops every overlay pull (the node is stopping).
    pub fn stop_pulls(&self) {
        lock(&self.state).pulls.clear();
    }
}
