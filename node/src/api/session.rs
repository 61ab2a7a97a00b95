//! The box's own page (`GET /`): the admin page's files, its login session and what
//! it shows besides the API (the log's latest lines, stills).
//!
//! Logging in trades the admin token for a session: a random id the box keeps in
//! memory (`auth::Sessions`), in an HttpOnly, SameSite=Strict cookie, so that the token
//! never sits in a URL, in the page's script or in a cookie. Cookies are not kept
//! apart by port, so the cookie carries the box's name: boxes on one host (the demo)
//! do not read each other's. A request carrying the cookie must come from the box's
//! own pages: another page (even on this host) cannot use it.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::admin::Admin;
use super::ApiError;
use crate::Node;

/// How long a login lasts.
const SESSION_SECS: u32 = 7 * 24 * 3600;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/session", get(session).post(login).delete(logout))
        .route("/logs", get(logs))
        .route("/streams/{name}/thumbnail.jpg", get(still))
}

fn cookie_name(node: &Node) -> String {
    format!("astral-{}", node.config().name)
}

/// The session id the cookie carries, if the request has one.
pub(super) fn session_token(headers: &HeaderMap, node: &Node) -> Option<String> {
    let name = cookie_name(node);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether the request comes from one of this box's own pages (or from no page at
/// all, as curl's do): its `Origin`, when it has one, is this box's.
pub(super) fn from_own_page(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (
        origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()),
        host,
    ) {
        (Some(origin), Some(host)) => {
            origin.scheme() == "http"
                && origin.host_str().is_some()
                && origin.origin().ascii_serialization() == format!("http://{host}")
        }
        _ => false,
    }
}

/// The admin page's session on this request: `None` without its cookie; else whether
/// it is open and comes from one of the box's own pages.
pub(super) fn page_session(headers: &HeaderMap, node: &Node) -> Option<Result<(), ApiError>> {
    let id = session_token(headers, node)?;
    Some(if !from_own_page(headers) {
        Err(ApiError::Forbidden(
            "the box's session works only on its own pages".into(),
        ))
    } else if node.sessions.is_open(&id) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "the session ended (logged out, or the box restarted); log in again".into(),
        ))
    })
}

#[derive(Serialize)]
struct Session {
    name: String,
    admin: bool,
}

/// `GET /session`: whether the page is logged in.
async fn session(State(node): State<Arc<Node>>, headers: HeaderMap) -> Json<Session> {
    let admin = matches!(page_session(&headers, &node), Some(Ok(())));
    Json(Session {
        name: node.config().name.clone(),
        admin,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// `POST /session` `{"token": …}`: logs the page in.
async fn login(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(login) = body?;
    if !from_own_page(&headers) {
        return Err(ApiError::Forbidden("log in from the box's own page".into()));
    }
    if !node.is_admin_token(login.token.trim()) {
        tracing::warn!("admin page: a login with a wrong token");
        return Err(ApiError::Unauthorized("wrong admin token".into()));
    }
    tracing::info!("admin page: logged in");
    let id = node
        .sessions
        .open(std::time::Duration::from_secs(SESSION_SECS.into()));
    let cookie = format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECS}",
        cookie_name(&node),
    );
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// `DELETE /session`: logs the page out, and ends its session on the box.
async fn logout(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_token(&headers, &node) {
        node.sessions.close(&id);
    }
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        cookie_name(&node)
    );
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

#[derive(Serialize, Deserialize)]
pub struct Logs {
    pub lines: Vec<String>,
}

/// `GET /logs`: the log's latest lines.
async fn logs(_: Admin) -> Json<Logs> {
    Json(Logs {
        lines: crate::logs::recent().lines(),
    })
}

/// `GET /streams/{id}/thumbnail.jpg`: a still of the stream's latest keyframe.
async fn still(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    use crate::stills::StillError;
    let jpeg = node.still(&name).await.map_err(|e| match e {
        StillError::NoStream(_) | StillError::NoKeyframe(_) => ApiError::NotFound(e.to_string()),
        StillError::Decode { .. } => ApiError::Internal(e.to_string()),
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        jpeg,
    )
        .into_response())
}

/// The admin page's files, for every `GET` no API route takes.
pub async fn page(method: Method, uri: Uri) -> Result<Response, ApiError> {
    web::serve(web::admin, &method, uri.path())
        .ok_or_else(|| ApiError::NotFound("no such resource".into()))
}
