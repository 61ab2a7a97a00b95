//! Playback continuity at a hub: how a player here, which started with the first video
//! frame and plays in source time, would have seen the stream. Frame `ts` is due at the
//! first frame's arrival plus `ts − first ts`, plus the player's buffer; a frame after
//! that is late, and a gap in the timestamps wider than one and a half frame intervals
//! counts the frames that should have been in it as missing. Measured where the frames
//! arrive, it costs a box no traffic: the testbed reads it from every box.

use proto::Continuity;
use tokio::time::Instant;

/// Player buffers the lateness is counted against, in ms.
const BUFFERS_MS: [u128; 3] = [500, 1000, 2000];

#[derive(Default)]
pub(super) struct Tracker {
    /// The first frame's arrival and timestamp (again after the source restarted).
    origin: Option<(Instant, u32)>,
    last: Option<u32>,
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
        let (start, first) = *self.origin.get_or_insert((now, ts));
        let due = start + std::time::Duration::from_millis(u64::from(ts.wrapping_sub(first)));
        let late = now.saturating_duration_since(due).as_millis();
        let [half, one, two] = BUFFERS_MS.map(|b| u64::from(late > b));
        self.seen.late_500ms += half;
        self.seen.late_1s += one;
        self.seen.late_2s += two;
        self.seen.frames += 1;
        self.last = Some(ts);
    }

    /// The source restarted its clock: a new origin, the counts go on.
    pub(super) fn restart(&mut self) {
        self.origin = None;
        self.last = None;
    }

    pub(super) fn seen(&self) -> Continuity {
        self.seen.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
