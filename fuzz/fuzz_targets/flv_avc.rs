//! The FLV and AVC parsing a box does on video a remote publisher or a parent sends it.
//! The input is FLV tags as an FLV file lays them out after its header (11-byte tag
//! header, body, 4-byte back pointer; type 8 is audio, 18 script, any other video; a
//! size past the end takes what is left). Each tag is classified (keyframe, sequence
//! header) and read as a seal; each video tag, with the last video sequence header
//! before it, is made into the Annex B access unit a still is decoded from
//! (`thumbnail::access_unit`, not FFmpeg's decoder); each body and access unit is split
//! as Annex B, and the SPS and PPS in it are made into a decoder configuration record.
//!
//! Whatever the bytes: no panic, and
//! - no tag is both a keyframe and a sequence header, and a seal is neither;
//! - a seal that parses writes back to the same bytes, which parse to the same seal;
//! - an access unit is the record's SPS and PPS, then the keyframe's length-prefixed
//!   units, each copied behind `00 00 00 01` (checked against a walk of its own), and
//!   it is refused exactly when that walk fails;
//! - Annex B splits into non-empty units of the input, behind start codes and without
//!   one inside, and units with no start code emulated join and split back to
//!   themselves;
//! - a record `avc::decoder_config` makes reads back to its SPS and PPS.
//!
//! The corpus starts from ffmpeg's libx264 in FLV (high profile with AAC, baseline with
//! SPS and PPS in keyframes, 2-byte NAL lengths) and a GOP with its seal.

#![no_main]

use bytes::Bytes;
use capture::{avc, thumbnail};
use libfuzzer_sys::fuzz_target;
use proto::seal::{Seal, MAX_SEALED_TAGS};
use proto::{Tag, TagKind};

const START: [u8; 4] = [0, 0, 0, 1];

/// The tags in `data`, laid out as in an FLV file after its header.
fn tags(mut data: &[u8]) -> Vec<Tag> {
    let mut tags = Vec::new();
    while let Some((head, rest)) = data.split_first_chunk::<11>() {
        let kind = match head[0] {
            8 => TagKind::Audio,
            18 => TagKind::Script,
            _ => TagKind::Video,
        };
        let size = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
        let timestamp = u32::from_be_bytes([head[7], head[4], head[5], head[6]]);
        let (body, rest) = rest.split_at(size.min(rest.len()));
        tags.push(Tag {
            kind,
            timestamp,
            data: Bytes::copy_from_slice(body),
        });
        data = rest.get(4..).unwrap_or_default();
    }
    tags
}

fn check_seal(tag: &Tag) {
    let Some(parsed) = Seal::from_tag(tag) else {
        return;
    };
    // Decoders skip it, and no hub may take it for a frame to start from.
    assert!(
        !tag.is_keyframe() && !tag.is_sequence_header(),
        "a seal passes for media"
    );
    let Ok(seal) = parsed else {
        return;
    };
    assert!(seal.tags.len() <= MAX_SEALED_TAGS);
    let again = seal.to_tag();
    assert_eq!(again.data, tag.data, "a seal writes back to other bytes");
    assert_eq!(again.timestamp, seal.start);
    assert_eq!(Seal::from_tag(&again), Some(Ok(seal.clone())));
    let _ = seal.verify();
}

/// Takes a unit behind its big-endian length of `size` bytes at `at`; `None` if either
/// runs past `data` or the unit is empty.
fn unit<'a>(data: &'a [u8], at: &mut usize, size: usize) -> Option<&'a [u8]> {
    let len = data
        .get(*at..*at + size)?
        .iter()
        .fold(0, |n, &b| n * 256 + usize::from(b));
    let unit = data.get(*at + size..*at + size + len)?;
    *at += size + len;
    (!unit.is_empty()).then_some(unit)
}

/// The units the access unit of `header` and `keyframe` must hold, in order, or `None`
/// where it must be refused.
fn expected_units<'a>(header: &'a [u8], keyframe: &'a [u8]) -> Option<Vec<&'a [u8]>> {
    let avc = |body: &[u8], packet_type| {
        body.len() >= 5 && body[0] & 0x0f == proto::flv::CODEC_AVC && body[1] == packet_type
    };
    if !avc(header, 0) || !avc(keyframe, 1) || keyframe[0] >> 4 != 1 {
        return None;
    }
    let record = &header[5..];
    if record.len() < 6 || record[0] != 1 {
        return None;
    }
    let mut units = Vec::new();
    let mut at = 6;
    for _ in 0..record[5] & 0x1f {
        units.push(unit(record, &mut at, 2)?);
    }
    let pps = *record.get(at)?;
    at += 1;
    for _ in 0..pps {
        units.push(unit(record, &mut at, 2)?);
    }
    let frame = &keyframe[5..];
    let size = usize::from(record[4] & 3) + 1;
    let mut at = 0;
    while at < frame.len() {
        units.push(unit(frame, &mut at, size)?);
    }
    Some(units)
}

/// Whether joining `unit` to others with start codes keeps it whole: no `00 00 0x`
/// (x ≤ 3) inside, as H.264's emulation prevention has it, and no zero at its end.
fn emulation_free(unit: &[u8]) -> bool {
    unit.last() != Some(&0) && !unit.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 3)
}

fn check_access_unit(header: &[u8], keyframe: &[u8]) -> Option<Vec<u8>> {
    let made = thumbnail::access_unit(header, keyframe);
    let expected = expected_units(header, keyframe);
    match (made, expected) {
        (Ok(made), Some(units)) => {
            let joined: Vec<u8> = units
                .iter()
                .flat_map(|u| [&START[..], u])
                .flatten()
                .copied()
                .collect();
            assert_eq!(
                made, joined,
                "the access unit is not the units copied behind start codes"
            );
            if units.iter().all(|u| emulation_free(u)) {
                assert_eq!(split(&made), units, "units split back to others");
            }
            Some(made)
        }
        (Err(_), None) => None,
        (made, expected) => panic!("access unit {made:?}, expected units {expected:?}"),
    }
}

/// `avc::split_annex_b`, checked: units of `data`, in order, each behind `00 00 01`,
/// none holding one, with only start codes and zeros between them.
fn split(data: &[u8]) -> Vec<&[u8]> {
    let units = avc::split_annex_b(data);
    let mut end = None;
    for unit in &units {
        let at = (unit.as_ptr() as usize)
            .checked_sub(data.as_ptr() as usize)
            .expect("a unit from elsewhere");
        assert!(!unit.is_empty() && at >= 3 && at + unit.len() <= data.len());
        assert_eq!(data[at - 3..at], [0, 0, 1], "a unit without a start code");
        assert!(
            !unit.windows(3).any(|w| w == [0, 0, 1]),
            "a start code inside a unit"
        );
        if let Some(end) = end {
            assert!(end <= at - 3, "units overlap or go back");
            assert!(
                data[end..at].iter().all(|&b| b <= 1),
                "bytes dropped between units"
            );
        }
        end = Some(at + unit.len());
    }
    if let Some(end) = end {
        assert!(
            data[end..].iter().all(|&b| b <= 1),
            "bytes dropped after the last unit"
        );
    }
    units
}

/// The first SPS and PPS in `annex_b`, made into a record that must read back.
fn parameter_sets(annex_b: &[u8]) {
    let units = split(annex_b);
    let find = |t| units.iter().find(|u| avc::nal_type(u) == Some(t));
    let (Some(sps), Some(pps)) = (find(avc::NAL_SPS), find(avc::NAL_PPS)) else {
        return;
    };
    let Some(record) = avc::decoder_config(sps, pps) else {
        assert!(sps.len() < 4 || sps.len() > 0xffff || pps.len() > 0xffff);
        return;
    };
    let header = [&[0x17, 0, 0, 0, 0][..], &record].concat();
    let made = thumbnail::access_unit(&header, &[0x17, 1, 0, 0, 0]).expect("the record reads back");
    assert_eq!(made, [&START[..], sps, &START, pps].concat());
}

fuzz_target!(|data: &[u8]| {
    let mut header = Bytes::new();
    for tag in tags(data) {
        assert!(
            !(tag.is_keyframe() && tag.is_sequence_header()),
            "a keyframe that is a sequence header"
        );
        check_seal(&tag);
        parameter_sets(&tag.data);
        if tag.kind != TagKind::Video {
            continue;
        }
        if tag.is_sequence_header() {
            header = tag.data.clone();
        } else if let Some(access_unit) = check_access_unit(&header, &tag.data) {
            parameter_sets(&access_unit);
        }
    }
});
