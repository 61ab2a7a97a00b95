//! H.264 encoding for every source, and H.264 access units into FLV tags.
//!
//! The encoder comes from config: `auto` tries `h264_v4l2m2m` (the Raspberry Pi 3/4
//! hardware encoder), then `h264_vaapi` (Intel and AMD GPUs), then `libx264`; one that
//! is missing or fails to open is skipped with its reason logged. Hardware encoders
//! send SPS and PPS once, at the start: [`Packetizer`] keeps them and puts them back in
//! front of every keyframe, so that a player joining later can decode.

use std::ptr;

use bytes::Bytes;
use ff::ffi;
use ffmpeg_next as ff;
use proto::Tag;

use crate::avc::{self, NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS};
use crate::{ffmpeg_failed, CaptureError, Hint};

/// Encoders `auto` tries, in order.
pub const AUTO: [&str; 3] = ["h264_v4l2m2m", "h264_vaapi", "libx264"];

/// The video a source makes, and the encoder that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval_frames: u32,
    /// `auto` or an FFmpeg encoder's name.
    pub encoder: String,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 2500,
            keyframe_interval_frames: 60,
            encoder: "auto".into(),
        }
    }
}

impl VideoConfig {
    /// The stream's metadata (`onMetaData`), naming what made it.
    pub fn meta(&self, made_by: String) -> proto::StreamMeta {
        proto::StreamMeta {
            width: Some(self.width),
            height: Some(self.height),
            frame_rate: Some(self.fps as f32),
            video_codec_id: Some(u32::from(proto::flv::CODEC_AVC)),
            video_kbps: Some(self.bitrate_kbps),
            encoder: Some(made_by),
            ..proto::StreamMeta::default()
        }
    }

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
        if self.encoder != "auto" && !AUTO.contains(&self.encoder.as_str()) {
            return invalid(
                "encoder",
                &format!("must be auto or one of {}", AUTO.join(", ")),
            );
        }
        Ok(())
    }
}

/// An open H.264 encoder. Frames go in with millisecond timestamps; FLV tags come out.
pub struct H264 {
    encoder: ff::encoder::video::Encoder,
    name: &'static str,
    /// The pixel format frames must have when they reach [`H264::encode`].
    input: ff::format::Pixel,
    /// For VAAPI: frames are uploaded into this pool of GPU surfaces first.
    hw_frames: Option<HwFrames>,
    packet: ff::Packet,
    packetizer: Packetizer,
}

// SAFETY: the encoder, its hardware frame pool and the packet are owned by this value
// alone and used from one thread at a time; nothing in them is thread-local.
unsafe impl Send for H264 {}

impl H264 {
    /// Opens the configured encoder, or for `auto` the first of [`AUTO`] that opens.
    pub fn open(config: &VideoConfig) -> Result<H264, CaptureError> {
        ff::init().map_err(ffmpeg_failed("initialising FFmpeg"))?;
        // Encoders print banners and statistics at FFmpeg's default level.
        ff::util::log::set_level(ff::util::log::Level::Error);
        config.validate()?;
        let names: Vec<&'static str> = match config.encoder.as_str() {
            "auto" => AUTO.to_vec(),
            name => AUTO.iter().copied().filter(|n| *n == name).collect(),
        };
        let mut reasons = Vec::new();
        for name in names {
            match H264::open_one(name, config) {
                Ok(encoder) => {
                    tracing::info!(encoder = name, "H.264 encoder open");
                    return Ok(encoder);
                }
                Err(reason) => {
                    tracing::info!(encoder = name, "skipping encoder: {reason}");
                    reasons.push(format!("{name}: {reason}"));
                }
            }
        }
        Err(CaptureError::NoEncoder {
            tried: reasons.join("; "),
        })
    }

    fn open_one(name: &'static str, config: &VideoConfig) -> Result<H264, String> {
        let codec = ff::encoder::find_by_name(name)
            .ok_or("not in this FFmpeg build (libavcodec)".to_owned())?;
        let mut video = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| e.to_string())?;
        let hw_frames = if name == "h264_vaapi" {
            Some(HwFrames::vaapi(config.width, config.height)?)
        } else {
            None
        };
        let input = match &hw_frames {
            // Uploaded from NV12, the layout VAAPI surfaces hold.
            Some(_) => ff::format::Pixel::NV12,
            None => ff::format::Pixel::YUV420P,
        };
        video.set_width(config.width);
        video.set_height(config.height);
        video.set_time_base((1, 1000));
        video.set_frame_rate(Some((config.fps as i32, 1)));
        video.set_gop(config.keyframe_interval_frames);
        video.set_max_b_frames(0);
        video.set_bit_rate(config.bitrate_kbps as usize * 1000);
        match &hw_frames {
            Some(hw) => {
                video.set_format(ff::format::Pixel::VAAPI);
                // SAFETY: the context is not open yet; it takes its own reference.
                unsafe {
                    (*video.as_mut_ptr()).hw_frames_ctx = ffi::av_buffer_ref(hw.frames);
                }
            }
            None => video.set_format(input),
        }
        let mut options = ff::Dictionary::new();
        let keyint = config.keyframe_interval_frames;
        if name == "libx264" {
            options.set("preset", "veryfast");
            options.set("tune", "zerolatency");
            // A keyframe exactly every interval, SPS and PPS with each one.
            options.set(
                "x264-params",
                &format!("keyint={keyint}:min-keyint={keyint}:scenecut=0:repeat-headers=1"),
            );
        }
        let encoder = video.open_with(options).map_err(|e| match name {
            "libx264" => format!("{e}. {}", Hint::InstallLibx264),
            _ => format!("{e} (no such hardware here?)"),
        })?;
        Ok(H264 {
            encoder,
            name,
            input,
            hw_frames,
            packet: ff::Packet::empty(),
            packetizer: Packetizer::default(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The pixel format [`H264::encode`] takes: YUV420P, or NV12 for VAAPI.
    pub fn input_format(&self) -> ff::format::Pixel {
        self.input
    }

    /// Encodes `frame` (in [`H264::input_format`], at the configured size) shown at
    /// `ts_ms`, appending the tags that come out: the sequence header before the first
    /// keyframe, then one tag per frame.
    pub fn encode(
        &mut self,
        frame: &mut ff::frame::Video,
        ts_ms: u32,
        force_keyframe: bool,
        out: &mut Vec<Tag>,
    ) -> Result<(), CaptureError> {
        frame.set_pts(Some(i64::from(ts_ms)));
        frame.set_kind(if force_keyframe {
            ff::picture::Type::I
        } else {
            ff::picture::Type::None
        });
        match &self.hw_frames {
            Some(hw) => {
                let mut surface = hw
                    .upload(frame)
                    .map_err(ffmpeg_failed("uploading a frame to the GPU"))?;
                surface.set_pts(Some(i64::from(ts_ms)));
                self.encoder.send_frame(&surface)
            }
            None => self.encoder.send_frame(frame),
        }
        .map_err(ffmpeg_failed("encoding a frame"))?;
        while self.encoder.receive_packet(&mut self.packet).is_ok() {
            let Some(data) = self.packet.data() else {
                continue;
            };
            let ts = self
                .packet
                .dts()
                .or(self.packet.pts())
                .unwrap_or(i64::from(ts_ms));
            let keyframe = self.packet.is_key();
            self.packetizer
                .push(data, ts.max(0) as u32, keyframe, out)?;
        }
        Ok(())
    }
}

/// Turns H.264 access units (Annex B) into FLV video tags: the AVC sequence header
/// before the first keyframe (and again if SPS or PPS change), then one AVCC tag per
/// access unit, with SPS and PPS in front of every keyframe.
#[derive(Default)]
pub struct Packetizer {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    header: Option<Vec<u8>>,
}

impl Packetizer {
    /// `keyframe` as the encoder says; an access unit with an IDR slice counts too.
    pub fn push(
        &mut self,
        annex_b: &[u8],
        ts_ms: u32,
        keyframe: bool,
        out: &mut Vec<Tag>,
    ) -> Result<(), CaptureError> {
        let nals: Vec<&[u8]> = avc::split_annex_b(annex_b)
            .into_iter()
            .filter(|n| avc::nal_type(n) != Some(NAL_AUD))
            .collect();
        let has = |t| nals.iter().any(|n| avc::nal_type(n) == Some(t));
        let keyframe = keyframe || has(NAL_IDR);
        for nal in &nals {
            match avc::nal_type(nal) {
                Some(NAL_SPS) => self.sps = Some(nal.to_vec()),
                Some(NAL_PPS) => self.pps = Some(nal.to_vec()),
                _ => {}
            }
        }
        if !keyframe && self.header.is_none() {
            // A decoder can do nothing with frames before the first keyframe.
            return Ok(());
        }
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
            return Err(CaptureError::NoParameterSets);
        };
        let record = avc::decoder_config(sps, pps).ok_or(CaptureError::NoParameterSets)?;
        if self.header.as_ref() != Some(&record) {
            let mut body = vec![0x17, 0, 0, 0, 0];
            body.extend_from_slice(&record);
            out.push(Tag::video(ts_ms, Bytes::from(body)));
            self.header = Some(record);
        }
        let mut body = Vec::with_capacity(annex_b.len() + 32);
        body.extend_from_slice(&[if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
        let missing: Vec<&[u8]> = if keyframe && !(has(NAL_SPS) && has(NAL_PPS)) {
            vec![sps.as_slice(), pps.as_slice()]
        } else {
            Vec::new()
        };
        avc::write_avcc(missing.into_iter().chain(nals), &mut body);
        out.push(Tag::video(ts_ms, Bytes::from(body)));
        Ok(())
    }
}

/// A VAAPI device and a pool of NV12 surfaces on it, for `h264_vaapi`.
struct HwFrames {
    device: *mut ffi::AVBufferRef,
    frames: *mut ffi::AVBufferRef,
}

impl HwFrames {
    fn vaapi(width: u32, height: u32) -> Result<HwFrames, String> {
        let mut device = ptr::null_mut();
        // SAFETY: FFmpeg's documented calls, each result checked; on failure what was
        // made is freed by Drop.
        unsafe {
            let ret = ffi::av_hwdevice_ctx_create(
                &mut device,
                ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_VAAPI,
                ptr::null(),
                ptr::null_mut(),
                0,
            );
            if ret < 0 {
                return Err(format!(
                    "no VAAPI device ({}; is there a /dev/dri/renderD128 this user may open?)",
                    ff::Error::from(ret)
                ));
            }
            let mut hw = HwFrames {
                device,
                frames: ffi::av_hwframe_ctx_alloc(device),
            };
            if hw.frames.is_null() {
                return Err("cannot allocate VAAPI frames".into());
            }
            let ctx = (*hw.frames).data as *mut ffi::AVHWFramesContext;
            (*ctx).format = ffi::AVPixelFormat::AV_PIX_FMT_VAAPI;
            (*ctx).sw_format = ffi::AVPixelFormat::AV_PIX_FMT_NV12;
            (*ctx).width = width as i32;
            (*ctx).height = height as i32;
            (*ctx).initial_pool_size = 16;
            let ret = ffi::av_hwframe_ctx_init(hw.frames);
            if ret < 0 {
                ffi::av_buffer_unref(&mut hw.frames);
                return Err(format!("VAAPI frames: {}", ff::Error::from(ret)));
            }
            Ok(hw)
        }
    }

    fn upload(&self, frame: &ff::frame::Video) -> Result<ff::frame::Video, ff::Error> {
        // SAFETY: a fresh frame takes a surface from the pool this value owns; the
        // transfer copies `frame`, which has the pool's size and software format.
        unsafe {
            let mut surface = ff::frame::Video::empty();
            let ret = ffi::av_hwframe_get_buffer(self.frames, surface.as_mut_ptr(), 0);
            if ret < 0 {
                return Err(ff::Error::from(ret));
            }
            let ret = ffi::av_hwframe_transfer_data(surface.as_mut_ptr(), frame.as_ptr(), 0);
            if ret < 0 {
                return Err(ff::Error::from(ret));
            }
            Ok(surface)
        }
    }
}

impl Drop for HwFrames {
    fn drop(&mut self) {
        // SAFETY: both are references this value holds; unref nulls them.
        unsafe {
            ffi::av_buffer_unref(&mut self.frames);
            ffi::av_buffer_unref(&mut self.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        out
    }

    const SPS: &[u8] = &[0x67, 0x64, 0x00, 0x1f, 0xac];
    const PPS: &[u8] = &[0x68, 0xee];
    const IDR: &[u8] = &[0x65, 0x88, 1];
    const P: &[u8] = &[0x41, 0x9a, 2];

    #[test]
    fn parameter_sets_sent_once_go_with_every_keyframe() {
        let mut p = Packetizer::default();
        let mut out = Vec::new();
        // A frame before any keyframe is dropped; then SPS, PPS and IDR once, as
        // h264_v4l2m2m sends them, then a P frame and a bare IDR.
        p.push(&annex_b(&[P]), 0, false, &mut out).unwrap();
        assert!(out.is_empty());
        p.push(&annex_b(&[SPS, PPS, IDR]), 40, true, &mut out)
            .unwrap();
        p.push(&annex_b(&[P]), 80, false, &mut out).unwrap();
        p.push(&annex_b(&[IDR]), 120, false, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert!(out[0].is_sequence_header());
        assert!(out[1].is_keyframe() && !out[2].is_keyframe());
        assert!(out[3].is_keyframe(), "an IDR slice makes a keyframe");
        let mut expect = vec![0x17, 1, 0, 0, 0];
        avc::write_avcc([SPS, PPS, IDR], &mut expect);
        assert_eq!(&out[3].data[..], &expect[..], "SPS and PPS put back");
        assert_eq!(
            out.iter().map(|t| t.timestamp).collect::<Vec<_>>(),
            [40, 40, 80, 120]
        );
    }

    #[test]
    fn a_keyframe_without_parameter_sets_is_an_error() {
        let mut p = Packetizer::default();
        assert!(matches!(
            p.push(&annex_b(&[IDR]), 0, true, &mut Vec::new()),
            Err(CaptureError::NoParameterSets)
        ));
    }

    #[test]
    fn an_unknown_encoder_is_refused_and_auto_falls_back_to_libx264() {
        let mut config = VideoConfig {
            width: 160,
            height: 120,
            fps: 10,
            bitrate_kbps: 200,
            keyframe_interval_frames: 10,
            encoder: "h265_magic".into(),
        };
        assert!(matches!(
            H264::open(&config),
            Err(CaptureError::InvalidConfig {
                field: "encoder",
                ..
            })
        ));
        config.encoder = "auto".into();
        // No hardware encoder here: both are skipped with their reasons.
        let encoder = H264::open(&config).expect("libx264 at least");
        assert_eq!(encoder.name(), "libx264");
    }
}
