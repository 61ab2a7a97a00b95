//! The test pattern: a moving synthetic picture with a burned-in frame counter, encoded
//! like a camera's pictures. It stands in for a camera in demos, tests and benchmarks.
//!
//! In clock mode the burned-in number is instead the wall clock when the picture was
//! drawn (Unix milliseconds modulo 10^8, eight digits), for measuring glass-to-glass
//! latency: a viewer compares the number it sees with its own clock, which is the
//! same clock on the same machine, or an NTP-synced one elsewhere. Drawing happens
//! just before encoding, so the difference covers encode, transport and display.
//! The digits are plain seven-segment rectangles at a fixed place (see
//! `draw_counter`) so that a program can read them back from decoded pictures.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ffmpeg_next as ff;
use proto::{StreamMeta, Tag};

use crate::encode::{VideoConfig, H264};
use crate::{ffmpeg_failed, CaptureError, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPatternConfig {
    pub video: VideoConfig,
    /// Pace frames in real time; off, frames come as fast as they encode (tests).
    pub realtime: bool,
    /// Burn in the wall clock (Unix ms mod 10^8, eight digits) instead of the frame
    /// number, so a viewer can measure glass-to-glass latency by comparing it with
    /// its own clock (same machine, or NTP-synced).
    pub clock: bool,
    /// Fill the bottom quarter with fresh noise every frame. The bars and the square
    /// cost the encoder almost nothing (a 2500 kbit/s pattern comes out near 70);
    /// noise makes the stream as heavy as its bitrate says, as a camera's is, for
    /// tests of upload limits.
    pub noise: bool,
}

impl Default for TestPatternConfig {
    fn default() -> Self {
        TestPatternConfig {
            video: VideoConfig::default(),
            realtime: true,
            clock: false,
            noise: false,
        }
    }
}

pub struct TestPattern {
    config: TestPatternConfig,
    meta: StreamMeta,
    encoder: H264,
    background: ff::frame::Video,
    frame: ff::frame::Video,
    /// For encoders that take NV12 (VAAPI).
    convert: Option<(ff::software::scaling::Context, ff::frame::Video)>,
    frame_index: u64,
    started: Option<Instant>,
}

// SAFETY: the FFmpeg frames and scaler are owned by this value alone and used from one
// thread at a time; nothing in them refers to thread-local state.
unsafe impl Send for TestPattern {}

impl TestPattern {
    pub fn open(config: TestPatternConfig) -> Result<TestPattern, CaptureError> {
        let encoder = H264::open(&config.video)?;
        let yuv = ff::format::Pixel::YUV420P;
        let convert = match encoder.input_format() {
            format if format == yuv => None,
            format => {
                let (w, h) = (config.video.width, config.video.height);
                let scaler = ff::software::scaling::Context::get(
                    yuv,
                    w,
                    h,
                    format,
                    w,
                    h,
                    ff::software::scaling::Flags::POINT,
                )
                .map_err(ffmpeg_failed("converting pictures for the encoder"))?;
                Some((scaler, ff::frame::Video::new(format, w, h)))
            }
        };
        let background = draw_background(config.video.width, config.video.height);
        let frame = ff::frame::Video::new(yuv, config.video.width, config.video.height);
        let meta = config
            .video
            .meta(format!("astral test-pattern ({})", encoder.name()));
        Ok(TestPattern {
            config,
            meta,
            encoder,
            background,
            frame,
            convert,
            frame_index: 0,
            started: None,
        })
    }

    fn timestamp(&self, index: u64) -> u32 {
        (index * 1000 / u64::from(self.config.video.fps)) as u32
    }

    /// Frame `index` as raw YUV420P (planes one after the other, no padding), for
    /// feeding the same pictures to another encoder in benchmarks. It always shows
    /// the frame number, even in clock mode: these pictures are stored and replayed,
    /// so a clock in them would only show when they were made.
    pub fn raw_frame(&mut self, index: u64, out: &mut Vec<u8>) {
        self.draw(index, index, FRAME_DIGITS);
        let (w, h) = (
            self.config.video.width as usize,
            self.config.video.height as usize,
        );
        for (plane, (cols, rows)) in [(w, h), (w / 2, h / 2), (w / 2, h / 2)]
            .into_iter()
            .enumerate()
        {
            let stride = self.frame.stride(plane);
            let data = self.frame.data(plane);
            for row in 0..rows {
                out.extend_from_slice(&data[row * stride..][..cols]);
            }
        }
    }

    /// Picture `index` (which places the moving square) with `counter` burned in as
    /// `digits` digits.
    fn draw(&mut self, index: u64, counter: u64, digits: usize) {
        let (w, h) = (
            self.config.video.width as usize,
            self.config.video.height as usize,
        );
        for plane in 0..3 {
            let rows = if plane == 0 { h } else { h / 2 };
            let cols = if plane == 0 { w } else { w / 2 };
            let (src_stride, dst_stride) =
                (self.background.stride(plane), self.frame.stride(plane));
            let src = self.background.data(plane);
            let dst = self.frame.data_mut(plane);
            for y in 0..rows {
                dst[y * dst_stride..y * dst_stride + cols]
                    .copy_from_slice(&src[y * src_stride..y * src_stride + cols]);
            }
        }
        // A square crossing the picture, so motion is visible and costs bits.
        let side = (h / 6).max(4) & !1;
        let span = (w - side).max(1);
        let x = ((index as usize * 8) % span) & !1;
        let y = ((h - side) / 2) & !1;
        fill_luma(&mut self.frame, x, y, side, side, 235);
        draw_counter(&mut self.frame, counter, digits, h / 10);
        if self.config.noise {
            fill_noise(&mut self.frame, h - h / 4, index);
        }
    }

    fn encode(&mut self, out: &mut Vec<Tag>) -> Result<(), CaptureError> {
        let index = self.frame_index;
        if self.config.clock {
            // Read as late as possible, after any pacing sleep, so the number is the
            // moment the picture starts down the pipeline.
            self.draw(index, clock_ms(SystemTime::now()), CLOCK_DIGITS);
        } else {
            self.draw(index, index, FRAME_DIGITS);
        }
        let ts = self.timestamp(index);
        let keyframe = index % u64::from(self.config.video.keyframe_interval_frames) == 0;
        let frame = match &mut self.convert {
            Some((scaler, converted)) => {
                scaler
                    .run(&self.frame, converted)
                    .map_err(ffmpeg_failed("converting a picture"))?;
                converted
            }
            None => &mut self.frame,
        };
        self.encoder.encode(frame, ts, keyframe, out)?;
        self.frame_index += 1;
        Ok(())
    }
}

impl Source for TestPattern {
    fn meta(&self) -> &StreamMeta {
        &self.meta
    }

    fn next_tags(&mut self, out: &mut Vec<Tag>) -> Result<(), CaptureError> {
        if self.config.realtime {
            let started = *self.started.get_or_insert_with(Instant::now);
            let due = started
                + Duration::from_secs_f64(
                    self.frame_index as f64 / f64::from(self.config.video.fps),
                );
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.encode(out)
    }
}

/// Eight vertical colour bars (BT.601 limited range), drawn once per source.
fn draw_background(width: u32, height: u32) -> ff::frame::Video {
    const BARS: [(u8, u8, u8); 8] = [
        (180, 128, 128), // white
        (168, 44, 136),  // yellow
        (145, 147, 44),  // cyan
        (133, 63, 52),   // green
        (63, 193, 204),  // magenta
        (51, 109, 212),  // red
        (28, 212, 120),  // blue
        (16, 128, 128),  // black
    ];
    let mut frame = ff::frame::Video::new(ff::format::Pixel::YUV420P, width, height);
    let (w, h) = (width as usize, height as usize);
    for plane in 0..3 {
        let (cols, rows) = if plane == 0 { (w, h) } else { (w / 2, h / 2) };
        let stride = frame.stride(plane);
        let data = frame.data_mut(plane);
        for y in 0..rows {
            for x in 0..cols {
                let bar = BARS[x * 8 / cols];
                data[y * stride + x] = [bar.0, bar.1, bar.2][plane];
            }
        }
    }
    frame
}

/// Luma noise from row `top` down, different in every frame (xorshift, seeded by the
/// frame's index so the same frame is the same picture).
fn fill_noise(frame: &mut ff::frame::Video, top: usize, index: u64) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = frame.stride(0);
    let data = frame.data_mut(0);
    let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for row in top..h {
        for px in data[row * stride..row * stride + w].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for (p, b) in px.iter_mut().zip(x.to_le_bytes()) {
                // Limited range, as the rest of the picture.
                *p = 16 + b % 220;
            }
        }
    }
}

/// Fills a rectangle with a grey level: luma `value`, neutral chroma.
fn fill_luma(frame: &mut ff::frame::Video, x: usize, y: usize, w: usize, h: usize, value: u8) {
    let (fw, fh) = (frame.width() as usize, frame.height() as usize);
    for (plane, shift, fill) in [(0, 0, value), (1, 1, 128), (2, 1, 128)] {
        let stride = frame.stride(plane);
        let data = frame.data_mut(plane);
        let (x0, x1) = (x.min(fw) >> shift, (x + w).min(fw) >> shift);
        for row in (y >> shift)..((y + h).min(fh) >> shift) {
            data[row * stride + x0..row * stride + x1].fill(fill);
        }
    }
}

/// The frame number's digits: it wraps after 10^6 frames (over nine hours at 30 fps).
const FRAME_DIGITS: usize = 6;
/// The clock's digits: 10^8 ms is about 28 hours, far more than any latency, so a
/// reader can undo the wrap by taking the nearer of the two differences.
const CLOCK_DIGITS: usize = 8;

/// What clock mode burns in: Unix time in milliseconds, modulo 10^8.
fn clock_ms(now: SystemTime) -> u64 {
    // A clock set before 1970 is a broken clock; showing 0 beats failing the stream.
    let ms = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    (ms % 100_000_000) as u64
}

/// Seven-segment digits: which of segments a..g (bit 0..6) each digit lights.
const SEGMENTS: [u8; 10] = [0x3f, 0x06, 0x5b, 0x4f, 0x66, 0x6d, 0x7d, 0x07, 0x7f, 0x6f];

/// `value`'s last `digits` digits, most significant leftmost, in the top left corner:
/// white (luma 235) segments on a black (16) box. With `h = max(height, 10)`, digits
/// are `h` tall and `w = h / 2` wide with strokes `t = max(h / 10, 1)`; digit `d`'s
/// top left corner is at (`m + d * (w + m)`, `m`) where `m = 2 * t`. Whatever reads
/// the number back (the tests here, a viewer measuring latency) relies on this
/// geometry: change it and them together.
fn draw_counter(frame: &mut ff::frame::Video, value: u64, digits: usize, height: usize) {
    let h = height.max(10);
    let w = h / 2;
    let t = (h / 10).max(1); // stroke
    let margin = t * 2;
    fill_luma(
        frame,
        0,
        0,
        margin * 2 + digits * (w + margin),
        h + margin * 2,
        16,
    );
    let mut n = value;
    for d in (0..digits).rev() {
        let x = margin + d * (w + margin);
        let y = margin;
        let lit = SEGMENTS[(n % 10) as usize];
        n /= 10;
        let half = h / 2;
        let rects = [
            (x, y, w, t),                   // a: top
            (x + w - t, y, t, half),        // b: top right
            (x + w - t, y + half, t, half), // c: bottom right
            (x, y + h - t, w, t),           // d: bottom
            (x, y + half, t, half),         // e: bottom left
            (x, y, t, half),                // f: top left
            (x, y + half - t / 2, w, t),    // g: middle
        ];
        for (segment, &(rx, ry, rw, rh)) in rects.iter().enumerate() {
            if lit & (1 << segment) != 0 {
                fill_luma(frame, rx, ry, rw, rh, 235);
            }
        }
    }
}

#[cfg(test)]
mod tests;
