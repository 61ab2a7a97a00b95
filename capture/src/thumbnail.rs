//! JPEG stills of a stream, for people to see what it shows without playing it.
//!
//! The node sends a still of each stream it publishes to the portal about every ten
//! seconds and shows one on its admin page. A still comes from the stream's AVC sequence
//! header and one keyframe, both as FLV video tag bodies, through FFmpeg's H.264
//! decoder, swscale and MJPEG encoder. This module does no IO and starts no threads:
//! decoding takes milliseconds, so the caller runs it off the async runtime.

use ffmpeg_next as ff;

use crate::{ffmpeg_failed, CaptureError};

/// MJPEG quantiser scale: 2 is best, 31 worst; 4 looks clean and stays small.
const QSCALE: i32 = 4;

/// A JPEG still of a stream, decoded from its AVC sequence header and one keyframe,
/// scaled down to at most `max_width` wide (never up), keeping the aspect ratio.
pub fn jpeg(video_header: &[u8], keyframe: &[u8], max_width: u32) -> Result<Vec<u8>, CaptureError> {
    if max_width < 16 {
        return Err(CaptureError::InvalidConfig {
            field: "max_width",
            message: "must be at least 16".into(),
        });
    }
    let invalid = CaptureError::InvalidVideo;
    let annex_b = access_unit(video_header, keyframe)?;

    ff::init().map_err(ffmpeg_failed("initialising FFmpeg"))?;
    // swscale warns of YUVJ's range on every still; errors are what matter here.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| ff::util::log::set_level(ff::util::log::Level::Error));
    let mut decoder = ff::codec::context::Context::new()
        .decoder()
        .open_as(ff::codec::Id::H264)
        .and_then(|decoder| decoder.video())
        .map_err(ffmpeg_failed("opening the H.264 decoder"))?;
    let mut picture = ff::frame::Video::empty();
    decoder
        .send_packet(&ff::Packet::copy(&annex_b))
        .and_then(|()| decoder.send_eof())
        .and_then(|()| decoder.receive_frame(&mut picture))
        .map_err(|_| invalid("the keyframe does not decode"))?;

    let (width, height) = fit(picture.width(), picture.height(), max_width)
        .ok_or(invalid("the keyframe decodes to an empty picture"))?;
    // YUVJ: full-range luma, as JPEG has it; swscale expands limited-range input.
    let yuvj = ff::format::Pixel::YUVJ420P;
    let mut still = ff::frame::Video::new(yuvj, width, height);
    ff::software::scaling::Context::get(
        picture.format(),
        picture.width(),
        picture.height(),
        yuvj,
        width,
        height,
        ff::software::scaling::Flags::AREA,
    )
    .and_then(|mut scaler| scaler.run(&picture, &mut still))
    .map_err(|_| invalid("the keyframe decodes to a picture swscale cannot convert"))?;

    let mut encoder = ff::codec::context::Context::new()
        .encoder()
        .video()
        .map_err(ffmpeg_failed("making the MJPEG encoder"))?;
    encoder.set_width(width);
    encoder.set_height(height);
    encoder.set_format(yuvj);
    encoder.set_time_base((1, 1));
    // Rate control with its range pinned to one quantiser: a fixed quality, no unsafe.
    encoder.set_qmin(QSCALE);
    encoder.set_qmax(QSCALE);
    let mut encoder = encoder
        .open_as(ff::codec::Id::MJPEG)
        .map_err(ffmpeg_failed("opening the MJPEG encoder"))?;
    still.set_pts(Some(0));
    let mut packet = ff::Packet::empty();
    encoder
        .send_frame(&still)
        .and_then(|()| encoder.send_eof())
        .and_then(|()| encoder.receive_packet(&mut packet))
        .map_err(ffmpeg_failed("encoding the JPEG"))?;
    Ok(packet.data().unwrap_or_default().to_vec())
}

/// What a still is decoded from: the SPS and PPS of an AVC sequence header and the NAL
/// units of a keyframe (both FLV video tag bodies), as one Annex B access unit. Pure
/// parsing of what a publisher or a parent sent; public for the `flv_avc` fuzz target.
#[doc(hidden)]
pub fn access_unit(video_header: &[u8], keyframe: &[u8]) -> Result<Vec<u8>, CaptureError> {
    let invalid = CaptureError::InvalidVideo;
    let record = avc_body(video_header, 0).ok_or(invalid("not an AVC sequence header"))?;
    let frame = avc_body(keyframe, 1).ok_or(invalid("not an AVC frame"))?;
    if keyframe[0] >> 4 != 1 {
        return Err(invalid("not a keyframe"));
    }
    annex_b(record, frame).ok_or(invalid("malformed H.264 NAL units"))
}

/// The payload of an FLV AVC video tag body of the given AVCPacketType.
fn avc_body(tag: &[u8], packet_type: u8) -> Option<&[u8]> {
    let is_avc = *tag.first()? & 0x0f == proto::flv::CODEC_AVC && *tag.get(1)? == packet_type;
    tag.get(5..).filter(|_| is_avc)
}

/// SPS and PPS from the AVCDecoderConfigurationRecord, then the frame's NAL units, as
/// one Annex B access unit. `None` if a length runs past its data or a unit is empty.
fn annex_b(record: &[u8], frame: &[u8]) -> Option<Vec<u8>> {
    let mut rest = record;
    let &[1, _, _, _, length_size, sps_count] = take_n(&mut rest, 6)? else {
        return None; // not configurationVersion 1
    };
    let mut units = Vec::new();
    for _ in 0..sps_count & 0x1f {
        units.push(take(&mut rest, 2)?);
    }
    for _ in 0..*take_n(&mut rest, 1)?.first()? {
        units.push(take(&mut rest, 2)?);
    }
    let mut rest = frame;
    while !rest.is_empty() {
        units.push(take(&mut rest, usize::from(length_size & 3) + 1)?);
    }
    let mut out = Vec::new();
    for unit in units {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(unit);
    }
    Some(out)
}

/// Takes a NAL unit behind its big-endian length of `size` bytes off the front.
fn take<'a>(rest: &mut &'a [u8], size: usize) -> Option<&'a [u8]> {
    let len = take_n(rest, size)?
        .iter()
        .fold(0, |n, &b| n << 8 | usize::from(b));
    take_n(rest, len).filter(|unit| !unit.is_empty())
}

fn take_n<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(n)?;
    *rest = tail;
    Some(head)
}

/// The still's size: at most `max_width` wide, aspect kept, both sides even.
fn fit(width: u32, height: u32, max_width: u32) -> Option<(u32, u32)> {
    let out_width = width.min(max_width) & !1;
    let out_height =
        (u64::from(height) * u64::from(out_width) / u64::from(width.max(1))) as u32 & !1;
    (out_width > 0 && out_height > 0).then_some((out_width, out_height))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Source, TestPattern, TestPatternConfig, VideoConfig};

    /// The sequence header, a keyframe and a frame after it, at 640x360.
    fn tags() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut pattern = TestPattern::open(TestPatternConfig {
            video: VideoConfig {
                width: 640,
                height: 360,
                encoder: "libx264".into(),
                ..VideoConfig::default()
            },
            realtime: false,
            clock: false,
            noise: false,
        })
        .expect("libx264 opens");
        let mut tags = Vec::new();
        pattern.next_tags(&mut tags).unwrap();
        pattern.next_tags(&mut tags).unwrap();
        assert!(tags[0].is_sequence_header() && tags[1].is_keyframe() && !tags[2].is_keyframe());
        let body = |i: usize| tags[i].data.to_vec();
        (body(0), body(1), body(2))
    }

    fn decode_jpeg(jpeg: &[u8]) -> ff::frame::Video {
        assert!(jpeg.starts_with(&[0xff, 0xd8]) && jpeg.ends_with(&[0xff, 0xd9]));
        let codec = ff::decoder::find(ff::codec::Id::MJPEG).unwrap();
        let mut decoder = ff::codec::context::Context::new_with_codec(codec)
            .decoder()
            .video()
            .unwrap();
        decoder.send_packet(&ff::Packet::copy(jpeg)).unwrap();
        decoder.send_eof().unwrap();
        let mut picture = ff::frame::Video::empty();
        decoder.receive_frame(&mut picture).unwrap();
        picture
    }

    #[test]
    fn scales_the_keyframe_down_to_a_jpeg_with_the_pattern_in_it() {
        let (header, keyframe, _) = tags();
        let picture = decode_jpeg(&jpeg(&header, &keyframe, 320).unwrap());
        assert_eq!((picture.width(), picture.height()), (320, 180));
        let stride = picture.stride(0);
        let luma: Vec<f64> = (0..180 * 320)
            .map(|i| f64::from(picture.data(0)[i / 320 * stride + i % 320]))
            .collect();
        let mean = luma.iter().sum::<f64>() / luma.len() as f64;
        let variance = luma.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / luma.len() as f64;
        assert!(variance > 200.0, "a flat picture: luma variance {variance}");
    }

    #[test]
    fn never_upscales_and_keeps_sides_even() {
        let (header, keyframe, _) = tags();
        for (max_width, size) in [(1920, (640, 360)), (640, (640, 360)), (333, (332, 186))] {
            let picture = decode_jpeg(&jpeg(&header, &keyframe, max_width).unwrap());
            let got = (picture.width(), picture.height());
            assert_eq!(got, size, "max_width {max_width}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let (header, keyframe, delta) = tags();
        let garbage: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let garbage_frame = [&keyframe[..5], &[0, 0, 0, 200], &garbage[..200]].concat();
        let short_header = &header[..header.len() - 3];
        let short_keyframe = &keyframe[..keyframe.len() / 2];
        for (what, header, frame) in [
            ("a delta frame", &header[..], &delta[..]),
            ("header and frame swapped", &keyframe[..], &header[..]),
            ("a truncated header", short_header, &keyframe[..]),
            ("a truncated keyframe", &header[..], short_keyframe),
            ("a header only", &header[..5], &keyframe[..]),
            ("empty tags", &[][..], &[][..]),
            ("garbage", &garbage[..], &garbage[..]),
            ("garbage NAL units", &header[..], &garbage_frame[..]),
        ] {
            assert!(jpeg(header, frame, 320).is_err(), "{what}");
        }
        assert!(jpeg(&header, &keyframe, 0).is_err(), "max_width 0");
    }
}
