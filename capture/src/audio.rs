//! A microphone: ALSA through libavdevice, encoded to AAC, as FLV audio tags.
//!
//! Timestamps are on the same clock as the video's: the first sound's capture time,
//! as ALSA reports it, measured from the `epoch` the video source also counts from;
//! after that they follow the samples, so that the sound card's clock, not the
//! scheduler's jitter, paces them. When samples were lost (an overrun) or the card's
//! clock drifts, and the count strays more than 200 ms from ALSA's capture times,
//! the count is set back in step.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ffmpeg_next as ff;
use proto::Tag;

use crate::{ffmpeg_failed, CaptureError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicrophoneConfig {
    /// An ALSA device: `default`, `hw:1,0`, `plughw:CARD=Camera`, …
    pub device: String,
    pub bitrate_kbps: u32,
    /// 1 or 2; a camera's microphone is mono more often than not.
    pub channels: u16,
}

/// AAC in FLV: sound format 10, and the flags FLV wants for AAC whatever the stream
/// (44 kHz, 16-bit, stereo); decoders read the real ones from the sequence header.
const FLV_AAC: u8 = 0xaf;

pub struct Microphone {
    input: ff::format::context::Input,
    stream: usize,
    decoder: ff::decoder::Audio,
    resampler: ff::software::resampling::Context,
    /// What the samples are, when ALSA's frames leave their layout unsaid.
    input_layout: ff::ChannelLayout,
    encoder: ff::encoder::Audio,
    /// Decoded samples waiting for a whole encoder frame, one buffer per channel.
    pending: Vec<Vec<f32>>,
    rate: u32,
    /// Samples sent to the encoder so far, and the first one's time in ms after the
    /// epoch.
    samples: i64,
    start_ms: Option<f64>,
    /// Samples decoded so far, to check the count against ALSA's capture times.
    received: i64,
    last_ts: Option<u32>,
    /// The epoch as wall-clock microseconds, which is how ALSA stamps packets.
    epoch_us: i64,
    header_sent: bool,
    decoded: ff::frame::Audio,
    resampled: ff::frame::Audio,
    packet: ff::Packet,
}

// SAFETY: the FFmpeg contexts and frames are owned by this value alone and used from
// one thread at a time; nothing in them is thread-local.
unsafe impl Send for Microphone {}

impl Microphone {
    /// Opens the ALSA device; timestamps count from `epoch`.
    pub fn open(config: &MicrophoneConfig, epoch: Instant) -> Result<Microphone, CaptureError> {
        ff::init().map_err(ffmpeg_failed("initialising FFmpeg"))?;
        ff::device::register_all();
        let alsa = ff::device::input::audio()
            .find(|f| f.name() == "alsa")
            .ok_or_else(|| CaptureError::InvalidConfig {
                field: "audio",
                message: "this FFmpeg (libavdevice) has no ALSA input".into(),
            })?;
        let mut options = ff::Dictionary::new();
        options.set("channels", &config.channels.to_string());
        let input = ff::format::open_with(&config.device, &alsa, options)
            .map_err(|source| {
                CaptureError::Device(std::io::Error::other(format!(
                    "ALSA device {:?}: {source} (list them with arecord -L)",
                    config.device
                )))
            })?
            .input();
        let stream = input
            .streams()
            .best(ff::media::Type::Audio)
            .ok_or(CaptureError::Device(std::io::Error::other(
                "no audio stream",
            )))?;
        let index = stream.index();
        let decoder = ff::codec::context::Context::from_parameters(stream.parameters())
            .and_then(|c| c.decoder().audio())
            .map_err(ffmpeg_failed("opening the PCM decoder"))?;
        let rate = decoder.rate();
        let channels = decoder.channels().clamp(1, 2);
        let layout = ff::ChannelLayout::default(i32::from(channels));

        let codec = ff::encoder::find(ff::codec::Id::AAC).ok_or_else(|| {
            ffmpeg_failed("finding FFmpeg's AAC encoder")(ff::Error::EncoderNotFound)
        })?;
        let mut aac = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(ffmpeg_failed("creating the AAC encoder"))?;
        aac.set_rate(rate as i32);
        aac.set_channel_layout(layout);
        aac.set_format(ff::format::Sample::F32(ff::format::sample::Type::Planar));
        aac.set_bit_rate(config.bitrate_kbps as usize * 1000);
        aac.set_time_base((1, rate as i32));
        // Global header: the AudioSpecificConfig comes as extradata, for FLV's
        // sequence header, rather than in every frame.
        aac.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        let encoder = aac
            .open()
            .map_err(ffmpeg_failed("opening the AAC encoder"))?;

        let input_layout = match decoder.channel_layout() {
            l if l.channels() == i32::from(decoder.channels()) => l,
            _ => ff::ChannelLayout::default(i32::from(decoder.channels())),
        };
        let resampler = ff::software::resampling::Context::get(
            decoder.format(),
            input_layout,
            rate,
            ff::format::Sample::F32(ff::format::sample::Type::Planar),
            layout,
            rate,
        )
        .map_err(ffmpeg_failed("converting the microphone's samples"))?;
        let wall_now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let epoch_us = wall_now_us - epoch.elapsed().as_micros() as i64;
        tracing::info!(device = %config.device, rate, channels, "capturing sound");
        Ok(Microphone {
            input,
            stream: index,
            decoder,
            resampler,
            input_layout,
            encoder,
            pending: vec![Vec::new(); usize::from(channels)],
            rate,
            samples: 0,
            start_ms: None,
            received: 0,
            last_ts: None,
            epoch_us,
            header_sent: false,
            decoded: ff::frame::Audio::empty(),
            resampled: ff::frame::Audio::empty(),
            packet: ff::Packet::empty(),
        })
    }

    /// Blocks for the next packet of sound and appends the tags it makes: the AAC
    /// sequence header first, then a tag per AAC frame.
    pub fn next_tags(&mut self, out: &mut Vec<Tag>) -> Result<(), CaptureError> {
        let mut packet = ff::Packet::empty();
        loop {
            packet.read(&mut self.input).map_err(|e| {
                CaptureError::Device(std::io::Error::other(format!("reading sound: {e}")))
            })?;
            if packet.stream() == self.stream {
                break;
            }
        }
        // ALSA stamps packets with the wall clock, in microseconds.
        if let Some(captured_us) = packet.pts() {
            let captured_ms = (captured_us - self.epoch_us) as f64 / 1000.0;
            let counted_ms = self.start_ms.unwrap_or(captured_ms)
                + self.received as f64 * 1000.0 / f64::from(self.rate);
            let drift = captured_ms - counted_ms;
            if self.start_ms.is_none() || drift.abs() > 200.0 {
                if self.start_ms.is_some() {
                    tracing::debug!(
                        drift_ms = drift,
                        "sound back in step with its capture times"
                    );
                }
                self.start_ms = Some(self.start_ms.unwrap_or(captured_ms) + drift);
            }
        } else if self.start_ms.is_none() {
            self.start_ms = Some(0.0);
        }
        self.decoder
            .send_packet(&packet)
            .map_err(ffmpeg_failed("decoding sound"))?;
        while self.decoder.receive_frame(&mut self.decoded).is_ok() {
            if self.decoded.channel_layout() != self.input_layout {
                self.decoded.set_channel_layout(self.input_layout);
            }
            self.resampler
                .run(&self.decoded, &mut self.resampled)
                .map_err(ffmpeg_failed("converting sound"))?;
            let n = self.resampled.samples();
            self.received += n as i64;
            for (ch, pending) in self.pending.iter_mut().enumerate() {
                pending.extend_from_slice(&self.resampled.plane::<f32>(ch)[..n]);
            }
        }
        self.encode_pending(out)
    }

    fn encode_pending(&mut self, out: &mut Vec<Tag>) -> Result<(), CaptureError> {
        let size = match self.encoder.frame_size() {
            0 => 1024,
            n => n as usize,
        };
        while self.pending[0].len() >= size {
            let mut frame = ff::frame::Audio::new(
                ff::format::Sample::F32(ff::format::sample::Type::Planar),
                size,
                self.encoder.channel_layout(),
            );
            for (ch, pending) in self.pending.iter_mut().enumerate() {
                frame.plane_mut::<f32>(ch)[..size].copy_from_slice(&pending[..size]);
                pending.drain(..size);
            }
            frame.set_rate(self.rate);
            frame.set_pts(Some(self.samples));
            self.samples += size as i64;
            self.encoder
                .send_frame(&frame)
                .map_err(ffmpeg_failed("encoding sound"))?;
            self.drain(out);
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Tag>) {
        while self.encoder.receive_packet(&mut self.packet).is_ok() {
            let Some(data) = self.packet.data() else {
                continue;
            };
            let pts = self.packet.pts().unwrap_or(self.samples);
            let ms = self.start_ms.unwrap_or(0.0) + pts as f64 * 1000.0 / f64::from(self.rate);
            // Never backwards, whatever a resync did.
            let ts = match self.last_ts {
                Some(last) => (ms.max(0.0) as u32).max(last + 1),
                None => ms.max(0.0) as u32,
            };
            self.last_ts = Some(ts);
            if !self.header_sent {
                let config = extradata(&self.encoder);
                let mut body = vec![FLV_AAC, 0];
                body.extend_from_slice(&config);
                out.push(Tag::audio(ts, Bytes::from(body)));
                self.header_sent = true;
            }
            let mut body = Vec::with_capacity(data.len() + 2);
            body.extend_from_slice(&[FLV_AAC, 1]);
            body.extend_from_slice(data);
            out.push(Tag::audio(ts, Bytes::from(body)));
        }
    }
}

/// The encoder's AudioSpecificConfig.
fn extradata(encoder: &ff::encoder::Audio) -> Vec<u8> {
    // SAFETY: extradata is owned by the open encoder and `extradata_size` long.
    unsafe {
        let ctx = encoder.as_ptr();
        let (data, size) = ((*ctx).extradata, (*ctx).extradata_size);
        if data.is_null() || size <= 0 {
            return Vec::new();
        }
        std::slice::from_raw_parts(data, size as usize).to_vec()
    }
}
