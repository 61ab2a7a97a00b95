//! The overlay's pull: plays a stream from the parent the engine chose, and switches
//! parents make-before-break.
//!
//! Unlike a configured relay (`rtmp::pull`), it never picks an upstream itself: it
//! reports to the engine (`Flowing` once the parent's first tag is here, `Stalled` when
//! the parent goes silent or refuses) and the engine steers it. A new parent is
//! connected while the old one still feeds the hub; the switch happens when the new
//! one delivers, and the hub drops what the new parent replays up to the last
//! timestamp already forwarded, so players see one continuous stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use overlay::Input;
use proto::overlay::StreamId;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::hub::{Feed, Hub, HubError, Publisher};
use crate::rtmp::client::{Player, Received};
use crate::rtmp::url::RtmpUrl;
use crate::rtmp::RtmpError;
use crate::Node;

/// A new parent must connect and send its first tag within this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A running overlay pull; dropping it stops the pull and frees the hub.
pub struct SteeredPull {
    target: watch::Sender<RtmpUrl>,
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
        url: RtmpUrl,
        stall_timeout: Duration,
    ) -> Result<SteeredPull, HubError> {
        let publisher = hub.claim(Feed::Upstream {
            url: url.to_string(),
            connected: false,
        })?;
        let (target, targets) = watch::channel(url);
        let puller = Puller {
            node: Arc::downgrade(node),
            stream,
            publisher,
            stall_timeout,
            bind: node.config().rtmp.ip(),
        };
        let span = tracing::info_span!("pull", stream = %hub.name());
        let task = tokio::spawn(tracing::Instrument::instrument(puller.run(targets), span));
        Ok(SteeredPull { target, task })
    }

    /// Moves to a new parent (or reconnects to the same one with a new ticket).
    pub fn steer(&self, url: RtmpUrl) {
        self.target.send_replace(url);
    }
}

struct Puller {
    node: Weak<Node>,
    stream: StreamId,
    publisher: Publisher,
    stall_timeout: Duration,
    /// The node's own RTMP address: pulls leave from it, so that the parent sees
    /// which box connects.
    bind: std::net::IpAddr,
}

/// A parent being connected: the player once its first tag arrived, with what came
/// before and with it. Dropping it hangs up.
type Connecting = Pin<Box<dyn Future<Output = Result<(Player, Vec<Received>), RtmpError>> + Send>>;

impl Puller {
    fn report(&self, input: Input) {
        if let Some(node) = self.node.upgrade() {
            node.overlay_input(input);
        }
    }

    async fn run(self, mut targets: watch::Receiver<RtmpUrl>) {
        let mut url = targets.borrow_and_update().clone();
        let mut connecting = Some(self.connect(url.clone()));
        let mut current: Option<(Player, RtmpUrl)> = None;
        let mut last_media = Instant::now();
        let stall = tokio::time::sleep(self.stall_timeout);
        tokio::pin!(stall);
        loop {
            tokio::select! {
                biased;
                changed = targets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    url = targets.borrow_and_update().clone();
                    connecting = Some(self.connect(url.clone()));
                }
                joined = wait(&mut connecting) => {
                    connecting = None;
                    match joined {
                        Ok((player, first)) => {
                            for received in first {
                                self.deliver(received);
                            }
                            let switched = current.is_some();
                            current = Some((player, url.clone()));
                            last_media = Instant::now();
                            stall.as_mut().reset(last_media + self.stall_timeout);
                            self.publisher.set_upstream(url.to_string(), true);
                            tracing::info!(parent = %url, switched, "relaying");
                            self.report(Input::Flowing { stream: self.stream.clone() });
                        }
                        Err(e) => {
                            tracing::warn!(parent = %url, "cannot pull: {e}");
                            self.report(Input::Stalled { stream: self.stream.clone() });
                        }
                    }
                }
                received = next(&mut current) => match received {
                    Ok(received) => {
                        if matches!(received, Received::Media(_)) {
                            last_media = Instant::now();
                        }
                        self.deliver(received);
                    }
                    Err(e) => {
                        let (_, lost) = current.take().expect("read only from a parent");
                        self.lost(&lost, &e.to_string(), connecting.is_some());
                    }
                },
                () = &mut stall, if current.is_some() => {
                    if last_media.elapsed() >= self.stall_timeout {
                        let (_, lost) = current.take().expect("checked above");
                        let why = format!("no media for {} ms", self.stall_timeout.as_millis());
                        self.lost(&lost, &why, connecting.is_some());
                    } else {
                        stall.as_mut().reset(last_media + self.stall_timeout);
                    }
                }
            }
        }
    }

    /// The parent that fed the hub is gone. While a new parent is being connected
    /// (a move: the old one let us go once we knew where to go), that connection
    /// reports for itself, `Flowing` or `Stalled`.
    fn lost(&self, parent: &RtmpUrl, why: &str, moving: bool) {
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
    /// loses no frame, and the parent sends no GOP that this box already has.
    fn connect(&self, url: RtmpUrl) -> Connecting {
        let bind = self.bind;
        let url = match self.publisher.hub().last_video() {
            Some(after) => url.resuming_after(after),
            None => url,
        };
        Box::pin(async move {
            timeout(CONNECT_TIMEOUT, async {
                let socket = connect_from(bind, &url).await?;
                let mut player = Player::play_on(socket, &url).await?;
                let mut first = Vec::new();
                loop {
                    let received = player.next().await?;
                    let media = matches!(received, Received::Media(_));
                    first.push(received);
                    if media {
                        return Ok((player, first));
                    }
                }
            })
            .await
            .map_err(|_| RtmpError::Timeout("connect"))?
        })
    }
}

/// Connects to `url` from `bind` when that is a specific address.
async fn connect_from(
    bind: std::net::IpAddr,
    url: &RtmpUrl,
) -> Result<tokio::net::TcpStream, RtmpError> {
    let addr = tokio::net::lookup_host(url.authority())
        .await?
        .next()
        .ok_or_else(|| RtmpError::Refused(format!("{} has no address", url.host)))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
        socket.bind(std::net::SocketAddr::new(bind, 0))?;
    }
    Ok(socket.connect(addr).await?)
}

async fn wait(connecting: &mut Option<Connecting>) -> Result<(Player, Vec<Received>), RtmpError> {
    match connecting {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn next(current: &mut Option<(Player, RtmpUrl)>) -> Result<Received, RtmpError> {
    match current {
        Some((player, _)) => player.next().await,
        None => std::future::pending().await,
    }
}
