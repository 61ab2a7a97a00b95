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
pub mod config;
pub mod demo;
pub mod hub;
pub mod metrics;
pub mod rtmp;
pub mod source;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::serve::ListenerExt;
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
    config: Config,
    metrics: Metrics,
    hubs: Mutex<BTreeMap<String, Arc<Hub>>>,
    pulls: Mutex<BTreeMap<String, PullHandle>>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    pub fn new(config: Config) -> Arc<Node> {
        let node = Arc::new(Node {
            config,
            metrics: Metrics::default(),
            hubs: Mutex::default(),
            pulls: Mutex::default(),
            started: Instant::now(),
        });
        // Streams this node knows it may carry exist from the start, so players may
        // connect before the publisher does.
        for stream in node.config.stream_keys.keys() {
            node.hub_or_create(stream);
        }
        node
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
            .or_insert_with(|| Hub::new(stream, self.config.hub, self.metrics.stream(stream)));
        Arc::clone(hub)
    }

    pub fn hubs(&self) -> Vec<Arc<Hub>> {
        lock(&self.hubs).values().cloned().collect()
    }

    /// Makes this node a relay of `stream`, pulled from `upstreams` in order.
    pub fn start_pull(&self, stream: &str, upstreams: Vec<RtmpUrl>) -> Result<(), HubError> {
        let hub = self.hub_or_create(stream);
        let handle = rtmp::pull::spawn(&hub, upstreams, self.config.stall_timeout)?;
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
        }
    }
}

/// Kernel send buffer of a socket that carries a stream to a player or child box.
///
/// Linux autotunes send buffers up to megabytes, where a slow player would queue
/// seconds of stale video out of the hub's sight. Capped, a player that cannot keep up
/// soon fills its hub queue and is skipped to the next keyframe. 256 KiB (the kernel
/// doubles it) is about 1.5 s of a 2.5 Mbit/s stream, and carries 20 Mbit/s at 100 ms
/// round trip.
const PLAYER_SEND_BUFFER: usize = 256 * 1024;

/// Options for every media socket: no Nagle delay, a bounded send buffer.
pub fn tune_player_socket(socket: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    socket2::SockRef::from(socket).set_send_buffer_size(PLAYER_SEND_BUFFER)
}

/// The node's sockets, bound before it runs so that a test can bind port 0 and read
/// the ports back, and so that a port in use fails before anything starts.
pub struct Listeners {
    pub rtmp: TcpListener,
    pub api: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let rtmp = TcpListener::bind(config.rtmp)
            .await
            .with_context(|| format!("cannot listen for RTMP on {}", config.rtmp))?;
        let api = TcpListener::bind(config.api)
            .await
            .with_context(|| format!("cannot listen for the API on {}", config.api))?;
        Ok(Listeners { rtmp, api })
    }
}

/// Runs a node on `listeners` until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = Node::new(config);
    let rtmp_addr = listeners.rtmp.local_addr()?;
    let api_addr = listeners.api.local_addr()?;

    let _source = match node.config.source.clone() {
        Some(source) => {
            let hub = node.hub_or_create(&source.stream);
            Some(source::start(&hub, &source.kind).context("cannot start the local source")?)
        }
        None => None,
    };
    for pull in node.config.pulls.clone() {
        node.start_pull(&pull.stream, pull.upstreams)
            .with_context(|| format!("cannot relay {}", pull.stream))?;
    }

    let rtmp = tokio::spawn(rtmp::server::serve(listeners.rtmp, Arc::clone(&node)));
    tracing::info!(name = %node.config.name, %rtmp_addr, %api_addr, "node running");
    let api_listener = listeners.api.tap_io(|socket| {
        if let Err(e) = tune_player_socket(socket) {
            tracing::debug!("cannot set socket options: {e}");
        }
    });
    let served = axum::serve(api_listener, api::router(Arc::clone(&node)))
        .with_graceful_shutdown(shutdown)
        .await;
    rtmp.abort();
    lock(&node.pulls).clear();
    tracing::info!("node stopped");
    served.context("API server failed")
}
