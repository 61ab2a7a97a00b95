//! The Astral node: the daemon every box runs.
//!
//! A node holds one [`hub::Hub`] per stream and moves media between the hubs and the
//! outside: an RTMP server for publishers, players and child boxes, relay pulls from
//! upstream boxes, HTTP-FLV for browsers and VLC, and the box's own camera or test
//! pattern. The ReST API on the same HTTP port reports and steers all of it.
//!
//! This crate does IO and executes decisions; it does not make overlay decisions (which
//! parent, which child), and it never blocks the runtime: capture runs on its own thread,
//! hub locks are never held across an `.await`.

pub mod api;
pub mod auth;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
mod files;
pub mod firstboot;
pub mod hub;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod owner;
pub mod panel;
pub mod reach;
mod reconfigure;
pub mod rtmp;
mod service;
pub mod settings;
pub mod source;
mod stills;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use control::Control;
use proto::identity::NodeKey;
use proto::overlay::{NodeCard, Peer, StreamId};
use proto::{StreamInfo, StreamRole};
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::{Config, ConfigError, NodeArgs};
use hub::{Feed, Hub, HubError};
use metrics::Metrics;
use rtmp::pull::PullHandle;
use rtmp::url::RtmpUrl;

/// The shared state of a running node; every task holds an `Arc` of it.
pub struct Node {
    /// Replaced whole when the owner changes a setting (`PATCH /config`).
    config: Mutex<Arc<Config>>,
    /// The box's own source, when it has one.
    source: Mutex<Option<source::SourceHandle>>,
    /// Held while a settings change is applied, so that two apply one after the other.
    reconfiguring: Mutex<()>,
    metrics: Metrics,
    hubs: Mutex<BTreeMap<String, Arc<Hub>>>,
    pulls: Mutex<BTreeMap<String, PullHandle>>,
    started: Instant,
    control: Control,
    admin_token: String,
    /// Publish keys by stream: the config's, and those made through the API.
    stream_keys: Mutex<BTreeMap<String, String>>,
    /// Asked to leave and stop (`POST /leave`).
    stop: tokio::sync::Notify,
    stills: stills::Stills,
    /// The admin page's logins.
    pub sessions: auth::Sessions,
    /// Peers' signed requests and plays: each signature taken once.
    pub(crate) verifier: web::signed::Verifier,
    /// How often other boxes may call this one.
    pub(crate) limits: api::limits::Limits,
    /// Whether boxes beyond the router reach this one, and its port mappings.
    pub(crate) reach: reach::Reach,
    /// Pulls waiting for a parent to connect to this box (connection reversal).
    pub(crate) dials: rtmp::dial::Dials,
    /// Who manages the box from the portal, or its pairing code.
    pub(crate) owner: owner::Owner,
}

impl Node {
    /// The forward slots and the upload this box offers, and whether boxes beyond
    /// its router can connect to it: the config's slots, kept for boxes it dials
    /// while none can (connection reversal), or none with `reversal = false`.
    fn capacity(&self) -> (u8, u32, bool) {
        let config = self.config();
        let (max_forwards, upload_kbps) = config.capacity();
        let reachable = self.reach.can_be_reached();
        let max_forwards = if reachable || config.reversal || self.reach.reached_over_ipv6() {
            max_forwards
        } else {
            0
        };
        (max_forwards, upload_kbps, reachable)
    }

    /// Tells the overlay that `capacity` changed.
    pub(crate) fn capacity_changed(self: &Arc<Node>) {
        let (max_forwards, upload_kbps, reachable) = self.capacity();
        self.overlay_input(overlay::Input::Capacity {
            max_forwards,
            upload_kbps,
            reachable,
        });
    }

    /// Whether boxes beyond the router reach this one, as `GET /status` says it.
    pub fn reach(&self) -> reach::ReachReport {
        self.reach.report()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// A node reached by other boxes as `me`, signing with `key` (whose node id `me`
    /// has), whose admin calls need `admin_token`.
    pub fn new(config: Config, me: Peer, key: NodeKey, admin_token: String) -> Arc<Node> {
        let started = Instant::now();
        let data_dir = config.data_dir.clone();
        // Until the box knows whether others can reach it, the config's slots.
        let (max_forwards, upload_kbps) = config.capacity();
        let card = NodeCard {
            peer: me,
            max_forwards,
            upload_kbps,
            reachable: true,
            ipv6: false,
        };
        let control = Control::new(
            config.overlay.clone(),
            card,
            config.name.clone(),
            config.portal.clone(),
            client_address(&config),
            key,
            started,
        );
        let node = Arc::new(Node {
            stream_keys: Mutex::new(config.stream_keys.clone()),
            config: Mutex::new(Arc::new(config)),
            source: Mutex::default(),
            reconfiguring: Mutex::default(),
            metrics: Metrics::default(),
            hubs: Mutex::default(),
            pulls: Mutex::default(),
            started,
            control,
            admin_token,
            stop: tokio::sync::Notify::new(),
            stills: stills::Stills::default(),
            sessions: auth::Sessions::default(),
            verifier: web::signed::Verifier::default(),
            limits: api::limits::Limits::default(),
            reach: reach::Reach::default(),
            dials: rtmp::dial::Dials::default(),
            owner: owner::Owner::load(&data_dir),
        });
        // Streams this node knows it may carry exist from the start, so players may
        // connect before the publisher does.
        for stream in node.config().stream_keys.keys() {
            node.hub_or_create(stream);
        }
        node
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&lock(&self.config))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Whether `token` is this node's admin token.
    pub fn is_admin_token(&self, token: &str) -> bool {
        auth::constant_time_eq(token, &self.admin_token)
    }

    /// The key that publishes `stream`, if it may be published here.
    pub fn stream_key(&self, stream: &str) -> Option<String> {
        lock(&self.stream_keys).get(stream).cloned()
    }

    /// Makes a publish key for `stream` and keeps its directory listing; `None` if the
    /// stream has a key already.
    pub fn add_stream_key(
        &self,
        stream: &StreamId,
        listing: proto::portal::StreamUpdate,
    ) -> Option<String> {
        let mut keys = lock(&self.stream_keys);
        if keys.contains_key(stream.as_str()) {
            return None;
        }
        let key = auth::new_secret(16);
        keys.insert(stream.to_string(), key.clone());
        drop(keys);
        self.draft(stream.clone(), listing);
        self.hub_or_create(stream.as_str());
        Some(key)
    }

    /// Asks the node to leave the overlay and stop, as SIGTERM does.
    pub fn request_stop(&self) {
        self.stop.notify_one();
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn hub(&self, stream: &str) -> Option<Arc<Hub>> {
        lock(&self.hubs).get(stream).cloned()
    }

    pub fn hub_or_create(&self, stream: &str) -> Arc<Hub> {
        let mut hubs = lock(&self.hubs);
        let hub = hubs
            .entry(stream.to_owned())
            .or_insert_with(|| Hub::new(stream, self.config().hub, self.metrics.stream(stream)));
        Arc::clone(hub)
    }

    pub fn hubs(&self) -> Vec<Arc<Hub>> {
        lock(&self.hubs).values().cloned().collect()
    }

    /// Makes this node a relay of `stream`, pulled from `upstreams` in order.
    pub fn start_pull(&self, stream: &str, upstreams: Vec<RtmpUrl>) -> Result<(), HubError> {
        let hub = self.hub_or_create(stream);
        let handle = rtmp::pull::spawn(&hub, upstreams, self.config().stall_timeout)?;
        lock(&self.pulls).insert(stream.to_owned(), handle);
        Ok(())
    }

    /// Stops relaying `stream`; false if it was not being pulled.
    pub fn stop_pull(&self, stream: &str) -> bool {
        lock(&self.pulls).remove(stream).is_some()
    }

    pub fn stream_info(&self, hub: &Hub) -> StreamInfo {
        let snap = hub.snapshot();
        let metrics = hub.metrics();
        StreamInfo {
            name: hub.name().to_owned(),
            source: match snap.feed {
                None => StreamRole::Idle,
                Some(Feed::Local { name }) => StreamRole::Publisher { name },
                Some(Feed::Upstream { url, connected }) => StreamRole::Upstream {
                    upstream: url,
                    connected,
                },
            },
            subscribers: snap.subscribers,
            bitrate_kbps: snap.bitrate_kbps,
            fps: snap.fps,
            keyframe_interval_ms: snap.keyframe_interval_ms,
            last_timestamp_ms: snap.last_timestamp_ms,
            meta: snap.meta.as_deref().cloned().unwrap_or_default(),
            tags_in: metrics.tags_in.get(),
            tags_dropped: metrics.tags_dropped.get(),
            reconnects: metrics.reconnects.get(),
            continuity: snap.continuity,
        }
    }
}

/// The address other boxes reach `bound` at: `bound` itself unless it is a wildcard,
/// then `advertise`, then the address this box reaches the portal from.
fn advertised(
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
    let route = route_to_portal(portal);
    match route {
        Some(local) => Ok(SocketAddr::new(local, bound.port())),
        None => anyhow::bail!(
            "cannot tell which address other boxes reach this one at: set --advertise IP"
        ),
    }
}

/// The address this box reaches the portal from, as its routes pick it.
fn route_to_portal(portal: Option<&str>) -> Option<IpAddr> {
    let url = url::Url::parse(portal?).ok()?;
    // IPv4 first, as the overlay's requests go (`control::http`).
    let targets = url.socket_addrs(|| Some(80)).ok()?;
    let target = *targets.iter().find(|a| a.is_ipv4()).or(targets.first())?;
    route_to(target)
}

/// The address this box's routes send from to reach `target`.
fn route_to(target: SocketAddr) -> Option<IpAddr> {
    let any = if target.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    };
    let probe = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    // Connecting a UDP socket sends nothing; it only picks the route.
    probe.connect(target).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

/// The address the overlay's HTTP calls leave from: the API's, when it is a specific
/// one, so that peers and the portal see the address the node advertises. Not a
/// loopback address when the portal is elsewhere: that could reach nothing.
fn client_address(config: &Config) -> Option<IpAddr> {
    let ip = config.api.ip();
    let portal_is_local = config
        .portal
        .as_deref()
        .and_then(|p| url::Url::parse(p).ok())
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_none_or(|host| {
            host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    (!ip.is_unspecified() && (!ip.is_loopback() || portal_is_local)).then_some(ip)
}

/// Kernel send buffer of a socket that carries a stream to a player or child box.
///
/// Linux autotunes send buffers up to megabytes, where a slow player would queue
/// seconds of stale video out of the hub's sight. Capped, a player that cannot keep up
/// soon fills its hub queue and is skipped to the next keyframe. 256 KiB (the kernel
/// doubles it) is about 1.5 s of a 2.5 Mbit/s stream, and carries 20 Mbit/s at 100 ms
/// round trip.
const PLAYER_SEND_BUFFER: usize = 256 * 1024;

/// Connections to the API one address may hold at once: a browser opens six, a box
/// calling this one a few, and a household's boxes share one address behind NAT.
const API_CONNECTIONS_PER_ADDRESS: usize = 64;

/// Options for every media socket: no Nagle delay, a bounded send buffer.
pub fn tune_player_socket(socket: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    socket2::SockRef::from(socket).set_send_buffer_size(PLAYER_SEND_BUFFER)
}

/// The box's part in the overlay. Once it knows where other boxes reach it (the API
/// serves meanwhile, for the portal to dial it back), it joins, and keeps its place,
/// its listings and its port mappings. Aborting this task ends all of it.
async fn take_part(
    node: Arc<Node>,
    api: SocketAddr,
    rtmp: SocketAddr,
    ipv6: Option<reach::ipv6::Ipv6Addresses>,
) {
    let (advertised, ipv6_report) = tokio::join!(reach::settle(&node, api, rtmp), async {
        match ipv6 {
            Some(at) => reach::ipv6::check(&node, at).await,
            None => None,
        }
    });
    let mut me = node.control.me();
    if let (Some((api, rtmp)), None) = (advertised, node.config().advertise) {
        (me.api, me.rtmp) = (api, rtmp);
    }
    let reached_over_ipv6 = ipv6_report.as_ref().is_some_and(|r| r.reachable);
    me.rtmp_v6 = ipv6.filter(|_| reached_over_ipv6).map(|at| at.rtmp());
    node.control.readdress(me, ipv6_report.is_some());
    reach::set_ipv6(&node, ipv6_report);
    let mut parts = tokio::task::JoinSet::new();
    parts.spawn(control::drive(Arc::clone(&node)));
    parts.spawn(control::list_streams(Arc::clone(&node)));
    parts.spawn(control::report_place(Arc::clone(&node)));
    parts.spawn(control::drop_idle_views(Arc::clone(&node)));
    parts.spawn(stills::send_stills(Arc::clone(&node)));
    parts.spawn(reach::keep(Arc::clone(&node), api, rtmp));
    parts.spawn(channel::keep(Arc::clone(&node)));
    node.owner.log(node.config().portal.as_deref());
    node.join_overlay().await;
    if let Some(source) = &node.config().source {
        node.publish_source(source);
    }
    while parts.join_next().await.is_some() {}
}

/// The node's sockets, bound before it runs so that a test can bind port 0 and read
/// the ports back, and so that a port in use fails before anything starts.
pub struct Listeners {
    pub rtmp: TcpListener,
    pub api: TcpListener,
    /// The same on the box's own IPv6 address, when it has one (`reach::ipv6`).
    pub ipv6: Option<reach::ipv6::Listeners6>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let rtmp = TcpListener::bind(config.rtmp)
            .await
            .with_context(|| format!("cannot listen for RTMP on {}", config.rtmp))?;
        let api = TcpListener::bind(config.api)
            .await
            .with_context(|| format!("cannot listen for the API on {}", config.api))?;
        let ipv6 =
            reach::ipv6::bind(config, api.local_addr()?.port(), rtmp.local_addr()?.port()).await;
        Ok(Listeners { rtmp, api, ipv6 })
    }
}

/// Runs a node on `listeners` until `shutdown` completes or the API asks it to stop;
/// then it leaves the overlay gracefully and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let rtmp_addr = listeners.rtmp.local_addr()?;
    let api_addr = listeners.api.local_addr()?;
    let in_overlay = config.portal.is_some() || !config.supernodes.is_empty();
    if in_overlay && config.api.ip().is_loopback() && client_address(&config).is_none() {
        tracing::warn!(
            api = %config.api,
            "other boxes cannot reach this node's API on a loopback address; \
             set api = \"0.0.0.0:8000\" to take part in the network"
        );
    }
    let key = identity::load_or_create(&config.data_dir)?;
    let me = if in_overlay {
        let portal = config.portal.as_deref();
        Peer::new(
            key.node_id(),
            advertised(api_addr, config.advertise, portal)?,
            advertised(rtmp_addr, config.advertise, portal)?,
        )
    } else {
        Peer::new(key.node_id(), api_addr, rtmp_addr)
    };
    let admin_token = auth::load_or_create(&config.data_dir)?;
    let node = Node::new(config, me, key, admin_token);

    if let Some(source) = &node.config().source {
        node.start_source(source, 0)
            .context("cannot start the local source")?;
    }
    for pull in node.config().pulls.clone() {
        node.start_pull(&pull.stream, pull.upstreams)
            .with_context(|| format!("cannot relay {}", pull.stream))?;
    }

    let _panel = node.config().panel.as_ref().and_then(|panel| {
        let (lit, pressed) = (Arc::clone(&node), Arc::clone(&node));
        let runtime = tokio::runtime::Handle::current();
        panel::start(
            panel,
            move || lit.tally(),
            move || {
                let _in_runtime = runtime.enter();
                pressed.toggle_broadcast();
            },
        )
    });
    let (mut rtmp_listeners, mut api_listeners) = (vec![listeners.rtmp], vec![listeners.api]);
    let ipv6 = listeners.ipv6.map(|six| {
        rtmp_listeners.extend(six.rtmp);
        api_listeners.extend(six.api);
        six.at
    });
    let rtmp = tokio::spawn(rtmp::server::serve(rtmp_listeners, Arc::clone(&node)));
    let mut tasks = vec![rtmp];
    if in_overlay {
        // The owner may ask for streams at once; the engine keeps them until it joins.
        node.control.enable();
        tasks.push(tokio::spawn(take_part(
            Arc::clone(&node),
            api_addr,
            rtmp_addr,
            ipv6,
        )));
    }
    tracing::info!(
        name = %node.config().name,
        id = %node.control.me().id,
        %rtmp_addr,
        %api_addr,
        ipv6 = ?ipv6.map(|at| at.own),
        "node running"
    );
    service::ready(&format!(
        "serving RTMP on {rtmp_addr} and the API on {api_addr}"
    ));
    tasks.extend(service::watchdog());
    let stopping = Arc::clone(&node);
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = stopping.stop.notified() => {}
        }
        // Peers still reach the API while the node hands its children on.
        service::stopping();
        stopping.leave_overlay().await;
        reach::release(&stopping).await;
    };
    let tune = |socket: &tokio::net::TcpStream| {
        if let Err(e) = tune_player_socket(socket) {
            tracing::debug!("cannot set socket options: {e}");
        }
    };
    let app = api::router(Arc::clone(&node));
    web::server::serve(api_listeners, app, API_CONNECTIONS_PER_ADDRESS, tune, stop).await;
    for task in tasks {
        task.abort();
    }
    lock(&node.pulls).clear();
    node.control.stop_pulls();
    tracing::info!("node stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api: &str, portal: Option<&str>) -> Config {
        let args = NodeArgs {
            api: Some(api.parse().unwrap()),
            portal: portal.map(String::from),
            ..NodeArgs::default()
        };
        Config::from_toml("", &args).unwrap()
    }

    #[test]
    fn overlay_calls_leave_from_the_api_address_when_that_can_reach_the_portal() {
        let ip = |s: &str| Some(s.parse().unwrap());
        let local = Some("http://127.0.0.1:8080");
        let remote = Some("http://portal.example:8080");
        assert_eq!(
            client_address(&config("10.0.0.5:8000", remote)),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_address(&config("127.0.0.7:8000", local)),
            ip("127.0.0.7")
        );
        assert_eq!(client_address(&config("127.0.0.1:8000", remote)), None);
        assert_eq!(client_address(&config("0.0.0.0:8000", remote)), None);
    }
}
