//! Boxes' control channels. Every box keeps one WebSocket open to the portal
//! (`GET /api/nodes/{id}/channel`, signed by the box), so that it can be reached with
//! no port open on its router: another box that cannot connect to it sends its
//! request to `/api/relay/{id}/{route}`, and the portal passes it down the channel and
//! the box's answer back. Requests and answers stay signed by the boxes that made
//! them: the portal can drop them, not forge them. Only the boxes' peer routes are
//! relayed (the box's own dispatcher takes nothing else).

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
use proto::portal::ChannelMessage;
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
}

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (u64, mpsc::Sender<Relayed>)>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
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
    Ok(ws.on_upgrade(move |socket| async move {
        let (sender, requests) = mpsc::channel(QUEUE);
        let channels = Arc::clone(&state.channels);
        let serial = channels
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A box that opens a new channel replaces its old one.
        channels.lock().insert(id.clone(), (serial, sender));
        tracing::debug!(node = %id, "control channel open");
        carry(socket, requests).await;
        let mut open = channels.lock();
        if open.get(&id).is_some_and(|(s, _)| *s == serial) {
            open.remove(&id);
        }
        tracing::debug!(node = %id, "control channel closed");
    }))
}

/// Sends requests down the channel and hands each answer to its waiter, until the box
/// closes the channel or stops answering pings.
async fn carry(mut socket: WebSocket, mut requests: mpsc::Receiver<Relayed>) {
    let mut waiting: HashMap<u64, oneshot::Sender<ChannelMessage>> = HashMap::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut silent = 0;
    loop {
        tokio::select! {
            relayed = requests.recv() => {
                let Some((request, answer)) = relayed else { return };
                let ChannelMessage::Request { id, .. } = &request else { continue };
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
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::Rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    })?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("a relayed body is UTF-8 text".into()))?;
    let path = match parts.uri.query() {
        Some(query) => format!("/{route}?{query}"),
        None => format!("/{route}"),
    };
    let signature = parts
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sender = state
        .channels
        .lock()
        .get(&id)
        .map(|(_, sender)| sender.clone())
        .ok_or_else(|| ApiError::NotFound(format!("box {id} has no control channel open")))?;
    let request = ChannelMessage::Request {
        id: state
            .channels
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        method: parts.method.to_string(),
        path,
        caller: caller.ip().to_canonical(),
        signature,
        body,
    };
    let (answer, answered) = oneshot::channel();
    sender.try_send((request, answer)).map_err(|_| {
        ApiError::Rejected(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("box {id}'s control channel is busy or closing; try again"),
        )
    })?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, answered)
        .await
        .map_err(|_| {
            ApiError::Rejected(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "box {id} did not answer within {} s",
                    ANSWER_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|_| ApiError::NotFound(format!("box {id}'s control channel closed")))?;
    let ChannelMessage::Answer {
        status,
        signature,
        body,
        ..
    } = answer
    else {
        return Err(ApiError::Rejected(
            StatusCode::BAD_GATEWAY,
            "the box answered with something else than an answer".into(),
        ));
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json".to_owned())],
        body,
    )
        .into_response();
    if let Some(signature) = signature.and_then(|s| s.parse().ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(SIGNATURE_HEADER), signature);
    }
    Ok(response)
}
