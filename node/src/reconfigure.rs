//! Settings changed while the node runs (`PATCH /config`): validated as a start would
//! validate them, saved, then applied without a restart. A new source setting
//! restarts the source alone; a new title relists the stream; a new upload budget
//! changes the slots offered to other boxes. Nothing else stops.

use std::sync::Arc;
use std::time::Duration;

use proto::overlay::StreamId;

use crate::config::{Config, ConfigError, SourceConfig};
use crate::panel::Tally;
use crate::source::Health;
use crate::{lock, source, Node};

#[derive(Debug, thiserror::Error)]
pub enum ReconfigureError {
    /// A bad setting: nothing was changed.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The settings could not be saved: nothing was changed.
    #[error("cannot save the settings in {dir}: {source}")]
    Save { dir: String, source: std::io::Error },
    /// Saved, but the new source would not start; the node runs without it.
    #[error("the settings are saved, but the source does not start: {0:#}")]
    Source(anyhow::Error),
}

/// Why the broadcast could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("this box has no source configured: set `source` first (PATCH /config)")]
    NoSource,
    #[error("{0}")]
    Failed(String),
}

impl Node {
    /// Applies `patch` (a JSON object of settings) and returns the config now in
    /// force. Blocks while a source restarts: call it off the async runtime.
    pub fn reconfigure(
        self: &Arc<Self>,
        patch: &serde_json::Value,
    ) -> Result<Arc<Config>, ReconfigureError> {
        let _one_at_a_time = lock(&self.reconfiguring);
        let old = self.config();
        let settings = old.settings.patched(patch)?;
        if settings == old.settings {
            return Ok(old);
        }
        let new = Arc::new(old.with_settings(settings)?);
        new.settings
            .save(&new.data_dir)
            .map_err(|source| ReconfigureError::Save {
                dir: new.data_dir.display().to_string(),
                source,
            })?;
        *lock(&self.config) = Arc::clone(&new);
        tracing::info!(settings = ?new.settings, "settings changed");

        if old.capacity() != new.capacity() {
            self.capacity_changed();
        }
        self.apply_source(old.source.as_ref(), new.source.as_ref())?;
        Ok(new)
    }

    /// What the tally LED shows.
    pub fn tally(&self) -> Tally {
        match lock(&self.source).as_ref().map(|s| s.health()) {
            None => Tally::Off,
            Some(Health::Flowing) => Tally::Live,
            Some(Health::Failed) => Tally::Error,
            // Starting takes a second or two; longer, the camera is gone.
            Some(Health::Waiting(quiet)) if quiet > Duration::from_secs(5) => Tally::Error,
            Some(Health::Waiting(_)) => Tally::Connecting,
        }
    }

    /// The button: stops the broadcast, or starts it again. Settings are untouched.
    pub fn toggle_broadcast(self: &Arc<Self>) {
        let on = lock(&self.source).is_none();
        match self.set_broadcast(on, "the button") {
            Ok(_) => {}
            Err(BroadcastError::NoSource) => {
                tracing::info!("button pressed, but this box has no source configured")
            }
            Err(e) => tracing::warn!("the button could not start the broadcast: {e}"),
        }
    }

    /// Starts or stops the configured source's broadcast, for `who`; settings are
    /// untouched. Returns whether anything changed.
    pub fn set_broadcast(self: &Arc<Self>, on: bool, who: &str) -> Result<bool, BroadcastError> {
        let _one_at_a_time = lock(&self.reconfiguring);
        let config = self.config();
        let source = config.source.as_ref().ok_or(BroadcastError::NoSource)?;
        let running = lock(&self.source).is_some();
        if running == on {
            return Ok(false);
        }
        if on {
            self.apply_source(None, Some(source))
                .map_err(|e| BroadcastError::Failed(e.to_string()))?;
            tracing::info!("broadcast started by {who}");
        } else {
            self.apply_source(Some(source), None)
                .map_err(|e| BroadcastError::Failed(e.to_string()))?;
            tracing::info!("broadcast stopped by {who}");
        }
        Ok(true)
    }

    /// Starts the configured source, its timestamps from `start_ms`.
    pub(crate) fn start_source(&self, source: &SourceConfig, start_ms: u32) -> anyhow::Result<()> {
        let hub = self.hub_or_create(&source.stream);
        let key = self.control().key().clone();
        let handle = source::start(&hub, &source.kind, source.audio.as_ref(), start_ms, key)?;
        *lock(&self.source) = Some(handle);
        Ok(())
    }

    fn apply_source(
        self: &Arc<Self>,
        old: Option<&SourceConfig>,
        new: Option<&SourceConfig>,
    ) -> Result<(), ReconfigureError> {
        let same_media = |a: &SourceConfig, b: &SourceConfig| {
            (&a.stream, &a.kind, &a.audio) == (&b.stream, &b.kind, &b.audio)
        };
        match (old, new) {
            (None, None) => Ok(()),
            (Some(old), Some(new)) if same_media(old, new) => {
                if (&old.title, &old.description) != (&new.title, &new.description) {
                    if let Ok(stream) = StreamId::new(new.stream.clone()) {
                        // A stream not yet in the overlay keeps no listing to change.
                        let _ = self.relist(
                            &stream,
                            Some(new.title.clone()),
                            Some(new.description.clone()),
                        );
                    }
                }
                Ok(())
            }
            (old, new) => {
                let handle = lock(&self.source).take();
                let next_ms = handle.map_or(0, |h| h.stop());
                if let Some(old) = old.filter(|o| new.is_none_or(|n| n.stream != o.stream)) {
                    if let Ok(stream) = StreamId::new(old.stream.clone()) {
                        self.unpublish(&stream);
                    }
                }
                let Some(new) = new else {
                    return Ok(());
                };
                let start = if old.is_some_and(|o| o.stream == new.stream) {
                    next_ms
                } else {
                    0
                };
                self.start_source(new, start)
                    .map_err(ReconfigureError::Source)?;
                if self.control().is_running() {
                    self.publish_source(new);
                }
                Ok(())
            }
        }
    }
}
