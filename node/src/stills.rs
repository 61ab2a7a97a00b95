//! Stills of the streams a box holds: decoded from the latest keyframe
//! (`capture::thumbnail`), shown on the admin page, and sent to the portal for the
//! stream list every `SEND_EVERY` for each stream published here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::overlay::StreamId;

use crate::control::http;
use crate::{lock, Node};

/// Widest still: a card in the portal's list.
pub const MAX_WIDTH: u32 = 320;
/// How often a source sends the portal a still.
const SEND_EVERY: Duration = Duration::from_secs(10);

/// The latest still of each stream, by the timestamp of the keyframe it shows: a
/// keyframe is decoded once, however often and by however many its still is asked
/// for at once (each stream's still is made under a lock of its own).
#[derive(Default)]
pub struct Stills(std::sync::Mutex<HashMap<String, Arc<Latest>>>);

/// A stream's latest still and the timestamp of its keyframe; held while one is made.
type Latest = tokio::sync::Mutex<Option<(u32, Bytes)>>;

#[derive(Debug, thiserror::Error)]
pub enum StillError {
    #[error("no stream {0:?} on this node")]
    NoStream(String),
    #[error("no keyframe of {0:?} yet")]
    NoKeyframe(String),
    #[error("cannot make a still of {stream:?}: {error}")]
    Decode { stream: String, error: String },
}

impl Node {
    /// A JPEG of the stream's latest keyframe, at most `MAX_WIDTH` wide.
    pub async fn still(&self, stream: &str) -> Result<Bytes, StillError> {
        let hub = self
            .hub(stream)
            .ok_or_else(|| StillError::NoStream(stream.into()))?;
        let slot = Arc::clone(lock(&self.stills.0).entry(stream.into()).or_default());
        let mut latest = slot.lock().await;
        let (at, header, keyframe) = hub
            .still()
            .ok_or_else(|| StillError::NoKeyframe(stream.into()))?;
        if let Some((made, jpeg)) = latest.as_ref() {
            if *made == at {
                return Ok(jpeg.clone());
            }
        }
        let jpeg = tokio::task::spawn_blocking(move || {
            capture::thumbnail::jpeg(&header, &keyframe, MAX_WIDTH)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|made| made.map_err(|e| e.to_string()))
        .map_err(|error| StillError::Decode {
            stream: stream.into(),
            error,
        })?;
        let jpeg = Bytes::from(jpeg);
        *latest = Some((at, jpeg.clone()));
        Ok(jpeg)
    }
}

/// Sends the portal a still of each stream published here, every `SEND_EVERY`.
pub async fn send_stills(node: Arc<Node>) {
    let Some(portal) = node.control().portal().map(str::to_owned) else {
        return;
    };
    let mut every = tokio::time::interval(SEND_EVERY);
    let mut failing = false;
    loop {
        every.tick().await;
        let published: Vec<StreamId> = node.published_streams();
        for stream in published {
            let sent = match node.still(stream.as_str()).await {
                Ok(jpeg) => http::send_still(node.control().client(), &portal, &stream, jpeg)
                    .await
                    .map_err(|e| e.to_string()),
                Err(StillError::NoKeyframe(_)) => continue,
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(%stream, "cannot send the portal a still: {e}");
                }
                Err(e) => tracing::debug!(%stream, "cannot send the portal a still: {e}"),
            }
        }
    }
}
