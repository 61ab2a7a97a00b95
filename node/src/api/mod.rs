//! The node's HTTP side: the ReST API (JSON), Prometheus metrics and HTTP-FLV.
//!
//! Three kinds of callers: anyone may read (status, streams, tickets, metrics); other
//! boxes speak the overlay (`peer`); the box's owner steers it (`admin`, with the
//! bearer token). Every error is a JSON body `{"error": "..."}` with a status that
//! says whose fault it is; a request that fails changes nothing. Browsers may call
//! from the portal's origin and from localhost only (CORS).

mod admin;
pub(crate) mod limits;
mod peer;
mod session;

pub use admin::{StreamCreated, Watching};
pub use session::Logs;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use proto::{PullRequest, StreamInfo, Tag, TagKind};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::validate_name;
use crate::hub::{Packet, Subscription};
use crate::rtmp::url::RtmpUrl;
use crate::Node;

/// Largest request body: an adoption by a leaving supernode is the largest request.
pub(crate) const MAX_BODY: usize = 256 * 1024;

/// An API failure, rendered as its status code and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// A body that could not be read: malformed, too large, not JSON.
    #[error("{1}")]
    Rejected(StatusCode, String),
    /// The overlay engine said no; its body keeps the refusal's kind.
    #[error("{0}")]
    Refused(proto::overlay::Refusal),
    /// A bad setting, named in the body's `field`.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The caller asked too often (`limits`): 429, with when to ask again.
    #[error("{}", .0.error)]
    TooMany(limits::Limited),
    /// The node could not do what was asked, for a reason of its own.
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Rejected(status, _) => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Invalid { field, .. } => {
                let body = proto::ApiError {
                    error: self.to_string(),
                    field: Some(field.clone()),
                };
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            ApiError::TooMany(limited) => {
                let body = proto::ApiError {
                    error: self.to_string(),
                    field: None,
                };
                let seconds = limited.retry_after.as_millis().div_ceil(1000).max(1);
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, seconds.to_string())],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Refused(refusal) => {
                let status = StatusCode::from_u16(refusal.status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (status, Json(refusal)).into_response();
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
    fn from(rejection: JsonRejection) -> Self {
        ApiError::Rejected(rejection.status(), rejection.body_text())
    }
}

type Node_ = State<Arc<Node>>;

/// The routes other boxes call, alone: all a request relayed down the control channel
/// (`crate::channel`) may reach.
pub fn peer_router(node: Arc<Node>) -> Router {
    peer::routes()
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

pub fn router(node: Arc<Node>) -> Router {
    let cors = cors(node.config().portal.as_deref());
    Router::new()
        .route("/status", get(status))
        .route("/streams", get(list_streams).post(admin::create_stream))
        .route("/streams/{name}", get(get_stream).put(admin::update_stream))
        .route(
            "/streams/{name}/watch",
            post(admin::watch).delete(admin::unwatch),
        )
        .route(
            "/streams/{name}/seed",
            post(admin::seed).delete(admin::unwatch),
        )
        .route("/streams/{name}/pull", post(start_pull).delete(stop_pull))
        .route("/streams/{name}/viewers", post(viewer_ticket))
        .route("/tickets", get(list_tickets))
        .route("/nodes", get(membership))
        .route("/map", get(partial_map))
        .route("/leave", post(admin::leave))
        .route("/config", get(admin::get_config).patch(admin::patch_config))
        .route("/broadcast", put(admin::put_broadcast))
        .route("/owner", get(admin::get_owner).delete(admin::release_owner))
        .route("/metrics", get(metrics))
        .route("/live/{file}", get(http_flv))
        .merge(peer::routes())
        .merge(session::routes())
        .fallback(session::page)
        .method_not_allowed_fallback(|| async {
            ApiError::Rejected(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(cors)
        .with_state(node)
}

/// Whether a page of `origin` may call the box: the portal's pages and pages served on
/// this machine.
fn trusted_origin(origin: &str, portal: Option<&str>) -> bool {
    let portal = portal
        .and_then(|p| url::Url::parse(p).ok())
        .map(|u| u.origin().ascii_serialization());
    if portal.as_deref() == Some(origin) {
        return true;
    }
    url::Url::parse(origin).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && match u.host() {
                Some(url::Host::Domain(domain)) => domain == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            }
    })
}

/// Browsers may call from trusted pages. A portal on the internet calling a box on
/// this machine or its network is what Chrome's Private Network Access asks a
/// preflight for: the answer allows it.
fn cors(portal: Option<&str>) -> CorsLayer {
    let portal = portal.map(str::to_owned);
    let allowed = move |origin: &HeaderValue, _: &axum::http::request::Parts| {
        origin
            .to_str()
            .is_ok_and(|o| trusted_origin(o, portal.as_deref()))
    };
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(allowed))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_private_network(true)
}

#[derive(Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub version: String,
    pub uptime_secs: u64,
    pub rtmp: String,
    pub api: String,
    pub streams: usize,
    /// The box's own broadcast, as its tally LED shows it.
    pub broadcast: crate::panel::Tally,
    /// This box as other boxes reach it.
    pub peer: proto::overlay::Peer,
    /// Whether boxes beyond its router can reach it.
    #[serde(default)]
    pub reach: crate::reach::ReachReport,
    pub overlay: crate::control::Report,
}

async fn status(State(node): Node_) -> Json<Status> {
    Json(Status {
        name: node.config().name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: node.uptime().as_secs(),
        rtmp: node.config().rtmp.to_string(),
        api: node.config().api.to_string(),
        streams: node.hubs().len(),
        broadcast: node.tally(),
        peer: node.control().me(),
        reach: node.reach(),
        overlay: node.control().report(),
    })
}

/// `GET /tickets`: the forwards this node granted, by stream (tokens stay secret).
#[derive(Serialize, Deserialize)]
pub struct TicketLine {
    pub stream: proto::overlay::StreamId,
    #[serde(flatten)]
    pub ticket: crate::control::TicketReport,
}

async fn list_tickets(State(node): Node_) -> Json<Vec<TicketLine>> {
    let report = node.control().report();
    Json(
        report
            .streams
            .into_iter()
            .flat_map(|h| {
                let stream = h.stream;
                h.tickets.into_iter().map(move |ticket| TicketLine {
                    stream: stream.clone(),
                    ticket,
                })
            })
            .collect(),
    )
}

/// `GET /nodes`: this node's place among the supernodes and, on a supernode, the
/// boxes registered with it.
#[derive(Serialize, Deserialize)]
pub struct Membership {
    pub supernode: Option<String>,
    pub is_supernode: bool,
    pub registered: Vec<Registered>,
    pub neighbours: Vec<proto::overlay::Peer>,
}

#[derive(Serialize, Deserialize)]
pub struct Registered {
    pub node: proto::overlay::NodeCard,
    pub holdings: Vec<proto::overlay::Holding>,
}

async fn membership(State(node): Node_) -> Json<Membership> {
    let report = node.control().report();
    let registry = node.control().registry().unwrap_or_default();
    Json(Membership {
        supernode: report.supernode,
        is_supernode: report.is_supernode,
        registered: registry
            .children
            .into_iter()
            .map(|(node, holdings)| Registered { node, holdings })
            .collect(),
        neighbours: registry.neighbours,
    })
}

/// `GET /map`: this node's partial view of the network, in the shape of the portal's
/// `GET /api/map`.
async fn partial_map(State(node): Node_) -> Json<proto::portal::MapEvent> {
    Json(proto::portal::MapEvent::Snapshot {
        nodes: node.control().partial_map(),
        streams: Vec::new(),
        thumbnails: Default::default(),
    })
}

async fn list_streams(State(node): Node_) -> Json<Vec<StreamInfo>> {
    Json(node.hubs().iter().map(|h| node.stream_info(h)).collect())
}

async fn get_stream(
    State(node): Node_,
    Path(name): Path<String>,
) -> Result<Json<StreamInfo>, ApiError> {
    let hub = node
        .hub(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no stream {name:?} on this node")))?;
    Ok(Json(node.stream_info(&hub)))
}

/// The answer to `POST /streams/{id}/viewers`.
#[derive(Serialize, Deserialize)]
pub struct ViewerTicket {
    pub ticket: String,
    pub expires_in_secs: u64,
    /// The stream, ticket included, as HTTP-FLV and as RTMP.
    pub flv: String,
    pub rtmp: String,
}

/// The body of `POST /streams/{id}/viewers`: empty for now. A JSON body makes a
/// browser ask first (CORS), so no page of another site can spend the box's slots.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewerAsk {}

/// `POST /streams/{id}/viewers`: a ticket for a player from beyond this box's
/// network, if a forward slot is free; it lapses unused after a few seconds.
async fn viewer_ticket(
    State(node): Node_,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    body: Result<Json<ViewerAsk>, JsonRejection>,
) -> Result<(StatusCode, Json<ViewerTicket>), ApiError> {
    let Json(ViewerAsk {}) = body?;
    let stream = admin::stream_id(name)?;
    if node.hub(stream.as_str()).is_none() {
        return Err(ApiError::NotFound(format!(
            "no stream {stream} on this node"
        )));
    }
    let ticket = node
        .viewer_ticket(&stream, peer.ip())
        .map_err(|e| match e {
            crate::control::TicketRefused::NoSlot(_) => ApiError::Unavailable(e.to_string()),
            crate::control::TicketRefused::TooMany(_) => {
                ApiError::Rejected(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
        })?;
    let me = node.control().me();
    Ok((
        StatusCode::CREATED,
        Json(ViewerTicket {
            flv: format!("http://{}/live/{stream}.flv?ticket={ticket}", me.api),
            rtmp: format!(
                "rtmp://{}/{}/{stream}?ticket={ticket}",
                me.rtmp,
                crate::rtmp::APP
            ),
            expires_in_secs: crate::control::VIEWER_TICKET_LIFETIME.as_secs(),
            ticket,
        }),
    ))
}

async fn start_pull(
    _: admin::Admin,
    State(node): Node_,
    Path(name): Path<String>,
    body: Result<Json<PullRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<StreamInfo>), ApiError> {
    let Json(request) = body?;
    validate_name("stream", &name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if request.upstreams.is_empty() || request.upstreams.len() > 8 {
        return Err(ApiError::BadRequest(
            "upstreams: give 1 to 8 rtmp:// URLs".into(),
        ));
    }
    let upstreams = request
        .upstreams
        .iter()
        .map(|u| RtmpUrl::parse(u).map_err(|e| ApiError::BadRequest(format!("upstreams: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    node.start_pull(&name, upstreams)
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let hub = node.hub_or_create(&name);
    Ok((StatusCode::CREATED, Json(node.stream_info(&hub))))
}

async fn stop_pull(
    _: admin::Admin,
    State(node): Node_,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if node.stop_pull(&name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "stream {name:?} is not being pulled"
        )))
    }
}

async fn metrics(State(node): Node_) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics().render(),
    )
}

/// `?ticket=`: a viewer ticket, for a player from beyond the box's network.
#[derive(Deserialize)]
struct PlayQuery {
    ticket: Option<String>,
}

/// `GET /live/STREAM.flv`: an endless FLV file, chunked: header, then what a new
/// subscriber gets (metadata, sequence headers, the cached GOP), then live tags.
async fn http_flv(
    State(node): Node_,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    Query(query): Query<PlayQuery>,
) -> Result<Response, ApiError> {
    let hub = file
        .strip_suffix(".flv")
        .and_then(|name| node.hub(name))
        .ok_or_else(|| ApiError::NotFound(format!("no stream {file:?} on this node")))?;
    // Players from beyond the box's network play with a viewer ticket, and hold its
    // forward slot while they play.
    let local = node.plays_without_ticket(peer.ip());
    let viewer = match query.ticket {
        // A ticket is redeemed even here, or its slot would stay taken until it lapses.
        Some(token) => match node.redeem_viewer_ticket(hub.name(), &token) {
            Some(viewer) => Some(viewer),
            None if local => None,
            None => {
                return Err(ApiError::Forbidden(format!(
                    "no live ticket for {:?} with that token; ask for a new one",
                    hub.name()
                )))
            }
        },
        None if local => None,
        None => {
            return Err(ApiError::Forbidden(format!(
                "players from beyond this box's network need a ticket: \
                 POST /streams/{}/viewers",
                hub.name()
            )))
        }
    };
    let snap = hub.snapshot();
    let header = Bytes::copy_from_slice(&proto::flv::file_header(
        snap.has_audio,
        snap.has_video || !snap.has_audio,
    ));
    let subscription = hub.subscribe();
    // A viewer plays until the box no longer holds the stream.
    let (ended, slot) = match viewer {
        Some((ended, slot)) => (Some(ended), Some(slot)),
        None => (None, None),
    };
    let body = futures_util::stream::unfold(
        (subscription, Some(header), ended, slot),
        |(mut sub, header, mut ended, slot)| async move {
            if let Some(header) = header {
                return Some((Ok::<_, Infallible>(header), (sub, None, ended, slot)));
            }
            let first = match ended.as_mut() {
                Some(ended) => tokio::select! {
                    _ = ended => return None,
                    packet = sub.recv() => packet?,
                },
                None => sub.recv().await?,
            };
            let mut out = BytesMut::new();
            write_packet(&sub, first, &mut out);
            // Whatever else is queued goes out in the same chunk.
            for _ in 1..64 {
                match sub.try_recv() {
                    Some(p) => write_packet(&sub, p, &mut out),
                    None => break,
                }
            }
            Some((Ok(out.freeze()), (sub, None, ended, slot)))
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "video/x-flv"),
            (header::CACHE_CONTROL, "no-cache, no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

fn write_packet(sub: &Subscription, packet: Packet, out: &mut BytesMut) {
    let tag = match packet {
        Packet::Media(frame) => {
            sub.count_sent(&frame);
            frame.tag.clone()
        }
        Packet::Meta(meta) => Tag {
            kind: TagKind::Script,
            timestamp: 0,
            data: on_metadata(&meta),
        },
        Packet::Seal(_) => return,
    };
    tag.write_flv(out);
}

/// The `onMetaData` script tag body for HTTP-FLV.
fn on_metadata(meta: &proto::StreamMeta) -> Bytes {
    // Numbers and strings always serialize.
    rml_amf0::serialize(&crate::rtmp::meta::on_metadata(meta))
        .map(Bytes::from)
        .unwrap_or_default()
}
