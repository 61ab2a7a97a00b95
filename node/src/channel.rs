//! The box's control channel to the portal: one WebSocket the box opens and keeps
//! open (`GET /api/nodes/{id}/channel`, signed), so that other boxes reach it when its
//! router lets nothing in. The portal sends down it the requests they relay
//! (`ChannelMessage::Request`); the box runs each through its peer routes, exactly as
//! if it had come in directly from the caller's address (signature, limits, the
//! engine), and sends the signed answer back. A lost channel is opened again, after
//! 1 s doubling to 30 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use futures_util::{SinkExt, StreamExt};
use proto::identity::SIGNATURE_HEADER;
use proto::portal::ChannelMessage;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;

use crate::Node;

/// Longest answer sent back up the channel, as peers read at most.
const MAX_ANSWER: usize = 1 << 20;
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Keeps the channel open for as long as the box runs.
pub async fn keep(node: Arc<Node>) {
    let Some(portal) = node.control.portal().map(str::to_owned) else {
        return;
    };
    let mut retry = RETRY_MIN;
    let mut failing = false;
    loop {
        match open(&node, &portal).await {
            Ok(socket) => {
                if failing {
                    tracing::info!("control channel to the portal open again");
                }
                failing = false;
                retry = RETRY_MIN;
                if let Err(e) = serve(&node, socket).await {
                    tracing::debug!("control channel closed: {e}");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "cannot open the control channel to the portal, so boxes that \
                         cannot connect here cannot reach this box either: {e}"
                    );
                }
                failing = true;
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(node: &Node, portal: &str) -> Result<Socket, String> {
    let path = format!("/api/nodes/{}/channel", node.control.me().id);
    let url = format!("{}{path}", portal.replacen("http", "ws", 1));
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let signature = node
        .control
        .key()
        .sign_request("GET", &path, b"", web::signed::now_unix_ms());
    request.headers_mut().insert(
        SIGNATURE_HEADER,
        signature.parse().map_err(|_| "a signature is ASCII")?,
    );
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// Answers the requests that come down the channel until it closes.
async fn serve(node: &Arc<Node>, socket: Socket) -> Result<(), String> {
    let (mut to_portal, mut from_portal) = socket.split();
    let (answers, mut answered) = mpsc::unbounded_channel::<ChannelMessage>();
    let routes = crate::api::peer_router(Arc::clone(node));
    loop {
        tokio::select! {
            message = from_portal.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                };
                let request = match serde_json::from_str::<ChannelMessage>(&text) {
                    Ok(request @ ChannelMessage::Request { .. }) => request,
                    _ => {
                        tracing::debug!("the portal sent something else than a request");
                        continue;
                    }
                };
                let (routes, answers) = (routes.clone(), answers.clone());
                tokio::spawn(async move {
                    if let Some(answer) = dispatch(routes, request).await {
                        let _ = answers.send(answer);
                    }
                });
            }
            Some(answer) = answered.recv() => {
                let text = serde_json::to_string(&answer).map_err(|e| e.to_string())?;
                to_portal
                    .send(Message::Text(text.into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
}

/// Runs one relayed request through the box's peer routes.
async fn dispatch(routes: axum::Router, request: ChannelMessage) -> Option<ChannelMessage> {
    let ChannelMessage::Request {
        id,
        method,
        path,
        caller,
        signature,
        body,
    } = request
    else {
        return None;
    };
    let mut builder = axum::http::Request::builder()
        .method(method.as_str())
        .uri(&path)
        .header(axum::http::header::CONTENT_TYPE, "application/json");
    if let Some(signature) = &signature {
        builder = builder.header(SIGNATURE_HEADER, signature);
    }
    let answer = |status: u16, signature: Option<String>, body: String| ChannelMessage::Answer {
        id,
        status,
        signature,
        body,
    };
    let Ok(mut request) = builder.body(Body::from(body)) else {
        return Some(answer(
            400,
            None,
            r#"{"error":"a malformed relayed request"}"#.into(),
        ));
    };
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(caller, 0)));
    let response = routes.oneshot(request).await.ok()?;
    let status = response.status().as_u16();
    let signature = response
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
        .await
        .ok()?;
    Some(answer(
        status,
        signature,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
