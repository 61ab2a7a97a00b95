//! The portal's routes. Bodies are JSON and checked before anything is stored; every
//! error is `{"error": …}` with the status that says whose fault it is.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State as Axum};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::{Json, Router};
use proto::overlay::{NodeId, Peer, Request, Response, StreamId};
use proto::portal::{StreamEntry, StreamUpdate};
use serde::Serialize;

use crate::store::ListError;
use crate::State;

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// Most streams one supernode reports viewers of.
const MAX_VIEWER_STREAMS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{1}")]
    Rejected(StatusCode, String),
    #[error("the portal's database failed; try again")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Rejected(status, _) => *status,
            ApiError::Db(e) => {
                tracing::error!("database: {e}");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let body = proto::ApiError {
            error: self.to_string(),
            field: None,
        };
        (status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError::Rejected(rejection.status(), rejection.body_text())
    }
}

type Caller = ConnectInfo<SocketAddr>;
type Result<T> = std::result::Result<T, ApiError>;

pub fn router(state: State) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/supernodes", get(bootstrap).post(promote))
        .route("/api/supernodes/{id}", axum::routing::delete(retire))
        .route("/api/streams", get(streams))
        .route(
            "/api/streams/{id}",
            get(stream).put(list_stream).delete(unlist_stream),
        )
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Rejected(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A call about `peer` must come from `peer`'s own address.
fn check_caller(caller: SocketAddr, peer: &Peer, what: &str) -> Result<()> {
    let ip = caller.ip().to_canonical();
    if peer.api.ip().to_canonical() == ip {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{what} names {} but comes from {ip}; a box speaks only for itself",
            peer.api.ip()
        )))
    }
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    supernodes: i64,
    streams: i64,
}

async fn status(Axum(state): Axum<State>) -> Result<Json<Status>> {
    let (supernodes, streams) = state.store.counts(state.now()).await?;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        supernodes,
        streams,
    }))
}

async fn bootstrap(Axum(state): Axum<State>) -> Result<Json<Response>> {
    let supernodes = state
        .store
        .supernodes(state.now(), state.bootstrap_list, None)
        .await?;
    Ok(Json(Response::Supernodes { supernodes }))
}

async fn promote(
    Axum(state): Axum<State>,
    ConnectInfo(caller): Caller,
    body: std::result::Result<Json<Request>, JsonRejection>,
) -> Result<Json<Response>> {
    let Json(request) = body?;
    let Request::PromoteSupernode { peer, viewers } = request else {
        return Err(ApiError::BadRequest(
            "this route takes a request of type \"promote_supernode\"".into(),
        ));
    };
    check_caller(caller, &peer, "the supernode")?;
    if viewers.len() > MAX_VIEWER_STREAMS {
        return Err(ApiError::BadRequest(format!(
            "viewers: at most {MAX_VIEWER_STREAMS} streams"
        )));
    }
    let now = state.now();
    let viewers: Vec<(StreamId, u32)> = viewers.into_iter().collect();
    state.store.renew_supernode(&peer, &viewers, now).await?;
    let supernodes = state
        .store
        .supernodes(now, state.bootstrap_list, Some(&peer.id))
        .await?;
    Ok(Json(Response::Supernodes { supernodes }))
}

async fn retire(
    Axum(state): Axum<State>,
    ConnectInfo(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Response>> {
    let id = NodeId::new(id).map_err(ApiError::BadRequest)?;
    let peer = state
        .store
        .supernode(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no supernode {id}")))?;
    check_caller(caller, &peer, "the supernode")?;
    state.store.remove_supernode(&id).await?;
    Ok(Json(Response::Done))
}

async fn streams(Axum(state): Axum<State>) -> Result<Json<Vec<StreamEntry>>> {
    Ok(Json(state.store.streams(state.now()).await?))
}

fn stream_id(id: String) -> Result<StreamId> {
    StreamId::new(id).map_err(ApiError::BadRequest)
}

async fn stream(Axum(state): Axum<State>, Path(id): Path<String>) -> Result<Json<StreamEntry>> {
    let id = stream_id(id)?;
    state
        .store
        .stream(&id, state.now())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no live stream {id}")))
}

async fn list_stream(
    Axum(state): Axum<State>,
    ConnectInfo(caller): Caller,
    Path(id): Path<String>,
    body: std::result::Result<Json<StreamUpdate>, JsonRejection>,
) -> Result<(StatusCode, Json<StreamEntry>)> {
    let id = stream_id(id)?;
    let Json(update) = body?;
    update.check().map_err(ApiError::BadRequest)?;
    check_caller(caller, &update.source, "the stream's source")?;
    let now = state.now();
    let created = match state.store.list_stream(&id, &update, now).await {
        Ok(created) => created,
        Err(e @ ListError::Taken { .. }) => return Err(ApiError::Conflict(e.to_string())),
        Err(ListError::Db(e)) => return Err(e.into()),
    };
    if created {
        tracing::info!(stream = %id, source = %update.source.id, "stream listed");
    }
    let entry = state
        .store
        .stream(&id, now)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} expired at once")))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(entry)))
}

async fn unlist_stream(
    Axum(state): Axum<State>,
    ConnectInfo(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let id = stream_id(id)?;
    let source = state
        .store
        .stream_source(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no stream {id}")))?;
    check_caller(caller, &source, "the stream's source")?;
    state.store.unlist_stream(&id).await?;
    tracing::info!(stream = %id, "stream taken off");
    Ok(StatusCode::NO_CONTENT)
}
