//! The node's RTMP server: publishers (ffmpeg, OBS) feed hubs, players and child nodes
//! subscribe to them.
//!
//! Each connection is one task that owns its `ServerSession` and selects between bytes
//! from the socket and packets from its subscription. rml_rtmp decides the protocol;
//! this module decides policy: which app, which keys, which streams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::identity::{verify_play, SignatureError};
use proto::overlay::StreamId;
use proto::Tag;
use rml_rtmp::handshake::PeerType;
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::Instrument;

use super::chunk;
use super::dial;
use super::guard::ChunkGuard;
use super::meta::{self, MetaSender};
use super::outbox::Outbox;
use super::{handshake, RtmpError, APP, BEFORE_HANDSHAKE};
use crate::auth::constant_time_eq;
use crate::control::{ChildGuard, PublishGuard, ViewerSlot};
use crate::hub::{Feed, Packet, Publisher, Subscription};
use crate::Node;
use web::server::PerAddress;
use web::signed::now_unix_ms;

/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that neither publishes nor plays by then, counted from its accept, is
/// dropped: a slow client cannot hold one by sending a byte now and then.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one address may hold at once: a household's boxes and players share
/// an address behind NAT, and a box takes a child or two per stream.
const CONNECTIONS_PER_ADDRESS: usize = 32;
/// A publisher, or a connection that neither publishes nor plays, silent this long is
/// dropped. Players are not expected to talk; the hub drops them if they stop reading.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Packets written to a player per socket write, at most.
const WRITE_BATCH: usize = 64;

/// Accepts RTMP connections on `listeners` (the IPv4 and the IPv6 one) until aborted.
pub async fn serve(listeners: Vec<TcpListener>, node: Arc<Node>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let open = PerAddress::new("RTMP", CONNECTIONS_PER_ADDRESS);
    loop {
        let (socket, peer) = match web::server::accept_any(&listeners).await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("rtmp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = open.take(peer.ip()) else {
            continue;
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("rtmp", conn = id);
        let node = Arc::clone(&node);
        tokio::spawn(
            async move {
                let _slot = slot;
                tracing::debug!(%peer, "connected");
                match Connection::run(socket, node).await {
                    Ok(()) => tracing::debug!("closed"),
                    // Health checks and port scans: nothing to report.
                    Err(RtmpError::Closed(BEFORE_HANDSHAKE)) => {
                        tracing::debug!("closed before the handshake")
                    }
                    Err(e) => tracing::info!("closed: {e}"),
                }
            }
            .instrument(span),
        );
    }
}

enum Role {
    Idle,
    Publishing {
        publisher: Publisher,
        /// Keeps the stream published in the overlay while it lives.
        _overlay: Option<PublishGuard>,
    },
    Playing {
        stream_id: u32,
        subscription: Subscription,
        /// Completes when the player must go: a child box whose ticket ended, a
        /// viewer of a stream the box no longer holds.
        ended: Option<oneshot::Receiver<()>>,
        /// A child box's ticket, or the slot of a player from beyond the box's network.
        child: Option<ChildGuard>,
        _viewer: Option<ViewerSlot>,
    },
}

struct Connection {
    node: Arc<Node>,
    peer: SocketAddr,
    session: ServerSession,
    meta_sender: MetaSender,
    out: Outbox,
    role: Role,
    guard: ChunkGuard,
}

/// Serves one RTMP connection from `peer` over any byte stream, as [`serve`] serves
/// each socket it accepts: for fuzzing the session (`fuzz/`), which feeds it bytes.
#[doc(hidden)]
pub async fn serve_stream(
    stream: impl AsyncRead + AsyncWrite + Send,
    peer: SocketAddr,
    node: Arc<Node>,
) -> Result<(), RtmpError> {
    let (reader, writer) = tokio::io::split(stream);
    Connection::run_on(reader, writer, peer, node).await
}

/// Serves the play of a child this box dialled (connection reversal, `super::dial`)
/// on the connection it made, as on one it accepted.
pub async fn serve_dialled(socket: TcpStream, node: Arc<Node>) -> Result<(), RtmpError> {
    Connection::serve(socket, node).await
}

impl Connection {
    /// An accepted connection: RTMP, or a parent this box asked to dial it.
    async fn run(socket: TcpStream, node: Arc<Node>) -> Result<(), RtmpError> {
        let mut first = [0u8; 1];
        let n = timeout(HANDSHAKE_TIMEOUT, socket.peek(&mut first))
            .await
            .map_err(|_| RtmpError::Timeout("the handshake"))??;
        if n == 0 {
            return Err(RtmpError::Closed(BEFORE_HANDSHAKE));
        }
        if dial::is_preface(first[0]) {
            tracing::debug!("a parent dialled this box");
            return node.dials.arrived(socket).await;
        }
        Connection::serve(socket, node).await
    }

    async fn serve(socket: TcpStream, node: Arc<Node>) -> Result<(), RtmpError> {
        crate::tune_player_socket(&socket)?;
        let peer = socket.peer_addr()?;
        let (reader, writer) = socket.into_split();
        Connection::run_on(reader, writer, peer, node).await
    }

    async fn run_on(
        mut reader: impl AsyncRead + Unpin,
        mut writer: impl AsyncWrite + Unpin,
        peer: SocketAddr,
        node: Arc<Node>,
    ) -> Result<(), RtmpError> {
        let set_up_by = Instant::now() + SETUP_TIMEOUT;
        let mut buf = vec![0u8; 64 * 1024];

        let leftover = timeout(
            HANDSHAKE_TIMEOUT,
            handshake(PeerType::Server, &mut reader, &mut writer, &mut buf),
        )
        .await
        .map_err(|_| RtmpError::Timeout("the handshake"))??;

        let mut session_config = ServerSessionConfig::new();
        session_config.chunk_size = chunk::CHUNK_SIZE as u32;
        let meta_sender = MetaSender::new(session_config.chunk_size);
        let (session, initial) = ServerSession::new(session_config)?;
        let mut conn = Connection {
            node,
            peer,
            session,
            meta_sender,
            out: Outbox::default(),
            role: Role::Idle,
            guard: ChunkGuard::default(),
        };
        conn.handle_results(initial)?;
        conn.handle_input(&leftover)?;
        writer.write_all_buf(&mut conn.out).await?;

        loop {
            let deadline = match conn.role {
                Role::Idle => Some((set_up_by, "a publish or play")),
                Role::Publishing { .. } => Some((Instant::now() + IDLE_TIMEOUT, "input")),
                // Players are not expected to talk.
                Role::Playing { .. } => None,
            };
            tokio::select! {
                biased;
                read = read_by(&mut reader, &mut buf, deadline) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    if let Err(e) = conn.handle_input(&buf[..n]) {
                        // A refusal's status message goes out before the close.
                        let _ = writer.write_all_buf(&mut conn.out).await;
                        return Err(e);
                    }
                }
                packet = next_packet(&mut conn.role) => {
                    conn.send(packet?)?;
                    // Everything else already queued goes out in the same write.
                    for _ in 1..WRITE_BATCH {
                        match try_next_packet(&mut conn.role) {
                            Some(p) => conn.send(p)?,
                            None => break,
                        }
                    }
                }
            }
            if !conn.out.is_empty() {
                writer.write_all_buf(&mut conn.out).await?;
            }
        }
    }

    fn handle_input(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.guard.check(bytes)?;
        let results = super::contained(|| self.session.handle_input(bytes))??;
        self.handle_results(results)
    }

    fn handle_results(&mut self, results: Vec<ServerSessionResult>) -> Result<(), RtmpError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    if !meta::is_data_message(&packet) {
                        self.out.push(Bytes::from(packet.bytes))
                    }
                }
                ServerSessionResult::RaisedEvent(event) => self.handle_event(event)?,
                ServerSessionResult::UnhandleableMessageReceived(payload) => {
                    tracing::debug!(type_id = payload.type_id, "ignored message");
                }
            }
        }
        Ok(())
    }

    fn handle_event(&mut self, event: ServerSessionEvent) -> Result<(), RtmpError> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name == APP {
                    let results = self.session.accept_request(request_id)?;
                    self.handle_results(results)?;
                } else {
                    let results = self.session.reject_request(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        &format!("unknown app {app_name:?}; use rtmp://HOST:PORT/{APP}/STREAM"),
                    )?;
                    self.handle_results(results)?;
                    return Err(RtmpError::Refused(format!("unknown app {app_name:?}")));
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => self.on_publish(request_id, &stream_key)?,
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                stream_key,
                stream_id,
                ..
            } => self.on_play(request_id, stream_id, &stream_key)?,
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.on_media(Tag::video(timestamp.value, data)),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.on_media(Tag::audio(timestamp.value, data)),
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if let Role::Publishing { publisher, .. } = &self.role {
                    publisher.set_meta(meta::from_rtmp(metadata));
                }
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                tracing::info!("publisher finished");
                self.role = Role::Idle;
            }
            ServerSessionEvent::PlayStreamFinished { .. } => {
                self.role = Role::Idle;
            }
            // releaseStream, FCPublish, FCUnpublish, _checkbw, getStreamLength: ffmpeg
            // and OBS go on without an answer, as they do with nginx-rtmp.
            ServerSessionEvent::UnhandleableAmf0Command { command_name, .. } => {
                tracing::debug!(command = %command_name, "ignored command");
            }
            _ => {}
        }
        Ok(())
    }

    fn on_publish(&mut self, request_id: u32, stream_key: &str) -> Result<(), RtmpError> {
        let (stream, query) = stream_key.split_once('?').unwrap_or((stream_key, ""));
        let given = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned());
        let refusal = match (self.node.stream_key(stream), given) {
            (None, _) => Some(format!(
                "publishing {stream:?} is not configured: add [streams.{stream}] key = \"…\" to the node's config"
            )),
            (Some(_), None) => Some(format!(
                "publishing {stream:?} needs its key: rtmp://HOST:PORT/{APP}/{stream}?key=KEY"
            )),
            (Some(expected), Some(given)) if !constant_time_eq(&expected, &given) => {
                Some(format!("wrong key for {stream:?}"))
            }
            _ => None,
        };
        if let Some(reason) = refusal {
            return self.refuse(request_id, "NetStream.Publish.BadName", reason);
        }
        let hub = self.node.hub_or_create(stream);
        let mut publisher = match hub.claim(Feed::Local {
            name: "rtmp".into(),
        }) {
            Ok(p) => p,
            Err(e) => return self.refuse(request_id, "NetStream.Publish.BadName", e.to_string()),
        };
        publisher.seal_with(self.node.control().key().clone());
        let results = self.session.accept_request(request_id)?;
        self.handle_results(results)?;
        tracing::info!(stream, "publishing");
        let overlay = self.node.local_publish(stream);
        self.role = Role::Publishing {
            publisher,
            _overlay: overlay,
        };
        Ok(())
    }

    fn on_play(
        &mut self,
        request_id: u32,
        stream_id: u32,
        stream_key: &str,
    ) -> Result<(), RtmpError> {
        let (stream, query) = stream_key.split_once('?').unwrap_or((stream_key, ""));
        let param = |name: &str| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let token = param("ticket");
        // A box that has the stream up to here (it lost its parent, or moves).
        let after = param("after").and_then(|v| v.parse::<u32>().ok());
        // A child box's ticket, or a viewer's (a player from beyond the box's network).
        let (ended, child, viewer) = match token {
            Some(token) => {
                let ticket = StreamId::new(stream).ok().and_then(|id| {
                    let ticket = self.node.control().ticket_for_token(&id, &token)?;
                    Some((id, ticket))
                });
                match ticket {
                    Some((id, (ticket, holder))) => {
                        // The box it was granted to, and no other with the token.
                        let proof = [param("node"), param("t"), param("sig")];
                        let [key, time, sig] = proof.each_ref().map(Option::as_deref);
                        let play = verify_play(stream, &token, key, time, sig, now_unix_ms())
                            .and_then(|signed| match signed.node == holder {
                                true => Ok(signed),
                                false => Err(SignatureError::NotHolder {
                                    holder,
                                    signer: signed.node,
                                }),
                            });
                        let what = format!("RTMP play of {stream}");
                        if let Err(refused) =
                            self.node.verifier.take(Some(self.peer.ip()), &what, play)
                        {
                            return self.refuse(request_id, "NetStream.Play.Failed", refused.error);
                        }
                        let (ended, guard) = self.node.child_connected(id, ticket);
                        (Some(ended), Some(guard), None)
                    }
                    None => match self.node.redeem_viewer_ticket(stream, &token) {
                        Some((ended, slot)) => (Some(ended), None, Some(slot)),
                        None => {
                            return self.refuse(
                                request_id,
                                "NetStream.Play.Failed",
                                format!(
                                "no live ticket for {stream:?} with that token; ask for a new one"
                            ),
                            )
                        }
                    },
                }
            }
            None if self.node.plays_without_ticket(self.peer.ip()) => (None, None, None),
            None => {
                return self.refuse(
                    request_id,
                    "NetStream.Play.Failed",
                    format!(
                        "{stream:?} is forwarded only with a ticket: boxes get one from the \
                         overlay, players from POST /streams/{stream}/viewers"
                    ),
                )
            }
        };
        let Some(hub) = self.node.hub(stream) else {
            return self.refuse(
                request_id,
                "NetStream.Play.StreamNotFound",
                format!("no stream {stream:?} on this node"),
            );
        };
        let subscription = hub.subscribe_after(after);
        let results = self.session.accept_request(request_id)?;
        self.handle_results(results)?;
        tracing::info!(
            stream,
            child = child.is_some(),
            viewer = viewer.is_some(),
            "playing"
        );
        self.role = Role::Playing {
            stream_id,
            subscription,
            ended,
            child,
            _viewer: viewer,
        };
        Ok(())
    }

    fn refuse(&mut self, request_id: u32, code: &str, reason: String) -> Result<(), RtmpError> {
        let results = self.session.reject_request(request_id, code, &reason)?;
        self.handle_results(results)?;
        Err(RtmpError::Refused(reason))
    }

    fn on_media(&mut self, tag: Tag) {
        if let Role::Publishing { publisher, .. } = &self.role {
            publisher.push(tag);
        }
    }

    fn send(&mut self, packet: Packet) -> Result<(), RtmpError> {
        let Role::Playing {
            stream_id,
            subscription,
            child,
            ..
        } = &self.role
        else {
            return Ok(());
        };
        match packet {
            Packet::Meta(m) => {
                if let Some(packet) = self.meta_sender.packet(*stream_id, &m) {
                    self.out.push(Bytes::from(packet.bytes));
                }
            }
            Packet::Media(frame) => {
                subscription.count_sent(&frame);
                self.out.push(chunk::for_player(&frame, *stream_id));
            }
            // Seals go to child boxes, which check them; a player has no use for them.
            Packet::Seal(frame) if child.is_some() => {
                self.out.push(chunk::for_player(&frame, *stream_id));
            }
            Packet::Seal(_) => {}
        }
        Ok(())
    }
}

/// Reads what the peer sent, failing with a timeout naming `deadline`'s wait once it
/// has passed.
async fn read_by(
    reader: &mut (impl AsyncReadExt + Unpin),
    buf: &mut [u8],
    deadline: Option<(Instant, &'static str)>,
) -> Result<usize, RtmpError> {
    match deadline {
        Some((by, waited_for)) => timeout_at(by, reader.read(buf))
            .await
            .map_err(|_| RtmpError::Timeout(waited_for))?,
        None => reader.read(buf).await,
    }
    .map_err(RtmpError::from)
}

/// The next packet for a player; an error ends the connection: the player fell too
/// far behind, or it is a child box whose ticket ended.
async fn next_packet(role: &mut Role) -> Result<Packet, RtmpError> {
    match role {
        Role::Playing {
            subscription,
            ended: Some(ended),
            ..
        } => tokio::select! {
            biased;
            _ = ended => Err(RtmpError::TicketEnded),
            packet = subscription.recv() => packet.ok_or(RtmpError::Lagging),
        },
        Role::Playing { subscription, .. } => subscription.recv().await.ok_or(RtmpError::Lagging),
        _ => std::future::pending().await,
    }
}

fn try_next_packet(role: &mut Role) -> Option<Packet> {
    match role {
        Role::Playing { subscription, .. } => subscription.try_recv(),
        _ => None,
    }
}
