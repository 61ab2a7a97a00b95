//! Routes other boxes call: the overlay's requests (`proto::overlay::Request`), each
//! on its own route, its body the request's tagged JSON, signed by the calling box
//! (`proto::identity`). The engine decides; these handlers only check the signature
//! (each taken once), that the body is the request the route is for, that ids in the
//! path match the body, that a box names only its own address, and how often it
//! calls (`super::limits`). The engine is told who signed, and refuses a request that
//! speaks for another node. The client side is `crate::control::http`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Path, Query, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use proto::identity::{SignedBy, SIGNATURE_HEADER};
use proto::overlay::{NodeId, Refusal, RefusalKind, Request, StreamId, TicketId};
use serde::Deserialize;

use super::{ApiError, MAX_BODY};
use crate::Node;

/// A peer's request whose signature holds: who signed it, from where, and its body.
pub(super) struct Signed {
    by: SignedBy,
    caller: Option<IpAddr>,
    body: Bytes,
}

impl FromRequest<Arc<Node>> for Signed {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        node: &Arc<Node>,
    ) -> Result<Signed, ApiError> {
        let caller = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        // Counted before the signature is checked: checking one costs more than this.
        if let Some(ip) = caller {
            node.limits.address(ip).map_err(|limited| {
                let what = format!("{} {}", request.method(), request.uri().path());
                node.verifier
                    .log_refusal(ip, &what, &limited.error, web::signed::now_unix_ms());
                ApiError::TooMany(limited)
            })?;
        }
        let (by, body) = node
            .verifier
            .read(request, MAX_BODY)
            .await
            .map_err(|r| ApiError::Rejected(r.status, r.error))?;
        Ok(Signed { by, caller, body })
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
        .route(
            "/dial",
            post(plain("dial", |r| matches!(r, Request::Dial { .. }))),
        )
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

/// Asks the engine, if the request is admitted, and signs what it answers for the
/// request (`proto::identity::verify_response`): a ticket, a search's candidates or a
/// refusal cannot be altered on the way or replayed to another request.
async fn ask(node: &Arc<Node>, signed: &Signed, request: Request) -> Answer {
    let answer = match admit(node, signed, &request) {
        Ok(()) => node.overlay_request(signed.by.node.clone(), request).await,
        Err(refusal) => {
            if let Some(ip) = signed.caller {
                let what = crate::control::http::describe(&request);
                node.verifier
                    .log_refusal(ip, &what, &refusal.error, web::signed::now_unix_ms());
            }
            Err(refusal)
        }
    };
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

/// What is checked before the engine is asked: a box that names an address in a
/// request (its card, or itself as a neighbour) names its own, so that no one can
/// have boxes connect to a third party; searches and ticket requests come no faster
/// than `super::limits` allows.
fn admit(node: &Node, signed: &Signed, request: &Request) -> Result<(), Refusal> {
    let named = match request {
        Request::Register { node } => Some((&node.peer, "the registration")),
        Request::Ticket { child, .. } => Some((&child.peer, "the ticket request")),
        Request::Neighbour { peer } => Some((peer, "the introduction")),
        _ => None,
    };
    if let (Some((peer, what)), Some(caller)) = (named, signed.caller) {
        web::signed::check_own_address(caller, peer, what)
            .map_err(|e| Refusal::new(RefusalKind::Forbidden, e))?;
    }
    node.limits
        .request(&signed.by.node, request)
        .map_err(|limited| Refusal::new(RefusalKind::TooMany, limited.error))
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
