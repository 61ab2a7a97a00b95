//! The box's own source (camera or test pattern) feeding its hub.
//!
//! Capture and encoding block, so they run on a thread of their own. The hub never
//! blocks its publisher, so the thread pushes tags straight in: the hub's bounded
//! per-subscriber queues are where back-pressure ends.
//!
//! A source restarted with new settings goes on from the timestamp the old one
//! reached: players and relays downstream see one stream whose picture changes, with
//! a new sequence header, not a clock going back to zero.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use capture::{Camera, Source, TestPattern};

use crate::config::SourceKind;
use crate::hub::{Feed, Hub};

/// A running source; dropping it stops the thread and frees the hub.
pub struct SourceHandle {
    stop: Arc<AtomicBool>,
    /// Where the next source's timestamps should start.
    next_ms: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl SourceHandle {
    /// Stops the source and returns the timestamp a successor should start from.
    pub fn stop(mut self) -> u32 {
        self.halt();
        self.next_ms.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts `kind` publishing into `hub`, its timestamps starting at `start_ms`.
pub fn start(hub: &Arc<Hub>, kind: &SourceKind, start_ms: u32) -> anyhow::Result<SourceHandle> {
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
    let publisher = hub.claim(Feed::Local { name: name.into() })?;
    let stop = Arc::new(AtomicBool::new(false));
    let next_ms = Arc::new(AtomicU32::new(start_ms));
    let frame_ms = 1000 / fps.max(1);
    let thread = std::thread::Builder::new()
        .name(format!("source-{}", hub.name()))
        .spawn({
            let stop = Arc::clone(&stop);
            let next_ms = Arc::clone(&next_ms);
            let mut source = source;
            move || {
                publisher.set_meta(source.meta().clone());
                let mut tags = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = source.next_tags(&mut tags) {
                        tracing::error!(stream = %publisher.hub().name(), "source failed: {e}");
                        return;
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
        thread: Some(thread),
    })
}
