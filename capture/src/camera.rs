//! A V4L2 camera: `/dev/videoN` through the `v4l` crate.
//!
//! The device's formats, sizes and frame intervals are enumerated and the best match
//! for the configured size and frame rate is chosen, preferring H.264 straight from
//! the camera (passed through, not encoded again), then MJPEG, then uncompressed
//! formats. The frame rate is set explicitly (VIDIOC_S_PARM: drivers keep their own
//! default otherwise). Buffers are mmapped and dequeued on a thread of their own into
//! a bounded channel; when the encoder falls behind, the newest frames wait and the
//! others are dropped. A camera that goes away is logged once, and capture resumes
//! when it comes back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ffmpeg_next as ff;
use proto::{StreamMeta, Tag};
use v4l::buffer::Type;
use v4l::framesize::FrameSizeEnum;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use crate::encode::{Packetizer, VideoConfig, H264};
use crate::{ffmpeg_failed, CaptureError, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraConfig {
    pub device: PathBuf,
    /// The size and frame rate asked of the camera, and of the stream.
    pub video: VideoConfig,
}

/// How frames of a pixel format become pictures for the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// H.264 from the camera, passed through.
    PassThrough,
    /// Decoded with FFmpeg's MJPEG decoder.
    Mjpeg,
    /// Uncompressed, in this layout.
    Raw(ff::format::Pixel),
}

/// Pixel formats taken, best first.
pub const PREFERENCE: [(&[u8; 4], Handling); 7] = [
    (b"H264", Handling::PassThrough),
    (b"MJPG", Handling::Mjpeg),
    (b"YUYV", Handling::Raw(ff::format::Pixel::YUYV422)),
    (b"UYVY", Handling::Raw(ff::format::Pixel::UYVY422)),
    (b"NV12", Handling::Raw(ff::format::Pixel::NV12)),
    (b"YU12", Handling::Raw(ff::format::Pixel::YUV420P)),
    (b"RGB3", Handling::Raw(ff::format::Pixel::RGB24)),
];

/// What the camera was set to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    pub fourcc: [u8; 4],
    pub handling: Handling,
    pub width: u32,
    pub height: u32,
    /// Bytes per line of the first plane.
    pub stride: u32,
    /// Frames per second, as the driver set it.
    pub fps: f64,
}

struct Captured {
    data: Vec<u8>,
    mode: Mode,
    at: Instant,
}

pub struct Camera {
    config: CameraConfig,
    meta: StreamMeta,
    frames: Receiver<Captured>,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
    last_ts: Option<u32>,
    frame_index: u64,
    encoder: Option<H264>,
    passthrough: Packetizer,
    mjpeg: Option<ff::decoder::Video>,
    /// Converts the camera's pictures to the encoder's size and format; made again
    /// when the camera's mode changes.
    scaler: Option<(Mode, ff::format::Pixel, ff::software::scaling::Context)>,
    picture: ff::frame::Video,
    scaled: ff::frame::Video,
}

// SAFETY: the FFmpeg decoder, scaler and frames are owned by this value alone and used
// from one thread at a time; nothing in them is thread-local.
unsafe impl Send for Camera {}

impl Camera {
    /// Starts capturing. The device need not be there yet: capture begins when it is.
    pub fn open(config: CameraConfig) -> Result<Camera, CaptureError> {
        config.video.validate()?;
        ff::init().map_err(ffmpeg_failed("initialising FFmpeg"))?;
        // Two frames of slack: a camera that gets ahead loses frames, not latency.
        let (tx, frames) = mpsc::sync_channel(2);
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("v4l2-capture".into())
            .spawn({
                let (config, stop, dropped) =
                    (config.clone(), Arc::clone(&stop), Arc::clone(&dropped));
                move || capture(&config, &tx, &stop, &dropped)
            })
            .map_err(CaptureError::Device)?;
        let meta = config
            .video
            .meta(format!("astral v4l2 {}", config.device.display()));
        Ok(Camera {
            config,
            meta,
            frames,
            stop,
            dropped,
            thread: Some(thread),
            started: Instant::now(),
            last_ts: None,
            frame_index: 0,
            encoder: None,
            passthrough: Packetizer::default(),
            mjpeg: None,
            scaler: None,
            picture: ff::frame::Video::empty(),
            scaled: ff::frame::Video::empty(),
        })
    }

    /// Frames the camera delivered that were dropped because encoding fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn timestamp(&mut self, at: Instant) -> u32 {
        let ms = at.saturating_duration_since(self.started).as_millis() as u32;
        // Strictly increasing, whatever the camera's jitter.
        let ts = match self.last_ts {
            Some(last) if ms <= last => last + 1,
            _ => ms,
        };
        self.last_ts = Some(ts);
        ts
    }

    fn encode(&mut self, captured: Captured, out: &mut Vec<Tag>) -> Result<(), CaptureError> {
        let ts = self.timestamp(captured.at);
        let mode = captured.mode;
        if mode.handling == Handling::PassThrough {
            return self.passthrough.push(&captured.data, ts, false, out);
        }
        if self.encoder.is_none() {
            self.encoder = Some(H264::open(&self.config.video)?);
        }
        match mode.handling {
            Handling::Mjpeg => {
                let decoder = match &mut self.mjpeg {
                    Some(d) => d,
                    None => {
                        let codec = ff::decoder::find(ff::codec::Id::MJPEG).ok_or_else(|| {
                            ffmpeg_failed("finding FFmpeg's MJPEG decoder")(
                                ff::Error::DecoderNotFound,
                            )
                        })?;
                        let decoder = ff::codec::context::Context::new_with_codec(codec)
                            .decoder()
                            .video()
                            .map_err(ffmpeg_failed("opening the MJPEG decoder"))?;
                        self.mjpeg.insert(decoder)
                    }
                };
                // A damaged JPEG (cameras send some) is skipped, not fatal.
                if let Err(e) = decoder.send_packet(&ff::Packet::copy(&captured.data)) {
                    tracing::debug!("skipping a damaged MJPEG frame: {e}");
                    return Ok(());
                }
                if decoder.receive_frame(&mut self.picture).is_err() {
                    return Ok(());
                }
            }
            Handling::Raw(format) => {
                if !fill(&mut self.picture, format, &mode, &captured.data) {
                    tracing::debug!(
                        bytes = captured.data.len(),
                        "skipping a short frame from the camera"
                    );
                    return Ok(());
                }
            }
            Handling::PassThrough => unreachable!("handled above"),
        }
        let encoder = self.encoder.as_mut().expect("opened above");
        let target = encoder.input_format();
        let source_format = self.picture.format();
        let stale = self
            .scaler
            .as_ref()
            .is_none_or(|(m, f, _)| (*m, *f) != (mode, source_format));
        if stale {
            let scaler = ff::software::scaling::Context::get(
                source_format,
                self.picture.width(),
                self.picture.height(),
                target,
                self.config.video.width,
                self.config.video.height,
                ff::software::scaling::Flags::BILINEAR,
            )
            .map_err(ffmpeg_failed("converting the camera's pictures"))?;
            self.scaler = Some((mode, source_format, scaler));
            self.scaled =
                ff::frame::Video::new(target, self.config.video.width, self.config.video.height);
        }
        let (_, _, scaler) = self.scaler.as_mut().expect("made above");
        scaler
            .run(&self.picture, &mut self.scaled)
            .map_err(ffmpeg_failed("converting a picture"))?;
        let keyframe =
            self.frame_index % u64::from(self.config.video.keyframe_interval_frames) == 0;
        self.frame_index += 1;
        encoder.encode(&mut self.scaled, ts, keyframe, out)
    }
}

impl Source for Camera {
    fn meta(&self) -> &StreamMeta {
        &self.meta
    }

    /// Waits up to half a second for a frame: a camera that is away yields nothing.
    fn next_tags(&mut self, out: &mut Vec<Tag>) -> Result<(), CaptureError> {
        match self.frames.recv_timeout(Duration::from_millis(500)) {
            Ok(captured) => self.encode(captured, out),
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => Err(CaptureError::Device(
                std::io::Error::other("the capture thread stopped"),
            )),
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies a raw frame into `picture`, plane by plane; false if the frame is short.
fn fill(
    picture: &mut ff::frame::Video,
    format: ff::format::Pixel,
    mode: &Mode,
    data: &[u8],
) -> bool {
    let (w, h, stride) = (
        mode.width as usize,
        mode.height as usize,
        mode.stride as usize,
    );
    if picture.format() != format
        || picture.width() != mode.width
        || picture.height() != mode.height
    {
        *picture = ff::frame::Video::new(format, mode.width, mode.height);
    }
    // (bytes per line in the camera's buffer, rows, bytes of picture per row)
    let planes: Vec<(usize, usize, usize)> = match format {
        ff::format::Pixel::YUYV422 | ff::format::Pixel::UYVY422 => vec![(stride, h, w * 2)],
        ff::format::Pixel::RGB24 => vec![(stride, h, w * 3)],
        ff::format::Pixel::NV12 => vec![(stride, h, w), (stride, h / 2, w)],
        ff::format::Pixel::YUV420P => {
            vec![
                (stride, h, w),
                (stride / 2, h / 2, w / 2),
                (stride / 2, h / 2, w / 2),
            ]
        }
        _ => return false,
    };
    let needed: usize = planes.iter().map(|(s, rows, _)| s * rows).sum();
    if data.len() < needed {
        return false;
    }
    let mut offset = 0;
    for (plane, (src_stride, rows, row_bytes)) in planes.into_iter().enumerate() {
        let dst_stride = picture.stride(plane);
        let dst = picture.data_mut(plane);
        for row in 0..rows {
            let src = &data[offset + row * src_stride..][..row_bytes];
            dst[row * dst_stride..][..row_bytes].copy_from_slice(src);
        }
        offset += src_stride * rows;
    }
    true
}

/// The capture thread: opens the camera, streams its buffers into `tx`, and when the
/// camera goes away waits for it to come back, until `stop`.
fn capture(
    config: &CameraConfig,
    tx: &SyncSender<Captured>,
    stop: &AtomicBool,
    dropped: &AtomicU64,
) {
    let device = config.device.display().to_string();
    let mut away_said = false;
    while !stop.load(Ordering::Relaxed) {
        let (dev, mode) = match open(&config.device, config) {
            Ok(opened) => opened,
            Err(e) => {
                if !away_said {
                    tracing::warn!(%device, "camera unavailable: {e}; waiting for it");
                    away_said = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        tracing::info!(
            %device,
            format = %String::from_utf8_lossy(&mode.fourcc),
            width = mode.width,
            height = mode.height,
            fps = mode.fps,
            "capturing"
        );
        away_said = false;
        let mut stream = match v4l::io::mmap::Stream::with_buffers(&dev, Type::VideoCapture, 4) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%device, "cannot map the camera's buffers: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        stream.set_timeout(Duration::from_millis(500));
        while !stop.load(Ordering::Relaxed) {
            match CaptureStream::next(&mut stream) {
                Ok((buf, meta)) => {
                    let used = (meta.bytesused as usize).min(buf.len());
                    if used == 0 {
                        continue;
                    }
                    let captured = Captured {
                        data: buf[..used].to_vec(),
                        mode,
                        at: Instant::now(),
                    };
                    match tx.try_send(captured) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => {
                    tracing::warn!(%device, "camera lost: {e}; waiting for it to come back");
                    away_said = true;
                    break;
                }
            }
        }
    }
}

/// Opens the device and sets the best mode for `config`.
fn open(path: &Path, config: &CameraConfig) -> std::io::Result<(Device, Mode)> {
    let dev = Device::with_path(path)?;
    let offered: Vec<FourCC> = dev.enum_formats()?.into_iter().map(|d| d.fourcc).collect();
    let (fourcc, handling) = PREFERENCE
        .iter()
        .find(|(code, _)| offered.contains(&FourCC::new(code)))
        .ok_or_else(|| {
            let names: Vec<String> = offered.iter().map(|f| f.to_string()).collect();
            std::io::Error::other(format!(
                "offers none of the formats Astral takes (it offers {})",
                names.join(", ")
            ))
        })?;
    let sizes: Vec<(u32, u32)> = dev
        .enum_framesizes(FourCC::new(fourcc))
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| candidate_sizes(s.size, (config.video.width, config.video.height)))
        .collect();
    let (width, height) = best_size(&sizes, (config.video.width, config.video.height));
    let mut format = dev.format()?;
    format.fourcc = FourCC::new(fourcc);
    format.width = width;
    format.height = height;
    let format = dev.set_format(&format)?;
    let params = dev.set_params(&v4l::video::capture::Parameters::with_fps(config.video.fps))?;
    let interval = params.interval;
    let fps = if interval.numerator == 0 {
        f64::from(config.video.fps)
    } else {
        f64::from(interval.denominator) / f64::from(interval.numerator)
    };
    Ok((
        dev,
        Mode {
            fourcc: format.fourcc.repr,
            handling: *handling,
            width: format.width,
            height: format.height,
            stride: format.stride,
            fps,
        },
    ))
}

/// The sizes a frame-size entry offers near `want`: a discrete size, or for a
/// stepwise range the wanted size fitted into it.
fn candidate_sizes(size: FrameSizeEnum, want: (u32, u32)) -> Vec<(u32, u32)> {
    match size {
        FrameSizeEnum::Discrete(d) => vec![(d.width, d.height)],
        FrameSizeEnum::Stepwise(s) => {
            let fit = |v: u32, min: u32, max: u32, step: u32| {
                let v = v.clamp(min, max);
                min + (v - min) / step.max(1) * step.max(1)
            };
            vec![(
                fit(want.0, s.min_width, s.max_width, s.step_width),
                fit(want.1, s.min_height, s.max_height, s.step_height),
            )]
        }
    }
}

/// The offered size to capture at for a stream of `want`: the smallest that covers it
/// (scaling down loses nothing), else the largest there is. With nothing offered, the
/// wanted size, for the driver to adjust.
pub fn best_size(offered: &[(u32, u32)], want: (u32, u32)) -> (u32, u32) {
    let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
    let covering = offered
        .iter()
        .filter(|(w, h)| *w >= want.0 && *h >= want.1)
        .min_by_key(|s| area(**s));
    covering
        .or_else(|| offered.iter().max_by_key(|s| area(**s)))
        .copied()
        .unwrap_or(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_size_that_covers_the_stream_is_chosen() {
        let offered = [(640, 480), (1280, 720), (1920, 1080), (320, 240)];
        assert_eq!(best_size(&offered, (1280, 720)), (1280, 720));
        assert_eq!(best_size(&offered, (800, 600)), (1280, 720));
        assert_eq!(best_size(&offered, (3840, 2160)), (1920, 1080));
        assert_eq!(best_size(&[], (640, 480)), (640, 480));
    }

    #[test]
    fn a_stepwise_range_fits_the_wanted_size() {
        let stepwise = FrameSizeEnum::Stepwise(v4l::framesize::Stepwise {
            min_width: 16,
            max_width: 1920,
            step_width: 8,
            min_height: 16,
            max_height: 1080,
            step_height: 4,
        });
        assert_eq!(candidate_sizes(stepwise, (642, 3000)), vec![(640, 1080)]);
    }

    #[test]
    fn raw_frames_fill_pictures_and_short_ones_are_refused() {
        let mode = Mode {
            fourcc: *b"YUYV",
            handling: Handling::Raw(ff::format::Pixel::YUYV422),
            width: 4,
            height: 2,
            stride: 10,
            fps: 30.0,
        };
        let data: Vec<u8> = (0..20).collect();
        let mut picture = ff::frame::Video::empty();
        assert!(fill(&mut picture, ff::format::Pixel::YUYV422, &mode, &data));
        let stride = picture.stride(0);
        assert_eq!(&picture.data(0)[..8], &data[..8]);
        assert_eq!(&picture.data(0)[stride..stride + 8], &data[10..18]);
        assert!(!fill(
            &mut picture,
            ff::format::Pixel::YUYV422,
            &mode,
            &data[..15]
        ));
    }

    /// A camera that is never there, so that frames can be handed to `encode`.
    fn absent_camera(width: u32, height: u32) -> Camera {
        Camera::open(CameraConfig {
            device: "/dev/video-absent".into(),
            video: VideoConfig {
                width,
                height,
                fps: 25,
                bitrate_kbps: 300,
                keyframe_interval_frames: 5,
                encoder: "libx264".into(),
            },
        })
        .unwrap()
    }

    fn mode(fourcc: &[u8; 4], handling: Handling, width: u32, height: u32, stride: u32) -> Mode {
        Mode {
            fourcc: *fourcc,
            handling,
            width,
            height,
            stride,
            fps: 25.0,
        }
    }

    /// A grey 320x240 JPEG with a white square, from FFmpeg's MJPEG encoder.
    fn jpeg() -> Vec<u8> {
        ff::init().unwrap();
        let codec = ff::encoder::find(ff::codec::Id::MJPEG).unwrap();
        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .unwrap();
        enc.set_width(320);
        enc.set_height(240);
        enc.set_format(ff::format::Pixel::YUVJ420P);
        enc.set_time_base((1, 25));
        let mut enc = enc.open().unwrap();
        let mut frame = ff::frame::Video::new(ff::format::Pixel::YUVJ420P, 320, 240);
        for plane in 0..3 {
            frame.data_mut(plane).fill(128);
        }
        let stride = frame.stride(0);
        for y in 100..140 {
            frame.data_mut(0)[y * stride + 140..y * stride + 180].fill(250);
        }
        frame.set_pts(Some(0));
        enc.send_frame(&frame).unwrap();
        enc.send_eof().unwrap();
        let mut packet = ff::Packet::empty();
        enc.receive_packet(&mut packet).unwrap();
        packet.data().unwrap().to_vec()
    }

    #[test]
    fn mjpeg_frames_are_decoded_scaled_and_encoded() {
        let mut camera = absent_camera(160, 120);
        let jpeg = jpeg();
        let mut out = Vec::new();
        for _ in 0..6 {
            let captured = Captured {
                data: jpeg.clone(),
                mode: mode(b"MJPG", Handling::Mjpeg, 320, 240, 0),
                at: Instant::now(),
            };
            camera.encode(captured, &mut out).unwrap();
        }
        // A damaged JPEG is skipped, not fatal.
        let broken = Captured {
            data: jpeg[..jpeg.len() / 3].to_vec(),
            mode: mode(b"MJPG", Handling::Mjpeg, 320, 240, 0),
            at: Instant::now(),
        };
        camera.encode(broken, &mut out).unwrap();
        assert!(out[0].is_sequence_header() && out[1].is_keyframe());
        let pictures = crate::test_decode::decode(&out);
        assert!(pictures.len() >= 5, "{} pictures", pictures.len());
        let p = &pictures[0];
        assert_eq!(
            (p.width(), p.height()),
            (160, 120),
            "scaled to the stream's size"
        );
        // The square, now at (70..90, 50..70), is light; the rest is grey.
        let luma = |x: usize, y: usize| p.data(0)[y * p.stride(0) + x];
        assert!(luma(80, 60) > 200 && (100..160).contains(&luma(10, 10)));
        let stamps: Vec<u32> = out.iter().map(|t| t.timestamp).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    }

    #[test]
    fn yuyv_frames_with_padded_lines_are_encoded() {
        let mut camera = absent_camera(64, 48);
        // 64x48 YUYV with 16 bytes of padding per line: luma 200 left, 50 right.
        let stride = 64 * 2 + 16;
        let mut data = vec![128u8; stride * 48];
        for row in data.chunks_mut(stride) {
            for x in 0..64 {
                row[x * 2] = if x < 32 { 200 } else { 50 };
            }
        }
        let mut out = Vec::new();
        for _ in 0..3 {
            let captured = Captured {
                data: data.clone(),
                mode: mode(
                    b"YUYV",
                    Handling::Raw(ff::format::Pixel::YUYV422),
                    64,
                    48,
                    stride as u32,
                ),
                at: Instant::now(),
            };
            camera.encode(captured, &mut out).unwrap();
        }
        let pictures = crate::test_decode::decode(&out);
        let p = &pictures[0];
        let luma = |x: usize, y: usize| p.data(0)[y * p.stride(0) + x];
        assert!(
            luma(10, 24) > 170 && luma(54, 24) < 80,
            "{} {}",
            luma(10, 24),
            luma(54, 24)
        );
    }

    #[test]
    fn a_missing_camera_yields_nothing_until_it_comes() {
        let mut camera = Camera::open(CameraConfig {
            device: "/dev/video-that-is-not-there".into(),
            video: VideoConfig {
                width: 320,
                height: 240,
                encoder: "libx264".into(),
                ..VideoConfig::default()
            },
        })
        .expect("opening waits for the device");
        let mut out = Vec::new();
        camera
            .next_tags(&mut out)
            .expect("no error while it is away");
        assert!(out.is_empty());
    }
}
