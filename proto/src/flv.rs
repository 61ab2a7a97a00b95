//! FLV tags: the unit of media everywhere in Astral.
//!
//! A tag is what RTMP carries in one audio or video message and what an FLV file holds
//! in one tag: a kind, a timestamp in milliseconds and the tag body, byte for byte as
//! the source produced it. Relays never rewrite a body, so a tag's payload checksum is
//! the same at every hop. The payload is [`Bytes`], so fanning a tag out to many
//! subscribers clones a pointer, not the video.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// FLV video codec id for H.264 (AVC).
pub const CODEC_AVC: u8 = 7;
/// FLV sound format for AAC.
pub const SOUND_AAC: u8 = 10;

/// What a tag carries; the values are FLV's tag type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagKind {
    Audio = 8,
    Video = 9,
    Script = 18,
}

/// One FLV tag: kind, source timestamp (ms) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub kind: TagKind,
    pub timestamp: u32,
    pub data: Bytes,
}

impl Tag {
    pub fn video(timestamp: u32, data: Bytes) -> Self {
        Tag {
            kind: TagKind::Video,
            timestamp,
            data,
        }
    }

    pub fn audio(timestamp: u32, data: Bytes) -> Self {
        Tag {
            kind: TagKind::Audio,
            timestamp,
            data,
        }
    }

    /// A video keyframe that is not a sequence header: where a decoder can start.
    pub fn is_keyframe(&self) -> bool {
        self.kind == TagKind::Video
            && self.data.first().is_some_and(|b| b >> 4 == 1)
            && !self.is_sequence_header()
    }

    /// An AVC decoder configuration record or an AAC AudioSpecificConfig: the codec
    /// setup a decoder needs before any frame, sent once per stream and cached by hubs.
    pub fn is_sequence_header(&self) -> bool {
        match self.kind {
            TagKind::Video => {
                self.data.len() >= 2 && self.data[0] & 0x0f == CODEC_AVC && self.data[1] == 0
            }
            TagKind::Audio => {
                self.data.len() >= 2 && self.data[0] >> 4 == SOUND_AAC && self.data[1] == 0
            }
            TagKind::Script => false,
        }
    }

    /// Appends the tag in FLV file layout: 11-byte header, body, 4-byte back pointer.
    pub fn write_flv(&self, out: &mut BytesMut) {
        let len = self.data.len() as u32;
        out.reserve(11 + self.data.len() + 4);
        out.put_u8(self.kind as u8);
        out.put_uint(u64::from(len & 0x00ff_ffff), 3);
        out.put_uint(u64::from(self.timestamp & 0x00ff_ffff), 3);
        out.put_u8((self.timestamp >> 24) as u8);
        out.put_uint(0, 3); // stream id, always 0
        out.put_slice(&self.data);
        out.put_u32(11 + len);
    }
}

/// The FLV file header with its first back pointer, for HTTP-FLV responses.
pub fn file_header(has_audio: bool, has_video: bool) -> [u8; 13] {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// What a source says about its stream (RTMP's `onMetaData`), in the terms a viewer
/// and the portal care about. Unknown fields stay `None` and are not sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamMeta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_codec_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_kbps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_codec_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_kbps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_sample_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_channels: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_avc_tags() {
        let header = Tag::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]));
        let key = Tag::video(0, Bytes::from_static(&[0x17, 1, 0, 0, 0]));
        let inter = Tag::video(33, Bytes::from_static(&[0x27, 1, 0, 0, 0]));
        assert!(header.is_sequence_header() && !header.is_keyframe());
        assert!(key.is_keyframe() && !key.is_sequence_header());
        assert!(!inter.is_keyframe() && !inter.is_sequence_header());
    }

    #[test]
    fn classifies_aac_tags() {
        let header = Tag::audio(0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10]));
        let frame = Tag::audio(21, Bytes::from_static(&[0xaf, 1, 0xde]));
        assert!(header.is_sequence_header());
        assert!(!frame.is_sequence_header() && !frame.is_keyframe());
    }

    #[test]
    fn empty_bodies_are_neither_headers_nor_keyframes() {
        let empty = Tag::video(0, Bytes::new());
        assert!(!empty.is_keyframe() && !empty.is_sequence_header());
    }

    #[test]
    fn writes_flv_layout_with_extended_timestamp() {
        let tag = Tag::video(0x0102_0304, Bytes::from_static(&[0x27, 1]));
        let mut out = BytesMut::new();
        tag.write_flv(&mut out);
        assert_eq!(
            &out[..],
            &[9, 0, 0, 2, 0x02, 0x03, 0x04, 0x01, 0, 0, 0, 0x27, 1, 0, 0, 0, 13]
        );
    }
}
