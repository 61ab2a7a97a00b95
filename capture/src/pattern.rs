//! The test pattern: a moving synthetic picture with a burned-in frame counter, encoded
//! by libx264 for low latency. It stands in for a camera in demos, tests and benchmarks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ffmpeg_next as ff;
use proto::{StreamMeta, Tag};

use crate::avc::{self, NAL_AUD, NAL_PPS, NAL_SPS};
use crate::{CaptureError, Hint, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPatternConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval_frames: u32,
    /// Pace frames in real time; off, frames come as fast as they encode (tests).
    pub realtime: bool,
}

impl Default for TestPatternConfig {
    fn default() -> Self {
        TestPatternConfig {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 2500,
            keyframe_interval_frames: 60,
            realtime: true,
        }
    }
}

impl TestPatternConfig {
    pub fn validate(&self) -> Result<(), CaptureError> {
        let invalid = |field, message: &str| {
            Err(CaptureError::InvalidConfig {
                field,
                message: message.into(),
            })
        };
        if !(16..=3840).contains(&self.width) || self.width % 2 != 0 {
            return invalid("width", "must be even, 16 to 3840");
        }
        if !(16..=2160).contains(&self.height) || self.height % 2 != 0 {
            return invalid("height", "must be even, 16 to 2160");
        }
        if !(1..=120).contains(&self.fps) {
            return invalid("fps", "must be 1 to 120");
        }
        if !(50..=50_000).contains(&self.bitrate_kbps) {
            return invalid("bitrate_kbps", "must be 50 to 50000");
        }
        if self.keyframe_interval_frames == 0 {
            return invalid("keyframe_interval_frames", "must be at least 1");
        }
        Ok(())
    }
}

pub struct TestPattern {
    config: TestPatternConfig,
    meta: StreamMeta,
    encoder: ff::encoder::video::Encoder,
    background: ff::frame::Video,
    frame: ff::frame::Video,
    packet: ff::Packet,
    frame_index: u64,
    header_sent: bool,
    started: Option<Instant>,
}

// SAFETY: the FFmpeg encoder, frames and packet are owned by this value alone and used
// from one thread at a time; nothing in them refers to thread-local state.
unsafe impl Send for TestPattern {}

fn encoder_error(what: &str, hint: Hint) -> impl FnOnce(ff::Error) -> CaptureError + '_ {
    move |source| CaptureError::Encoder {
        what: what.into(),
        source,
        hint,
    }
}

impl TestPattern {
    pub fn open(config: TestPatternConfig) -> Result<TestPattern, CaptureError> {
        config.validate()?;
        ff::init().map_err(encoder_error("initialising FFmpeg", Hint::Report))?;
        // libx264 prints its banner and statistics at FFmpeg's default level.
        ff::util::log::set_level(ff::util::log::Level::Error);

        let codec = ff::encoder::find_by_name("libx264").ok_or(CaptureError::Encoder {
            what: "finding libx264".into(),
            source: ff::Error::EncoderNotFound,
            hint: Hint::InstallLibx264,
        })?;
        let mut video = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(encoder_error("creating the encoder", Hint::Report))?;
        video.set_width(config.width);
        video.set_height(config.height);
        video.set_format(ff::format::Pixel::YUV420P);
        video.set_time_base((1, config.fps as i32));
        video.set_frame_rate(Some((config.fps as i32, 1)));
        video.set_gop(config.keyframe_interval_frames);
        video.set_max_b_frames(0);
        video.set_bit_rate(config.bitrate_kbps as usize * 1000);
        let mut options = ff::Dictionary::new();
        options.set("preset", "veryfast");
        options.set("tune", "zerolatency");
        // A keyframe exactly every interval, SPS and PPS with each one.
        let keyint = config.keyframe_interval_frames;
        options.set(
            "x264-params",
            &format!("keyint={keyint}:min-keyint={keyint}:scenecut=0:repeat-headers=1"),
        );
        let encoder = video
            .open_with(options)
            .map_err(encoder_error("opening libx264", Hint::InstallLibx264))?;

        let background = draw_background(config.width, config.height);
        let frame = ff::frame::Video::new(ff::format::Pixel::YUV420P, config.width, config.height);
        let meta = StreamMeta {
            width: Some(config.width),
            height: Some(config.height),
            frame_rate: Some(config.fps as f32),
            video_codec_id: Some(u32::from(proto::flv::CODEC_AVC)),
            video_kbps: Some(config.bitrate_kbps),
            encoder: Some("astral test-pattern (libx264)".into()),
            ..StreamMeta::default()
        };
        Ok(TestPattern {
            config,
            meta,
            encoder,
            background,
            frame,
            packet: ff::Packet::empty(),
            frame_index: 0,
            header_sent: false,
            started: None,
        })
    }

    fn timestamp(&self, index: u64) -> u32 {
        (index * 1000 / u64::from(self.config.fps)) as u32
    }

    fn draw(&mut self, index: u64) {
        let (w, h) = (self.config.width as usize, self.config.height as usize);
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
        draw_counter(&mut self.frame, index, h / 10);
    }

    fn encode(&mut self, out: &mut Vec<Tag>) -> Result<(), CaptureError> {
        let index = self.frame_index;
        self.draw(index);
        self.frame.set_pts(Some(index as i64));
        self.encoder
            .send_frame(&self.frame)
            .map_err(encoder_error("encoding a frame", Hint::Report))?;
        while self.encoder.receive_packet(&mut self.packet).is_ok() {
            let Some(data) = self.packet.data() else {
                continue;
            };
            let keyframe = self.packet.is_key();
            let ts = self.packet.pts().map_or(index, |p| p.max(0) as u64);
            let timestamp = self.timestamp(ts);
            let nals = avc::split_annex_b(data);
            if !self.header_sent {
                let sps = nals.iter().find(|n| avc::nal_type(n) == Some(NAL_SPS));
                let pps = nals.iter().find(|n| avc::nal_type(n) == Some(NAL_PPS));
                let record = sps
                    .zip(pps)
                    .and_then(|(sps, pps)| avc::decoder_config(sps, pps))
                    .ok_or(CaptureError::NoParameterSets)?;
                let mut body = vec![0x17, 0, 0, 0, 0];
                body.extend_from_slice(&record);
                out.push(Tag::video(timestamp, Bytes::from(body)));
                self.header_sent = true;
            }
            let mut body = Vec::with_capacity(data.len() + 16);
            body.extend_from_slice(&[if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
            avc::write_avcc(
                nals.into_iter()
                    .filter(|n| avc::nal_type(n) != Some(NAL_AUD)),
                &mut body,
            );
            out.push(Tag::video(timestamp, Bytes::from(body)));
        }
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
                + Duration::from_secs_f64(self.frame_index as f64 / f64::from(self.config.fps));
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

/// Seven-segment digits: which of segments a..g (bit 0..6) each digit lights.
const SEGMENTS: [u8; 10] = [0x3f, 0x06, 0x5b, 0x4f, 0x66, 0x6d, 0x7d, 0x07, 0x7f, 0x6f];

/// The frame number, six digits in the top left corner, `height` pixels tall.
fn draw_counter(frame: &mut ff::frame::Video, index: u64, height: usize) {
    let h = height.max(10);
    let w = h / 2;
    let t = (h / 10).max(1); // stroke
    let digits = 6;
    let margin = t * 2;
    fill_luma(
        frame,
        0,
        0,
        margin * 2 + digits * (w + margin),
        h + margin * 2,
        16,
    );
    let mut n = index;
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
