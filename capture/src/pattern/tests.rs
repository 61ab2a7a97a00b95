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
        clock: false,
        noise: false,
    })
    .expect("libx264 opens")
}

/// Reads the burned-in number back the way a viewer would, from the picture alone:
/// the centre pixel of each segment is lit when its luma is over 128. The geometry
/// is written out again here rather than shared with `draw_counter`, so that a
/// change to the drawing that readers elsewhere would not expect fails this test.
/// `None` when some digit's lit segments spell no digit.
fn read_counter(picture: &ff::frame::Video, digits: usize) -> Option<u64> {
    let (stride, luma) = (picture.stride(0), picture.data(0));
    let h = (picture.height() as usize / 10).max(10);
    let (w, t) = (h / 2, (h / 10).max(1));
    let (m, half) = (2 * t, h / 2);
    let mut value = 0;
    for d in 0..digits {
        let (x, y) = (m + d * (w + m), m);
        let centres = [
            (x + w / 2, y + t / 2),                   // a: top
            (x + w - t + t / 2, y + half / 2),        // b: top right
            (x + w - t + t / 2, y + half + half / 2), // c: bottom right
            (x + w / 2, y + h - t + t / 2),           // d: bottom
            (x + t / 2, y + half + half / 2),         // e: bottom left
            (x + t / 2, y + half / 2),                // f: top left
            (x + w / 2, y + half - t / 2 + t / 2),    // g: middle
        ];
        let lit = centres
            .iter()
            .enumerate()
            .filter(|(_, &(cx, cy))| luma[cy * stride + cx] > 128)
            .fold(0u8, |lit, (segment, _)| lit | 1 << segment);
        let digit = SEGMENTS.iter().position(|&s| s == lit)?;
        value = value * 10 + digit as u64;
    }
    Some(value)
}

/// How far `shown` is behind `now` on the clock that wraps at 10^8 ms; a number from
/// the future comes out near 10^8, so it fails any sensible bound.
fn behind(now: u64, shown: u64) -> u64 {
    (now + 100_000_000 - shown) % 100_000_000
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
fn without_clock_the_picture_shows_its_frame_number() {
    let shown: Vec<Option<u64>> = decode(&tags(&mut small(30), 10))
        .iter()
        .map(|picture| read_counter(picture, 6))
        .collect();
    assert!(shown.len() >= 9, "decoded {} pictures", shown.len());
    let expected: Vec<Option<u64>> = (0..shown.len() as u64).map(Some).collect();
    assert_eq!(shown, expected);
}

#[test]
fn every_digit_reads_back_at_every_size() {
    // From the smallest digits (10 lines) up to 1080p, in raw pictures: the geometry
    // alone, without the encoder's losses.
    for (width, height) in [(64, 64), (320, 240), (640, 360), (1280, 720), (1920, 1080)] {
        let mut picture = ff::frame::Video::new(ff::format::Pixel::YUV420P, width, height);
        for value in [1_234_567, 89_012_345, 99_999_999] {
            draw_counter(&mut picture, value, 8, height as usize / 10);
            assert_eq!(read_counter(&picture, 8), Some(value), "{width}x{height}");
        }
    }
}

#[test]
fn clock_mode_shows_the_wall_clock_when_drawn() {
    let mut source = TestPattern::open(TestPatternConfig {
        video: VideoConfig {
            width: 640,
            height: 360,
            fps: 30,
            encoder: "libx264".into(),
            ..VideoConfig::default()
        },
        realtime: false,
        clock: true,
        noise: false,
    })
    .expect("libx264 opens");
    let out = tags(&mut source, 10);
    let now = clock_ms(SystemTime::now());
    let shown: Vec<u64> = decode(&out)
        .iter()
        .map(|picture| read_counter(picture, 8).expect("eight readable digits"))
        .collect();
    assert!(shown.len() >= 5, "decoded {} pictures", shown.len());
    for &ms in &shown {
        // Drawn before `now` was read, and not long before: encoding ten small
        // frames takes well under two seconds even on a slow builder.
        assert!(behind(now, ms) <= 2000, "shows {ms}, clock {now}");
    }
    for pair in shown.windows(2) {
        assert!(behind(pair[1], pair[0]) <= 2000, "goes back: {pair:?}");
    }
}

#[test]
fn the_clock_is_unix_milliseconds_modulo_10_to_the_8() {
    let at = |ms: u64| clock_ms(UNIX_EPOCH + Duration::from_millis(ms));
    assert_eq!(at(1_700_000_123_456), 123_456);
    assert_eq!(at(99_999_999), 99_999_999);
    assert_eq!(at(100_000_000), 0);
    assert_eq!(clock_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
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
        clock: false,
        noise: false,
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
            clock: false,
            noise: false,
        };
        match TestPattern::open(config) {
            Err(CaptureError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected an error on {field}, got {:?}", other.err()),
        }
    }
}

#[test]
fn noise_makes_the_stream_as_heavy_as_its_bitrate() {
    let bytes = |noise: bool| {
        let mut pattern = TestPattern::open(TestPatternConfig {
            noise,
            ..small(30).config
        })
        .expect("libx264 opens");
        let mut out = Vec::new();
        for _ in 0..60 {
            pattern.next_tags(&mut out).unwrap();
        }
        out.iter().map(|t| t.data.len()).sum::<usize>()
    };
    let (plain, noisy) = (bytes(false), bytes(true));
    // 2 s at 500 kbit/s is 125 kB; rate control lands near it, give or take.
    assert!(
        (80_000..200_000).contains(&noisy),
        "{noisy} bytes in 2 s at 500 kbit/s"
    );
    assert!(noisy > plain * 5, "noise {noisy} bytes, plain {plain}");
}
