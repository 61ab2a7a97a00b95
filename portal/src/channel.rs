//! Boxes' control channels. Every box keeps one WebSocket open to the portal
//! (`GET /api/nodes/{id}/channel`, signed by the box), so that it can be reached with
//! no port open on its router: another box that cannot connect to it sends its
//! request to `/api/relay/{id}/{route}`, and the portal passes it down the channel and
//! the box's answer back. Requests and answers stay signed by the boxes that made
//! them: the portal can drop them, not forge them. Only the boxes' peer routes are
//! relayed (the box's own dispatcher takes nothing else).
//!
//! A box also says on its channel who owns it, or its pairing code; owners' claims and
//! commands (`crate::owners`) go down the same channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Request, State as Axum};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{any, get};
use axum::Router;
use proto::identity::SIGNATURE_HEADER;
use proto::overlay::NodeId;
use proto::portal::{pairing_code_key, ChannelMessage};
use tokio::sync::{mpsc, oneshot};

use crate::routes::{ApiError, Result, Signed};
use crate::State;

/// How long a relayed request waits for the box's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the portal pings a channel; one silent for three pings is closed.
const PING_EVERY: Duration = Duration::from_secs(20);
/// Requests waiting to go down one channel.
const QUEUE: usize = 64;
/// Largest body relayed: what a box's peer routes take.
const MAX_BODY: usize = 256 * 1024;

type Relayed = (ChannelMessage, oneshot::Sender<ChannelMessage>);

/// The open channels, by box.
#[derive(Default)]
pub struct Channels {
    open: Mutex<HashMap<NodeId, (u64, mpsc::Sender<Relayed>)>>,
    next: std::sync::atomic::AtomicU64,
    /// Pairing codes of unowned boxes with a channel open, as typed codes compare.
    codes: Mutex<HashMap<String, NodeId>>,
}

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (u64, mpsc::Sender<Relayed>)>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeId>> {
        self.codes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets channel `serial` of box `node`, unless a newer one replaced it.
    fn close(&self, node: &NodeId, serial: u64) {
        let mut open = self.lock();
        if open.get(node).is_some_and(|(s, _)| *s == serial) {
            open.remove(node);
            drop(open);
            self.set_code(node, None);
        }
    }

    /// Whether box `node` has its channel open.
    pub fn is_open(&self, node: &NodeId) -> bool {
        self.lock().contains_key(node)
    }

    /// The unowned box showing pairing code `code`.
    pub fn box_with_code(&self, code: &str) -> Option<NodeId> {
        self.codes().get(&pairing_code_key(code)).cloned()
    }

    /// Box `node` shows pairing code `code`, or none.
    pub(crate) fn set_code(&self, node: &NodeId, code: Option<&str>) {
        let mut codes = self.codes();
        codes.retain(|_, n| n != node);
        if let Some(code) = code {
            codes.insert(pairing_code_key(code), node.clone());
        }
    }

    /// Sends `message` (made with a fresh id) down box `node`'s channel and waits for
    /// its answer: status, signature and body.
    pub async fn ask(
        &self,
        node: &NodeId,
        message: impl FnOnce(u64) -> ChannelMessage,
    ) -> Result<(u16, Option<String>, String)> {
        self.ask_within(node, ANSWER_TIMEOUT, message).await
    }

    /// As `ask`, waiting at most `within`.
    pub async fn ask_within(
        &self,
        node: &NodeId,
        within: Duration,
        message: impl FnOnce(u64) -> ChannelMessage,
    ) -> Result<(u16, Option<String>, String)> {
        let sender = self
            .lock()
            .get(node)
            .map(|(_, sender)| sender.clone())
            .ok_or_else(|| ApiError::NotFound(format!("box {node} has no control channel open")))?;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        sender.try_send((message(id), answer)).map_err(|_| {
            ApiError::Rejected(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("box {node}'s control channel is busy or closing; try again"),
            )
        })?;
        let answer = tokio::time::timeout(within, answered)
            .await
            .map_err(|_| {
                ApiError::Rejected(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "box {node} did not answer within {:.1} s",
                        within.as_secs_f32()
                    ),
                )
            })?
            .map_err(|_| ApiError::NotFound(format!("box {node}'s control channel closed")))?;
        match answer {
            ChannelMessage::Answer {
                status,
                signature,
                body,
                ..
            } => Ok((status, signature, body)),
            _ => Err(ApiError::Rejected(
                StatusCode::BAD_GATEWAY,
                "the box answered with something else than an answer".into(),
            )),
        }
    }
}

pub fn routes() -> Router<State> {
    Router::new()
        .route("/api/nodes/{id}/channel", get(channel))
        .route("/api/relay/{id}/{*route}", any(relay))
}

async fn channel(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
    signed: Signed,
) -> Result<HttpResponse> {
    let id = NodeId::new(id).map_err(ApiError::BadRequest)?;
    if signed.by.node != id {
        return Err(ApiError::Forbidden(format!(
            "the channel of {id} is opened by {id}, not by {}",
            signed.by.node
        )));
    }
    // Registered before the box hears that its channel is open, so that a request for
    // it from then on waits in the queue instead of finding no channel. A box that
    // opens a new channel replaces its old one.
    let (sender, requests) = mpsc::channel(QUEUE);
    let channels = Arc::clone(&state.channels);
    let serial = channels
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    channels.lock().insert(id.clone(), (serial, sender));
    let failed = (Arc::clone(&channels), id.clone());
    Ok(ws
        .on_failed_upgrade(move |e| {
            tracing::debug!(node = %failed.1, "control channel not opened: {e}");
            failed.0.close(&failed.1, serial);
        })
        .on_upgrade(move |socket| async move {
            tracing::debug!(node = %id, "control channel open");
            carry(socket, requests, &state, &id).await;
            channels.close(&id, serial);
            tracing::debug!(node = %id, "control channel closed");
        }))
}

/// Sends requests down the channel and hands each answer to its waiter, until the box
/// closes the channel or stops answering pings; notes what the box says of its owner.
async fn carry(
    mut socket: WebSocket,
    mut requests: mpsc::Receiver<Relayed>,
    state: &State,
    node: &NodeId,
) {
    let mut waiting: HashMap<u64, oneshot::Sender<ChannelMessage>> = HashMap::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut silent = 0;
    loop {
        tokio::select! {
            relayed = requests.recv() => {
                let Some((request, answer)) = relayed else { return };
                let (ChannelMessage::Request { id, .. }
                | ChannelMessage::Claim { id, .. }
                | ChannelMessage::Command { id, .. }) = &request
                else {
                    continue;
                };
                waiting.retain(|_, w| !w.is_closed());
                waiting.insert(*id, answer);
                let Ok(text) = serde_json::to_string(&request) else { continue };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            message = socket.recv() => {
                silent = 0;
                match message {
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<ChannelMessage>(&text) {
                            Ok(answer @ ChannelMessage::Answer { id, .. }) => {
                                if let Some(waiter) = waiting.remove(&id) {
                                    let _ = waiter.send(answer);
                                }
                            }
                            Ok(ChannelMessage::Pairing { owner, code }) => {
                                state.channels.set_code(node, code.as_deref().filter(|_| owner.is_none()));
                                if let Err(e) = state.store.box_owned_by(node, owner.as_deref()).await {
                                    tracing::warn!(%node, "cannot note the box's owner: {e}");
                                }
                            }
                            _ => tracing::debug!("a control channel sent something else than an answer"),
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                silent += 1;
                if silent > 3 || socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `/api/relay/{id}/{route}`: a request for box `id`'s peer route, carried down its
/// channel. 404 when the box has none open, 504 when it does not answer in time.
async fn relay(
    Axum(state): Axum<State>,
    Path((id, route)): Path<(String, String)>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<HttpResponse> {
    let id = NodeId::new(id).map_err(ApiError::BadRequest)?;
    let (parts, body) = request.into_parts();
    let body = text_body(body, MAX_BODY).await?;
    let path = match parts.uri.query() {
        Some(query) => format!("/{route}?{query}"),
        None => format!("/{route}"),
    };
    let signature = parts
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let caller = caller.ip().to_canonical();
    let method = parts.method.to_string();
    let (status, signature, body) = state
        .channels
        .ask(&id, |id| ChannelMessage::Request {
            id,
            method,
            path,
            caller,
            signature,
            body,
        })
        .await?;
    let mut response = json_answer(status, body);
    if let Some(signature) = signature.and_then(|s| s.parse().ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(SIGNATURE_HEADER), signature);
    }
    Ok(response)
}

/// A body carried down a channel: UTF-8 text of at most `max` bytes.
pub(crate) async fn text_body(body: axum::body::Body, max: usize) -> Result<String> {
    let body = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::Rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes"),
        )
    })?;
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("a body for a box is UTF-8 text".into()))
}

/// A box's answer from its channel, as the portal's answer.
pub(crate) fn json_answer(status: u16, body: String) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (
        status,
        [(header::CONTENT_TYPE, "application/json".to_owned())],
        body,
    )
        .into_response()
}
