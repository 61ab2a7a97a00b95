//! Routes other boxes call: the overlay's requests (`proto::overlay::Request`), each
//! on its own route, its body the request's tagged JSON, signed by the calling box
//! (`proto::identity`). The engine decides; these handlers only check the signature
//! (each taken once), that the body is the request the route is for, and that ids in
//! the path match the body. The engine is told who signed, and refuses a request
//! that speaks for another node. The client side is `crate::control::http`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use proto::identity::{SignedBy, SIGNATURE_HEADER};
use proto::overlay::{NodeId, Request, StreamId, TicketId};
use serde::Deserialize;

use super::{ApiError, MAX_BODY};
use crate::Node;

/// A peer's request whose signature holds: who signed it, and its body.
pub(super) struct Signed {
    by: SignedBy,
    body: Bytes,
}

impl FromRequest<Arc<Node>> for Signed {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        node: &Arc<Node>,
    ) -> Result<Signed, ApiError> {
        let (by, body) = node
            .verifier
            .read(request, MAX_BODY)
            .await
            .map_err(|r| ApiError::Rejected(r.status, r.error))?;
        Ok(Signed { by, body })
    }
}

impl Signed {
    /// The body, if it is the request this route takes.
    fn request(&self, expected: &str, is: fn(&Request) -> bool) -> Result<Request, ApiError> {
        let request: Request = web::signed::parse_json(&self.body)
            .map_err(|r| ApiError::Rejected(r.status, r.error))?;
        if is(&request) {
            Ok(request)
        } else {
            Err(ApiError::BadRequest(format!(
                "this route takes a request of type \"{expected}\""
            )))
        }
    }
}

/// The engine's answer or refusal, signed for the request it answers.
type Answer = Result<axum::response::Response, ApiError>;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/nodes",
            post(plain("register", |r| matches!(r, Request::Register { .. }))),
        )
        .route("/nodes/{id}", put(announce).delete(unregister))
        .route(
            "/search",
            post(plain("search", |r| matches!(r, Request::Search { .. }))),
        )
        .route(
            "/tickets",
            post(plain("ticket", |r| matches!(r, Request::Ticket { .. }))),
        )
        .route("/tickets/{id}", put(path).delete(end_ticket))
        .route("/ping", get(ping))
        .route(
            "/supernode",
            post(plain("adopt", |r| matches!(r, Request::Adopt { .. })))
                .put(plain("rehome", |r| matches!(r, Request::Rehome { .. }))),
        )
        .route(
            "/supernode/neighbours",
            post(plain("neighbour", |r| {
                matches!(r, Request::Neighbour { .. })
            })),
        )
}

type Reply = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A handler for a route whose path holds nothing: the body is the whole request.
fn plain(
    expected: &'static str,
    is: fn(&Request) -> bool,
) -> impl Fn(State<Arc<Node>>, Signed) -> Reply + Clone + Send + Sync + 'static {
    move |State(node), signed| {
        Box::pin(async move {
            let request = signed.request(expected, is)?;
            ask(&node, &signed, request).await
        })
    }
}

/// Asks the engine, and signs what it answers for the request (`proto::identity::
/// verify_response`): a ticket, a search's candidates or a refusal cannot be altered
/// on the way or replayed to another request.
async fn ask(node: &Arc<Node>, signed: &Signed, request: Request) -> Answer {
    let answer = node.overlay_request(signed.by.node.clone(), request).await;
    let (status, body) = match &answer {
        Ok(response) => (StatusCode::OK, serde_json::to_vec(response)),
        Err(refusal) => (
            StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            serde_json::to_vec(refusal),
        ),
    };
    let body = body.map_err(|e| ApiError::Internal(e.to_string()))?;
    let signature = node.control().key().sign_response(
        &signed.by.signature_hex(),
        status.as_u16(),
        &body,
        web::signed::now_unix_ms(),
    );
    Ok((
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (HeaderName::from_static(SIGNATURE_HEADER), signature),
        ],
        body,
    )
        .into_response())
}

fn mismatch(what: &str) -> ApiError {
    ApiError::BadRequest(format!("the {what} in the path and in the body differ"))
}

fn node_id(id: String) -> Result<NodeId, ApiError> {
    NodeId::new(id).map_err(ApiError::BadRequest)
}

fn ticket_id(id: &str) -> Result<TicketId, ApiError> {
    u64::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 16)
        .map(TicketId)
        .ok_or_else(|| ApiError::BadRequest(format!("{id:?} is not a ticket id (16 hex digits)")))
}

async fn announce(State(node): State<Arc<Node>>, Path(id): Path<String>, signed: Signed) -> Answer {
    let id = node_id(id)?;
    let request = signed.request("announce", |r| matches!(r, Request::Announce { .. }))?;
    if !matches!(&request, Request::Announce { node, .. } if *node == id) {
        return Err(mismatch("node id"));
    }
    ask(&node, &signed, request).await
}

/// `DELETE /nodes/{id}`: the path says it all; a body, if any, is ignored.
async fn unregister(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    signed: Signed,
) -> Answer {
    let request = Request::Unregister { node: node_id(id)? };
    ask(&node, &signed, request).await
}

async fn end_ticket(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    signed: Signed,
) -> Answer {
    let id = ticket_id(&id)?;
    let request = signed.request("end_ticket", |r| matches!(r, Request::EndTicket { .. }))?;
    if !matches!(&request, Request::EndTicket { ticket, .. } if *ticket == id) {
        return Err(mismatch("ticket id"));
    }
    ask(&node, &signed, request).await
}

async fn path(State(node): State<Arc<Node>>, Path(id): Path<String>, signed: Signed) -> Answer {
    let id = ticket_id(&id)?;
    let request = signed.request("path", |r| matches!(r, Request::Path { .. }))?;
    if !matches!(&request, Request::Path { ticket, .. } if *ticket == id) {
        return Err(mismatch("ticket id"));
    }
    ask(&node, &signed, request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingQuery {
    stream: Option<String>,
}

async fn ping(
    State(node): State<Arc<Node>>,
    query: Result<Query<PingQuery>, axum::extract::rejection::QueryRejection>,
    signed: Signed,
) -> Answer {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let stream = query
        .stream
        .map(StreamId::new)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    ask(&node, &signed, Request::Ping { stream }).await
}
