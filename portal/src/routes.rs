//! The portal's routes. Bodies are JSON and checked before anything is stored; every
//! error is `{"error": …}` with the status that says whose fault it is.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, State as Axum};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use proto::overlay::{NodeId, Peer, Request, Response, StreamId};
use proto::portal::{StreamEntry, StreamUpdate, MAX_THUMBNAIL_BYTES};
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

pub(crate) type Caller = ConnectInfo<SocketAddr>;
pub(crate) type Result<T> = std::result::Result<T, ApiError>;

/// A box's request whose signature holds (`proto::identity`): who signed it, from
/// where, and its body. Everything a box changes on the portal comes signed.
pub(crate) struct Signed {
    pub by: proto::identity::SignedBy,
    pub caller: SocketAddr,
    pub body: Bytes,
    verifier: web::signed::Verifier,
}

impl FromRequest<State> for Signed {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &State) -> Result<Signed> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .map(|c| c.0)
            .ok_or_else(|| ApiError::BadRequest("no caller address".into()))?;
        let (by, body) = state
            .verifier
            .read(request, MAX_BODY)
            .await
            .map_err(|r| ApiError::Rejected(r.status, r.error))?;
        Ok(Signed {
            by,
            caller,
            body,
            verifier: state.verifier.clone(),
        })
    }
}

impl Signed {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        web::signed::parse_json(&self.body).map_err(|r| ApiError::Rejected(r.status, r.error))
    }

    /// A call about `peer` must be signed by `peer` and come from its own address.
    pub fn check_peer(&self, peer: &Peer, what: &str) -> Result<()> {
        self.verifier
            .speaks_for(&self.by, &peer.id, self.caller.ip())
            .map_err(|r| ApiError::Rejected(r.status, r.error))?;
        check_caller(self.caller, peer, what)
    }
}

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
        .route("/api/streams/{id}/thumbnail", put(set_thumbnail))
        .route("/api/streams/{id}/thumbnail.jpg", get(thumbnail))
        .merge(crate::network::routes())
        .merge(crate::reach::routes())
        .merge(crate::channel::routes())
        .merge(crate::owners::routes())
        .fallback(page)
        .method_not_allowed_fallback(|| async {
            ApiError::Rejected(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The web UI, for every `GET` no API route takes.
async fn page(method: Method, uri: Uri) -> std::result::Result<HttpResponse, ApiError> {
    web::serve(web::portal, &method, uri.path())
        .ok_or_else(|| ApiError::NotFound("no such resource".into()))
}

/// A call about `peer` must come from `peer`'s own address.
pub(crate) fn check_caller(caller: SocketAddr, peer: &Peer, what: &str) -> Result<()> {
    web::signed::check_own_address(caller.ip(), peer, what).map_err(ApiError::Forbidden)
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

async fn promote(Axum(state): Axum<State>, signed: Signed) -> Result<Json<Response>> {
    let Request::PromoteSupernode { peer, viewers } = signed.json()? else {
        return Err(ApiError::BadRequest(
            "this route takes a request of type \"promote_supernode\"".into(),
        ));
    };
    signed.check_peer(&peer, "the supernode")?;
    if viewers.len() > MAX_VIEWER_STREAMS {
        return Err(ApiError::BadRequest(format!(
            "viewers: at most {MAX_VIEWER_STREAMS} streams"
        )));
    }
    let now = state.now();
    let viewers: Vec<(StreamId, u32)> = viewers.into_iter().collect();
    state
        .store
        .renew_supernode(&peer, &signed.by.key, &viewers, now)
        .await?;
    let supernodes = state
        .store
        .supernodes(now, state.bootstrap_list, Some(&peer.id))
        .await?;
    Ok(Json(Response::Supernodes { supernodes }))
}

async fn retire(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Json<Response>> {
    let id = NodeId::new(id).map_err(ApiError::BadRequest)?;
    let peer = state
        .store
        .supernode(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no supernode {id}")))?;
    signed.check_peer(&peer, "the supernode")?;
    state.store.remove_supernode(&id).await?;
    Ok(Json(Response::Done))
}

async fn streams(Axum(state): Axum<State>) -> Result<Json<Vec<StreamEntry>>> {
    Ok(Json(state.store.streams(state.now()).await?))
}

pub(crate) fn stream_id(id: String) -> Result<StreamId> {
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
    Path(id): Path<String>,
    signed: Signed,
) -> Result<(StatusCode, Json<StreamEntry>)> {
    let id = stream_id(id)?;
    let update: StreamUpdate = signed.json()?;
    update.check().map_err(ApiError::BadRequest)?;
    signed.check_peer(&update.source, "the stream's source")?;
    let now = state.now();
    let created = match state
        .store
        .list_stream(&id, &update, &signed.by.key, now)
        .await
    {
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
    state.live.stream_listed(entry.clone());
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(entry)))
}

async fn unlist_stream(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<StatusCode> {
    let id = stream_id(id)?;
    let source = state
        .store
        .stream_source(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no stream {id}")))?;
    signed.check_peer(&source, "the stream's source")?;
    state.store.unlist_stream(&id).await?;
    state.live.stream_gone(&id);
    tracing::info!(stream = %id, "stream taken off");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/streams/{id}/thumbnail`: a still of a live stream, from its source.
async fn set_thumbnail(
    Axum(state): Axum<State>,
    Path(id): Path<String>,
    headers: HeaderMap,
    signed: Signed,
) -> Result<StatusCode> {
    let jpeg = signed.body.clone();
    let id = stream_id(id)?;
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("image/jpeg")
        || !jpeg.starts_with(&[0xff, 0xd8, 0xff])
    {
        return Err(ApiError::Rejected(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a thumbnail is a JPEG, sent as image/jpeg".into(),
        ));
    }
    if jpeg.len() > MAX_THUMBNAIL_BYTES {
        return Err(ApiError::Rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a thumbnail is at most {MAX_THUMBNAIL_BYTES} bytes"),
        ));
    }
    let entry = state
        .store
        .stream(&id, state.now())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no live stream {id}")))?;
    signed.check_peer(&entry.source, "the stream's source")?;
    state.live.set_thumbnail(&id, jpeg);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/streams/{id}/thumbnail.jpg`: the stream's latest still.
async fn thumbnail(Axum(state): Axum<State>, Path(id): Path<String>) -> Result<HttpResponse> {
    let id = stream_id(id)?;
    let thumbnail = state
        .live
        .thumbnail(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no still of {id} yet")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg".to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (header::ETAG, format!("\"{}\"", thumbnail.version)),
        ],
        thumbnail.jpeg,
    )
        .into_response())
}
