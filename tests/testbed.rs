//! The network-namespace testbed (tier 4): a portal, a noisy 2 Mbit/s source and
//! boxes with household uploads (1.5, 3 and 6 Mbit/s, `tc tbf`), each in a namespace
//! of its own. Every box joins at once; then, over 20 s of steady play after the
//! joins, every box plays and boxes, not the source, send the bytes.
//!
//! Continuity and capacity are measured and printed, not yet asserted: a box that
//! takes a weaker child's place (capacity-first placement) makes its new parent
//! forward to one box more than its slots until the displaced child has moved, which
//! on a household upload congests the parent's whole subtree (issue 7's work).
//! Needs root; elsewhere it says so and does nothing.

use std::path::PathBuf;
use std::time::Duration;

const HOSTS: usize = 24;

#[test]
fn a_household_network_of_boxes_plays_steadily() {
    if !testbed::can_run() {
        eprintln!("skipped: the testbed needs root (network namespaces, tc)");
        return;
    }
    let astral = PathBuf::from(env!("CARGO_BIN_EXE_astral"));
    let mut bed =
        testbed::Testbed::start(testbed::Options::new(astral, HOSTS)).expect("the testbed starts");
    bed.watch_all().expect("every box is asked to watch");
    if let Err(e) = bed.wait_all_playing(Duration::from_secs(60)) {
        let report = bed.report().map(|r| r.table()).unwrap_or_default();
        panic!("{e}\n{report}\nlogs in {}", bed.work_dir().display());
    }
    let joined = bed.report().expect("a report");
    eprintln!("after the joins:\n{}", joined.table());
    std::thread::sleep(Duration::from_secs(20));
    let report = bed.report().expect("a report").since(&joined);
    eprintln!("20 s of steady play:\n{}", report.table());
    assert!(
        report.stream_kbps > 1500,
        "the stream is {} kbit/s",
        report.stream_kbps
    );
    assert!(
        report.viewers.iter().all(|v| v.playing),
        "{}",
        report.table()
    );
    assert!(
        report.viewers.iter().all(|v| v.frames > 0),
        "a box got no video in 20 s\n{}",
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
}
