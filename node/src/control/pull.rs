//! The overlay's pull: plays a stream from the parent the engine chose, and switches
//! parents make-before-break; with a hot standby, from a second parent at once (or,
//! with an idle one, from the second parent as soon as the first stalls).
//!
//! Unlike a configured relay (`rtmp::pull`), it never picks an upstream itself: it
//! reports to the engine (`Flowing` once the parent's first tag is here, `Stalled` when
//! the parent goes silent or refuses; `StandbyFlowing` and `StandbyLost` for the
//! standby) and the engine steers it. A new parent is connected while the old one still
//! feeds the hub; the switch happens when the new one delivers. Both parents of a
//! standby feed the hub at once. Either way the hub forwards each frame once, the first
//! copy to arrive, and drops what is at or before the last timestamp it forwarded, so
//! players see one continuous stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use overlay::{Input, Target};
use proto::overlay::{Peer, Request, StreamId};
use proto::portal::{TamperReport, MAX_TAMPER_WHAT};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use super::http;
use super::seals::{SealCheck, Tamper};
use crate::hub::{Feed, Hub, HubError, Publisher};
use crate::rtmp::client::{Player, Received};
use crate::rtmp::url::RtmpUrl;
use crate::rtmp::RtmpError;
use crate::Node;
use proto::seal::Seal;

/// A new parent must connect and send its first tag within this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for a parent that connects here: the request goes through the portal.
const REVERSED_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Command {
    /// Move to this parent (or reconnect to the same one with a new ticket).
    Steer(Upstream),
    /// Play this standby parent too; `None` stops the standby.
    Standby(Option<Upstream>),
    /// The parent failed: the standby is the parent now.
    Promote,
}

/// A running overlay pull; dropping it stops the pull and frees the hub.
pub struct SteeredPull {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Drop for SteeredPull {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SteeredPull {
    pub fn spawn(
        node: &Arc<Node>,
        hub: &Arc<Hub>,
        stream: StreamId,
        upstream: Upstream,
        stall_timeout: Duration,
    ) -> Result<SteeredPull, HubError> {
        let publisher = hub.claim(Feed::Upstream {
            url: upstream.to_string(),
            connected: false,
        })?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let puller = Puller {
            node: Arc::downgrade(node),
            stream,
            publisher,
            stall_timeout,
            idle_standby: node.config().standby == crate::config::Standby::Idle,
            bind: node.config().rtmp.ip(),
            key: node.control().key().clone(),
        };
        let span = tracing::info_span!("pull", stream = %hub.name());
        let task = tokio::spawn(tracing::Instrument::instrument(
            puller.run(upstream, receiver),
            span,
        ));
        Ok(SteeredPull { commands, task })
    }

    /// Moves to a new parent (or reconnects to the same one with a new ticket).
    pub fn steer(&self, upstream: Upstream) {
        let _ = self.commands.send(Command::Steer(upstream));
    }

    /// Plays a standby parent as well, or stops it.
    pub fn standby(&self, upstream: Option<Upstream>) {
        let _ = self.commands.send(Command::Standby(upstream));
    }

    /// Makes the standby the parent.
    pub fn promote(&self) {
        let _ = self.commands.send(Command::Promote);
    }
}

struct Puller {
    node: Weak<Node>,
    stream: StreamId,
    publisher: Publisher,
    stall_timeout: Duration,
    /// The standby parent is only played once it is the parent (`relay.standby =
    /// "idle"`).
    idle_standby: bool,
    /// The node's own RTMP address: pulls leave from it, so that the parent sees
    /// which box connects.
    bind: std::net::IpAddr,
    /// Proves to the parent that this box holds the ticket it plays with.
    key: proto::identity::NodeKey,
}

/// A parent being connected: the player once its first tag arrived, with what came
/// before and with it. Dropping it hangs up.
type Connecting = Pin<Box<dyn Future<Output = Result<(Player, Vec<Received>), RtmpError>> + Send>>;

/// A parent that delivers.
struct Link {
    player: Player,
    upstream: Upstream,
    last_media: Instant,
    /// Silent for the stall timeout, and reported. The connection stays: a parent that
    /// is repairing itself sends again on it once it has the stream back, and the
    /// engine decides whether to wait for that or go elsewhere.
    stalled: bool,
    /// Silent for half the stall timeout, and reported: the engine asks the parent
    /// early whether it is alive.
    silent: bool,
    /// What it sends against the source's seals.
    seals: SealCheck,
}

impl Puller {
    fn report(&self, input: Input) {
        if let Some(node) = self.node.upgrade() {
            node.overlay_input(input);
        }
    }

    async fn run(self, first: Upstream, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut upstream = first.clone();
        let mut connecting = Some(self.connect(first));
        let mut current: Option<Link> = None;
        let mut standby_upstream: Option<Upstream> = None;
        let mut standby_connecting: Option<Connecting> = None;
        let mut standby: Option<Link> = None;
        // Silence is checked a few times per stall timeout, for both parents.
        let mut check = tokio::time::interval(self.stall_timeout / 4);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Steer(to)) => {
                        upstream = to;
                        connecting = Some(self.connect(upstream.clone()));
                    }
                    Some(Command::Standby(to)) => {
                        standby = None;
                        standby_connecting = None;
                        standby_upstream = to;
                        match &standby_upstream {
                            Some(to) if self.idle_standby => {
                                // Held, not played: it is ready as it is.
                                tracing::info!(parent = %to, "standby ready (idle)");
                                self.report(Input::StandbyFlowing { stream: self.stream.clone() });
                            }
                            Some(to) => standby_connecting = Some(self.connect(to.clone())),
                            None => {}
                        }
                    }
                    Some(Command::Promote) => {
                        if let Some(link) = standby.take() {
                            tracing::info!(parent = %link.upstream, "the standby is the parent now");
                            self.publisher.set_upstream(link.upstream.to_string(), true);
                            upstream = link.upstream.clone();
                            current = Some(link);
                            connecting = None;
                        } else if let Some(to) = standby_upstream.take().filter(|_| self.idle_standby) {
                            // Played from now on, after the newest frame here.
                            tracing::info!(parent = %to, "the idle standby is the parent now");
                            upstream = to.clone();
                            connecting = Some(self.connect(to));
                        }
                        standby_upstream = None;
                        standby_connecting = None;
                    }
                },
                joined = wait(&mut connecting) => {
                    connecting = None;
                    match joined.map(|joined| self.link(joined, upstream.clone())) {
                        Ok(Ok(link)) => {
                            let switched = current.is_some();
                            current = Some(link);
                            self.publisher.set_upstream(upstream.to_string(), true);
                            tracing::info!(parent = %upstream, switched, "relaying");
                            self.report(Input::Flowing { stream: self.stream.clone() });
                        }
                        Ok(Err(tamper)) => self.tampered(&upstream, &tamper),
                        Err(e) => {
                            tracing::warn!(parent = %upstream, "cannot pull: {e}");
                            self.report(Input::Stalled { stream: self.stream.clone() });
                        }
                    }
                }
                joined = wait(&mut standby_connecting) => {
                    standby_connecting = None;
                    let to = standby_upstream.clone().expect("a standby being connected");
                    match joined.map(|joined| self.link(joined, to.clone())) {
                        Ok(Ok(link)) => {
                            tracing::info!(parent = %to, "standby flowing");
                            standby = Some(link);
                            self.report(Input::StandbyFlowing { stream: self.stream.clone() });
                        }
                        Ok(Err(tamper)) => self.standby_lost(&to, &tamper.to_string()),
                        Err(e) => self.standby_lost(&to, &e.to_string()),
                    }
                }
                received = next(&mut current) => match received {
                    Ok(received) => {
                        let media = matches!(received, Received::Media(_));
                        let link = current.as_mut().expect("read from it");
                        if let Err(tamper) = self.take(link, received) {
                            let link = current.take().expect("read from it");
                            self.tampered(&link.upstream, &tamper);
                            continue;
                        }
                        let link = current.as_mut().expect("read from it");
                        if media && (link.stalled || link.silent) {
                            if link.stalled {
                                tracing::info!(parent = %link.upstream, "the parent sends again");
                                self.publisher.set_upstream(link.upstream.to_string(), true);
                            }
                            link.stalled = false;
                            link.silent = false;
                            self.report(Input::Flowing { stream: self.stream.clone() });
                        }
                    }
                    Err(e) => {
                        let lost = current.take().expect("read only from a parent");
                        self.lost(&lost.upstream, &e.to_string(), connecting.is_some());
                    }
                },
                received = next(&mut standby) => match received {
                    Ok(received) => {
                        let link = standby.as_mut().expect("read from it");
                        if let Err(tamper) = self.take(link, received) {
                            let lost = standby.take().expect("read from it");
                            self.standby_lost(&lost.upstream, &format!("it sent {tamper}"));
                        }
                    }
                    Err(e) => {
                        let lost = standby.take().expect("read only from a standby");
                        self.standby_lost(&lost.upstream, &e.to_string());
                    }
                },
                _ = check.tick() => {
                    let why = format!("no media for {} ms", self.stall_timeout.as_millis());
                    if let Some(link) = current.as_mut().filter(|l| {
                        !l.stalled && l.last_media.elapsed() >= self.stall_timeout
                    }) {
                        link.stalled = true;
                        let upstream = link.upstream.clone();
                        self.lost(&upstream, &why, connecting.is_some());
                    } else if let Some(link) = current.as_mut().filter(|l| {
                        !l.stalled && !l.silent && l.last_media.elapsed() >= self.stall_timeout / 2
                    }).filter(|_| connecting.is_none()) {
                        link.silent = true;
                        self.report(Input::Silent { stream: self.stream.clone() });
                    }
                    if standby.as_ref().is_some_and(|l| l.last_media.elapsed() >= self.stall_timeout) {
                        let lost = standby.take().expect("checked");
                        self.standby_lost(&lost.upstream, &why);
                    }
                }
            }
        }
    }

    /// A parent connected: what it sent first goes into the hub, once checked.
    fn link(
        &self,
        (player, first): (Player, Vec<Received>),
        upstream: Upstream,
    ) -> Result<Link, Tamper> {
        let mut link = Link {
            player,
            upstream,
            last_media: Instant::now(),
            stalled: false,
            silent: false,
            seals: SealCheck::new(self.stream.as_str()),
        };
        for received in first {
            self.take(&mut link, received)?;
        }
        Ok(link)
    }

    fn standby_lost(&self, parent: &Upstream, why: &str) {
        tracing::info!(%parent, "standby lost: {why}");
        self.report(Input::StandbyLost {
            stream: self.stream.clone(),
        });
    }

    /// What a parent sent: checked against the source's seals, and into the hub,
    /// which keeps the first copy of each frame.
    fn take(&self, link: &mut Link, received: Received) -> Result<(), Tamper> {
        if let Received::Media(tag) = &received {
            link.last_media = Instant::now();
            if let Some(seal) = Seal::from_tag(tag) {
                let seal = seal.map_err(|_| Tamper::Forged)?;
                let source = self
                    .node
                    .upgrade()
                    .and_then(|n| n.control().source_of(&self.stream));
                if link.seals.seal(&seal, source.as_ref())? {
                    self.publisher.hub().metrics().gops_verified.inc();
                }
                self.publisher.push_seal(&seal, tag.clone());
                return Ok(());
            }
            link.seals.tag(tag)?;
        }
        self.deliver(received);
        Ok(())
    }

    /// A parent sent what the source did not seal: it is dropped, and the engine
    /// told, which goes elsewhere and keeps away from it.
    fn tampered(&self, parent: &Upstream, tamper: &Tamper) {
        self.publisher.hub().metrics().tampered.inc();
        tracing::warn!(%parent, "the parent sent {tamper}: dropped, and avoided from now on");
        self.publisher.set_upstream(parent.to_string(), false);
        if let Some(node) = self.node.upgrade() {
            // Named now: once the engine hears of it, the stream's parent changes.
            if let Some(parent) = node.control().parent_of(&self.stream) {
                let mut what = format!("sent {tamper}");
                if let Some((cut, _)) = what.char_indices().nth(MAX_TAMPER_WHAT) {
                    what.truncate(cut);
                }
                let report = TamperReport {
                    stream: self.stream.clone(),
                    parent,
                    what,
                };
                tokio::spawn(async move { node.control().report_tamper(report).await });
            }
        }
        self.report(Input::Tampered {
            stream: self.stream.clone(),
        });
    }

    /// The parent that fed the hub is gone. While a new parent is being connected
    /// (a move: the old one let us go once we knew where to go), that connection
    /// reports for itself, `Flowing` or `Stalled`.
    fn lost(&self, parent: &Upstream, why: &str, moving: bool) {
        self.publisher.hub().metrics().reconnects.inc();
        if moving {
            tracing::info!(%parent, "left the previous parent: {why}");
            return;
        }
        tracing::warn!(%parent, "parent lost: {why}");
        self.publisher.set_upstream(parent.to_string(), false);
        self.report(Input::Stalled {
            stream: self.stream.clone(),
        });
    }

    fn deliver(&self, received: Received) {
        match received {
            Received::Meta(meta) => self.publisher.set_meta(meta),
            Received::Media(tag) => self.publisher.push(tag),
        }
    }

    /// Connects to a parent; once the hub has frames, it asks for only the ones
    /// after them, which the parent keeps for a while: a failover or a move then
    /// loses no frame, and the parent sends no GOP that this box already has. A
    /// parent that cannot be connected to is asked to connect here instead
    /// (connection reversal, `crate::rtmp::dial`).
    fn connect(&self, upstream: Upstream) -> Connecting {
        let bind = self.bind;
        let url = match self.publisher.hub().last_video() {
            Some(after) => upstream.url.resuming_after(after),
            None => upstream.url,
        }
        .proven_by(&self.key);
        let node = self.node.clone();
        let stream = self.stream.clone();
        let (parent, token) = (upstream.parent, upstream.token);
        Box::pin(async move {
            let mut address = resolve(&url).await?;
            let reversed = node
                .upgrade()
                .is_some_and(|n| n.control().client.is_unreachable(&parent.id));
            let over_ipv6 = Some(address) == parent.rtmp_v6;
            let limit = if reversed {
                REVERSED_CONNECT_TIMEOUT
            } else {
                CONNECT_TIMEOUT
            };
            timeout(limit, async {
                let connect = crate::rtmp::dial::connect_from;
                if over_ipv6 {
                    // Half the time, so that IPv4 has the rest.
                    match timeout(limit / 2, connect(bind, address)).await {
                        Ok(Ok(socket)) => return play(socket, &url).await,
                        Ok(Err(e)) => tracing::info!(%address, "cannot connect to the parent over IPv6, trying IPv4: {e}"),
                        Err(_) => tracing::info!(%address, "no answer from the parent over IPv6, trying IPv4"),
                    }
                    address = parent.rtmp;
                }
                let socket = if reversed {
                    dialled_by(node, stream, parent, token).await?
                } else {
                    connect(bind, address).await?
                };
                play(socket, &url).await
            })
            .await
            .map_err(|_| RtmpError::Timeout("the connection"))?
        })
    }
}

/// Plays `url` on `socket` until the first media tag, which it returns with what
/// came before it.
async fn play(
    socket: tokio::net::TcpStream,
    url: &RtmpUrl,
) -> Result<(Player, Vec<Received>), RtmpError> {
    let mut player = Player::play_on(socket, url).await?;
    let mut first = Vec::new();
    loop {
        let received = player.next().await?;
        let media = matches!(received, Received::Media(_));
        first.push(received);
        if media {
            return Ok((player, first));
        }
    }
}

/// A parent to play from: its ticket's URL and token, and the box, asked to connect
/// here when it cannot be connected to.
#[derive(Clone)]
pub struct Upstream {
    pub url: RtmpUrl,
    pub parent: Peer,
    pub token: String,
}

impl Upstream {
    /// Plays from `parent` over IPv6 when this box has it (`ipv6`) and the parent is
    /// reached there.
    pub fn new(stream: &StreamId, parent: Peer, token: String, ipv6: bool) -> Upstream {
        Upstream {
            url: RtmpUrl::for_ticket(parent.rtmp_for(ipv6), stream.as_str(), &token),
            parent,
            token,
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.url.fmt(f)
    }
}

/// The address of `url`'s host.
async fn resolve(url: &RtmpUrl) -> Result<std::net::SocketAddr, RtmpError> {
    tokio::net::lookup_host(url.authority())
        .await?
        .next()
        .ok_or_else(|| RtmpError::Refused(format!("{} has no address", url.host)))
}

/// Asks `parent` to connect to this box for the play with `token`, and waits for it
/// to.
async fn dialled_by(
    node: Weak<Node>,
    stream: StreamId,
    parent: Peer,
    token: String,
) -> Result<tokio::net::TcpStream, RtmpError> {
    let node = node
        .upgrade()
        .ok_or(RtmpError::Closed("as the box stops"))?;
    let awaited = node.dials.expect();
    let request = Request::Dial {
        stream,
        token,
        nonce: awaited.nonce.clone(),
    };
    tracing::debug!(parent = %parent.id, "the parent cannot be connected to: asking it to dial");
    let control = node.control();
    http::call(
        &control.client,
        control.portal(),
        &Target::Node(parent),
        &request,
    )
    .await
    .map_err(|e| RtmpError::Refused(format!("the parent would not dial: {e:?}")))?;
    drop(node);
    awaited.arrival().await
}

async fn wait(connecting: &mut Option<Connecting>) -> Result<(Player, Vec<Received>), RtmpError> {
    match connecting {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn next(link: &mut Option<Link>) -> Result<Received, RtmpError> {
    match link {
        Some(link) => link.player.next().await,
        None => std::future::pending().await,
    }
}
