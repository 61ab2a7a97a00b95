//! The network-namespace testbed (tier 4): a portal, a noisy 2 Mbit/s source and 24
//! boxes with household uploads (6, 6 and 3 Mbit/s, `tc tbf`) that keep a hot-standby
//! parent, each in a namespace of its own, sampled twice a second throughout.
//!
//! - A flash crowd: every box is asked to watch within a few hundred milliseconds, and
//!   every one plays.
//! - 20 s of steady play: every box plays, and boxes rather than the source send the
//!   bytes.
//! - 60 s of faults (`testbed::Chaos`): relays killed with SIGKILL (one comes back), a
//!   box leaving, a supernode's power cut. Issue 7's goals hold at every box that ran
//!   throughout: continuity at least 0.995 for a player with a 1 s buffer, no wait
//!   for a frame over 2 s, no frame lost; and no box ever forwards beyond its slots or
//!   its upload. Then every box still running plays.
//!
//! The tighter 1.5/3/6 mix, without standbys, is `cargo xtask testbed`'s default; its
//! figures are in docs/BENCHMARKS.md. Needs root; elsewhere it says so and does
//! nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

const HOSTS: usize = 24;

#[test]
fn a_household_network_of_boxes_plays_through_faults() {
    if !testbed::can_run() {
        eprintln!("skipped: the testbed needs root (network namespaces, tc)");
        return;
    }
    let astral = PathBuf::from(env!("CARGO_BIN_EXE_astral"));
    let mut options = testbed::Options::new(astral, HOSTS);
    options.uplinks_kbps = vec![6000, 6000, 3000];
    options.standby = Some("full".into());
    let mut bed = testbed::Testbed::start(options).expect("the testbed starts");
    let sampler = bed.sample(Duration::from_millis(500));
    let asked = Instant::now();
    bed.watch_all().expect("every box is asked to watch");
    let crowd = asked.elapsed();
    assert!(crowd < Duration::from_secs(5), "the asks took {crowd:?}");
    if let Err(e) = bed.wait_all_playing(Duration::from_secs(60)) {
        let report = bed.report().map(|r| r.table()).unwrap_or_default();
        panic!("{e}\n{report}\nlogs in {}", bed.work_dir().display());
    }
    let joined = bed.report().expect("a report");
    eprintln!(
        "{HOSTS} boxes asked within {crowd:?}; after the joins:\n{}",
        joined.table()
    );

    std::thread::sleep(Duration::from_secs(20));
    let report = bed.report().expect("a report").since(&joined);
    eprintln!("20 s of steady play:\n{}", report.table());
    assert!(
        report.stream_kbps > 1500,
        "the stream is {} kbit/s",
        report.stream_kbps
    );
    assert!(
        report.viewers.iter().all(|v| v.playing && v.frames > 0),
        "a box does not play\n{}",
        report.table()
    );
    // Boxes feed boxes: the source sends only to its own children.
    let from_source = report
        .viewers
        .iter()
        .filter(|v| v.parent.as_deref() == Some("source"))
        .count();
    let fed_by_peers = (HOSTS - from_source) as f64 / HOSTS as f64;
    assert!(
        report.peer_share() > fed_by_peers - 0.05,
        "peers served {:.3} of the bytes, {fed_by_peers:.3} of the boxes\n{}",
        report.peer_share(),
        report.table()
    );

    let chaos_from = sampler.start_instant().elapsed();
    // The supernode loses power (its link goes down, then kill -9): nobody hears it go.
    bed.chaos(&testbed::Chaos::new(Duration::from_secs(60)))
        .expect("the faults run");
    let after_faults = Instant::now();
    loop {
        let report = bed.report().expect("a report");
        let running: Vec<_> = report
            .viewers
            .iter()
            .zip(&bed.viewers)
            .filter(|(_, host)| host.pid().is_some())
            .collect();
        if running.iter().all(|(v, _)| v.playing) {
            break;
        }
        assert!(
            after_faults.elapsed() < Duration::from_secs(30),
            "boxes still running do not play after the faults\n{}",
            report.table()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let timeline = sampler.finish(bed.faults.clone());
    let uplinks = bed.uplinks();
    let faults = timeline.summary(chaos_from, &uplinks);
    eprintln!("over 60 s of faults:\n{}", faults.table());
    assert!(
        faults.kills >= 2 && faults.supernode_kills + faults.leaves >= 1,
        "the faults happened: {:?}",
        timeline.events
    );
    assert!(
        faults.survivors.len() >= HOSTS - 4,
        "{} boxes ran throughout",
        faults.survivors.len()
    );
    let names = |hosts: Vec<usize>| -> Vec<&str> {
        hosts
            .into_iter()
            .map(|i| bed.viewers[i].name.as_str())
            .collect()
    };
    let short = names(faults.short_of_goal().map(|(i, _)| *i).collect());
    assert!(
        short.is_empty(),
        "continuity under {} at {short:?}\n{}",
        testbed::CONTINUITY_GOAL,
        faults.table()
    );
    let long = names(faults.waits_over_goal().map(|s| s.host).collect());
    assert!(
        long.is_empty(),
        "{long:?} went over {:?} without a frame\n{}",
        testbed::LONGEST_WAIT_GOAL,
        faults.table()
    );
    assert_eq!(faults.lost, 0, "frames lost\n{}", faults.table());
    let overruns = timeline.overruns(&uplinks);
    assert!(
        overruns.is_empty(),
        "boxes forwarded beyond their slots or upload: {overruns:?}"
    );
}
