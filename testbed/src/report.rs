//! What the testbed measures at every box, from the box's own API: its place in the
//! tree, when it began to play, playback continuity from source timestamps (the hub
//! counts frames late for a player's buffer, and frames missing), what it forwards
//! against its upload, and the bytes it sent, so that the share served by peers
//! rather than by the source comes out.

use std::collections::HashMap;
use std::fmt::Write;

use crate::timeline::BoxState;
use crate::{Host, Testbed, STREAM};

#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    pub uplink_kbps: u32,
    pub playing: bool,
    pub depth: Option<u64>,
    pub parent: Option<String>,
    pub join_ms: Option<u128>,
    pub frames: u64,
    pub missing: u64,
    pub late: u64,
    /// Frames on time with a 1 s buffer, of all the source sent since the box joined.
    pub continuity: f64,
    /// How much later than its quickest path the box's newest frame came, in ms.
    pub behind_ms: u64,
    pub slots: u64,
    /// Players it sends the stream to: connected children and viewers.
    pub forwards: u64,
    /// What it forwards, at the stream's measured bitrate, against its upload.
    pub forward_kbps: u64,
    pub bytes_out: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub stream_kbps: u64,
    pub viewers: Vec<Viewer>,
    pub source_bytes_out: f64,
}

impl Report {
    /// What happened between `before` and this report: frames, losses, lateness and
    /// bytes counted over that window only (the joins before it left out).
    pub fn since(&self, before: &Report) -> Report {
        let viewers = self
            .viewers
            .iter()
            .map(|v| {
                let mut window = v.clone();
                // A box whose counters went back (its hub was made again: it stopped
                // relaying the stream and took it up again) counts from there.
                let before = before
                    .viewers
                    .iter()
                    .find(|b| b.name == v.name)
                    .filter(|b| b.frames <= v.frames);
                if let Some(b) = before {
                    window.frames = v.frames.saturating_sub(b.frames);
                    window.missing = v.missing.saturating_sub(b.missing);
                    window.late = v.late.saturating_sub(b.late);
                    window.bytes_out = (v.bytes_out - b.bytes_out).max(0.0);
                }
                window.continuity = continuity(window.frames, window.missing, window.late);
                window
            })
            .collect();
        Report {
            stream_kbps: self.stream_kbps,
            viewers,
            source_bytes_out: (self.source_bytes_out - before.source_bytes_out).max(0.0),
        }
    }

    /// The share of the stream's bytes that boxes sent to boxes, rather than the source.
    pub fn peer_share(&self) -> f64 {
        let peers: f64 = self.viewers.iter().map(|v| v.bytes_out).sum();
        let all = peers + self.source_bytes_out;
        if all > 0.0 {
            peers / all
        } else {
            0.0
        }
    }

    pub fn worst_continuity(&self) -> f64 {
        self.viewers
            .iter()
            .filter(|v| v.playing)
            .map(|v| v.continuity)
            .fold(1.0, f64::min)
    }

    /// Boxes forwarding beyond their slots or their upload.
    pub fn over_capacity(&self) -> Vec<&Viewer> {
        self.viewers
            .iter()
            .filter(|v| v.forwards > v.slots || v.forward_kbps > u64::from(v.uplink_kbps))
            .collect()
    }

    /// How many boxes sit at each depth, from 1.
    pub fn depths(&self) -> Vec<usize> {
        let deepest = self
            .viewers
            .iter()
            .filter_map(|v| v.depth)
            .max()
            .unwrap_or(0);
        (1..=deepest)
            .map(|d| self.viewers.iter().filter(|v| v.depth == Some(d)).count())
            .collect()
    }

    /// The table the testbed prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>5} {:<8} {:>8} {:>7} {:>6} {:>6} {:>10} {:>6} {:>9}",
            "box",
            "uplink",
            "depth",
            "parent",
            "join ms",
            "frames",
            "lost",
            "late",
            "continuity",
            "behind",
            "fwd kbps"
        );
        for v in &self.viewers {
            let _ = writeln!(
                out,
                "{:<8} {:>7} {:>5} {:<8} {:>8} {:>7} {:>6} {:>6} {:>10.4} {:>6} {:>4}/{:<4}",
                v.name,
                v.uplink_kbps,
                v.depth.map_or("-".into(), |d| d.to_string()),
                v.parent.as_deref().unwrap_or("-"),
                v.join_ms.map_or("-".into(), |j| j.to_string()),
                v.frames,
                v.missing,
                v.late,
                v.continuity,
                v.behind_ms,
                v.forward_kbps,
                v.uplink_kbps,
            );
        }
        let joins: Vec<u128> = {
            let mut j: Vec<u128> = self.viewers.iter().filter_map(|v| v.join_ms).collect();
            j.sort_unstable();
            j
        };
        let _ = writeln!(
            out,
            "\n{} boxes, stream {} kbit/s; playing {}; depth per level {:?}; join p50 {} ms, max {} ms",
            self.viewers.len(),
            self.stream_kbps,
            self.viewers.iter().filter(|v| v.playing).count(),
            self.depths(),
            joins.get(joins.len() / 2).copied().unwrap_or(0),
            joins.last().copied().unwrap_or(0),
        );
        let _ = writeln!(
            out,
            "worst continuity {:.4} (1 s buffer); bytes served by peers {:.1} %; over slots or upload: {}",
            self.worst_continuity(),
            self.peer_share() * 100.0,
            self.over_capacity().len(),
        );
        out
    }
}

pub(crate) fn gather(bed: &Testbed) -> anyhow::Result<Report> {
    let info = bed.source.get(&format!("/streams/{STREAM}"))?;
    let stream_kbps = info["bitrate_kbps"].as_u64().unwrap_or(0);
    let mut states: Vec<BoxState> = bed
        .viewers
        .iter()
        .map(|host| crate::timeline::probe(&host.reader()).unwrap_or_default())
        .collect();
    // Boxes name their parents by node id; the report by the names they started with.
    let mut names: HashMap<String, String> = states
        .iter()
        .map(|s| (s.id.clone(), s.name.clone()))
        .collect();
    names.extend(crate::timeline::id_and_name(&bed.source.get("/status")?));
    for state in &mut states {
        state.name_parents(&names);
    }
    let viewers = bed
        .viewers
        .iter()
        .zip(&bed.joined)
        .zip(states)
        .map(|((host, joined), state)| {
            viewer(host, state, joined.map(|j| j.as_millis()), stream_kbps)
        })
        .collect();
    Ok(Report {
        stream_kbps,
        viewers,
        source_bytes_out: Testbed::bytes_out(&bed.source),
    })
}

fn viewer(host: &Host, state: BoxState, join_ms: Option<u128>, stream_kbps: u64) -> Viewer {
    let seen = &state.seen;
    Viewer {
        name: host.name.clone(),
        uplink_kbps: host.uplink_kbps,
        playing: state.flowing && host.pid().is_some(),
        depth: state.depth,
        parent: state.parent.clone(),
        join_ms,
        frames: seen.frames,
        missing: seen.missing,
        late: seen.late_1s,
        continuity: continuity(seen.frames, seen.missing, seen.late_1s),
        behind_ms: seen.behind_ms,
        slots: state.slots,
        forwards: state.forwards,
        forward_kbps: state.forwards * stream_kbps,
        bytes_out: Testbed::bytes_out(host),
    }
}

/// Frames on time for a 1 s buffer of all the source sent (the hubs' own index); 0
/// when nothing was due, so that a box that got nothing counts as the worst.
fn continuity(frames: u64, missing: u64, late_1s: u64) -> f64 {
    if frames + missing == 0 {
        return 0.0;
    }
    proto::Continuity {
        frames,
        missing,
        late_1s,
        ..proto::Continuity::default()
    }
    .index(1000)
}
