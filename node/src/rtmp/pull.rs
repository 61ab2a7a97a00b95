//! Relay pull: the node plays a stream from an upstream box and feeds its own hub, so
//! it serves that stream to its players and to further boxes.
//!
//! An upstream counts as dead when no media arrives for the stall timeout, not only
//! when TCP says so: a box that loses power sends no reset. The pull then moves to the
//! next upstream of its list, at once, and backs off only after a whole round failed.
//! The hub's one claim is held across reconnects, so the hub drops the GOP the new
//! upstream replays up to the last timestamp already forwarded: downstream sees one
//! continuous stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tracing::Instrument;

use super::client::{Player, Received};
use super::url::RtmpUrl;
use super::RtmpError;
use crate::hub::{Feed, Hub, HubError, Publisher};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A running relay pull; dropping it stops the pull and frees the hub.
pub struct PullHandle {
    pub upstreams: Vec<RtmpUrl>,
    task: JoinHandle<()>,
}

impl Drop for PullHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts relaying into `hub` from `upstreams`, tried in order.
pub fn spawn(
    hub: &Arc<Hub>,
    upstreams: Vec<RtmpUrl>,
    stall_timeout: Duration,
) -> Result<PullHandle, HubError> {
    assert!(!upstreams.is_empty(), "a pull needs an upstream");
    let publisher = hub.claim(Feed::Upstream {
        url: upstreams[0].to_string(),
        connected: false,
    })?;
    let span = tracing::info_span!("pull", stream = %hub.name());
    let task = tokio::spawn(run(publisher, upstreams.clone(), stall_timeout).instrument(span));
    Ok(PullHandle { upstreams, task })
}

async fn run(publisher: Publisher, upstreams: Vec<RtmpUrl>, stall_timeout: Duration) {
    let mut index = 0;
    let mut failures = 0usize;
    let mut was_up = false;
    loop {
        let url = &upstreams[index];
        publisher.set_upstream(url.to_string(), false);
        let mut delivered = false;
        let Err(error) = pull_session(url, &publisher, stall_timeout, &mut delivered).await;
        publisher.set_upstream(url.to_string(), false);
        if delivered {
            tracing::warn!(upstream = %url, "upstream lost: {error}");
            failures = 0;
            was_up = true;
        } else if was_up || failures == 0 {
            tracing::warn!(upstream = %url, "cannot pull: {error}");
            was_up = false;
            failures += 1;
        } else {
            tracing::debug!(upstream = %url, "cannot pull: {error}");
            failures += 1;
        }
        publisher.hub().metrics().reconnects.inc();
        index = (index + 1) % upstreams.len();
        // Every upstream gets one immediate try; then back off, doubling to a ceiling.
        if failures >= upstreams.len() {
            let doublings = (failures - upstreams.len()).min(5) as u32;
            let delay = (Duration::from_millis(100) * 2u32.pow(doublings)).min(MAX_BACKOFF);
            tokio::time::sleep(delay).await;
        }
    }
}

/// One connection to `url`, until it fails. Sets `delivered` once media arrived.
async fn pull_session(
    url: &RtmpUrl,
    publisher: &Publisher,
    stall_timeout: Duration,
    delivered: &mut bool,
) -> Result<Infallible, RtmpError> {
    let deadline = Instant::now() + stall_timeout.max(CONNECT_TIMEOUT);
    let mut player = timeout_at(deadline, Player::connect(url))
        .await
        .map_err(|_| RtmpError::Timeout("the connection"))??;
    publisher.set_upstream(url.to_string(), true);
    tracing::info!(upstream = %url, "relaying");
    // The stall timer is re-armed only when it fires, not for every tag: a tag only
    // notes the time it came.
    let mut last_media = Instant::now();
    let stall = tokio::time::sleep_until(last_media + stall_timeout);
    tokio::pin!(stall);
    loop {
        tokio::select! {
            biased;
            received = player.next() => match received? {
                Received::Meta(meta) => publisher.set_meta(meta),
                Received::Media(tag) => {
                    publisher.push(tag);
                    *delivered = true;
                    last_media = Instant::now();
                }
            },
            () = &mut stall => {
                if last_media.elapsed() >= stall_timeout {
                    return Err(RtmpError::Stalled(stall_timeout.as_millis()));
                }
                stall.as_mut().reset(last_media + stall_timeout);
            }
        }
    }
}
