//! Routes other boxes call: the overlay's requests (`proto::overlay::Request`), each
//! on its own route, its body the request's tagged JSON. The engine decides; these
//! handlers only check that the body is the request the route is for, and that ids
//! in the path match the body. The client side is `crate::control::http`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use proto::overlay::{NodeId, Request, Response, StreamId, TicketId};
use serde::Deserialize;

use super::ApiError;
use crate::Node;

type Answer = Result<Json<Response>, ApiError>;

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

type Body = Result<Json<Request>, JsonRejection>;
type Reply = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A handler for a route whose path holds nothing: the body is the whole request.
fn plain(
    expected: &'static str,
    is: fn(&Request) -> bool,
) -> impl Fn(State<Arc<Node>>, Body) -> Reply + Clone + Send + Sync + 'static {
    move |State(node), request| {
        Box::pin(async move {
            let request = body(request, expected, is)?;
            ask(&node, request).await
        })
    }
}

/// The body, if it is the request this route takes.
fn body(
    body: Result<Json<Request>, JsonRejection>,
    expected: &str,
    is: fn(&Request) -> bool,
) -> Result<Request, ApiError> {
    let Json(request) = body?;
    if is(&request) {
        Ok(request)
    } else {
        Err(ApiError::BadRequest(format!(
            "this route takes a request of type \"{expected}\""
        )))
    }
}

async fn ask(node: &Arc<Node>, request: Request) -> Answer {
    node.overlay_request(request)
        .await
        .map(Json)
        .map_err(ApiError::Refused)
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

async fn announce(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    request: Result<Json<Request>, JsonRejection>,
) -> Answer {
    let id = node_id(id)?;
    let request = body(request, "announce", |r| {
        matches!(r, Request::Announce { .. })
    })?;
    if !matches!(&request, Request::Announce { node, .. } if *node == id) {
        return Err(mismatch("node id"));
    }
    ask(&node, request).await
}

/// `DELETE /nodes/{id}`: the path says it all; a body, if any, is ignored.
async fn unregister(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Answer {
    let request = Request::Unregister { node: node_id(id)? };
    ask(&node, request).await
}

async fn end_ticket(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    request: Result<Json<Request>, JsonRejection>,
) -> Answer {
    let id = ticket_id(&id)?;
    let request = body(request, "end_ticket", |r| {
        matches!(r, Request::EndTicket { .. })
    })?;
    if !matches!(&request, Request::EndTicket { ticket, .. } if *ticket == id) {
        return Err(mismatch("ticket id"));
    }
    ask(&node, request).await
}

async fn path(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    request: Result<Json<Request>, JsonRejection>,
) -> Answer {
    let id = ticket_id(&id)?;
    let request = body(request, "path", |r| matches!(r, Request::Path { .. }))?;
    if !matches!(&request, Request::Path { ticket, .. } if *ticket == id) {
        return Err(mismatch("ticket id"));
    }
    ask(&node, request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingQuery {
    stream: Option<String>,
}

async fn ping(
    State(node): State<Arc<Node>>,
    query: Result<Query<PingQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let stream = query
        .stream
        .map(StreamId::new)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    ask(&node, Request::Ping { stream }).await
}
