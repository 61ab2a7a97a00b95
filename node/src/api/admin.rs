//! Admin routes: what the box's owner asks of it (watch, seed, stop, leave, publish
//! keys, listings, static relays, settings, the broadcast, its owner at the portal). Each needs `Authorization: Bearer TOKEN`, the token
//! the node wrote into its data directory on first start.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use proto::overlay::StreamId;
use proto::portal::StreamUpdate;
use serde::{Deserialize, Serialize};

use super::session::{from_own_page, page_session, session_token};
use super::ApiError;
use crate::config::ConfigError;
use crate::control::{PortalError, Role, WatchError};
use crate::owner::OwnerState;
use crate::reconfigure::{BroadcastError, ReconfigureError};
use crate::settings::Effective;
use crate::Node;

/// Proof that the caller holds the admin token.
pub struct Admin;

impl FromRequestParts<Arc<Node>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Admin, ApiError> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(token) if node.is_admin_token(token.trim()) => return Ok(Admin),
            Some(_) => return Err(ApiError::Unauthorized("wrong admin token".into())),
            None => {}
        }
        if let Some(checked) = page_session(&parts.headers, node) {
            return checked.map(|()| Admin);
        }
        Err(ApiError::Unauthorized(format!(
            "admin calls need the node's token: Authorization: Bearer $(cat {})",
            crate::auth::token_path(&node.config().data_dir).display()
        )))
    }
}

/// The owner, or someone watching on this box or its network (`play_without_ticket`)
/// from a page the box trusts (its portal's, its own, or one served on this machine):
/// who may ask the box to watch a stream for local players.
pub struct Viewer {
    pub owner: bool,
}

impl FromRequestParts<Arc<Node>> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Viewer, ApiError> {
        let has_credentials = parts.headers.contains_key(header::AUTHORIZATION)
            || session_token(&parts.headers, node).is_some();
        if has_credentials {
            return Admin::from_request_parts(parts, node)
                .await
                .map(|_| Viewer { owner: true });
        }
        let local = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| node.plays_without_ticket(peer.ip()));
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        let trusted = match origin {
            None => true,
            Some(origin) => {
                super::trusted_origin(origin, node.config().portal.as_deref())
                    || from_own_page(&parts.headers)
            }
        };
        match (local, trusted) {
            (true, true) => Ok(Viewer { owner: false }),
            (false, _) => Err(ApiError::Unauthorized(
                "only players on this box or its network may ask it to watch; \
                 others need the admin token"
                    .into(),
            )),
            (true, false) => Err(ApiError::Forbidden(
                "pages from this origin may not steer the box".into(),
            )),
        }
    }
}

pub(super) fn stream_id(id: String) -> Result<StreamId, ApiError> {
    StreamId::new(id).map_err(ApiError::BadRequest)
}

/// `POST /streams`: a new stream to publish here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewStream {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StreamCreated {
    pub id: StreamId,
    /// Where a publisher (ffmpeg, OBS) sends the stream, key included.
    pub publish_url: String,
}

/// Creates a publish key for a stream, kept until the node restarts (keys in the
/// config file last).
pub async fn create_stream(
    _: Admin,
    State(node): State<Arc<Node>>,
    body: Result<Json<NewStream>, JsonRejection>,
) -> Result<(StatusCode, Json<StreamCreated>), ApiError> {
    let Json(new) = body?;
    let id = stream_id(new.id)?;
    let listing = StreamUpdate {
        title: new.title.unwrap_or_else(|| id.to_string()),
        description: new.description,
        source: node.control().me(),
        bitrate_kbps: 0,
        width: 0,
        height: 0,
    };
    listing.check().map_err(ApiError::BadRequest)?;
    let key = node
        .add_stream_key(&id, listing)
        .ok_or_else(|| ApiError::Conflict(format!("stream \"{id}\" already has a publish key")))?;
    let publish_url = format!(
        "rtmp://{}/{}/{id}?key={key}",
        node.control().me().rtmp,
        crate::rtmp::APP
    );
    Ok((StatusCode::CREATED, Json(StreamCreated { id, publish_url })))
}

/// `PUT /streams/{id}`: new directory metadata for a stream published here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamMetadata {
    pub title: Option<String>,
    pub description: Option<String>,
}

pub async fn update_stream(
    _: Admin,
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Result<Json<StreamMetadata>, JsonRejection>,
) -> Result<Json<StreamUpdate>, ApiError> {
    let Json(meta) = body?;
    let id = stream_id(id)?;
    node.relist(&id, meta.title, meta.description)
        .map_err(|e| match e {
            crate::control::RelistError::Unknown => {
                ApiError::NotFound(format!("stream \"{id}\" is not published here"))
            }
            crate::control::RelistError::Invalid(e) => ApiError::BadRequest(e),
        })
        .map(Json)
}

/// The answer to a watch or seed: where local players find the stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct Watching {
    pub stream: StreamId,
    pub role: Role,
    pub http_flv: String,
    pub rtmp: String,
}

/// `POST /streams/{id}/watch`: relay a stream for players here. The owner's watch
/// lasts until stopped; a viewer's, while someone here plays it.
pub async fn watch(
    viewer: Viewer,
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Watching>), ApiError> {
    let role = if viewer.owner {
        Role::Watch
    } else {
        Role::View
    };
    start(node, id, role).await
}

/// `POST /streams/{id}/seed`: relay a stream to help the network. The owner decides.
pub async fn seed(
    _: Admin,
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Watching>), ApiError> {
    start(node, id, Role::Seed).await
}

async fn start(
    node: Arc<Node>,
    id: String,
    role: Role,
) -> Result<(StatusCode, Json<Watching>), ApiError> {
    let stream = stream_id(id)?;
    node.watch(stream.clone(), role)
        .await
        .map_err(|e| match e {
            WatchError::NoOverlay => ApiError::Conflict(e.to_string()),
            WatchError::OwnStream => ApiError::Conflict(e.to_string()),
            WatchError::Portal(PortalError::NoSuchStream(_)) => ApiError::NotFound(e.to_string()),
            WatchError::Portal(_) => ApiError::Unavailable(e.to_string()),
        })?;
    let config = node.config();
    Ok((
        StatusCode::ACCEPTED,
        Json(Watching {
            http_flv: format!("http://{}/live/{stream}.flv", config.api),
            rtmp: format!(
                "rtmp://{}/{}/{stream}",
                node.control().me().rtmp,
                crate::rtmp::APP
            ),
            stream,
            role,
        }),
    ))
}

/// `DELETE /streams/{id}/watch`: stop relaying a watched or seeded stream.
pub async fn unwatch(
    _: Admin,
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let stream = stream_id(id)?;
    if node.unwatch(&stream) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "this node neither watches nor seeds \"{stream}\""
        )))
    }
}

#[derive(Debug, Serialize)]
pub struct Leaving {
    pub leaving: bool,
}

/// `POST /leave`: leave the overlay gracefully, then stop.
pub async fn leave(_: Admin, State(node): State<Arc<Node>>) -> (StatusCode, Json<Leaving>) {
    node.request_stop();
    (StatusCode::ACCEPTED, Json(Leaving { leaving: true }))
}

/// `GET /config`: the settings in force, and which of them were set remotely.
pub async fn get_config(_: Admin, State(node): State<Arc<Node>>) -> Json<Effective> {
    Json(Effective::of(&node.config()))
}

/// `PATCH /config`: changes settings (a JSON object; `null` clears one), saves them
/// in the data directory and applies them without a restart. A bad value is a 400
/// naming its field, and nothing changes.
pub async fn patch_config(
    _: Admin,
    State(node): State<Arc<Node>>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Effective>, ApiError> {
    let Json(patch) = body?;
    let config = tokio::task::spawn_blocking(move || node.reconfigure(&patch))
        .await
        .map_err(|e| ApiError::Internal(format!("the settings change failed: {e}")))?
        .map_err(|e| match e {
            ReconfigureError::Invalid(ConfigError::Invalid { field, message }) => {
                ApiError::Invalid { field, message }
            }
            ReconfigureError::Invalid(e) => ApiError::BadRequest(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        })?;
    Ok(Json(Effective::of(&config)))
}

/// `GET /owner`: who manages the box from the portal, or the pairing code to give it.
pub async fn get_owner(_: Admin, State(node): State<Arc<Node>>) -> Json<OwnerState> {
    Json(node.owner.state())
}

/// `DELETE /owner`: lets the owner go; the box shows a new pairing code.
pub async fn release_owner(
    _: Admin,
    State(node): State<Arc<Node>>,
) -> Result<Json<OwnerState>, ApiError> {
    node.owner
        .release()
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("cannot forget the owner: {e}")))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    pub on: bool,
}

/// `PUT /broadcast`: starts or stops the configured source, as the button does.
pub async fn put_broadcast(
    _: Admin,
    State(node): State<Arc<Node>>,
    body: Result<Json<Broadcast>, JsonRejection>,
) -> Result<Json<Broadcast>, ApiError> {
    let Json(wanted) = body?;
    tokio::task::spawn_blocking(move || node.set_broadcast(wanted.on, "the admin API"))
        .await
        .map_err(|e| ApiError::Internal(format!("the broadcast change failed: {e}")))?
        .map_err(|e| match e {
            BroadcastError::NoSource => ApiError::Conflict(e.to_string()),
            BroadcastError::Failed(e) => ApiError::Internal(e),
        })?;
    Ok(Json(wanted))
}
