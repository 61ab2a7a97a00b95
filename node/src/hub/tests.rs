use bytes::Bytes;

use super::*;
use proto::seal::{headers_digest, tag_digest, Seal};

fn avc_header() -> Tag {
    Tag::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64]))
}

fn key(ts: u32) -> Tag {
    Tag::video(ts, Bytes::from(vec![0x17, 1, 0, 0, 0, ts as u8]))
}

fn inter(ts: u32) -> Tag {
    Tag::video(ts, Bytes::from(vec![0x27, 1, 0, 0, 0, ts as u8]))
}

fn hub_with(config: HubConfig) -> Arc<Hub> {
    Hub::new("test", config, StreamMetrics::default())
}

fn hub() -> Arc<Hub> {
    hub_with(HubConfig::default())
}

fn local() -> Feed {
    Feed::Local { name: "t".into() }
}

fn upstream() -> Feed {
    Feed::Upstream {
        url: "rtmp://up/live/test".into(),
        connected: true,
    }
}

/// Pushes a 30 fps stream with a keyframe every `gop` frames, frames `from..to`.
fn push_frames(publisher: &Publisher, from: u32, to: u32, gop: u32) {
    for n in from..to {
        let ts = n * 1000 / 30;
        publisher.push(if n % gop == 0 { key(ts) } else { inter(ts) });
    }
}

fn drain(sub: &mut Subscription) -> Vec<Packet> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}

fn media(packets: &[Packet]) -> Vec<Tag> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Media(f) => Some(f.tag.clone()),
            Packet::Meta(_) | Packet::Seal(_) => None,
        })
        .collect()
}

#[test]
fn late_joiner_gets_meta_headers_then_gop_from_the_last_keyframe() {
    let hub = hub();
    let publisher = hub.claim(local()).unwrap();
    publisher.set_meta(StreamMeta {
        width: Some(320),
        ..StreamMeta::default()
    });
    publisher.push(avc_header());
    push_frames(&publisher, 0, 75, 30); // keyframes at 0, 30, 60

    let mut sub = hub.subscribe();
    let packets = drain(&mut sub);
    assert!(matches!(&packets[0], Packet::Meta(m) if m.width == Some(320)));
    let tags = media(&packets);
    assert!(tags[0].is_sequence_header());
    assert!(tags[1].is_keyframe());
    assert_eq!(tags[1].timestamp, 60 * 1000 / 30);
    assert_eq!(tags.len(), 1 + 15, "the GOP holds frames 60..75");

    publisher.push(inter(75 * 1000 / 30));
    assert_eq!(media(&drain(&mut sub)), vec![inter(2500)]);
}

#[test]
fn a_box_that_resumes_gets_every_frame_after_its_last_and_no_more() {
    let hub = hub();
    let publisher = hub.claim(local()).unwrap();
    publisher.push(avc_header());
    push_frames(&publisher, 0, 75, 30); // keyframes at 0, 30, 60: all kept (2.5 s)
    let ts = |n: u32| n * 1000 / 30;

    // It has frames up to 50, in the GOP before the current one: 51..75 follow.
    let tags = media(&drain(&mut hub.subscribe_after(Some(ts(50)))));
    assert!(tags[0].is_sequence_header());
    let stamps: Vec<u32> = tags[1..].iter().map(|t| t.timestamp).collect();
    assert_eq!(stamps, (51..75).map(ts).collect::<Vec<_>>());

    // Up to date: only the headers, then live frames.
    let mut sub = hub.subscribe_after(Some(ts(74)));
    assert_eq!(media(&drain(&mut sub)).len(), 1);
    publisher.push(inter(ts(75)));
    assert_eq!(media(&drain(&mut sub)), vec![inter(ts(75))]);

    // Ten seconds later, 6 s of whole GOPs are kept: 5 s back is there, 9 s is not.
    push_frames(&publisher, 75, 375, 30);
    let first = |after: u32| media(&drain(&mut hub.subscribe_after(Some(after))))[1].timestamp;
    assert_eq!(first(ts(225)), ts(226));
    assert_eq!(first(ts(100)), ts(360), "the current GOP");

    // Older than the kept GOPs, or ahead of this hub's clock: the current GOP.
    for after in [ts(10), ts(5000)] {
        hub.lock().history.clear();
        let tags = media(&drain(&mut hub.subscribe_after(Some(after))));
        assert_eq!(tags[1].timestamp, ts(360), "after {after}");
        assert!(tags[1].is_keyframe());
    }
}

#[test]
fn a_subscriber_that_stops_reading_does_not_hold_back_a_fast_one() {
    let hub = hub_with(HubConfig {
        queue_len: 16,
        ..HubConfig::default()
    });
    let publisher = hub.claim(local()).unwrap();
    publisher.push(avc_header());
    let mut slow = hub.subscribe();
    let mut fast = hub.subscribe();
    let mut fast_got = media(&drain(&mut fast));

    for n in 0..300 {
        let ts = n * 1000 / 30;
        publisher.push(if n % 30 == 0 { key(ts) } else { inter(ts) });
        fast_got.extend(media(&drain(&mut fast)));
    }
    assert_eq!(fast_got.len(), 301, "the fast subscriber lost nothing");
    assert!(hub.metrics().tags_dropped.get() > 0);

    // The slow one got what fit, then resumes at a keyframe once it reads again.
    let first = media(&drain(&mut slow));
    assert_eq!(
        first.len(),
        1 + 16,
        "the header it joined with, then a full queue"
    );
    publisher.push(inter(10_001));
    publisher.push(key(10_034));
    let resumed = media(&drain(&mut slow));
    assert_eq!(resumed, vec![key(10_034)], "skipped to the next keyframe");
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_behind_for_longer_than_the_lag_timeout_is_dropped() {
    let hub = hub_with(HubConfig {
        queue_len: 8,
        lag_timeout: Duration::from_secs(2),
        ..HubConfig::default()
    });
    let publisher = hub.claim(local()).unwrap();
    let mut slow = hub.subscribe();
    push_frames(&publisher, 0, 20, 1000);
    assert_eq!(hub.snapshot().subscribers, 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    push_frames(&publisher, 20, 21, 1000);
    assert_eq!(hub.snapshot().subscribers, 0);
    assert_eq!(hub.metrics().lagging_disconnects.get(), 1);
    // It reads what was queued, then learns it was dropped.
    let mut n = 0;
    while slow.recv().await.is_some() {
        n += 1;
    }
    assert_eq!(n, 8);
}

#[test]
fn a_reconnected_feed_forwards_no_repeats() {
    let hub = hub();
    let mut sub = hub.subscribe();
    let first = hub.claim(upstream()).unwrap();
    first.push(avc_header());
    push_frames(&first, 0, 100, 30);
    drop(first);

    // The new upstream replays its headers and its GOP (frames 90..), then goes on.
    let second = hub.claim(upstream()).unwrap();
    second.push(avc_header());
    push_frames(&second, 90, 150, 30);

    let tags = media(&drain(&mut sub));
    let frames: Vec<u32> = tags
        .iter()
        .filter(|t| !t.is_sequence_header())
        .map(|t| t.timestamp)
        .collect();
    assert_eq!(frames.len(), 150);
    assert!(
        frames.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing"
    );
    assert_eq!(
        tags.iter().filter(|t| t.is_sequence_header()).count(),
        1,
        "same header not resent"
    );
    assert_eq!(hub.metrics().repeats_dropped.get(), 10);
}

#[test]
fn a_new_local_publisher_starts_a_new_stream() {
    let hub = hub();
    let first = hub.claim(local()).unwrap();
    first.push(avc_header());
    push_frames(&first, 0, 100, 30);
    drop(first);

    let second = hub.claim(local()).unwrap();
    let mut sub = hub.subscribe();
    assert!(drain(&mut sub).is_empty(), "old headers and GOP are gone");
    second.push(avc_header());
    push_frames(&second, 0, 10, 30);
    assert_eq!(media(&drain(&mut sub)).len(), 11);
}

#[test]
fn a_source_clock_restart_is_followed() {
    let hub = hub();
    let publisher = hub.claim(upstream()).unwrap();
    let mut sub = hub.subscribe();
    push_frames(&publisher, 3000, 3010, 30); // around 100 s
    publisher.push(key(0));
    publisher.push(inter(33));
    let ts: Vec<u32> = media(&drain(&mut sub))
        .iter()
        .map(|t| t.timestamp)
        .collect();
    assert_eq!(&ts[ts.len() - 2..], &[0, 33]);
}

#[test]
fn one_feed_at_a_time() {
    let hub = hub();
    let _first = hub.claim(local()).unwrap();
    assert_eq!(
        hub.claim(upstream()).err(),
        Some(HubError::Busy("test".into()))
    );
}

#[test]
fn changed_headers_reach_a_subscriber_that_was_skipping() {
    let hub = hub_with(HubConfig {
        queue_len: 8,
        ..HubConfig::default()
    });
    let publisher = hub.claim(local()).unwrap();
    publisher.push(avc_header());
    let mut sub = hub.subscribe();
    push_frames(&publisher, 0, 40, 30); // fills the queue; behind from frame 8
    let new_header = Tag::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x4d]));
    publisher.push(new_header.clone());
    drain(&mut sub);
    publisher.push(key(60 * 1000 / 30));
    let resumed = media(&drain(&mut sub));
    assert_eq!(resumed, vec![new_header, key(2000)]);
}

#[test]
fn reports_rates_from_source_time() {
    let hub = hub();
    let publisher = hub.claim(local()).unwrap();
    push_frames(&publisher, 0, 120, 60); // 4 s at 30 fps, 6-byte frames
    let snap = hub.snapshot();
    assert_eq!(snap.fps, 30.0);
    assert_eq!(snap.keyframe_interval_ms, Some(2000));
    assert_eq!(snap.last_timestamp_ms, Some(119 * 1000 / 30));
    // 61 frames of 6 bytes in 2 s of source time.
    assert_eq!(snap.bitrate_kbps, 1);
}

#[test]
fn the_source_seals_each_gop_and_a_resumed_child_gets_the_seals_of_the_gops_it_gets() {
    let hub = hub();
    let key = NodeKey::from_seed([5; 32]);
    let mut publisher = hub.claim(local()).unwrap();
    publisher.seal_with(key.clone());
    let mut live = hub.subscribe();
    publisher.push(avc_header());
    // Three GOPs of 30 frames, and the keyframe of a fourth.
    push_frames(&publisher, 0, 91, 30);
    let packets = drain(&mut live);
    let seals: Vec<Seal> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Seal(f) => Some(Seal::from_tag(&f.tag).unwrap().unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(seals.len(), 3, "one per closed GOP");
    let tags = media(&packets);
    let frames: Vec<&Tag> = tags.iter().filter(|t| !t.is_sequence_header()).collect();
    for (i, seal) in seals.iter().enumerate() {
        assert_eq!(seal.verify(), Ok(()));
        assert!(seal.key.is_of(&key.node_id()));
        assert_eq!(seal.start, frames[i * 30].timestamp);
        assert_eq!(seal.tags.len(), 30);
        assert!(frames[i * 30..(i + 1) * 30]
            .iter()
            .all(|t| seal.covers(&tag_digest(t))));
        assert_eq!(seal.headers, headers_digest(Some(&avc_header().data), None));
    }
    assert_eq!(hub.metrics().gops_sealed.get(), 3);

    // A child resuming in the first GOP gets the rest of it, then each whole GOP
    // followed by its seal.
    let resumed = drain(&mut hub.subscribe_after(Some(frames[10].timestamp)));
    let order: Vec<String> = resumed
        .iter()
        .filter_map(|p| match p {
            Packet::Seal(f) => Some(format!("seal {}", f.tag.timestamp)),
            Packet::Media(f) if f.tag.is_keyframe() => Some(format!("key {}", f.tag.timestamp)),
            _ => None,
        })
        .collect();
    let ts = |i: usize| frames[i].timestamp;
    assert_eq!(
        order,
        [
            format!("seal {}", ts(0)),
            format!("key {}", ts(30)),
            format!("seal {}", ts(30)),
            format!("key {}", ts(60)),
            format!("seal {}", ts(60)),
            format!("key {}", ts(90)),
        ]
    );

    // A publisher's own seal-like tag is not media, and is not passed on.
    let mut sub = hub.subscribe();
    drain(&mut sub);
    publisher.push(seals[0].to_tag());
    assert!(drain(&mut sub).is_empty());
}
