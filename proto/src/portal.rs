//! JSON bodies of the portal's API, besides the overlay's own requests
//! ([`crate::overlay::Request::Bootstrap`] and the supernode calls).
//!
//! The portal lists live streams and bootstraps nodes; it never carries video. A
//! stream's source box keeps its entry alive with a `PUT` every
//! [`DIRECTORY_REFRESH_SECS`]; an entry not renewed for [`DIRECTORY_TTL_SECS`] is gone.

use serde::{Deserialize, Serialize};

use crate::overlay::{Peer, StreamId};

/// How often a source renews its stream's entry.
pub const DIRECTORY_REFRESH_SECS: u64 = 30;
/// How long an entry lives without renewal: three refreshes missed.
pub const DIRECTORY_TTL_SECS: u64 = 3 * DIRECTORY_REFRESH_SECS;
/// Longest title, and longest description, in characters.
pub const MAX_TITLE_CHARS: usize = 120;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;

/// `PUT /api/streams/{id}` from the stream's source box: create or renew its entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamUpdate {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// The box that publishes the stream: the root of its relay tree.
    pub source: Peer,
    #[serde(default)]
    pub bitrate_kbps: u32,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
}

impl StreamUpdate {
    /// Checks the free-text fields' lengths and that they hold no control characters.
    pub fn check(&self) -> Result<(), String> {
        check_text("title", &self.title, MAX_TITLE_CHARS)?;
        check_text("description", &self.description, MAX_DESCRIPTION_CHARS)
    }
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), String> {
    if text.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("{field} has control characters"));
    }
    Ok(())
}

/// `GET /api/streams` (a list) and `GET /api/streams/{id}`: one live stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    pub id: StreamId,
    pub title: String,
    pub description: String,
    pub source: Peer,
    /// Boxes holding the stream, as the supernodes last counted them.
    pub viewers: u32,
    /// When the stream went live, in seconds since the Unix epoch.
    pub started: u64,
    /// When the source last renewed the entry.
    pub updated: u64,
    pub bitrate_kbps: u32,
    pub width: u32,
    pub height: u32,
}
