//! The map's routes: boxes report their place in the network, browsers read it whole
//! or follow it live over a WebSocket, and a browser with no box of its own is told
//! where to play.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State as Axum};
use axum::http::StatusCode;
use axum::response::Response as HttpResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use proto::overlay::NodeId;
use proto::portal::{MapEvent, NodeReport, PlayAt, TamperEntry, TamperReport};
use tokio::sync::broadcast::error::RecvError;

use crate::live::Versions;
use crate::routes::{stream_id, ApiError, Result, Signed};
use crate::State;

pub fn routes() -> Router<State> {
    Router::new()
        .route("/api/nodes/{id}", put(report).delete(leave))
        .route("/api/nodes/{id}/key", get(node_key))
        .route("/api/nodes/{id}/reports", post(report_tamper))
        .route("/api/reports", get(tamper_reports))
        .route("/api/map", get(map))
        .route("/api/map/ws", get(map_ws))
        .route("/api/streams/{id}/play", get(play))
}

fn node_id(id: String) -> Result<NodeId> {
    NodeId::new(id).map_err(ApiError::BadRequest)
}

async fn report(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<StatusCode> {
    let id = node_id(id)?;
    let report: NodeReport = signed.json()?;
    if report.peer.id != id {
        return Err(ApiError::BadRequest(format!(
            "the report is about {}, not {id}",
            report.peer.id
        )));
    }
    report.check().map_err(ApiError::BadRequest)?;
    signed.check_peer(&report.peer, "the report")?;
    state
        .live
        .report(report, state.now())
        .map_err(|e| match e {
            crate::live::Refused::Taken(_) => ApiError::Conflict(e.to_string()),
            crate::live::Refused::Crowded(_) => {
                ApiError::Rejected(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/nodes/{id}/key`: the public key a supernode or a stream's source signed
/// with, as the portal recorded it.
async fn node_key(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let id = node_id(id)?;
    let key = state
        .store
        .node_key(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no key recorded for {id}")))?;
    Ok(Json(serde_json::json!({ "id": id, "key": key })))
}

/// `POST /api/nodes/{id}/reports`: box `id`, on the map, caught its parent tampering.
async fn report_tamper(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<StatusCode> {
    let id = node_id(id)?;
    let report: TamperReport = signed.json()?;
    report.check(&id).map_err(ApiError::BadRequest)?;
    let known = state.live.node(&id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no box {id} on the map: a box reports its place before it reports others"
        ))
    })?;
    signed.check_peer(&known.peer, "the report")?;
    state.store.report_tamper(&id, &report, state.now()).await?;
    tracing::warn!(
        reporter = %id,
        parent = %report.parent,
        stream = %report.stream,
        "a box reports that its parent {}",
        report.what
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/reports`: the tampering boxes reported, newest first.
async fn tamper_reports(Axum(state): Axum<State>) -> Result<Json<Vec<TamperEntry>>> {
    Ok(Json(state.store.tamper_reports().await?))
}

async fn leave(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<StatusCode> {
    let id = node_id(id)?;
    let known = state
        .live
        .node(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no box {id} on the map")))?;
    signed.check_peer(&known.peer, "the box")?;
    state.live.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot(state: &State, nodes: Vec<NodeReport>, thumbnails: Versions) -> Result<MapEvent> {
    Ok(MapEvent::Snapshot {
        nodes,
        streams: state.store.streams(state.now()).await?,
        thumbnails,
    })
}

/// `GET /api/map`: every box's report and every live stream.
async fn map(Axum(state): Axum<State>) -> Result<Json<MapEvent>> {
    let (nodes, thumbnails) = (state.live.nodes(), state.live.versions());
    Ok(Json(snapshot(&state, nodes, thumbnails).await?))
}

/// `GET /api/map/ws`: the map, then each change as it happens. Only the portal
/// speaks; what a browser sends is ignored.
async fn map_ws(Axum(state): Axum<State>, ws: WebSocketUpgrade) -> HttpResponse {
    ws.on_upgrade(move |socket| feed(socket, state))
}

async fn feed(mut socket: WebSocket, state: State) {
    loop {
        let (nodes, thumbnails, mut changes) = state.live.subscribe();
        let first = match snapshot(&state, nodes, thumbnails).await {
            Ok(first) => first,
            Err(e) => {
                tracing::warn!("map feed: {e}");
                return;
            }
        };
        let Ok(first) = serde_json::to_string(&first) else {
            return;
        };
        if socket.send(Message::Text(first.into())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(json) => {
                        if socket.send(Message::Text(json.as_ref().into())).await.is_err() {
                            return;
                        }
                    }
                    // Too far behind to catch up change by change: start again.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

/// `GET /api/streams/{id}/play`: the shallowest box holding the stream with a forward
/// slot to spare, for a browser with no box of its own.
async fn play(Axum(state): Axum<State>, Path(id): Path<String>) -> Result<Json<PlayAt>> {
    let id = stream_id(id)?;
    if state.store.stream(&id, state.now()).await?.is_none() {
        return Err(ApiError::NotFound(format!("no live stream {id}")));
    }
    let best = state
        .live
        .nodes()
        .into_iter()
        .filter_map(|node| {
            let place = node.streams.iter().find(|p| p.stream == id)?;
            let free = place.free();
            let depth = place.depth;
            (place.flowing && free > 0).then_some((depth, std::cmp::Reverse(free), node))
        })
        .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let Some((depth, _, node)) = best else {
        return Err(ApiError::Rejected(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no box holding {id} has a slot free right now; try again soon, \
                 or run a box of your own"
            ),
        ));
    };
    Ok(Json(PlayAt {
        ticket_url: format!("http://{}/streams/{id}/viewers", node.peer.api),
        depth,
        node: node.peer,
    }))
}
