//! Streams as the box's owner sees them: published here (listed on the portal),
//! watched or seeded from the network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use overlay::Input;
use proto::overlay::StreamId;
use proto::portal::{StreamEntry, StreamUpdate};
use serde::{Deserialize, Serialize};

use super::http::{self, PortalError};
use crate::{lock, Node};

/// What the box does with a stream, as the admin asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Published here: this box is the root of the stream's tree.
    Source,
    /// Relayed for local players, as the owner asked: kept until the owner says stop.
    Watch,
    /// Relayed because a player on the box's network asked (the portal's watch page):
    /// dropped once no one here has played it for `relay.view_idle_secs`.
    View,
    /// Relayed only to help the network.
    Seed,
}

impl Node {
    /// Publishes a stream that originates here into the overlay and the directory.
    pub fn publish(self: &Arc<Self>, stream: StreamId, listing: StreamUpdate) {
        let kbps = listing.bitrate_kbps;
        lock(&self.control.state)
            .roles
            .insert(stream.clone(), Role::Source);
        lock(&self.control.published).insert(stream.clone(), listing);
        self.control.publish_changed.notify_one();
        self.overlay_input(Input::Publish { stream, kbps });
    }

    pub fn unpublish(self: &Arc<Self>, stream: &StreamId) {
        lock(&self.control.state).roles.remove(stream);
        if lock(&self.control.published).remove(stream).is_some() {
            let node = Arc::clone(self);
            let stream = stream.clone();
            tokio::spawn(async move {
                if let Some(portal) = node.control.portal() {
                    if let Err(e) = http::unlist_stream(&node.control.client, portal, &stream).await
                    {
                        tracing::debug!(%stream, "cannot take the stream off the portal: {e}");
                    }
                }
            });
        }
        self.overlay_input(Input::Unpublish {
            stream: stream.clone(),
        });
        self.end_viewers(stream);
    }

    /// Updates the directory listing of a stream published here, or to be.
    pub fn relist(
        &self,
        stream: &StreamId,
        title: Option<String>,
        description: Option<String>,
    ) -> Result<StreamUpdate, RelistError> {
        let mut published = lock(&self.control.published);
        let mut drafts = lock(&self.control.drafts);
        let listing = published
            .get_mut(stream)
            .or_else(|| drafts.get_mut(stream))
            .ok_or(RelistError::Unknown)?;
        let mut updated = listing.clone();
        if let Some(title) = title {
            updated.title = title;
        }
        if let Some(description) = description {
            updated.description = description;
        }
        updated.check().map_err(RelistError::Invalid)?;
        *listing = updated.clone();
        drop((published, drafts));
        self.control.publish_changed.notify_one();
        Ok(updated)
    }

    /// Keeps the listing of a stream given a publish key, for when it goes live.
    pub(crate) fn draft(&self, stream: StreamId, listing: StreamUpdate) {
        lock(&self.control.drafts).insert(stream, listing);
    }

    /// The streams published here.
    pub fn published_streams(&self) -> Vec<StreamId> {
        lock(&self.control.published).keys().cloned().collect()
    }

    /// The directory listing of a stream published here.
    pub fn listing(&self, stream: &StreamId) -> Option<StreamUpdate> {
        lock(&self.control.published).get(stream).cloned()
    }

    /// Starts relaying `stream` for local players (`Role::Watch`) or for the network
    /// (`Role::Seed`). The portal's directory names its source and bitrate.
    pub async fn watch(self: &Arc<Self>, stream: StreamId, role: Role) -> Result<(), WatchError> {
        if !self.control.is_running() {
            return Err(WatchError::NoOverlay);
        }
        {
            let mut state = lock(&self.control.state);
            if state.engine.held().iter().any(|h| h.stream == stream) {
                set_role(&mut state.roles, stream, role);
                return Ok(());
            }
        }
        let entry = match self.control.portal() {
            Some(portal) => Some(http::stream_entry(&self.control.client, portal, &stream).await?),
            None => None,
        };
        let (source, kbps) = match entry {
            Some(StreamEntry {
                source,
                bitrate_kbps,
                ..
            }) => (Some(source), bitrate_kbps),
            None => (None, 0),
        };
        if source
            .as_ref()
            .is_some_and(|s| s.id == self.control.me().id)
        {
            return Err(WatchError::OwnStream);
        }
        self.hub_or_create(stream.as_str());
        // Another ask may have come while the portal answered.
        set_role(&mut lock(&self.control.state).roles, stream.clone(), role);
        self.overlay_input(Input::Watch {
            stream,
            kbps,
            source,
        });
        Ok(())
    }

    /// Stops relaying a watched or seeded stream; false if it was neither.
    pub fn unwatch(self: &Arc<Self>, stream: &StreamId) -> bool {
        let known = {
            let mut state = lock(&self.control.state);
            match state.roles.get(stream) {
                Some(Role::Watch | Role::View | Role::Seed) => {
                    state.roles.remove(stream);
                    true
                }
                _ => false,
            }
        };
        if known {
            self.overlay_input(Input::Unwatch {
                stream: stream.clone(),
            });
            self.end_viewers(stream);
        }
        known
    }
}

/// Records why the box holds `stream`; a viewer's ask never overrides what the owner
/// decided, and nothing overrides the source.
fn set_role(roles: &mut BTreeMap<StreamId, Role>, stream: StreamId, role: Role) {
    let keep = match roles.get(&stream) {
        Some(Role::Source) => true,
        Some(_) => role == Role::View,
        None => false,
    };
    if !keep {
        roles.insert(stream, role);
    }
}

/// Drops streams relayed for players here (`Role::View`) once no one here has played
/// them for `relay.view_idle_secs`: a viewer who closed the page leaves no relay behind.
/// Players here are the stream's subscribers other than child boxes.
pub async fn drop_idle_views(node: Arc<Node>) {
    let mut idle_since: BTreeMap<StreamId, tokio::time::Instant> = BTreeMap::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        // Each stream relayed for a viewer, and its child boxes' players.
        let views: Vec<(StreamId, usize)> = {
            let state = lock(&node.control.state);
            if state.roles.values().any(|r| *r == Role::View) {
                state
                    .engine
                    .held()
                    .into_iter()
                    .filter(|h| state.roles.get(&h.stream) == Some(&Role::View))
                    .map(|h| {
                        let children = h.children.iter().filter(|t| t.connected).count();
                        (h.stream, children)
                    })
                    .collect()
            } else {
                Vec::new()
            }
        };
        idle_since.retain(|s, _| views.iter().any(|(v, _)| v == s));
        for (stream, children) in views {
            let subscribers = node
                .hub(stream.as_str())
                .map_or(0, |hub| hub.snapshot().subscribers);
            if subscribers > children {
                idle_since.remove(&stream);
                continue;
            }
            let since = *idle_since
                .entry(stream.clone())
                .or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= node.config().view_idle {
                tracing::info!(%stream, "no one here plays it any more: stopped relaying it");
                idle_since.remove(&stream);
                node.unwatch(&stream);
            }
        }
    }
}

/// Why a listing could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum RelistError {
    #[error("the stream is not published here")]
    Unknown,
    #[error("{0}")]
    Invalid(String),
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("this node is not in an overlay: give it --portal URL or --supernode ADDR")]
    NoOverlay,
    #[error("this node is the stream's source")]
    OwnStream,
    #[error(transparent)]
    Portal(#[from] PortalError),
}

/// Keeps this node's published streams listed on the portal: renews each entry every
/// `DIRECTORY_REFRESH_SECS`, at once when a listing changes.
pub async fn list_streams(node: Arc<Node>) {
    let Some(portal) = node.control.portal.clone() else {
        return;
    };
    let refresh = Duration::from_secs(proto::portal::DIRECTORY_REFRESH_SECS);
    loop {
        let listings: Vec<(StreamId, StreamUpdate)> = lock(&node.control.published)
            .iter()
            .map(|(s, l)| (s.clone(), l.clone()))
            .collect();
        for (stream, mut listing) in listings {
            if let Some(hub) = node.hub(stream.as_str()) {
                let snap = hub.snapshot();
                if snap.bitrate_kbps > 0 {
                    listing.bitrate_kbps = snap.bitrate_kbps;
                }
                if let Some(meta) = snap.meta.as_deref() {
                    listing.width = meta.width.unwrap_or(listing.width);
                    listing.height = meta.height.unwrap_or(listing.height);
                }
            }
            listing.source = node.control.me();
            match http::list_stream(&node.control.client, &portal, &stream, &listing).await {
                Ok(()) => tracing::debug!(%stream, "listed on the portal"),
                Err(e) => tracing::warn!(%stream, "cannot list the stream on the portal: {e}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(refresh) => {}
            () = node.control.publish_changed.notified() => {}
        }
    }
}

impl Node {
    /// Publishes the box's own source into the overlay and the directory.
    pub fn publish_source(self: &Arc<Self>, source: &crate::config::SourceConfig) {
        let Ok(stream) = StreamId::new(source.stream.clone()) else {
            return;
        };
        let video = source.kind.video();
        let listing = StreamUpdate {
            title: source.title.clone(),
            description: source.description.clone(),
            source: self.control.me(),
            bitrate_kbps: video.bitrate_kbps,
            width: video.width,
            height: video.height,
        };
        self.publish(stream, listing);
    }

    /// An RTMP publisher (ffmpeg, OBS) started a stream here: publish it into the
    /// overlay while the returned guard lives.
    pub fn local_publish(self: &Arc<Self>, stream: &str) -> Option<PublishGuard> {
        if !self.control.is_running() {
            return None;
        }
        let stream = StreamId::new(stream).ok()?;
        let draft = lock(&self.control.drafts).get(&stream).cloned();
        let listing = draft.unwrap_or_else(|| StreamUpdate {
            title: stream.to_string(),
            description: String::new(),
            source: self.control.me(),
            bitrate_kbps: 0,
            width: 0,
            height: 0,
        });
        self.publish(stream.clone(), listing);
        Some(PublishGuard {
            node: Arc::clone(self),
            stream,
        })
    }
}

/// Held while an RTMP publisher feeds a stream; dropping it unpublishes.
pub struct PublishGuard {
    node: Arc<Node>,
    stream: StreamId,
}

impl Drop for PublishGuard {
    fn drop(&mut self) {
        self.node.unpublish(&self.stream);
    }
}
