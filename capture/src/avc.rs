//! H.264 bitstream plumbing between encoders and FLV.
//!
//! Encoders emit Annex B (NAL units behind `00 00 01` start codes); FLV and RTMP carry
//! AVCC (each NAL unit behind its 4-byte length) plus, once per stream, an
//! AVCDecoderConfigurationRecord holding the SPS and PPS. These are pure functions over
//! bytes: malformed input yields less output or `None`, never a panic.

/// NAL unit types this module cares about.
pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

/// The NAL unit type (low five bits of the first byte).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// Splits an Annex B stream into its NAL units, start codes removed. Bytes before the
/// first start code are not a NAL unit and are skipped.
pub fn split_annex_b(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (start code position, payload position)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let code_at = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((code_at, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &(_, payload)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(data.len(), |&(code, _)| code);
        if payload < end {
            nals.push(&data[payload..end]);
        }
    }
    nals
}

/// Appends NAL units in AVCC layout (4-byte big-endian length, then the unit).
pub fn write_avcc<'a>(nals: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    for nal in nals {
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
}

/// Builds the AVCDecoderConfigurationRecord (ISO 14496-15) for one SPS and one PPS,
/// with 4-byte NAL lengths. `None` if the SPS is too short to carry a profile.
pub fn decoder_config(sps: &[u8], pps: &[u8]) -> Option<Vec<u8>> {
    if sps.len() < 4 || pps.is_empty() || sps.len() > 0xffff || pps.len() > 0xffff {
        return None;
    }
    let mut record = Vec::with_capacity(11 + sps.len() + pps.len());
    record.extend_from_slice(&[
        1,      // configurationVersion
        sps[1], // AVCProfileIndication
        sps[2], // profile_compatibility
        sps[3], // AVCLevelIndication
        0xff,   // reserved bits, lengthSizeMinusOne = 3
        0xe1,   // reserved bits, one SPS
    ]);
    record.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    record.extend_from_slice(sps);
    record.push(1); // one PPS
    record.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    record.extend_from_slice(pps);
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let nals = split_annex_b(&stream);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
        assert_eq!(
            nals.iter().map(|n| nal_type(n)).collect::<Vec<_>>(),
            [Some(7), Some(8), Some(5)]
        );
    }

    #[test]
    fn malformed_streams_give_what_can_be_found() {
        assert!(split_annex_b(&[]).is_empty());
        assert!(split_annex_b(&[1, 2, 3, 4]).is_empty());
        assert!(
            split_annex_b(&[0, 0, 1]).is_empty(),
            "a start code with nothing behind it"
        );
        assert_eq!(split_annex_b(&[9, 9, 0, 0, 1, 0x41]), vec![&[0x41][..]]);
    }

    #[test]
    fn writes_length_prefixed_units() {
        let mut out = Vec::new();
        write_avcc([&[0x65, 1][..], &[0x41][..]], &mut out);
        assert_eq!(out, [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x41]);
    }

    #[test]
    fn builds_the_decoder_configuration_record() {
        let sps = [0x67, 0x64, 0x00, 0x1f, 0xac];
        let pps = [0x68, 0xee];
        let record = decoder_config(&sps, &pps).unwrap();
        assert_eq!(
            record,
            [1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 5, 0x67, 0x64, 0, 0x1f, 0xac, 1, 0, 2, 0x68, 0xee]
        );
        assert!(decoder_config(&[0x67, 1], &pps).is_none());
        assert!(decoder_config(&sps, &[]).is_none());
    }
}
