//! The box's own source (camera or test pattern) feeding its hub.
//!
//! Capture and encoding block, so they run on a thread of their own. The hub never
//! blocks its publisher, so the thread pushes tags straight in: the hub's bounded
//! per-subscriber queues are where back-pressure ends.
//!
//! A source restarted with new settings goes on from the timestamp the old one
//! reached: players and relays downstream see one stream whose picture changes, with
//! a new sequence header, not a clock going back to zero.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capture::{Camera, Microphone, MicrophoneConfig, Source, TestPattern};

use crate::config::SourceKind;
use crate::hub::{Feed, Hub, Publisher};

/// A running source; dropping it stops the thread and frees the hub.
pub struct SourceHandle {
    stop: Arc<AtomicBool>,
    /// Where the next source's timestamps should start.
    next_ms: Arc<AtomicU32>,
    /// When the source last gave a tag, in ms after `started`; 0 for never.
    last_tag_ms: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    started: Instant,
    thread: Option<JoinHandle<()>>,
    sound: Option<JoinHandle<()>>,
}

/// How a running source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Tags in the last two seconds.
    Flowing,
    /// No tag for this long (starting, or the camera is away).
    Waiting(Duration),
    /// The source stopped on an error.
    Failed,
}

impl SourceHandle {
    pub fn health(&self) -> Health {
        if self.failed.load(Ordering::Relaxed) {
            return Health::Failed;
        }
        let now = self.started.elapsed();
        let last = Duration::from_millis(self.last_tag_ms.load(Ordering::Relaxed));
        match now.saturating_sub(last) {
            quiet if quiet < Duration::from_secs(2) && !last.is_zero() => Health::Flowing,
            quiet => Health::Waiting(quiet),
        }
    }

    /// Stops the source and returns the timestamp a successor should start from.
    pub fn stop(mut self) -> u32 {
        self.halt();
        self.next_ms.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in [self.thread.take(), self.sound.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts `kind`, with sound from `audio` if given, publishing into `hub`, its
/// timestamps starting at `start_ms`.
pub fn start(
    hub: &Arc<Hub>,
    kind: &SourceKind,
    audio: Option<&MicrophoneConfig>,
    start_ms: u32,
    seal_with: proto::identity::NodeKey,
) -> anyhow::Result<SourceHandle> {
    // The clock video and sound both count from.
    let epoch = Instant::now();
    let (name, source, fps): (&str, Box<dyn Source>, u32) = match kind {
        SourceKind::TestPattern(config) => (
            "test-pattern",
            Box::new(TestPattern::open(config.clone())?),
            config.video.fps,
        ),
        SourceKind::Camera(config) => (
            "camera",
            Box::new(Camera::open(config.clone())?),
            config.video.fps,
        ),
    };
    let mut publisher = hub.claim(Feed::Local { name: name.into() })?;
    publisher.seal_with(seal_with);
    let publisher = Arc::new(publisher);
    let stop = Arc::new(AtomicBool::new(false));
    let next_ms = Arc::new(AtomicU32::new(start_ms));
    let last_tag_ms = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let frame_ms = 1000 / fps.max(1);
    let sound = audio
        .map(|config| {
            let (config, stop, publisher) =
                (config.clone(), Arc::clone(&stop), Arc::clone(&publisher));
            std::thread::Builder::new()
                .name(format!("sound-{}", hub.name()))
                .spawn(move || sound(&config, epoch, start_ms, &stop, &publisher))
        })
        .transpose()?;
    let thread = std::thread::Builder::new()
        .name(format!("source-{}", hub.name()))
        .spawn({
            let stop = Arc::clone(&stop);
            let next_ms = Arc::clone(&next_ms);
            let (last_tag_ms, failed) = (Arc::clone(&last_tag_ms), Arc::clone(&failed));
            let publisher = Arc::clone(&publisher);
            let mut source = source;
            move || {
                publisher.set_meta(source.meta().clone());
                let mut tags = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = source.next_tags(&mut tags) {
                        tracing::error!(stream = %publisher.hub().name(), "source failed: {e}");
                        failed.store(true, Ordering::Relaxed);
                        return;
                    }
                    if !tags.is_empty() {
                        let ms = epoch.elapsed().as_millis().max(1) as u64;
                        last_tag_ms.store(ms, Ordering::Relaxed);
                    }
                    for mut tag in tags.drain(..) {
                        tag.timestamp = tag.timestamp.wrapping_add(start_ms);
                        next_ms.store(tag.timestamp.wrapping_add(frame_ms), Ordering::Relaxed);
                        publisher.push(tag);
                    }
                }
            }
        })?;
    tracing::info!(stream = %hub.name(), source = name, "publishing from the local source");
    Ok(SourceHandle {
        stop,
        next_ms,
        last_tag_ms,
        failed,
        started: epoch,
        thread: Some(thread),
        sound,
    })
}

/// The sound thread: the microphone's tags into the hub beside the video's. A
/// microphone that is missing or fails is logged once and tried again every 2 s.
fn sound(
    config: &MicrophoneConfig,
    epoch: Instant,
    start_ms: u32,
    stop: &AtomicBool,
    publisher: &Publisher,
) {
    // Warned about a failure, and not yet heard sound for long since.
    let mut said = false;
    let mut tags = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let failure = match Microphone::open(config, epoch) {
            Err(e) => format!("no sound: {e}"),
            Ok(mut mic) => {
                let mut heard = 0u32;
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = mic.next_tags(&mut tags) {
                        break format!("sound lost: {e}");
                    }
                    heard = heard.saturating_add(tags.len() as u32);
                    if heard > 500 {
                        said = false;
                    }
                    for mut tag in tags.drain(..) {
                        tag.timestamp = tag.timestamp.wrapping_add(start_ms);
                        publisher.push(tag);
                    }
                }
            }
        };
        if !said {
            tracing::warn!(device = %config.device, "{failure}; trying again every 2 s");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
