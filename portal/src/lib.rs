//! The portal: where boxes find supernodes, and viewers find live streams. It never
//! carries video.
//!
//! - `GET /api/supernodes`: a random handful of live supernodes, for a box to join
//!   through (the overlay's `Bootstrap`).
//! - `POST /api/supernodes`: a supernode announces itself, or renews its entry, with
//!   the number of its boxes holding each stream; the answer is its neighbours
//!   (`PromoteSupernode`). `DELETE /api/supernodes/{id}`: it retires.
//! - `GET /api/streams`, `GET /api/streams/{id}`: the live streams; `PUT` and `DELETE
//!   /api/streams/{id}`: a source box lists its stream, renews it, takes it off.
//!
//! - `PUT`/`DELETE /api/nodes/{id}`: a box reports its place in the network (or
//!   leaves it); `GET /api/map` is the map as JSON, `/api/map/ws` the same as a
//!   WebSocket that pushes each change (`network.rs`, `live.rs`).
//! - `PUT /api/streams/{id}/thumbnail` from a source, `GET …/thumbnail.jpg`: stills.
//! - `GET /api/streams/{id}/play`: a box that can serve a browser with no box of its own.
//! - `GET /api/nodes/{id}/channel`: a box's control channel (a WebSocket it keeps
//!   open); `/api/relay/{id}/…`: a request for that box's peer routes, carried down it
//!   (`channel.rs`).
//! - `POST /api/reachability`: the portal dials a box back, at the address the request
//!   came from, and says whether its ports answered (`reach.rs`).
//! - Every other `GET` is the web UI (the `web` crate: list, watch page, map).
//!
//! Supernode, source and box calls must come from the address they name, so that no
//! box lists, reports or retires another. The directory is in SQLite (`store.rs`) and
//! survives restarts; entries not renewed in time stop being listed. The map and the
//! stills are in memory: boxes send them again within seconds.

mod channel;
mod live;
mod network;
mod owners;
mod reach;
mod routes;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;

pub use store::{Store, Ttl};

/// Connections one address may hold at once: viewers behind one NAT (a school, an
/// office) share an address, and each browser keeps a few.
const CONNECTIONS_PER_ADDRESS: usize = 256;

/// Flags of `astral portal`.
#[derive(Debug, Clone, clap::Args)]
pub struct PortalArgs {
    /// Address to serve the API on. Repeat for more: an IPv4 and an IPv6 one, so that
    /// boxes can check whether they are reached over both
    #[arg(
        long,
        env = "ASTRAL_PORTAL_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:8080"
    )]
    pub listen: Vec<SocketAddr>,
    /// SQLite database file, created if missing
    #[arg(
        long,
        env = "ASTRAL_PORTAL_DB",
        default_value = "/var/lib/astral/portal.db"
    )]
    pub db: PathBuf,
    /// A supernode not renewed for this long is no longer listed (they renew every 60 s)
    #[arg(long, default_value_t = 180)]
    pub supernode_ttl_secs: u64,
    /// A stream not renewed by its source for this long is no longer listed
    #[arg(long, default_value_t = proto::portal::DIRECTORY_TTL_SECS)]
    pub stream_ttl_secs: u64,
    /// Most supernodes handed out at once
    #[arg(long, default_value_t = 16)]
    pub bootstrap_list: usize,
}

/// The clock, in seconds since the Unix epoch; tests bring their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    pub store: Store,
    pub live: Arc<live::Live>,
    pub clock: Clock,
    pub bootstrap_list: usize,
    /// Boxes' signed requests: each signature taken once.
    pub verifier: web::signed::Verifier,
    /// Boxes' control channels, for requests relayed to them.
    pub channels: Arc<channel::Channels>,
}

impl State {
    fn now(&self) -> u64 {
        (self.clock)()
    }
}

/// A portal with its database open and its port bound, not yet serving.
pub struct Portal {
    listeners: Vec<TcpListener>,
    state: State,
}

impl Portal {
    pub async fn open(args: &PortalArgs) -> anyhow::Result<Portal> {
        Portal::open_with_clock(args, system_clock()).await
    }

    pub async fn open_with_clock(args: &PortalArgs, clock: Clock) -> anyhow::Result<Portal> {
        if args.bootstrap_list == 0 {
            anyhow::bail!("--bootstrap-list must be at least 1");
        }
        if args.listen.is_empty() {
            anyhow::bail!("--listen: give at least one address");
        }
        if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create {} (pick another place with --db)",
                    dir.display()
                )
            })?;
        }
        let ttl = Ttl {
            supernode: args.supernode_ttl_secs,
            stream: args.stream_ttl_secs,
        };
        let store = Store::open(&args.db, ttl).await.with_context(|| {
            format!(
                "cannot open the portal database at {} (pick another with --db)",
                args.db.display()
            )
        })?;
        let mut listeners = Vec::new();
        for &address in &args.listen {
            listeners.push(TcpListener::bind(address).await.with_context(|| {
                format!("cannot listen on {address} (pick another with --listen)")
            })?);
        }
        tracing::info!(listen = ?args.listen, db = %args.db.display(), "portal open");
        Ok(Portal {
            listeners,
            state: State {
                store,
                live: Arc::new(live::Live::new(proto::portal::MAP_TTL_SECS)),
                clock,
                bootstrap_list: args.bootstrap_list,
                verifier: web::signed::Verifier::default(),
                channels: Arc::default(),
            },
        })
    }

    /// The address of the first listener.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners[0].local_addr()
    }

    /// Serves until `shutdown` completes, pruning expired entries now and then.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let pruner = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            for tick in 0u64.. {
                every.tick().await;
                state.live.expire(state.now());
                if tick % 30 != 0 {
                    continue;
                }
                match state.store.prune(state.now()).await {
                    Ok(gone) => gone.iter().for_each(|id| state.live.stream_gone(id)),
                    Err(e) => tracing::warn!("cannot prune expired entries: {e}"),
                }
            }
        });
        let app = routes::router(self.state.clone());
        let tune = |socket: &tokio::net::TcpStream| {
            let _ = socket.set_nodelay(true);
        };
        web::server::serve(self.listeners, app, CONNECTIONS_PER_ADDRESS, tune, shutdown).await;
        pruner.abort();
        self.state.store.close().await;
        tracing::info!("portal stopped");
        Ok(())
    }
}
