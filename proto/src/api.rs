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
    /// How a player here would have seen the video so far.
    #[serde(default)]
    pub continuity: Continuity,
}

/// Playback continuity of a stream's video at one box, as a player that started with
/// the first frame and plays in source time would see it: a frame is due its source
/// timestamp's distance after the first one's arrival, plus the player's buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuity {
    /// Video frames that arrived.
    pub frames: u64,
    /// Frames that never arrived: gaps in the source timestamps.
    pub missing: u64,
    /// Frames later than their due time with a player buffer of 0.5, 1 and 2 s.
    pub late_500ms: u64,
    pub late_1s: u64,
    pub late_2s: u64,
    /// How much later than the quickest path the newest frame arrived, in ms: what
    /// the box's place in the tree costs in delay now.
    #[serde(default)]
    pub behind_ms: u64,
    /// The latest waits of half a second or more between two frames (a parent lost
    /// and found again, a congested link), oldest first: the box's recoveries.
    #[serde(default)]
    pub stalls: Vec<Stall>,
}

impl Continuity {
    /// Frames late for a player with a buffer of `buffer_ms` (500, 1000 or 2000).
    pub fn late(&self, buffer_ms: u32) -> u64 {
        match buffer_ms {
            ..=500 => self.late_500ms,
            501..=1000 => self.late_1s,
            _ => self.late_2s,
        }
    }

    /// What was counted after `earlier`, the counts at an earlier moment (the stalls
    /// left out, the delay now).
    pub fn since(&self, earlier: &Continuity) -> Continuity {
        Continuity {
            frames: self.frames.saturating_sub(earlier.frames),
            missing: self.missing.saturating_sub(earlier.missing),
            late_500ms: self.late_500ms.saturating_sub(earlier.late_500ms),
            late_1s: self.late_1s.saturating_sub(earlier.late_1s),
            late_2s: self.late_2s.saturating_sub(earlier.late_2s),
            behind_ms: self.behind_ms,
            stalls: Vec::new(),
        }
    }

    /// The share of frames on time with a buffer of `buffer_ms` (500, 1000 or 2000):
    /// the continuity index. 1 before any frame.
    pub fn index(&self, buffer_ms: u32) -> f64 {
        let late = self.late(buffer_ms);
        let expected = self.frames + self.missing;
        if expected == 0 {
            return 1.0;
        }
        (self.frames - late.min(self.frames)) as f64 / expected as f64
    }
}

/// A wait between two video frames arriving at a box.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    /// When the frame that ended it arrived, Unix time in ms.
    pub ended_unix_ms: u64,
    pub ms: u64,
}

/// `POST /streams/{name}/pull`: make this node a relay of `upstreams`, tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub upstreams: Vec<String>,
}
