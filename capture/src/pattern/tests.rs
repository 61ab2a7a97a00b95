use super::*;
use crate::avc::{self, split_annex_b, NAL_PPS, NAL_SPS};
use crate::test_decode::{decode, to_annex_b};

fn small(keyframe_interval_frames: u32) -> TestPattern {
    TestPattern::open(TestPatternConfig {
        video: VideoConfig {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 500,
            keyframe_interval_frames,
            encoder: "libx264".into(),
        },
        realtime: false,
    })
    .expect("libx264 opens")
}

fn tags(source: &mut TestPattern, frames: usize) -> Vec<Tag> {
    let mut out = Vec::new();
    for _ in 0..frames {
        source.next_tags(&mut out).unwrap();
    }
    out
}

#[test]
fn starts_with_the_sequence_header_then_a_keyframe() {
    let out = tags(&mut small(30), 3);
    assert!(out[0].is_sequence_header());
    assert_eq!(out[0].data[5], 1, "configurationVersion");
    assert!(out[1].is_keyframe());
    assert_eq!(out.len(), 4, "one tag per frame after the header");
}

#[test]
fn keyframes_exactly_every_interval_and_timestamps_increase() {
    let out = tags(&mut small(15), 60);
    let frames: Vec<&Tag> = out.iter().filter(|t| !t.is_sequence_header()).collect();
    assert_eq!(frames.len(), 60);
    for (i, tag) in frames.iter().enumerate() {
        assert_eq!(tag.is_keyframe(), i % 15 == 0, "frame {i}");
        assert_eq!(tag.timestamp, (i as u64 * 1000 / 30) as u32);
    }
    // SPS and PPS go with every keyframe, for decoders that join late.
    for key in frames.iter().filter(|t| t.is_keyframe()) {
        let types: Vec<u8> = split_annex_b(&to_annex_b(&key.data[5..]))
            .iter()
            .filter_map(|n| avc::nal_type(n))
            .collect();
        assert!(
            types.contains(&NAL_SPS) && types.contains(&NAL_PPS),
            "{types:?}"
        );
    }
}

#[test]
fn output_decodes_to_pictures_whose_counter_changes() {
    let out = tags(&mut small(30), 10);
    let mut pictures = Vec::new();
    for picture in decode(&out) {
        assert_eq!((picture.width(), picture.height()), (320, 240));
        // The counter's last digit: at 240 lines digits are 24 tall and 12 wide,
        // 16 apart from x = 4, so the sixth spans x 84..96, y 4..28.
        let stride = picture.stride(0);
        let digit: Vec<u8> = (4..28)
            .flat_map(|y| picture.data(0)[y * stride + 84..y * stride + 96].to_vec())
            .collect();
        pictures.push(digit);
    }
    assert!(pictures.len() >= 9, "decoded {} pictures", pictures.len());
    assert!(
        pictures.windows(2).all(|w| w[0] != w[1]),
        "the counter differs between frames"
    );
}

#[test]
fn realtime_pacing_holds_frames_until_due() {
    let mut source = TestPattern::open(TestPatternConfig {
        video: VideoConfig {
            width: 64,
            height: 64,
            fps: 50,
            encoder: "libx264".into(),
            ..VideoConfig::default()
        },
        realtime: true,
    })
    .unwrap();
    let started = Instant::now();
    tags(&mut source, 11);
    // Frame 10 is due 200 ms after frame 0.
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn invalid_configs_name_the_field() {
    for (config, field) in [
        (
            VideoConfig {
                width: 321,
                ..Default::default()
            },
            "width",
        ),
        (
            VideoConfig {
                height: 8,
                ..Default::default()
            },
            "height",
        ),
        (
            VideoConfig {
                fps: 0,
                ..Default::default()
            },
            "fps",
        ),
        (
            VideoConfig {
                bitrate_kbps: 1,
                ..Default::default()
            },
            "bitrate_kbps",
        ),
        (
            VideoConfig {
                keyframe_interval_frames: 0,
                ..Default::default()
            },
            "keyframe_interval_frames",
        ),
    ] {
        let config = TestPatternConfig {
            video: config,
            realtime: false,
        };
        match TestPattern::open(config) {
            Err(CaptureError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected an error on {field}, got {:?}", other.err()),
        }
    }
}
