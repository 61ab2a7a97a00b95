//! JSON bodies of the node's ReST API.

use serde::{Deserialize, Serialize};

use crate::flv::StreamMeta;

/// Every API error has this body, whatever its status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// The setting or body field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Where a node's copy of a stream comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StreamRole {
    /// Nothing feeds the stream right now.
    Idle,
    /// A publisher on this box: an RTMP client such as ffmpeg or OBS, or the box's own
    /// camera or test pattern.
    Publisher { name: String },
    /// Pulled over RTMP from another box; `upstream` is the URL in use, credentials
    /// removed.
    Upstream { upstream: String, connected: bool },
}

/// `GET /streams` and `GET /streams/{name}`: one stream as this node holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub name: String,
    pub source: StreamRole,
    pub subscribers: usize,
    /// Video plus audio bitrate over the last two seconds of source time.
    pub bitrate_kbps: u32,
    pub fps: f32,
    /// Source time between the last two keyframes.
    pub keyframe_interval_ms: Option<u32>,
    /// The newest source timestamp forwarded, in milliseconds.
    pub last_timestamp_ms: Option<u32>,
    pub meta: StreamMeta,
    pub tags_in: u64,
    pub tags_dropped: u64,
    pub reconnects: u64,
}

/// `POST /streams/{name}/pull`: make this node a relay of `upstreams`, tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub upstreams: Vec<String>,
}
