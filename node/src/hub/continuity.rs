//! Playback continuity at a hub: how a player here would have seen the stream. Frame
//! `ts` is due at the source's time of `ts` plus the quickest path here plus the
//! player's buffer: the quickest path is the least `arrival − ts` any frame had, so a
//! frame is late when it took longer than the best frame by more than the buffer. (A
//! joining box's first frames, a GOP sent at once, take their slack from the live
//! frames after them, and none counts as late.) A gap in the timestamps wider than
//! one and a half frame intervals counts the frames that should have been in it as
//! missing. Waits of half a second or more between two frames are kept too, the latest
//! [`STALLS_KEPT`], with the wall-clock time they ended: how long the box went without
//! its parent. Measured where the frames arrive, it costs a box no traffic: the
//! testbed reads it from every box.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::{Continuity, Stall};
use tokio::time::Instant;

/// Player buffers the lateness is counted against, in ms.
const BUFFERS_MS: [u128; 3] = [500, 1000, 2000];
/// The shortest wait between frames that counts as a stall.
const STALL: Duration = Duration::from_millis(500);
const STALLS_KEPT: usize = 32;

#[derive(Default)]
pub(super) struct Tracker {
    /// What arrival times are counted from.
    base: Option<Instant>,
    /// The least `arrival − ts` so far, in ms since `base`: the quickest path.
    quickest: Option<i64>,
    last: Option<u32>,
    last_arrival: Option<Instant>,
    /// The smallest step between consecutive frames: the frame interval.
    interval: Option<u32>,
    seen: Continuity,
}

impl Tracker {
    /// A video frame with source timestamp `ts` arrived at `now`; timestamps only grow
    /// between restarts (the hub drops repeats before this).
    pub(super) fn record(&mut self, ts: u32, now: Instant) {
        if let Some(step) = self.last.and_then(|last| ts.checked_sub(last)) {
            if step > 0 {
                let interval = *self.interval.get_or_insert(step);
                self.interval = Some(interval.min(step));
                if u64::from(step) * 2 > u64::from(interval) * 3 {
                    self.seen.missing += u64::from((step + interval / 2) / interval - 1);
                }
            }
        }
        if let Some(wait) = self
            .last_arrival
            .map(|last| now.saturating_duration_since(last))
        {
            if wait >= STALL {
                self.stalled(wait);
            }
        }
        self.last_arrival = Some(now);
        let base = *self.base.get_or_insert(now);
        let offset = now.saturating_duration_since(base).as_millis() as i64 - i64::from(ts);
        let quickest = *self
            .quickest
            .insert(self.quickest.map_or(offset, |q| q.min(offset)));
        let late = (offset - quickest) as u128;
        self.seen.behind_ms = late as u64;
        let [half, one, two] = BUFFERS_MS.map(|b| u64::from(late > b));
        self.seen.late_500ms += half;
        self.seen.late_1s += one;
        self.seen.late_2s += two;
        self.seen.frames += 1;
        self.last = Some(ts);
    }

    fn stalled(&mut self, wait: Duration) {
        let stalls = &mut self.seen.stalls;
        if stalls.len() == STALLS_KEPT {
            stalls.remove(0);
        }
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        stalls.push(Stall {
            ended_unix_ms: unix.as_millis() as u64,
            ms: wait.as_millis() as u64,
        });
    }

    /// The source restarted its clock: a new origin, the counts go on.
    pub(super) fn restart(&mut self) {
        self.quickest = None;
        self.last = None;
    }

    pub(super) fn seen(&self) -> Continuity {
        self.seen.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_late_and_missing_frames_against_source_time() {
        let mut t = Tracker::default();
        let start = Instant::now();
        // 25 fps on time.
        for i in 0..50u32 {
            t.record(i * 40, start + Duration::from_millis(u64::from(i) * 40));
        }
        assert_eq!(t.seen().index(500), 1.0);
        // A parent dies: nothing for 1.2 s, then the frames it held back arrive in a
        // burst, and three are lost for good.
        let burst = start + Duration::from_millis(50 * 40 + 1200);
        for i in 50..80u32 {
            t.record(i * 40, burst);
        }
        for i in 83..100u32 {
            t.record(i * 40, start + Duration::from_millis(u64::from(i) * 40));
        }
        let seen = t.seen();
        assert_eq!(seen.missing, 3);
        assert_eq!(seen.frames, 97);
        assert_eq!(seen.late_2s, 0);
        assert_eq!(seen.stalls.len(), 1, "{seen:?}");
        assert_eq!(seen.stalls[0].ms, 1240);
        assert!(
            seen.late_1s > 0 && seen.late_500ms > seen.late_1s,
            "{seen:?}"
        );
        assert!(
            (seen.index(2000) - 0.97).abs() < 1e-9,
            "{}",
            seen.index(2000)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_joining_box_s_first_gop_is_on_time() {
        let mut t = Tracker::default();
        let start = Instant::now();
        // Joined 1.6 s into a GOP: 40 frames at once, then live.
        for i in 0..40u32 {
            t.record(i * 40, start);
        }
        for i in 40..100u32 {
            t.record(
                i * 40,
                start + Duration::from_millis(u64::from(i - 40) * 40),
            );
        }
        let seen = t.seen();
        assert_eq!((seen.frames, seen.late_500ms), (100, 0), "{seen:?}");
    }
}
