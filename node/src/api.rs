//! The node's HTTP side: the ReST API (JSON), Prometheus metrics and HTTP-FLV.
//!
//! Every error is a JSON body `{"error": "..."}` with a status that says whose fault it
//! is; a request that fails changes nothing.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use proto::{PullRequest, StreamInfo, Tag, TagKind};
use serde::Serialize;

use crate::config::validate_name;
use crate::hub::{Packet, Subscription};
use crate::rtmp::url::RtmpUrl;
use crate::Node;

/// An API failure, rendered as its status code and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
        };
        let body = proto::ApiError {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

type Node_ = State<Arc<Node>>;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/streams", get(list_streams))
        .route("/streams/{name}", get(get_stream))
        .route("/streams/{name}/pull", post(start_pull).delete(stop_pull))
        .route("/metrics", get(metrics))
        .route("/live/{file}", get(http_flv))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .with_state(node)
}

#[derive(Serialize)]
struct Status {
    name: String,
    version: &'static str,
    uptime_secs: u64,
    rtmp: String,
    streams: usize,
}

async fn status(State(node): Node_) -> Json<Status> {
    Json(Status {
        name: node.config().name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: node.uptime().as_secs(),
        rtmp: node.config().rtmp.to_string(),
        streams: node.hubs().len(),
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

async fn start_pull(
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

async fn stop_pull(State(node): Node_, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
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

/// `GET /live/STREAM.flv`: an endless FLV file, chunked: header, then what a new
/// subscriber gets (metadata, sequence headers, the cached GOP), then live tags.
async fn http_flv(State(node): Node_, Path(file): Path<String>) -> Result<Response, ApiError> {
    let hub = file
        .strip_suffix(".flv")
        .and_then(|name| node.hub(name))
        .ok_or_else(|| ApiError::NotFound(format!("no stream {file:?} on this node")))?;
    let snap = hub.snapshot();
    let header = Bytes::copy_from_slice(&proto::flv::file_header(
        snap.has_audio,
        snap.has_video || !snap.has_audio,
    ));
    let subscription = hub.subscribe();
    let body = futures_util::stream::unfold(
        (subscription, Some(header)),
        |(mut sub, header)| async move {
            if let Some(header) = header {
                return Some((Ok::<_, Infallible>(header), (sub, None)));
            }
            let first = sub.recv().await?;
            let mut out = BytesMut::new();
            write_packet(&sub, first, &mut out);
            // Whatever else is queued goes out in the same chunk.
            for _ in 1..64 {
                match sub.try_recv() {
                    Some(p) => write_packet(&sub, p, &mut out),
                    None => break,
                }
            }
            Some((Ok(out.freeze()), (sub, None)))
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
