//! The overlay's driver: runs this box's [`overlay::Node`] against real time, HTTP and
//! RTMP.
//!
//! The engine sits behind one mutex. Whoever has something to tell it (an API handler
//! with a peer's request, a finished HTTP call, the media plane, the timer task) locks
//! it, feeds the input, drains the outputs and carries them out after unlocking:
//! calls become HTTP requests on tasks of their own, answers go back to the waiting
//! handler, `Pull` and `Kick` go to the media plane. One timer task sleeps until the
//! engine's next deadline, or until an input may have moved it.

mod http;
mod pull;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use overlay::{Event, Input, Output, RequestId, Target, Time};
use proto::overlay::{NodeCard, Peer, Refusal, RefusalKind, Request, Response, StreamId};
use proto::portal::{StreamEntry, StreamUpdate};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

pub use http::PortalError;
use pull::SteeredPull;

use crate::{lock, Node};

/// Longest wait for the engine's answer to a peer's request (a search floods for up
/// to a second or two).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Recent events kept for `GET /status`.
const EVENTS_KEPT: usize = 32;
/// How often the measured bitrate of held streams is fed to the engine.
const RATE_INTERVAL: Duration = Duration::from_secs(10);

/// What the box does with a stream, as the admin asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Published here: this box is the root of the stream's tree.
    Source,
    /// Relayed for local players.
    Watch,
    /// Relayed only to help the network.
    Seed,
}

/// One line of the node's recent history, for `astral status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventLine {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub event: String,
}

/// The driver's state: the engine and what waits on it.
pub struct Control {
    state: Mutex<State>,
    wake: Notify,
    client: reqwest::Client,
    portal: Option<String>,
    started: Instant,
    me: Peer,
    left: watch::Sender<bool>,
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
}

impl Control {
    pub fn new(
        cfg: overlay::Config,
        card: NodeCard,
        portal: Option<String>,
        client_address: Option<IpAddr>,
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
            }),
            wake: Notify::new(),
            client: http::client(client_address),
            portal: portal.map(|p| p.trim_end_matches('/').to_owned()),
            started,
            me,
            left: watch::Sender::new(false),
            in_flight: watch::Sender::new(0),
            published: Mutex::default(),
            drafts: Mutex::default(),
            publish_changed: Notify::new(),
        }
    }

    /// This box as other boxes reach it.
    pub fn me(&self) -> &Peer {
        &self.me
    }

    pub fn portal(&self) -> Option<&str> {
        self.portal.as_deref()
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

    /// What the engine knows, for the API.
    pub fn report(&self) -> Report {
        let state = lock(&self.state);
        let engine = &state.engine;
        Report {
            me: self.me.clone(),
            running: state.running,
            supernode: engine.supernode_id().map(ToString::to_string),
            is_supernode: engine.is_supernode(),
            registered: engine.registered(),
            messages_sent: engine.messages_sent(),
            streams: engine
                .held()
                .into_iter()
                .map(|h| {
                    let role = state
                        .roles
                        .get(&h.stream)
                        .copied()
                        .unwrap_or(if h.is_source {
                            Role::Source
                        } else {
                            Role::Seed
                        });
                    HeldReport::new(h, role)
                })
                .collect(),
            events: state.events.iter().cloned().collect(),
        }
    }

    /// The boxes registered here and the neighbour supernodes, when this node is a
    /// supernode.
    pub fn registry(&self) -> Option<overlay::Registry> {
        lock(&self.state).engine.registry()
    }

    /// The ticket a child's player presents, if it is a live one for `stream`.
    pub fn ticket_for_token(
        &self,
        stream: &StreamId,
        token: &str,
    ) -> Option<proto::overlay::TicketId> {
        lock(&self.state).engine.ticket_for_token(stream, token)
    }

    /// Completes once a graceful leave is done.
    pub async fn left(&self) {
        let mut left = self.left.subscribe();
        let _ = left.wait_for(|left| *left).await;
    }
}

/// `GET /status`'s overlay part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub me: Peer,
    pub running: bool,
    /// The supernode this node registered with (itself when it is one).
    pub supernode: Option<String>,
    pub is_supernode: bool,
    /// Boxes registered here, when this node is a supernode.
    pub registered: Option<usize>,
    pub messages_sent: u64,
    pub streams: Vec<HeldReport>,
    pub events: Vec<EventLine>,
}

/// One stream in the tree, as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldReport {
    pub stream: StreamId,
    pub role: Role,
    pub parent: Option<String>,
    /// Ancestors, source first; its length is this node's depth.
    pub path: Vec<String>,
    pub depth: usize,
    pub flowing: bool,
    pub slots: u8,
    pub tickets: Vec<TicketReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketReport {
    pub id: String,
    pub child: String,
    pub connected: bool,
    pub moving: bool,
}

impl HeldReport {
    fn new(h: overlay::HeldStream, role: Role) -> HeldReport {
        HeldReport {
            depth: h.path.len(),
            stream: h.stream,
            role,
            parent: h.parent.map(|p| p.to_string()),
            path: h.path.iter().map(ToString::to_string).collect(),
            flowing: h.flowing,
            slots: h.slots,
            tickets: h
                .children
                .into_iter()
                .map(|t| TicketReport {
                    id: t.id.to_string(),
                    child: t.child.to_string(),
                    connected: t.connected,
                    moving: t.moving,
                })
                .collect(),
        }
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
        let control = &self.control;
        let outputs: Vec<Output> = {
            let mut state = lock(&control.state);
            f(&mut state.engine, control.now());
            std::iter::from_fn(|| state.engine.poll_output()).collect()
        };
        for output in outputs {
            self.execute(output);
        }
        control.wake.notify_one();
    }

    /// A peer's request: the engine's answer, or why there is none.
    pub async fn overlay_request(self: &Arc<Self>, request: Request) -> Result<Response, Refusal> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = lock(&self.control.state);
            state.next_request += 1;
            let id = RequestId(state.next_request);
            state.waiting.insert(id, tx);
            id
        };
        self.overlay_input(Input::Request { id, request });
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
            Output::StopPull { stream } => {
                if lock(&self.control.state).pulls.remove(&stream).is_some() {
                    tracing::info!(%stream, "stopped relaying");
                }
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
        };
        match event {
            Event::NoParent { .. } | Event::Orphaned { .. } => tracing::warn!("{line}"),
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
        let url = crate::rtmp::url::RtmpUrl::for_ticket(parent.rtmp, stream.as_str(), &token);
        let mut state = lock(&self.control.state);
        if let Some(pull) = state.pulls.get(&stream) {
            pull.steer(url);
            return;
        }
        let hub = self.hub_or_create(stream.as_str());
        match SteeredPull::spawn(self, &hub, stream.clone(), url, self.config.stall_timeout) {
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
        self.config
            .play_without_ticket
            .iter()
            .any(|net| net.contains(ip))
    }

    /// Joins the overlay: resolves the configured supernodes, then starts the engine.
    /// Streams published before this call are announced once it runs.
    pub async fn join_overlay(self: &Arc<Self>) {
        let mut supernodes = Vec::new();
        for addr in &self.config.supernodes {
            match http::status_peer(&self.control.client, *addr).await {
                Ok(peer) if peer.id != self.control.me.id => supernodes.push(peer),
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

    /// Publishes a stream that originates here into the overlay and the directory.
    pub fn publish(self: &Arc<Self>, stream: StreamId, listing: StreamUpdate) {
        let kbps = listing.bitrate_kbps;
        lock(&self.control.state)
            .roles
            .insert(stream.clone(), Role::Source);
        lock(&self.control.published).insert(stream.clone(), listing);
        self.control.publish_changed.notify_one();
        self.overlay_input(Input::Publish { stream, kbps });
    }

    pub fn unpublish(self: &Arc<Self>, stream: &StreamId) {
        lock(&self.control.state).roles.remove(stream);
        if lock(&self.control.published).remove(stream).is_some() {
            let node = Arc::clone(self);
            let stream = stream.clone();
            tokio::spawn(async move {
                if let Some(portal) = node.control.portal() {
                    if let Err(e) = http::unlist_stream(&node.control.client, portal, &stream).await
                    {
                        tracing::debug!(%stream, "cannot take the stream off the portal: {e}");
                    }
                }
            });
        }
        self.overlay_input(Input::Unpublish {
            stream: stream.clone(),
        });
    }

    /// Updates the directory listing of a stream published here, or to be.
    pub fn relist(
        &self,
        stream: &StreamId,
        title: Option<String>,
        description: Option<String>,
    ) -> Result<StreamUpdate, RelistError> {
        let mut published = lock(&self.control.published);
        let mut drafts = lock(&self.control.drafts);
        let listing = published
            .get_mut(stream)
            .or_else(|| drafts.get_mut(stream))
            .ok_or(RelistError::Unknown)?;
        let mut updated = listing.clone();
        if let Some(title) = title {
            updated.title = title;
        }
        if let Some(description) = description {
            updated.description = description;
        }
        updated.check().map_err(RelistError::Invalid)?;
        *listing = updated.clone();
        drop((published, drafts));
        self.control.publish_changed.notify_one();
        Ok(updated)
    }

    /// Keeps the listing of a stream given a publish key, for when it goes live.
    pub(crate) fn draft(&self, stream: StreamId, listing: StreamUpdate) {
        lock(&self.control.drafts).insert(stream, listing);
    }

    /// The directory listing of a stream published here.
    pub fn listing(&self, stream: &StreamId) -> Option<StreamUpdate> {
        lock(&self.control.published).get(stream).cloned()
    }

    /// Starts relaying `stream` for local players (`Role::Watch`) or for the network
    /// (`Role::Seed`). The portal's directory names its source and bitrate.
    pub async fn watch(self: &Arc<Self>, stream: StreamId, role: Role) -> Result<(), WatchError> {
        if !self.control.is_running() {
            return Err(WatchError::NoOverlay);
        }
        {
            let mut state = lock(&self.control.state);
            if state.engine.held().iter().any(|h| h.stream == stream) {
                if state.roles.get(&stream) != Some(&Role::Source) {
                    state.roles.insert(stream, role);
                }
                return Ok(());
            }
        }
        let entry = match self.control.portal() {
            Some(portal) => Some(http::stream_entry(&self.control.client, portal, &stream).await?),
            None => None,
        };
        let (source, kbps) = match entry {
            Some(StreamEntry {
                source,
                bitrate_kbps,
                ..
            }) => (Some(source), bitrate_kbps),
            None => (None, 0),
        };
        if source.as_ref().is_some_and(|s| s.id == self.control.me.id) {
            return Err(WatchError::OwnStream);
        }
        self.hub_or_create(stream.as_str());
        lock(&self.control.state).roles.insert(stream.clone(), role);
        self.overlay_input(Input::Watch {
            stream,
            kbps,
            source,
        });
        Ok(())
    }

    /// Stops relaying a watched or seeded stream; false if it was neither.
    pub fn unwatch(self: &Arc<Self>, stream: &StreamId) -> bool {
        let known = {
            let mut state = lock(&self.control.state);
            match state.roles.get(stream) {
                Some(Role::Watch | Role::Seed) => {
                    state.roles.remove(stream);
                    true
                }
                _ => false,
            }
        };
        if known {
            self.overlay_input(Input::Unwatch {
                stream: stream.clone(),
            });
        }
        known
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

/// Why a listing could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum RelistError {
    #[error("the stream is not published here")]
    Unknown,
    #[error("{0}")]
    Invalid(String),
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("this node is not in an overlay: give it --portal URL or --supernode ADDR")]
    NoOverlay,
    #[error("this node is the stream's source")]
    OwnStream,
    #[error(transparent)]
    Portal(#[from] PortalError),
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

/// Keeps this node's published streams listed on the portal: renews each entry every
/// `DIRECTORY_REFRESH_SECS`, at once when a listing changes.
pub async fn list_streams(node: Arc<Node>) {
    let Some(portal) = node.control.portal.clone() else {
        return;
    };
    let refresh = Duration::from_secs(proto::portal::DIRECTORY_REFRESH_SECS);
    loop {
        let listings: Vec<(StreamId, StreamUpdate)> = lock(&node.control.published)
            .iter()
            .map(|(s, l)| (s.clone(), l.clone()))
            .collect();
        for (stream, mut listing) in listings {
            if let Some(hub) = node.hub(stream.as_str()) {
                let snap = hub.snapshot();
                if snap.bitrate_kbps > 0 {
                    listing.bitrate_kbps = snap.bitrate_kbps;
                }
                if let Some(meta) = snap.meta.as_deref() {
                    listing.width = meta.width.unwrap_or(listing.width);
                    listing.height = meta.height.unwrap_or(listing.height);
                }
            }
            listing.source = node.control.me.clone();
            match http::list_stream(&node.control.client, &portal, &stream, &listing).await {
                Ok(()) => tracing::debug!(%stream, "listed on the portal"),
                Err(e) => tracing::warn!(%stream, "cannot list the stream on the portal: {e}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(refresh) => {}
            () = node.control.publish_changed.notified() => {}
        }
    }
}

/// The address other boxes reach `bound` at: `bound` itself unless it is a wildcard,
/// then `advertise`, then the address this box reaches the portal from.
pub fn advertised(
    bound: SocketAddr,
    advertise: Option<IpAddr>,
    portal: Option<&str>,
) -> anyhow::Result<SocketAddr> {
    if let Some(ip) = advertise {
        return Ok(SocketAddr::new(ip, bound.port()));
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let route = portal.and_then(|p| {
        let url = url::Url::parse(p).ok()?;
        let target = url.socket_addrs(|| Some(80)).ok()?.into_iter().next()?;
        let probe = std::net::UdpSocket::bind(SocketAddr::new(
            if target.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            },
            0,
        ))
        .ok()?;
        // Connecting a UDP socket sends nothing; it only picks the route.
        probe.connect(target).ok()?;
        probe.local_addr().ok()
    });
    match route {
        Some(local) => Ok(SocketAddr::new(local.ip(), bound.port())),
        None => anyhow::bail!(
            "cannot tell which address other boxes reach this one at: set --advertise IP"
        ),
    }
}

impl Control {
    /// Stops every overlay pull (the node is stopping).
    pub fn stop_pulls(&self) {
        lock(&self.state).pulls.clear();
    }
}

impl Node {
    /// Publishes the box's own source into the overlay and the directory.
    pub fn publish_source(self: &Arc<Self>, source: &crate::config::SourceConfig) {
        let Ok(stream) = StreamId::new(source.stream.clone()) else {
            return;
        };
        let crate::config::SourceKind::TestPattern(pattern) = &source.kind;
        let listing = StreamUpdate {
            title: source.title.clone(),
            description: source.description.clone(),
            source: self.control.me.clone(),
            bitrate_kbps: pattern.bitrate_kbps,
            width: pattern.width,
            height: pattern.height,
        };
        self.publish(stream, listing);
    }

    /// An RTMP publisher (ffmpeg, OBS) started a stream here: publish it into the
    /// overlay while the returned guard lives.
    pub fn local_publish(self: &Arc<Self>, stream: &str) -> Option<PublishGuard> {
        if !self.control.is_running() {
            return None;
        }
        let stream = StreamId::new(stream).ok()?;
        let draft = lock(&self.control.drafts).get(&stream).cloned();
        let listing = draft.unwrap_or_else(|| StreamUpdate {
            title: stream.to_string(),
            description: String::new(),
            source: self.control.me.clone(),
            bitrate_kbps: 0,
            width: 0,
            height: 0,
        });
        self.publish(stream.clone(), listing);
        Some(PublishGuard {
            node: Arc::clone(self),
            stream,
        })
    }
}

/// Held while an RTMP publisher feeds a stream; dropping it unpublishes.
pub struct PublishGuard {
    node: Arc<Node>,
    stream: StreamId,
}

impl Drop for PublishGuard {
    fn drop(&mut self) {
        self.node.unpublish(&self.stream);
    }
}
