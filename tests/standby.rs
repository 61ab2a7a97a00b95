//! The hot-standby parent on real processes. A source with two slots feeds boxes a and
//! b, one slot each; box c plays from one of them. Its parent then freezes (SIGSTOP:
//! its sockets stay open and silent, as when a box loses power), and c must notice the
//! silence. With `--standby full`, c also plays from the other box all along, and
//! loses not a frame nor waits for one. With `--standby idle`, the other box only
//! holds a slot for c, which plays from it once the parent stalls, resuming after its
//! newest frame: nothing lost, and no search. Without, it is printed what the failover
//! costs; the waits are printed, not asserted.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const STREAM: &str = "live";

struct Failover {
    /// Frames that never reached c, from just before the freeze to 4 s after.
    lost: u64,
    frames: u64,
    /// The longest wait between two frames at c over that time, in ms (0 if none
    /// reached half a second).
    longest_stall_ms: u64,
}

fn place(node: &NodeProc) -> Value {
    node.status()["overlay"]["streams"][0].clone()
}

fn failover(standby: Option<&str>, octet: u8) -> Failover {
    let portal = PortalProc::start();
    let url = portal.url();
    let args = |slots: &str| {
        vec![
            "--portal".to_owned(),
            url.clone(),
            "--max-forwards".into(),
            slots.into(),
            "--play-without-ticket".into(),
            "127.0.0.1/32".into(),
        ]
    };
    let start = |name: &str, octet: u8, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProc::start_at(name, [127, 0, 0, octet], "", &args)
    };
    let mut source_args = args("2");
    source_args.extend(test_pattern(STREAM));
    let _source = start("source", octet, source_args);
    eventually(Duration::from_secs(10), || {
        (portal.get("/api/streams")[0]["id"] == STREAM).then_some(())
    });
    let watch = |node: &NodeProc| {
        let (code, body) = node.http("POST", &format!("/streams/{STREAM}/watch"), None);
        assert_eq!(code, 202, "{}: {body}", node.name);
        eventually(Duration::from_secs(15), || {
            (place(node)["flowing"] == true).then_some(())
        });
    };
    let mut boxes = [
        start("a", octet + 1, args("1")),
        start("b", octet + 2, args("1")),
    ];
    watch(&boxes[0]);
    watch(&boxes[1]);
    let mut c_args = args("1");
    if let Some(mode) = standby {
        c_args.extend(["--standby".into(), mode.into()]);
    }
    let c = start("c", octet + 3, c_args);
    watch(&c);
    // Node ids as the boxes' names.
    let ids: Vec<(String, String)> = boxes.iter().map(|b| (b.id(), b.name.clone())).collect();
    let name = |id: &str| {
        ids.iter()
            .find(|(i, _)| i == id)
            .map_or_else(|| id.to_owned(), |(_, n)| n.clone())
    };
    let parent = name(place(&c)["parent"].as_str().expect("a parent"));
    let standby_parent = standby.map(|_| {
        let other = eventually(Duration::from_secs(20), || {
            place(&c)["standby"].as_str().map(name)
        });
        assert_ne!(other, parent, "the standby is another box");
        assert!(["a", "b"].contains(&other.as_str()), "{other}");
        other
    });
    let seen = |c: &NodeProc| c.stream_info(STREAM)["continuity"].clone();
    std::thread::sleep(Duration::from_secs(1));
    let before = seen(&c);
    let frozen = boxes
        .iter_mut()
        .find(|b| b.name == parent)
        .expect("the parent is a or b");
    frozen.signal("STOP");
    let new_parent = eventually(Duration::from_secs(15), || {
        place(&c)["parent"]
            .as_str()
            .map(name)
            .filter(|p| *p != parent)
    });
    eprintln!("standby {standby:?}: c moved from {parent} to {new_parent}");
    if let Some(standby_parent) = standby_parent {
        assert_eq!(new_parent, standby_parent, "the standby took over");
    }
    std::thread::sleep(Duration::from_secs(4));
    let after = seen(&c);
    frozen.signal("CONT");
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let stalls = |v: &Value| v["stalls"].as_array().cloned().unwrap_or_default();
    let new_stalls: Vec<Value> = stalls(&after)
        .into_iter()
        .filter(|s| !stalls(&before).contains(s))
        .collect();
    Failover {
        lost: count(&after, "missing") - count(&before, "missing"),
        frames: count(&after, "frames") - count(&before, "frames"),
        longest_stall_ms: new_stalls.iter().map(|s| count(s, "ms")).max().unwrap_or(0),
    }
}

#[test]
fn a_hot_standby_loses_no_frame_when_the_parent_goes_silent() {
    let mut figures = Vec::new();
    for (mode, octet) in [(None, 40), (Some("idle"), 50), (Some("full"), 60)] {
        let f = failover(mode, octet);
        eprintln!(
            "standby {}: {} frames lost, {} arrived, longest wait {} ms",
            mode.unwrap_or("off"),
            f.lost,
            f.frames,
            f.longest_stall_ms
        );
        figures.push((mode, f));
    }
    for (mode, f) in &figures {
        assert!(f.frames >= 100, "{mode:?}: {} frames in 5 s", f.frames);
        if mode.is_some() {
            assert_eq!(f.lost, 0, "{mode:?}: frames lost with a standby");
        }
    }
    let full = &figures[2].1;
    assert_eq!(
        full.longest_stall_ms, 0,
        "c waited for frames with a full standby"
    );
}
