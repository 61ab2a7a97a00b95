//! Owners manage their boxes from the portal, through the boxes' control channels: no
//! port needs to be open on a box's router.
//!
//! An owner is a token it keeps (`POST /api/owners` makes one; the portal stores only
//! its SHA-256), sent as `Authorization: Bearer TOKEN`. An unowned box shows a
//! pairing code on its admin page and in its log, and tells the portal over its
//! channel; the owner claims it by giving the portal that code (`POST
//! /api/owner/boxes`), and the box itself checks the code and keeps its owner. The
//! owner's page lists its boxes (status, streams, thumbnails, place in the trees) and
//! sends commands to their admin routes (`/api/owner/boxes/{id}/{route}`): the portal
//! checks that the box is the caller's, the box that the command is from its owner
//! and allowed, and logs it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Request, State as Axum};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::Response as HttpResponse;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use proto::overlay::NodeId;
use proto::portal::{ChannelMessage, NodeReport, StreamEntry};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::routes::{ApiError, Result};
use crate::State;

/// Largest command body passed to a box.
const MAX_COMMAND: usize = 64 * 1024;
/// The owner's list waits this long for each box's status: one that is slow to
/// answer is listed without it.
const STATUS_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

pub fn routes() -> Router<State> {
    Router::new()
        .route("/api/owners", post(create))
        .route("/api/owner/boxes", get(boxes).post(claim))
        .route("/api/owner/boxes/{id}/{*route}", any(command))
}

/// A new owner and the token that proves it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewOwner {
    pub id: String,
    pub token: String,
}

/// `POST /api/owners`: a new owner. Keep the token: it is shown once.
async fn create(Axum(state): Axum<State>) -> Result<(StatusCode, Json<NewOwner>)> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let id = format!("owner-{}", &hex::encode(Sha256::digest(bytes))[..12]);
    state
        .store
        .create_owner(&id, &hash(&token), state.now())
        .await?;
    tracing::info!(owner = %id, "a new owner");
    Ok((StatusCode::CREATED, Json(NewOwner { id, token })))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The owner a request's bearer token proves.
pub struct Owner(pub String);

impl FromRequestParts<State> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Owner> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Rejected(
                    StatusCode::UNAUTHORIZED,
                    "owners' calls need their token: Authorization: Bearer TOKEN \
                     (POST /api/owners makes an owner and its token)"
                        .into(),
                )
            })?;
        match state.store.owner_by_token(&hash(token)).await? {
            Some(id) => Ok(Owner(id)),
            None => Err(ApiError::Rejected(
                StatusCode::UNAUTHORIZED,
                "no owner has that token".into(),
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claim {
    code: String,
}

/// `POST /api/owner/boxes`: claims the box showing pairing code `code`.
async fn claim(
    Axum(state): Axum<State>,
    Owner(owner): Owner,
    body: std::result::Result<Json<Claim>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let Json(Claim { code }) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let node = state.channels.box_with_code(&code).ok_or_else(|| {
        ApiError::NotFound(
            "no box online shows that pairing code: read it again on the box's admin page \
             or in its log, and check that the box is on and reaches the portal"
                .into(),
        )
    })?;
    let (status, _, body) = state
        .channels
        .ask(&node, |id| ChannelMessage::Claim {
            id,
            owner: owner.clone(),
            code,
        })
        .await?;
    if status != 200 {
        let error = serde_json::from_str::<proto::ApiError>(&body).map_or(body, |e| e.error);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(ApiError::Rejected(status, format!("box {node}: {error}")));
    }
    // The box's own word that it has an owner comes up its channel a moment later;
    // until then a second claim with the same code would still find it.
    state.channels.set_code(&node, None);
    state.store.own_box(&owner, &node, state.now()).await?;
    tracing::info!(%owner, %node, "claimed a box");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "node": node })),
    ))
}

/// One of the owner's boxes, as the owner's page shows it.
#[derive(Debug, Serialize)]
struct OwnedBox {
    node: NodeId,
    claimed_at: u64,
    /// Its control channel is open: commands reach it.
    online: bool,
    /// Its `GET /status`, asked through the channel.
    status: Option<serde_json::Value>,
    /// Its place in the network, as it last reported it.
    place: Option<NodeReport>,
    /// The streams it publishes, with their thumbnails at
    /// `/api/streams/{id}/thumbnail.jpg`.
    streams: Vec<StreamEntry>,
}

/// `GET /api/owner/boxes`: the caller's boxes, each asked for its status at once.
async fn boxes(Axum(state): Axum<State>, Owner(owner): Owner) -> Result<Json<Vec<OwnedBox>>> {
    let claimed = state.store.boxes_of(&owner).await?;
    let streams = Arc::new(state.store.streams(state.now()).await?);
    let mut asked = tokio::task::JoinSet::new();
    for (i, (node, claimed_at)) in claimed.into_iter().enumerate() {
        let (state, owner, streams) = (state.clone(), owner.clone(), Arc::clone(&streams));
        asked.spawn(async move {
            let online = state.channels.is_open(&node);
            let status = match online {
                true => state
                    .channels
                    .ask_within(&node, STATUS_WITHIN, |id| ChannelMessage::Command {
                        id,
                        owner,
                        method: "GET".into(),
                        path: "/status".into(),
                        body: String::new(),
                    })
                    .await
                    .ok()
                    .filter(|(status, _, _)| *status == 200)
                    .and_then(|(_, _, body)| serde_json::from_str(&body).ok()),
                false => None,
            };
            let owned = OwnedBox {
                place: state.live.node(&node),
                streams: streams
                    .iter()
                    .filter(|s| s.source.id == node)
                    .cloned()
                    .collect(),
                node,
                claimed_at,
                online,
                status,
            };
            (i, owned)
        });
    }
    let mut listed: Vec<(usize, OwnedBox)> = asked.join_all().await;
    listed.sort_by_key(|(i, _)| *i);
    Ok(Json(listed.into_iter().map(|(_, b)| b).collect()))
}

/// `/api/owner/boxes/{id}/{route}`: a command to one of the caller's boxes, passed
/// down its channel to its admin route `/{route}`; the box's answer comes back.
async fn command(
    Axum(state): Axum<State>,
    Owner(owner): Owner,
    Path((id, route)): Path<(String, String)>,
    request: Request,
) -> Result<HttpResponse> {
    let node = NodeId::new(id).map_err(ApiError::BadRequest)?;
    if !state.store.owns(&owner, &node).await? {
        return Err(ApiError::NotFound(format!(
            "box {node} is not one of yours: claim it with its pairing code"
        )));
    }
    let (parts, body) = request.into_parts();
    let body = crate::channel::text_body(body, MAX_COMMAND).await?;
    let method = parts.method.to_string();
    let path = format!("/{route}");
    tracing::info!(%owner, %node, "{method} {path} to the box");
    let (status, _, body) = state
        .channels
        .ask(&node, |id| ChannelMessage::Command {
            id,
            owner,
            method,
            path,
            body,
        })
        .await?;
    Ok(crate::channel::json_answer(status, body))
}
