//! The box's control channel to the portal: one WebSocket the box opens and keeps
//! open (`GET /api/nodes/{id}/channel`, signed), so that other boxes reach it when its
//! router lets nothing in. The portal sends down it the requests they relay
//! (`ChannelMessage::Request`); the box runs each through its peer routes, exactly as
//! if it had come in directly from the caller's address (signature, limits, the
//! engine), and sends the signed answer back. A lost channel is opened again, after
//! 1 s doubling to 30 s.
//!
//! The channel also carries the box's management by its owner (`crate::owner`): the
//! box says who owns it or its pairing code, takes a claim with that code, and runs
//! its owner's commands through its admin routes, each one authorised and logged.

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

/// Answers the requests that come down the channel until it closes, and tells the
/// portal who owns the box whenever that changes.
async fn serve(node: &Arc<Node>, socket: Socket) -> Result<(), String> {
    let (mut to_portal, mut from_portal) = socket.split();
    let (answers, mut answered) = mpsc::unbounded_channel::<ChannelMessage>();
    let routes = crate::api::peer_router(Arc::clone(node));
    let admin = crate::api::router(Arc::clone(node));
    let mut owner = node.owner.watch();
    owner.mark_changed();
    loop {
        tokio::select! {
            message = from_portal.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                };
                let message = match serde_json::from_str::<ChannelMessage>(&text) {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::debug!("the portal sent what is not a channel message: {e}");
                        continue;
                    }
                };
                let answers = answers.clone();
                match message {
                    request @ ChannelMessage::Request { .. } => {
                        let routes = routes.clone();
                        tokio::spawn(async move {
                            if let Some(answer) = dispatch(routes, request).await {
                                let _ = answers.send(answer);
                            }
                        });
                    }
                    ChannelMessage::Claim { id, owner, code } => {
                        let now = web::signed::now_unix_ms() / 1000;
                        let answer = match node.owner.claim(&owner, &code, now) {
                            Ok(()) => answer(id, 200, serde_json::json!({ "owner": owner })),
                            Err(refused) => {
                                tracing::info!(%owner, "a claim through the portal refused: {refused}");
                                answer(id, refused.status, serde_json::json!({ "error": refused.message }))
                            }
                        };
                        let _ = answers.send(answer);
                    }
                    command @ ChannelMessage::Command { .. } => {
                        let (node, admin) = (Arc::clone(node), admin.clone());
                        tokio::spawn(async move {
                            if let Some(answer) = command_of_owner(&node, admin, command).await {
                                let _ = answers.send(answer);
                            }
                        });
                    }
                    _ => tracing::debug!("the portal sent a message meant for it"),
                }
            }
            Ok(()) = owner.changed() => {
                let state = owner.borrow_and_update().clone();
                let pairing = ChannelMessage::Pairing {
                    owner: state.owner.map(|o| o.owner),
                    code: state.pairing_code,
                };
                send(&mut to_portal, &pairing).await?;
            }
            Some(answer) = answered.recv() => send(&mut to_portal, &answer).await?,
        }
    }
}

async fn send(
    to_portal: &mut (impl SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin),
    message: &ChannelMessage,
) -> Result<(), String> {
    let text = serde_json::to_string(message).map_err(|e| e.to_string())?;
    to_portal
        .send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())
}

fn answer(id: u64, status: u16, body: serde_json::Value) -> ChannelMessage {
    ChannelMessage::Answer {
        id,
        status,
        signature: None,
        body: body.to_string(),
    }
}

/// Runs an owner's command through the box's admin routes, with the box's own
/// admin token, once the owner and the route are allowed; logs it either way.
async fn command_of_owner(
    node: &Node,
    admin: axum::Router,
    command: ChannelMessage,
) -> Option<ChannelMessage> {
    let ChannelMessage::Command {
        id,
        owner,
        method,
        path,
        body,
    } = command
    else {
        return None;
    };
    if let Err(refused) = node.owner.authorise(&owner, &method, &path) {
        tracing::warn!(%owner, "refused {method} {path} from the portal: {refused}");
        return Some(answer(
            id,
            refused.status,
            serde_json::json!({ "error": refused.message }),
        ));
    }
    let request = axum::http::Request::builder()
        .method(method.as_str())
        .uri(&path)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {}", node.admin_token),
        )
        .body(Body::from(body.clone()));
    let Ok(request) = request else {
        return Some(answer(
            id,
            400,
            serde_json::json!({ "error": "a malformed command" }),
        ));
    };
    let response = admin.oneshot(request).await.ok()?;
    let status = response.status().as_u16();
    let answered = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
        .await
        .ok()?;
    // Reads are routine; changes are the owner's acts on the box.
    if method == "GET" {
        tracing::debug!(%owner, "{method} {path} from the owner through the portal: {status}");
    } else {
        tracing::info!(%owner, %body, "{method} {path} from the owner through the portal: {status}");
    }
    Some(ChannelMessage::Answer {
        id,
        status,
        signature: None,
        body: String::from_utf8_lossy(&answered).into_owned(),
    })
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
