//! The box's own source (camera or test pattern) feeding its hub.
//!
//! Capture and encoding block, so they run on a thread of their own. The hub never
//! blocks its publisher, so the thread pushes tags straight in: the hub's bounded
//! per-subscriber queues are where back-pressure ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use capture::{Source, TestPattern};

use crate::config::SourceKind;
use crate::hub::{Feed, Hub};

/// A running source; dropping it stops the thread and frees the hub.
pub struct SourceHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn start(hub: &Arc<Hub>, kind: &SourceKind) -> anyhow::Result<SourceHandle> {
    let (name, source): (&str, Box<dyn Source>) = match kind {
        SourceKind::TestPattern(config) => {
            ("test-pattern", Box::new(TestPattern::open(config.clone())?))
        }
    };
    let publisher = hub.claim(Feed::Local { name: name.into() })?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name(format!("source-{}", hub.name()))
        .spawn({
            let stop = Arc::clone(&stop);
            let mut source = source;
            move || {
                publisher.set_meta(source.meta().clone());
                let mut tags = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = source.next_tags(&mut tags) {
                        tracing::error!(stream = %publisher.hub().name(), "source failed: {e}");
                        return;
                    }
                    for tag in tags.drain(..) {
                        publisher.push(tag);
                    }
                }
            }
        })?;
    tracing::info!(stream = %hub.name(), source = name, "publishing from the local source");
    Ok(SourceHandle {
        stop,
        thread: Some(thread),
    })
}
