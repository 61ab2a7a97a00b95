//! Media messages as RTMP chunks, serialized once for every player of a stream.
//!
//! rml_rtmp's session serializes each message for one peer, compressing its chunk
//! headers against what that peer received before; so every player's copy of a frame
//! is different and made separately. Here every chunk of a media message carries its
//! full header instead (a type 0 chunk, then type 3 continuations; 7 bytes more per
//! message than the compressed form), which makes the bytes independent of what the
//! player saw before: the hub keeps one copy per frame and every player of the stream
//! gets the same [`Bytes`]. Media goes on chunk streams the session never writes to,
//! so its own header compression is unaffected.

use bytes::{BufMut, Bytes, BytesMut};
use proto::{Tag, TagKind};

use crate::hub::Frame;

/// The chunk size every session of this node announces (`ServerSessionConfig`'s).
pub const CHUNK_SIZE: usize = 4096;
/// The message stream a player gets from its first `createStream`: nearly all of them.
pub const USUAL_STREAM_ID: u32 = 1;

const VIDEO_CSID: u8 = 7;
const AUDIO_CSID: u8 = 8;
/// Timestamps from here on go in the extended field, in every chunk of the message.
const EXTENDED: u32 = 0x00ff_ffff;

/// A hub frame as RTMP chunks for a player on `stream_id`: the copy shared by all
/// players on the usual stream id, made by the first of them that sends it.
pub fn for_player(frame: &Frame, stream_id: u32) -> Bytes {
    if stream_id == USUAL_STREAM_ID {
        frame
            .rtmp_chunks
            .get_or_init(|| media_message(&frame.tag, stream_id, CHUNK_SIZE))
            .clone()
    } else {
        media_message(&frame.tag, stream_id, CHUNK_SIZE)
    }
}

/// `tag` as one RTMP message on `stream_id`, cut into chunks of `chunk_size`.
/// Script tags have no chunk stream here (metadata goes through its own sender) and
/// give an empty buffer.
pub fn media_message(tag: &Tag, stream_id: u32, chunk_size: usize) -> Bytes {
    let csid = match tag.kind {
        TagKind::Video => VIDEO_CSID,
        TagKind::Audio => AUDIO_CSID,
        TagKind::Script => return Bytes::new(),
    };
    let extended = tag.timestamp >= EXTENDED;
    let ext_len = if extended { 4 } else { 0 };
    let chunks = tag.data.len().div_ceil(chunk_size).max(1);
    let mut out = BytesMut::with_capacity(12 + tag.data.len() + (chunks - 1) + chunks * ext_len);

    out.put_u8(csid); // format 0
    out.put_uint(u64::from(tag.timestamp.min(EXTENDED)), 3);
    out.put_uint(tag.data.len() as u64, 3);
    out.put_u8(tag.kind as u8);
    out.put_u32_le(stream_id);
    if extended {
        out.put_u32(tag.timestamp);
    }
    for (i, piece) in tag.data.chunks(chunk_size).enumerate() {
        if i > 0 {
            out.put_u8(0xc0 | csid); // format 3: same message, next chunk
            if extended {
                out.put_u32(tag.timestamp);
            }
        }
        out.put_slice(piece);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkDeserializer;
    use rml_rtmp::messages::RtmpMessage;

    /// What rml_rtmp's deserializer, which our client and tests use, makes of `bytes`.
    fn decode(bytes: &[u8], chunk_size: u32) -> Vec<(u32, u32, RtmpMessage)> {
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(chunk_size as usize).unwrap();
        let mut out = Vec::new();
        let mut input = bytes;
        while let Some(payload) = d.get_next_message(input).unwrap() {
            input = &[];
            out.push((
                payload.timestamp.value,
                payload.message_stream_id,
                payload.to_rtmp_message().unwrap(),
            ));
        }
        out
    }

    fn tag(kind: TagKind, timestamp: u32, len: usize) -> Tag {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        Tag {
            kind,
            timestamp,
            data: data.into(),
        }
    }

    #[test]
    fn messages_of_any_length_read_back_whole() {
        for (len, ts) in [
            (1, 0),
            (100, 40),
            (128, 7),
            (129, 9),
            (1000, 1234),
            (4096 * 3 + 5, 99),
        ] {
            let t = tag(TagKind::Video, ts, len);
            let decoded = decode(&media_message(&t, 1, 128), 128);
            let [(timestamp, stream, RtmpMessage::VideoData { data })] = &decoded[..] else {
                panic!("{len} bytes decoded as {decoded:?}");
            };
            assert_eq!((*timestamp, *stream, data), (ts, 1, &t.data));
        }
    }

    #[test]
    fn extended_timestamps_are_repeated_in_every_chunk() {
        let t = tag(TagKind::Audio, 0x0100_0000 + 5, 300);
        let bytes = media_message(&t, 3, 128);
        // One 12-byte header, then 4 bytes of extended timestamp in each of 3 chunks,
        // and the 2 continuation chunks' one-byte headers.
        assert_eq!(bytes.len(), 12 + 3 * 4 + 2 + 300);
        let decoded = decode(&bytes, 128);
        let [(timestamp, 3, RtmpMessage::AudioData { data })] = &decoded[..] else {
            panic!("decoded as {decoded:?}");
        };
        assert_eq!((*timestamp, data), (t.timestamp, &t.data));
    }

    #[test]
    fn consecutive_messages_need_no_state_from_each_other() {
        // A player that was skipped ahead gets a message whose predecessor it never
        // saw on that chunk stream: with full headers it still decodes.
        let a = tag(TagKind::Video, 10, 5000);
        let c = tag(TagKind::Video, 90, 70);
        let mut bytes = media_message(&a, 1, CHUNK_SIZE).to_vec();
        bytes.extend_from_slice(&media_message(&c, 1, CHUNK_SIZE));
        let decoded = decode(&bytes, CHUNK_SIZE as u32);
        let stamps: Vec<u32> = decoded.iter().map(|d| d.0).collect();
        assert_eq!(stamps, [10, 90]);
    }
}
