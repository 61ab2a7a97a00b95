//! Sources of live video for an Astral box: camera or test pattern in, FLV-ready H.264
//! tags out.
//!
//! A [`Source`] blocks until its next frame is due, encodes it and hands back FLV tags
//! (the AVC sequence header first, then frames in AVCC), with source timestamps in
//! milliseconds. Sources run on the caller's thread, which the node dedicates to them;
//! this crate does no networking, no async and no fan-out: the node's hub does that.

mod audio;
pub mod avc;
mod camera;
pub mod encode;
mod pattern;
#[cfg(test)]
mod test_decode;
pub mod thumbnail;

use std::fmt;

pub use audio::{Microphone, MicrophoneConfig};
pub use camera::{Camera, CameraConfig};
pub use encode::{VideoConfig, H264};
pub use pattern::{TestPattern, TestPatternConfig};

/// A live video source.
pub trait Source: Send {
    /// What the stream is: size, frame rate, bitrate, codec, encoder.
    fn meta(&self) -> &proto::StreamMeta;
    /// Blocks until the next frame is due, then appends its FLV tags to `out`. The
    /// first tags of a source are the AVC sequence header and a keyframe.
    fn next_tags(&mut self, out: &mut Vec<proto::Tag>) -> Result<(), CaptureError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{field}: {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
    #[error("{what}: {source}. {hint}")]
    Encoder {
        what: String,
        source: ffmpeg_next::Error,
        hint: Hint,
    },
    #[error("camera: {0}")]
    Device(std::io::Error),
    #[error("the encoder produced a keyframe without SPS and PPS")]
    NoParameterSets,
    /// Video tags that do not hold what the caller said they hold, or do not decode.
    #[error("invalid video: {0}")]
    InvalidVideo(&'static str),
    #[error("no H.264 encoder opens ({tried}); set encoder = \"libx264\" and install FFmpeg's libavcodec with libx264")]
    NoEncoder { tried: String },
}

/// An FFmpeg call that failed while `what`: nothing the user set explains it.
pub(crate) fn ffmpeg_failed(what: &str) -> impl FnOnce(ffmpeg_next::Error) -> CaptureError + '_ {
    move |source| CaptureError::Encoder {
        what: what.into(),
        source,
        hint: Hint::Report,
    }
}

/// What a user can do about an encoder error.
#[derive(Debug, Clone, Copy)]
pub enum Hint {
    InstallLibx264,
    Report,
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hint::InstallLibx264 => {
                "Install FFmpeg's libavcodec built with libx264 (Debian: libavcodec59 or newer)"
            }
            Hint::Report => "This is a bug in Astral or FFmpeg: please report it with the log",
        })
    }
}
