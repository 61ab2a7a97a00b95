//! The relay chain: a stream published on one box reaches players several hops away,
//! intact, and keeps flowing when a box in the middle dies.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use proto::TagKind;

const STREAM: &str = "cam";

/// A ← ffmpeg, B pulls A, C pulls B (falling back to A).
fn chain() -> (NodeProc, NodeProc, NodeProc, Publish) {
    let a = NodeProc::publishing("a", STREAM);
    let b = NodeProc::relay("b", STREAM, &[&a]);
    let c = NodeProc::relay("c", STREAM, &[&b, &a]);
    let publish = Publish::start(&format!("{}?key={KEY}", a.rtmp_url(STREAM)));
    // Wait until the stream is live at the end of the chain.
    eventually(Duration::from_secs(10), || {
        let info = c.stream_info(STREAM);
        (info["tags_in"].as_u64()? > 30).then_some(())
    });
    (a, b, c, publish)
}

fn video(packets: &[Probed]) -> Vec<&Probed> {
    packets.iter().filter(|p| p.kind == "video").collect()
}

#[test]
fn frames_cross_two_relays_unchanged_over_rtmp_and_http_flv() {
    let (a, _b, c, _publish) = chain();

    // Three outside players read at once: the source box, and the end of the chain
    // over both protocols.
    let (at_a, at_c_rtmp, at_c_flv) = std::thread::scope(|s| {
        let a = s.spawn(|| ffprobe(&a.rtmp_url(STREAM), 6));
        let cr = s.spawn(|| ffprobe(&c.rtmp_url(STREAM), 5));
        let cf = s.spawn(|| ffprobe(&c.flv_url(STREAM), 5));
        (a.join().unwrap(), cr.join().unwrap(), cf.join().unwrap())
    });

    let source: HashMap<(String, i64), &str> = at_a
        .iter()
        .map(|p| ((p.kind.clone(), p.pts), p.hash.as_str()))
        .collect();
    for (name, seen) in [("RTMP", &at_c_rtmp), ("HTTP-FLV", &at_c_flv)] {
        let frames = video(seen);
        assert!(
            frames.len() >= 100,
            "{name}: only {} frames at C",
            frames.len()
        );
        assert!(frames[0].keyframe, "{name}: C's first frame is a keyframe");
        assert!(
            frames.windows(2).all(|w| w[0].pts < w[1].pts),
            "{name}: timestamps strictly increasing"
        );
        let mut compared = 0;
        for p in seen {
            if let Some(hash) = source.get(&(p.kind.clone(), p.pts)) {
                assert_eq!(
                    &p.hash, hash,
                    "{name}: {} packet at {} changed on the way",
                    p.kind, p.pts
                );
                compared += 1;
            }
        }
        assert!(
            compared >= 100,
            "{name}: only {compared} packets seen at both A and C"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_joiner_starts_with_sequence_headers_then_a_keyframe() {
    let (_a, _b, c, _publish) = chain();
    // Join mid-GOP: the chain has been live for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = play(&c.rtmp_url(STREAM), Duration::from_secs(1)).await;
    let video: Vec<_> = seen
        .iter()
        .filter(|s| s.tag.kind == TagKind::Video)
        .collect();
    assert!(
        video[0].tag.is_sequence_header(),
        "first video tag is the AVC sequence header"
    );
    assert!(video[1].tag.is_keyframe(), "then a keyframe");
    let audio = seen.iter().find(|s| s.tag.kind == TagKind::Audio).unwrap();
    assert!(
        audio.tag.is_sequence_header(),
        "first audio tag is the AAC sequence header"
    );
    // And the whole GOP since that keyframe arrives at once, not in real time.
    let burst = video
        .iter()
        .take_while(|s| s.at.duration_since(video[0].at) < Duration::from_millis(100))
        .count();
    assert!(
        burst > 5,
        "cached GOP delivered at once ({burst} frames in the first 100 ms)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_player_that_stops_reading_does_not_delay_the_others() {
    let a = NodeProc::start(
        "a",
        &format!("[streams.{STREAM}]\nkey = \"{KEY}\"\n[hub]\nqueue_len = 16\n"),
        &[],
    );
    let _publish = Publish::start(&format!("{}?key={KEY}", a.rtmp_url(STREAM)));
    eventually(Duration::from_secs(10), || {
        (a.stream_info(STREAM)["tags_in"].as_u64()? > 30).then_some(())
    });

    // A player that plays, then never reads again, with a tiny receive buffer.
    let stuck = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(a.rtmp).await.unwrap();
        let url = node::rtmp::url::RtmpUrl::parse(&a.rtmp_url(STREAM)).unwrap();
        node::rtmp::client::Player::play_on(stream, &url)
            .await
            .unwrap()
    };

    let seen = play(&a.rtmp_url(STREAM), Duration::from_secs(6)).await;
    let frames: Vec<u32> = seen
        .iter()
        .filter(|s| s.tag.kind == TagKind::Video && !s.tag.is_sequence_header())
        .map(|s| s.tag.timestamp)
        .collect();
    // 30 fps: consecutive frames are 33 or 34 ms apart in source time. None is missing.
    assert!(frames.len() >= 150, "only {} frames", frames.len());
    for w in frames.windows(2) {
        assert!(
            (33..=34).contains(&(w[1] - w[0])),
            "frame lost between {} and {}",
            w[0],
            w[1]
        );
    }
    assert!(
        a.metric("tags_dropped_total", STREAM) > 0.0,
        "the stuck player was behind and skipped"
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_relay_mid_stream_resumes_from_the_next_upstream_without_repeats() {
    let (a, mut b, c, _publish) = chain();
    let url = c.rtmp_url(STREAM);
    let player = tokio::spawn(async move { play(&url, Duration::from_secs(8)).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.kill(); // SIGKILL
    let seen = player.await.unwrap();

    let video: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.tag.kind == TagKind::Video && !s.tag.is_sequence_header())
        .collect();
    for w in video.windows(2) {
        assert!(
            w[0].tag.timestamp < w[1].tag.timestamp,
            "repeated or backwards: {} then {}",
            w[0].tag.timestamp,
            w[1].tag.timestamp
        );
    }
    let longest_gap = video
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap();
    // Frames the source made that C never got (30 fps: 33 or 34 ms apart).
    let missing: u32 = video
        .windows(2)
        .map(|w| ((w[1].tag.timestamp - w[0].tag.timestamp) * 3 / 100).saturating_sub(1))
        .sum();
    eprintln!("failover: longest gap in arrivals {longest_gap:?}, {missing} frames missing");
    assert!(
        longest_gap < Duration::from_secs(2),
        "stalled for {longest_gap:?}"
    );
    assert!(video.len() >= 200, "only {} frames in 8 s", video.len());

    let info = c.stream_info(STREAM);
    assert_eq!(info["source"]["upstream"], a.rtmp_url(STREAM).as_str());
    assert_eq!(info["source"]["connected"], true);
    assert!(info["reconnects"].as_u64().unwrap() >= 1);
}
