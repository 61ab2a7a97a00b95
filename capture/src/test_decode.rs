//! For tests: FLV video tags back to pictures, through FFmpeg's H.264 decoder.

use ffmpeg_next as ff;
use proto::Tag;

/// AVCC frames back to Annex B, checking every length prefix on the way.
pub fn to_annex_b(avcc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = avcc;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert!(
            len > 0 && 4 + len <= rest.len(),
            "a NAL length runs past the frame"
        );
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    out
}

/// Decodes `tags` (a sequence header, then frames) into pictures.
pub fn decode(tags: &[Tag]) -> Vec<ff::frame::Video> {
    ff::init().unwrap();
    assert!(
        tags[0].is_sequence_header(),
        "the sequence header comes first"
    );
    let record = &tags[0].data[5..];
    let sps_len = u16::from_be_bytes([record[6], record[7]]) as usize;
    let sps = &record[8..8 + sps_len];
    let pps = &record[8 + sps_len + 3..];
    let codec = ff::decoder::find(ff::codec::Id::H264).unwrap();
    let mut decoder = ff::codec::context::Context::new_with_codec(codec)
        .decoder()
        .video()
        .unwrap();
    let mut pictures = Vec::new();
    for (i, tag) in tags[1..].iter().enumerate() {
        let mut annex_b = Vec::new();
        if i == 0 {
            for ps in [sps, pps] {
                annex_b.extend_from_slice(&[0, 0, 0, 1]);
                annex_b.extend_from_slice(ps);
            }
        }
        annex_b.extend_from_slice(&to_annex_b(&tag.data[5..]));
        decoder.send_packet(&ff::Packet::copy(&annex_b)).unwrap();
        let mut picture = ff::frame::Video::empty();
        while decoder.receive_frame(&mut picture).is_ok() {
            pictures.push(std::mem::replace(&mut picture, ff::frame::Video::empty()));
        }
    }
    pictures
}
