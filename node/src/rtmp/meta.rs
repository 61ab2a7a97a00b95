//! Stream metadata (`onMetaData`) between our [`StreamMeta`] and the wire.

use proto::StreamMeta;
use rml_amf0::Amf0Value;
use rml_rtmp::chunk_io::{ChunkSerializer, Packet};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::sessions::StreamMetadata;
use rml_rtmp::time::RtmpTimestamp;

pub fn from_rtmp(m: StreamMetadata) -> StreamMeta {
    StreamMeta {
        width: m.video_width,
        height: m.video_height,
        frame_rate: m.video_frame_rate,
        video_codec_id: m.video_codec_id,
        video_kbps: m.video_bitrate_kbps,
        audio_codec_id: m.audio_codec_id,
        audio_kbps: m.audio_bitrate_kbps,
        audio_sample_rate: m.audio_sample_rate,
        audio_channels: m.audio_channels,
        encoder: m.encoder,
    }
}

/// Whether a packet from an rml_rtmp session is on chunk stream 3, its data messages'
/// stream. The basic header's low six bits are the chunk stream id.
pub fn is_data_message(packet: &Packet) -> bool {
    packet.bytes.first().is_some_and(|b| b & 0x3f == 3)
}

/// `onMetaData` and its properties, as an FLV script tag or an RTMP data message holds
/// them.
pub fn on_metadata(meta: &StreamMeta) -> Vec<Amf0Value> {
    let numbers = [
        ("width", meta.width.map(f64::from)),
        ("height", meta.height.map(f64::from)),
        ("framerate", meta.frame_rate.map(f64::from)),
        ("videocodecid", meta.video_codec_id.map(f64::from)),
        ("videodatarate", meta.video_kbps.map(f64::from)),
        ("audiocodecid", meta.audio_codec_id.map(f64::from)),
        ("audiodatarate", meta.audio_kbps.map(f64::from)),
        ("audiosamplerate", meta.audio_sample_rate.map(f64::from)),
        ("audiochannels", meta.audio_channels.map(f64::from)),
    ];
    let mut props: std::collections::HashMap<String, Amf0Value> = numbers
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), Amf0Value::Number(v?))))
        .collect();
    if let Some(encoder) = &meta.encoder {
        props.insert("encoder".into(), Amf0Value::Utf8String(encoder.clone()));
    }
    vec![
        Amf0Value::Utf8String("onMetaData".into()),
        Amf0Value::Object(props),
    ]
}

/// Sends metadata to players with timestamp 0.
///
/// rml_rtmp stamps the data messages it sends (`onMetaData` from `send_metadata`, and
/// `|RtmpSampleAccess` and `NetStream.Data.Start` when it accepts a play) with its
/// session clock, and players (ffmpeg's FLV demuxer among them) take a data message
/// with a non-zero timestamp for a packet of an extra data stream. rml_rtmp puts data
/// messages, and only those, on chunk stream 3. So the server drops every session packet
/// on that chunk stream ([`is_data_message`]) and sends metadata through this serializer
/// alone: one writer per chunk stream keeps header compression consistent for the peer.
/// No current player needs the two dropped messages; they date from Flash.
pub struct MetaSender {
    serializer: ChunkSerializer,
}

impl MetaSender {
    /// `chunk_size` must be what the session announced to the peer.
    pub fn new(chunk_size: u32) -> Self {
        let mut serializer = ChunkSerializer::new();
        // The session already told the peer; the packet this returns is not sent.
        let _ = serializer.set_max_chunk_size(chunk_size, RtmpTimestamp::new(0));
        MetaSender { serializer }
    }

    pub fn packet(&mut self, stream_id: u32, meta: &StreamMeta) -> Option<Packet> {
        let message = RtmpMessage::Amf0Data {
            values: on_metadata(meta),
        };
        let payload = message
            .into_message_payload(RtmpTimestamp::new(0), stream_id)
            .ok()?;
        self.serializer.serialize(&payload, true, false).ok()
    }
}
