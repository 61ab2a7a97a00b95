//! Prometheus metrics of the node, served at `GET /metrics`.
//!
//! Every counter is per stream (label `stream`). Hubs and connections hold cheap clones
//! of their stream's counters, so the media path bumps an atomic and never looks a
//! metric up by name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

/// All metric families of one node.
pub struct Metrics {
    registry: Registry,
    tags_in: Family<StreamLabel, Counter>,
    bytes_in: Family<StreamLabel, Counter>,
    tags_out: Family<StreamLabel, Counter>,
    bytes_out: Family<StreamLabel, Counter>,
    tags_dropped: Family<StreamLabel, Counter>,
    repeats_dropped: Family<StreamLabel, Counter>,
    lagging_disconnects: Family<StreamLabel, Counter>,
    reconnects: Family<StreamLabel, Counter>,
    gops_sealed: Family<StreamLabel, Counter>,
    gops_verified: Family<StreamLabel, Counter>,
    tampered: Family<StreamLabel, Counter>,
    subscribers: Family<StreamLabel, Gauge>,
}

/// One stream's handles into [`Metrics`].
#[derive(Clone, Debug, Default)]
pub struct StreamMetrics {
    pub tags_in: Counter,
    pub bytes_in: Counter,
    pub tags_out: Counter,
    pub bytes_out: Counter,
    pub tags_dropped: Counter,
    pub repeats_dropped: Counter,
    pub lagging_disconnects: Counter,
    pub reconnects: Counter,
    pub gops_sealed: Counter,
    pub gops_verified: Counter,
    pub tampered: Counter,
    pub subscribers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("astral"),
            tags_in: Family::default(),
            bytes_in: Family::default(),
            tags_out: Family::default(),
            bytes_out: Family::default(),
            tags_dropped: Family::default(),
            repeats_dropped: Family::default(),
            lagging_disconnects: Family::default(),
            reconnects: Family::default(),
            gops_sealed: Family::default(),
            gops_verified: Family::default(),
            tampered: Family::default(),
            subscribers: Family::default(),
        };
        let counters = [
            (
                "tags_in",
                "Tags received from the stream's feed",
                metrics.tags_in.clone(),
            ),
            (
                "bytes_in",
                "Tag payload bytes received from the feed",
                metrics.bytes_in.clone(),
            ),
            (
                "tags_out",
                "Tags sent to subscribers",
                metrics.tags_out.clone(),
            ),
            (
                "bytes_out",
                "Tag payload bytes sent to subscribers",
                metrics.bytes_out.clone(),
            ),
            (
                "tags_dropped",
                "Tags skipped for subscribers that fell behind",
                metrics.tags_dropped.clone(),
            ),
            (
                "repeats_dropped",
                "Tags dropped as already forwarded (after a reconnect)",
                metrics.repeats_dropped.clone(),
            ),
            (
                "lagging_disconnects",
                "Subscribers disconnected for staying behind",
                metrics.lagging_disconnects.clone(),
            ),
            (
                "reconnects",
                "Relay reconnections to an upstream",
                metrics.reconnects.clone(),
            ),
            (
                "gops_sealed",
                "GOPs this box sealed as the stream's source",
                metrics.gops_sealed.clone(),
            ),
            (
                "gops_verified",
                "GOPs received whole from a parent and found as the source sealed them",
                metrics.gops_verified.clone(),
            ),
            (
                "tampered",
                "Parents dropped for sending what the source did not seal",
                metrics.tampered.clone(),
            ),
        ];
        for (name, help, family) in counters {
            metrics.registry.register(name, help, family);
        }
        metrics.registry.register(
            "subscribers",
            "Current subscribers (players and child nodes)",
            metrics.subscribers.clone(),
        );
        metrics
    }
}

impl Metrics {
    pub fn stream(&self, stream: &str) -> StreamMetrics {
        let label = StreamLabel {
            stream: stream.to_owned(),
        };
        StreamMetrics {
            tags_in: self.tags_in.get_or_create(&label).clone(),
            bytes_in: self.bytes_in.get_or_create(&label).clone(),
            tags_out: self.tags_out.get_or_create(&label).clone(),
            bytes_out: self.bytes_out.get_or_create(&label).clone(),
            tags_dropped: self.tags_dropped.get_or_create(&label).clone(),
            repeats_dropped: self.repeats_dropped.get_or_create(&label).clone(),
            lagging_disconnects: self.lagging_disconnects.get_or_create(&label).clone(),
            reconnects: self.reconnects.get_or_create(&label).clone(),
            gops_sealed: self.gops_sealed.get_or_create(&label).clone(),
            gops_verified: self.gops_verified.get_or_create(&label).clone(),
            tampered: self.tampered.get_or_create(&label).clone(),
            subscribers: self.subscribers.get_or_create(&label).clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
