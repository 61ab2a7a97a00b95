//! The stream hub: one per stream, between whoever feeds the stream and everyone who
//! watches it.
//!
//! A hub keeps what a newcomer needs to start decoding at once (metadata, the AVC and
//! AAC sequence headers, and the GOP cache: every tag since the last keyframe) and fans
//! each new tag out to its subscribers through bounded queues. The publisher never waits
//! for a subscriber: a full queue marks that subscriber as behind, it is then skipped up
//! to the next keyframe, and it is dropped if it stays behind for `lag_timeout`. So one
//! slow viewer or child box costs its own picture, never the stream of the others.
//!
//! The hub also keeps the stream continuous when its feed changes: within one epoch,
//! tags at or before the newest timestamp already forwarded on their track are dropped,
//! so a relay that reconnects to its upstream (which replays its GOP cache) or moves to
//! another upstream forwards no repeats and never goes backwards.
//!
//! The lock is a plain mutex held for a few pointer copies per tag and never across an
//! `.await`.

mod continuity;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use proto::identity::NodeKey;
use proto::seal::{headers_digest, tag_digest, Seal};
use proto::{StreamMeta, Tag, TagKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::StreamMetrics;

/// How a hub treats its subscribers; from the node's `[hub]` config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    /// Packets a subscriber may have queued before it counts as behind.
    pub queue_len: usize,
    /// A subscriber still behind after this long is disconnected.
    pub lag_timeout: Duration,
    /// The GOP cache is dropped (and refilled from the next keyframe) beyond this many
    /// tags, so a source that never sends a keyframe cannot grow it without bound.
    pub max_gop_tags: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_len: 256,
            lag_timeout: Duration::from_secs(5),
            max_gop_tags: 4096,
        }
    }
}

/// What a subscriber receives, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Meta(Arc<StreamMeta>),
    Media(Arc<Frame>),
    /// The source's seal of a GOP (`proto::seal`), for child boxes only: players are
    /// never sent one. It follows the GOP's last tag, or the next keyframe.
    Seal(Arc<Frame>),
}

/// A media tag as the hub hands it out: one allocation shared by every subscriber and
/// the GOP cache, with room for its wire form, made once for all the players that
/// send it the same way (see `rtmp::chunk`).
#[derive(Debug)]
pub struct Frame {
    pub tag: Tag,
    pub(crate) rtmp_chunks: OnceLock<Bytes>,
}

impl Frame {
    pub fn new(tag: Tag) -> Arc<Frame> {
        Arc::new(Frame {
            tag,
            rtmp_chunks: OnceLock::new(),
        })
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.tag == other.tag
    }
}

/// A timestamp that jumps back by more than this within one epoch means the source
/// restarted its clock, not that an upstream replayed its cache: start a new epoch.
const REWIND_LIMIT_MS: u32 = 30_000;

/// Source time a hub keeps before its current GOP, in whole GOPs, for boxes that
/// resume after a failover: 6 s is 1.5 MB of a 2 Mbit/s stream.
const HISTORY_MS: u32 = 6_000;

/// Source time over which bitrate and frame rate are measured.
const RATE_WINDOW_MS: u32 = 2_000;

/// Who feeds the hub; see [`Hub::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// An RTMP publisher or the box's own source. A new local feed starts a new epoch.
    Local { name: String },
    /// A relay pull. Reconnects keep the epoch, so timestamps continue.
    Upstream { url: String, connected: bool },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("stream {0:?} already has a publisher")]
    Busy(String),
}

pub struct Hub {
    name: String,
    config: HubConfig,
    metrics: StreamMetrics,
    state: Mutex<State>,
}

/// The sequence headers in force, video's and audio's.
type Headers = (Option<Bytes>, Option<Bytes>);

#[derive(Default)]
struct State {
    feed: Option<(u64, Feed)>,
    next_feed_id: u64,
    meta: Option<Arc<StreamMeta>>,
    video_header: Option<Arc<Frame>>,
    audio_header: Option<Arc<Frame>>,
    /// Bumped whenever metadata or a sequence header changes, so a subscriber that was
    /// skipping can be given the new ones before its next keyframe.
    headers_gen: u64,
    gop: Vec<Arc<Frame>>,
    /// The GOPs before `gop`, oldest first, for [`HISTORY_MS`]: a box that lost its
    /// parent or moves resumes from here, after the last frame it has, so a failover
    /// that takes less than that loses no frame (see [`Hub::subscribe_after`]).
    history: VecDeque<Vec<Arc<Frame>>>,
    /// The seals of the GOPs in `history`, by their first timestamp.
    seals: VecDeque<(u32, Arc<Frame>)>,
    last_video: Option<u32>,
    last_audio: Option<u32>,
    subscribers: Vec<Slot>,
    next_subscriber_id: u64,
    rates: Rates,
    continuity: continuity::Tracker,
}

struct Slot {
    id: u64,
    tx: mpsc::Sender<Packet>,
    headers_gen: u64,
    /// Set while the subscriber is being skipped to the next keyframe.
    behind_since: Option<Instant>,
}

impl State {
    fn headers(&self) -> Headers {
        let header = |h: &Option<Arc<Frame>>| h.as_ref().map(|f| f.tag.data.clone());
        (header(&self.video_header), header(&self.audio_header))
    }
}

/// Bitrate, frame rate and keyframe interval from source timestamps.
#[derive(Default)]
struct Rates {
    window: VecDeque<(u32, usize, bool)>, // (timestamp, bytes, is a video frame)
    last_keyframe: Option<u32>,
    keyframe_interval: Option<u32>,
}

impl Rates {
    fn record(&mut self, tag: &Tag) {
        let video = tag.kind == TagKind::Video;
        self.window
            .push_back((tag.timestamp, tag.data.len(), video));
        // Tracks interleave, so the window is trimmed against the newest timestamp.
        let newest = self.window.iter().map(|w| w.0).max().unwrap_or(0);
        while let Some(&(ts, _, _)) = self.window.front() {
            if newest.saturating_sub(ts) <= RATE_WINDOW_MS {
                break;
            }
            self.window.pop_front();
        }
        if tag.is_keyframe() {
            if let Some(prev) = self.last_keyframe {
                self.keyframe_interval = tag.timestamp.checked_sub(prev);
            }
            self.last_keyframe = Some(tag.timestamp);
        }
    }

    fn span_secs(&self) -> f32 {
        let (Some(min), Some(max)) = (
            self.window.iter().map(|w| w.0).min(),
            self.window.iter().map(|w| w.0).max(),
        ) else {
            return 0.0;
        };
        (max - min) as f32 / 1000.0
    }

    fn bitrate_kbps(&self) -> u32 {
        let span = self.span_secs();
        if span <= 0.0 {
            return 0;
        }
        let bytes: usize = self.window.iter().map(|w| w.1).sum();
        (bytes as f32 * 8.0 / 1000.0 / span).round() as u32
    }

    fn fps(&self) -> f32 {
        let frames = self.window.iter().filter(|w| w.2).count();
        let span = self.span_secs();
        if frames < 2 || span <= 0.0 {
            return 0.0;
        }
        // n frames span n-1 intervals.
        ((frames - 1) as f32 / span * 10.0).round() / 10.0
    }
}

/// A point-in-time view of a hub, for the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub feed: Option<Feed>,
    pub subscribers: usize,
    pub meta: Option<Arc<StreamMeta>>,
    pub has_audio: bool,
    pub has_video: bool,
    pub bitrate_kbps: u32,
    pub fps: f32,
    pub keyframe_interval_ms: Option<u32>,
    pub last_timestamp_ms: Option<u32>,
    pub continuity: proto::Continuity,
}

impl Hub {
    pub fn new(name: impl Into<String>, config: HubConfig, metrics: StreamMetrics) -> Arc<Hub> {
        Arc::new(Hub {
            name: name.into(),
            config,
            metrics,
            state: Mutex::new(State::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn metrics(&self) -> &StreamMetrics {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the state itself is still
        // consistent (every update is a handful of assignments), so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Becomes the hub's one feed. The feed is released when the returned handle drops.
    pub fn claim(self: &Arc<Self>, feed: Feed) -> Result<Publisher, HubError> {
        let mut state = self.lock();
        if state.feed.is_some() {
            return Err(HubError::Busy(self.name.clone()));
        }
        if matches!(feed, Feed::Local { .. }) {
            // A new local publisher is a new stream: its clock, its headers.
            state.last_video = None;
            state.last_audio = None;
            state.gop.clear();
            state.history.clear();
            state.seals.clear();
            state.video_header = None;
            state.audio_header = None;
            state.meta = None;
            state.rates = Rates::default();
            state.headers_gen += 1;
        }
        let id = state.next_feed_id;
        state.next_feed_id += 1;
        state.feed = Some((id, feed));
        Ok(Publisher {
            hub: Arc::clone(self),
            id,
            sealer: None,
        })
    }

    /// Subscribes to the stream: the returned packets start with everything needed to
    /// decode at once (metadata, sequence headers, the cached GOP), then follow live.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.subscribe_after(None)
    }

    /// Like [`Hub::subscribe`], for a box that already has the stream up to source
    /// timestamp `after` (it lost its parent, or moves): it gets only the frames after
    /// that, from the GOPs kept (at least [`HISTORY_MS`]), so it loses none and is sent
    /// no GOP it has. When `after` is not within them (too old, or another clock), the
    /// current GOP.
    pub fn subscribe_after(self: &Arc<Self>, after: Option<u32>) -> Subscription {
        let mut state = self.lock();
        let (tx, rx) = mpsc::channel(self.config.queue_len);
        let id = state.next_subscriber_id;
        state.next_subscriber_id += 1;
        let mut initial = Vec::with_capacity(3 + state.gop.len());
        initial.extend(state.meta.clone().map(Packet::Meta));
        initial.extend(state.video_header.clone().map(Packet::Media));
        initial.extend(state.audio_header.clone().map(Packet::Media));
        let oldest = state
            .history
            .iter()
            .flatten()
            .chain(&state.gop)
            .next()
            .map(|f| f.tag.timestamp);
        let covered = after.filter(|&after| {
            oldest.is_some_and(|oldest| oldest <= after)
                && state.last_video.is_some_and(|last| after <= last)
        });
        match covered {
            // Each whole GOP kept is followed by its seal, for a child box to check.
            Some(after) => {
                for gop in &state.history {
                    initial.extend(
                        gop.iter()
                            .filter(|f| f.tag.timestamp > after)
                            .cloned()
                            .map(Packet::Media),
                    );
                    let start = gop.first().map(|f| f.tag.timestamp);
                    let seal = state.seals.iter().find(|(s, _)| Some(*s) == start);
                    initial.extend(seal.map(|(_, seal)| Packet::Seal(Arc::clone(seal))));
                }
                initial.extend(
                    state
                        .gop
                        .iter()
                        .filter(|f| f.tag.timestamp > after)
                        .cloned()
                        .map(Packet::Media),
                );
            }
            None => initial.extend(state.gop.iter().cloned().map(Packet::Media)),
        }
        let headers_gen = state.headers_gen;
        state.subscribers.push(Slot {
            id,
            tx,
            headers_gen,
            behind_since: None,
        });
        self.metrics.subscribers.set(state.subscribers.len() as i64);
        Subscription {
            hub: Arc::clone(self),
            id,
            initial: initial.into(),
            rx,
        }
    }

    /// The newest video timestamp forwarded (in this epoch): where a resumed pull
    /// continues from.
    pub fn last_video(&self) -> Option<u32> {
        self.lock().last_video
    }

    /// What a still is decoded from: the AVC sequence header and the latest keyframe
    /// (its timestamp, and the tag bodies).
    pub fn still(&self) -> Option<(u32, Bytes, Bytes)> {
        let state = self.lock();
        let header = state.video_header.as_ref()?;
        let key = state
            .gop
            .iter()
            .find(|f| f.tag.kind == TagKind::Video && f.tag.is_keyframe())?;
        Some((
            key.tag.timestamp,
            header.tag.data.clone(),
            key.tag.data.clone(),
        ))
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            feed: state.feed.as_ref().map(|(_, f)| f.clone()),
            subscribers: state.subscribers.len(),
            meta: state.meta.clone(),
            has_audio: state.audio_header.is_some(),
            has_video: state.video_header.is_some(),
            bitrate_kbps: state.rates.bitrate_kbps(),
            fps: state.rates.fps(),
            keyframe_interval_ms: state.rates.keyframe_interval,
            last_timestamp_ms: match (state.last_video, state.last_audio) {
                (Some(v), Some(a)) => Some(v.max(a)),
                (v, a) => v.or(a),
            },
            continuity: state.continuity.seen(),
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut state = self.lock();
        state.subscribers.retain(|s| s.id != id);
        self.metrics.subscribers.set(state.subscribers.len() as i64);
    }

    fn release(&self, feed_id: u64) {
        let mut state = self.lock();
        if state.feed.as_ref().is_some_and(|(id, _)| *id == feed_id) {
            state.feed = None;
        }
    }

    fn set_feed_upstream(&self, feed_id: u64, now_url: String, now_connected: bool) {
        let mut state = self.lock();
        if let Some((id, Feed::Upstream { url, connected })) = state.feed.as_mut() {
            if *id == feed_id {
                *url = now_url;
                *connected = now_connected;
            }
        }
    }

    fn set_meta(&self, meta: StreamMeta) {
        let mut state = self.lock();
        if state.meta.as_deref() == Some(&meta) {
            return;
        }
        let meta = Arc::new(meta);
        state.meta = Some(Arc::clone(&meta));
        state.headers_gen += 1;
        self.fan_out(&mut state, Packet::Meta(meta), false, Instant::now());
    }

    fn push(&self, tag: Tag) {
        self.metrics.tags_in.inc();
        self.metrics.bytes_in.inc_by(tag.data.len() as u64);
        let mut state = self.lock();

        if tag.is_sequence_header() {
            let slot = match tag.kind {
                TagKind::Video => &mut state.video_header,
                _ => &mut state.audio_header,
            };
            // An upstream replays its headers on every reconnect: only a real change
            // goes out again.
            if slot.as_ref().is_some_and(|h| h.tag.data == tag.data) {
                return;
            }
            let frame = Frame::new(tag);
            *slot = Some(Arc::clone(&frame));
            state.headers_gen += 1;
            self.fan_out(&mut state, Packet::Media(frame), false, Instant::now());
            return;
        }

        let last = match tag.kind {
            TagKind::Video => state.last_video,
            TagKind::Audio => state.last_audio,
            TagKind::Script => None,
        };
        if let Some(last) = last {
            if tag.timestamp <= last {
                if tag.is_keyframe() && last - tag.timestamp > REWIND_LIMIT_MS {
                    tracing::info!(
                        stream = %self.name,
                        from = last,
                        to = tag.timestamp,
                        "source clock restarted; continuing from the new timestamps"
                    );
                    state.last_video = None;
                    state.last_audio = None;
                    state.continuity.restart();
                    state.history.clear();
                    state.seals.clear();
                    state.gop.clear();
                } else {
                    // Already forwarded: a replayed GOP after a reconnect.
                    self.metrics.repeats_dropped.inc();
                    return;
                }
            }
        }
        match tag.kind {
            TagKind::Video => state.last_video = Some(tag.timestamp),
            TagKind::Audio => state.last_audio = Some(tag.timestamp),
            TagKind::Script => {}
        }

        // One clock read per tag: its arrival, for continuity and for lagging players.
        let now = Instant::now();
        state.rates.record(&tag);
        if tag.kind == TagKind::Video {
            state.continuity.record(tag.timestamp, now);
        }
        let sync_point =
            tag.is_keyframe() || (tag.kind == TagKind::Audio && state.video_header.is_none());
        let keyframe = tag.is_keyframe();
        let ts = tag.timestamp;
        let frame = Frame::new(tag);
        if keyframe {
            let gop = std::mem::take(&mut state.gop);
            if !gop.is_empty() {
                state.history.push_back(gop);
            }
            // Whole GOPs: the oldest goes once the ones after it cover the span alone.
            while state.history.len() > 1
                && state.history[1]
                    .first()
                    .is_some_and(|f| ts.saturating_sub(f.tag.timestamp) >= HISTORY_MS)
            {
                state.history.pop_front();
            }
            let oldest = state
                .history
                .front()
                .and_then(|g| g.first())
                .map(|f| f.tag.timestamp);
            state
                .seals
                .retain(|(start, _)| oldest.is_some_and(|oldest| *start >= oldest));
        }
        if !state.gop.is_empty() || keyframe {
            if state.gop.len() >= self.config.max_gop_tags {
                tracing::warn!(stream = %self.name, "no keyframe in {} tags; GOP cache dropped", self.config.max_gop_tags);
                state.gop.clear();
                state.history.clear();
                state.seals.clear();
            } else {
                state.gop.push(Arc::clone(&frame));
            }
        }
        self.fan_out(&mut state, Packet::Media(frame), sync_point, now);
    }

    /// Keeps the seal of a GOP (`proto::seal`) with it and sends it on. A seal is
    /// small and skips no frame, so it goes to a subscriber that is behind as well,
    /// if there is room in its queue.
    fn push_seal(&self, start: u32, frame: Arc<Frame>) {
        let mut state = self.lock();
        if state.seals.iter().any(|(s, _)| *s == start) {
            return;
        }
        state.seals.push_back((start, Arc::clone(&frame)));
        if state.seals.len() > 64 {
            state.seals.pop_front();
        }
        state.subscribers.retain(|slot| {
            !matches!(
                slot.tx.try_send(Packet::Seal(Arc::clone(&frame))),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }

    /// The GOP closed last (by a keyframe just pushed) if it is not sealed yet, with
    /// the sequence headers in force.
    fn unsealed_gop(&self) -> Option<(Vec<Arc<Frame>>, Headers)> {
        let state = self.lock();
        let gop = state.history.back()?;
        let start = gop.first()?.tag.timestamp;
        if state.seals.iter().any(|(s, _)| *s == start) {
            return None;
        }
        Some((gop.clone(), state.headers()))
    }

    /// Sends `packet` to every subscriber without ever waiting. `sync_point` says a
    /// subscriber that is behind may resume here.
    fn fan_out(&self, state: &mut State, packet: Packet, sync_point: bool, now: Instant) {
        let headers_gen = state.headers_gen;
        let mut dropped = 0;
        let mut disconnected = 0;
        let (meta, video_header, audio_header) = (
            state.meta.clone(),
            state.video_header.clone(),
            state.audio_header.clone(),
        );
        state.subscribers.retain_mut(|slot| {
            if let Some(since) = slot.behind_since {
                if !sync_point {
                    dropped += 1;
                    if now.duration_since(since) > self.config.lag_timeout {
                        disconnected += 1;
                        return false;
                    }
                    return true;
                }
                // Resuming at a keyframe: first whatever headers changed meanwhile.
                let mut catch_up = Vec::new();
                if slot.headers_gen != headers_gen {
                    catch_up.extend(meta.clone().map(Packet::Meta));
                    catch_up.extend(video_header.clone().map(Packet::Media));
                    catch_up.extend(audio_header.clone().map(Packet::Media));
                }
                if slot.tx.capacity() < catch_up.len() + 1 {
                    dropped += 1;
                    if now.duration_since(since) > self.config.lag_timeout {
                        disconnected += 1;
                        return false;
                    }
                    return true;
                }
                for p in catch_up {
                    // Capacity was checked under the lock and only we send.
                    let _ = slot.tx.try_send(p);
                }
                slot.headers_gen = headers_gen;
            }
            match slot.tx.try_send(packet.clone()) {
                Ok(()) => {
                    slot.behind_since = None;
                    slot.headers_gen = headers_gen;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    slot.behind_since.get_or_insert(now);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if dropped > 0 {
            self.metrics.tags_dropped.inc_by(dropped);
        }
        if disconnected > 0 {
            self.metrics.lagging_disconnects.inc_by(disconnected);
            tracing::info!(stream = %self.name, count = disconnected, "disconnected subscribers that stayed behind");
        }
        self.metrics.subscribers.set(state.subscribers.len() as i64);
    }
}

/// The right to feed a hub. Dropping it frees the hub for another feed.
pub struct Publisher {
    hub: Arc<Hub>,
    id: u64,
    /// The source's key: each GOP is sealed when the next keyframe closes it.
    sealer: Option<NodeKey>,
}

impl Publisher {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Seals each GOP with the node's key from now on: this box is the stream's source.
    pub fn seal_with(&mut self, key: NodeKey) {
        self.sealer = Some(key);
    }

    pub fn push(&self, tag: Tag) {
        // A seal is not media: an RTMP publisher's seal-like tag is not passed on, and
        // a relay's are checked and pushed with `push_seal`.
        if Seal::from_tag(&tag).is_some() {
            return;
        }
        let keyframe = tag.is_keyframe();
        self.hub.push(tag);
        if let (true, Some(key)) = (keyframe, &self.sealer) {
            self.seal(key);
        }
    }

    fn seal(&self, key: &NodeKey) {
        let Some((gop, (video, audio))) = self.hub.unsealed_gop() else {
            return;
        };
        let start = gop[0].tag.timestamp;
        let digests = gop.iter().map(|f| tag_digest(&f.tag)).collect();
        let headers = headers_digest(video.as_deref(), audio.as_deref());
        let seal = Seal::sign(key, self.hub.name(), start, headers, digests);
        self.hub.push_seal(start, Frame::new(seal.to_tag()));
        self.hub.metrics.gops_sealed.inc();
    }

    /// A seal from upstream, checked (see `control::seals`).
    pub fn push_seal(&self, seal: &Seal, tag: Tag) {
        self.hub.push_seal(seal.start, Frame::new(tag));
    }

    pub fn set_meta(&self, meta: StreamMeta) {
        self.hub.set_meta(meta);
    }

    /// For relay feeds: which upstream is in use and whether it is connected, shown in
    /// the API.
    pub fn set_upstream(&self, url: String, connected: bool) {
        self.hub.set_feed_upstream(self.id, url, connected);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.hub.release(self.id);
    }
}

/// A subscriber's end of a hub. Dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    initial: VecDeque<Packet>,
    rx: mpsc::Receiver<Packet>,
}

impl Subscription {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The next packet; `None` once the hub has dropped this subscriber for lagging.
    pub async fn recv(&mut self) -> Option<Packet> {
        match self.initial.pop_front() {
            Some(p) => Some(p),
            None => self.rx.recv().await,
        }
    }

    /// The next packet if one is ready now, for batching writes.
    pub fn try_recv(&mut self) -> Option<Packet> {
        self.initial.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    /// Counts `frame` as sent to this subscriber, whatever the output.
    pub fn count_sent(&self, frame: &Frame) {
        let metrics = self.hub.metrics();
        metrics.tags_out.inc();
        metrics.bytes_out.inc_by(frame.tag.data.len() as u64);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

#[cfg(test)]
mod tests;
