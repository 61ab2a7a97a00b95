//! The overlay with real processes: a portal, a source and twelve boxes, each on a
//! loopback address of its own, build a relay tree through the portal and supernodes,
//! and keep it whole when a box dies or leaves.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use proto::TagKind;
use serde_json::Value;

const STREAM: &str = "live";
const BOXES: usize = 12;
/// The frame rate of `test_pattern`.
const FPS: u32 = 25;

/// One box as its `GET /status` describes it.
#[derive(Debug, Clone)]
struct Place {
    name: String,
    parent: Option<String>,
    path: Vec<String>,
    flowing: bool,
    slots: usize,
    children: Vec<String>,
    /// Children asked to move (displaced, or this box is leaving).
    moving: usize,
    is_supernode: bool,
    registered: Option<u64>,
}

/// A box's place from its status, with node ids given as the boxes' names.
fn place(status: &Value, names: &BTreeMap<String, String>) -> Place {
    let overlay = &status["overlay"];
    let held = overlay["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|h| h["stream"] == STREAM))
        .cloned()
        .unwrap_or(Value::Null);
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(name)).collect())
            .unwrap_or_default()
    };
    Place {
        name: status["name"].as_str().unwrap().to_owned(),
        parent: held["parent"].as_str().map(name),
        path: strings(&held["path"]),
        flowing: held["flowing"].as_bool().unwrap_or(false),
        slots: held["slots"].as_u64().unwrap_or(0) as usize,
        children: held["tickets"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t["child"].as_str().map(name))
                    .collect()
            })
            .unwrap_or_default(),
        moving: held["tickets"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| t["moving"] == true).count()),
        is_supernode: overlay["is_supernode"].as_bool().unwrap_or(false),
        registered: overlay["registered"].as_u64(),
    }
}

struct Network {
    portal: PortalProc,
    source: NodeProc,
    boxes: Vec<NodeProc>,
}

impl Network {
    /// A portal, a source and twelve boxes with one or two slots each, every box
    /// watching the source's stream. Supernodes take at most three boxes each.
    fn start() -> Network {
        let portal = PortalProc::start();
        let url = portal.url();
        let common = |slots: &'static str| {
            vec![
                "--portal".to_owned(),
                url.clone(),
                "--max-forwards".into(),
                slots.into(),
                "--supernode-max-children".into(),
                "3".into(),
                "--play-without-ticket".into(),
                "127.0.0.1/32".into(),
            ]
        };
        let mut args = common("2");
        args.extend(test_pattern(STREAM));
        let source = start_box("source", 10, &args);
        eventually(Duration::from_secs(10), || {
            let listed = portal.get("/api/streams");
            (listed[0]["id"] == STREAM).then_some(())
        });
        let mut boxes = Vec::new();
        for i in 0..BOXES {
            // Half the boxes have two slots, half one.
            let slots = if i % 2 == 0 { "2" } else { "1" };
            let node = start_box(&format!("box{i:02}"), 11 + i as u8, &common(slots));
            let (code, body) = node.http("POST", &format!("/streams/{STREAM}/watch"), None);
            assert_eq!(code, 202, "{}: {body}", node.name);
            boxes.push(node);
        }
        Network {
            portal,
            source,
            boxes,
        }
    }

    fn all(&self) -> impl Iterator<Item = &NodeProc> {
        std::iter::once(&self.source).chain(&self.boxes)
    }

    fn get(&self, name: &str) -> &NodeProc {
        self.all().find(|n| n.name == name).expect("a known box")
    }

    fn places(&self) -> BTreeMap<String, Place> {
        let statuses: Vec<Value> = self
            .all()
            .filter_map(|n| {
                let (code, body) = n.http_get("/status");
                (code == 200).then(|| serde_json::from_str(&body).unwrap())
            })
            .collect();
        let names: BTreeMap<String, String> = statuses
            .iter()
            .map(|s| {
                (
                    s["peer"]["id"].as_str().unwrap().to_owned(),
                    s["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        statuses
            .iter()
            .map(|s| {
                let p = place(s, &names);
                (p.name.clone(), p)
            })
            .collect()
    }

    /// Waits until every box receives the stream and the tree has settled: each
    /// box's parent lists it as a child, and no move is under way. (Statuses are read
    /// one box after the other, so a snapshot taken during a move disagrees; and a
    /// displaced child keeps its old parent until it plays from the new one, so
    /// during a move a parent forwards to one box more than its slots.)
    fn wait_flowing(&self, limit: Duration) -> BTreeMap<String, Place> {
        let deadline = Instant::now() + limit;
        loop {
            let places = self.places();
            let settled = places.values().all(|p| {
                let attached = p.name == "source"
                    || (p.flowing
                        && p.parent.as_ref().is_some_and(|parent| {
                            places
                                .get(parent)
                                .is_some_and(|q| q.children.contains(&p.name))
                        }));
                let children_here = p.children.iter().all(|c| {
                    places
                        .get(c)
                        .is_some_and(|c| c.parent.as_ref() == Some(&p.name))
                });
                attached && children_here && p.moving == 0
            });
            if settled {
                return places;
            }
            if Instant::now() > deadline {
                for p in places.values() {
                    eprintln!("{p:?}");
                }
                panic!("the tree did not settle within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn start_box(name: &str, last_octet: u8, args: &[String]) -> NodeProc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProc::start_at(name, [127, 0, 0, last_octet], "", &args)
}

/// The tree's invariants: no box forwards more than its slots, parent and child agree,
/// no loops, depth within ⌈log2(N+1)⌉+1.
fn check_tree(places: &BTreeMap<String, Place>) -> usize {
    let n = places.len();
    let bound = (n as f64 + 1.0).log2().ceil() as usize + 1;
    let mut deepest = 0;
    for p in places.values() {
        assert!(
            p.children.len() <= p.slots,
            "{} forwards to {:?} with {} slots",
            p.name,
            p.children,
            p.slots
        );
        assert!(
            !p.path.contains(&p.name),
            "{} is its own ancestor: {:?}",
            p.name,
            p.path
        );
        if let Some(parent) = &p.parent {
            assert_eq!(
                p.path.last(),
                Some(parent),
                "{}'s path ends at its parent",
                p.name
            );
            assert!(
                places[parent].children.contains(&p.name),
                "{parent} does not list {} as a child",
                p.name
            );
        }
        deepest = deepest.max(p.path.len());
    }
    assert!(
        deepest <= bound,
        "depth {deepest} over the bound {bound} for {n} boxes"
    );
    deepest
}

/// Every box below `name`.
fn descendants(places: &BTreeMap<String, Place>, name: &str) -> Vec<String> {
    places
        .values()
        .filter(|p| p.path.iter().any(|a| a == name))
        .map(|p| p.name.clone())
        .collect()
}

impl Network {
    /// Each box's RTMP URL of the stream.
    fn urls(&self, boxes: &[String]) -> Vec<(String, String)> {
        boxes
            .iter()
            .map(|name| (name.clone(), self.get(name).rtmp_url(STREAM)))
            .collect()
    }
}

/// Plays the stream from each box for `duration`, in parallel; each player's video
/// tags with their arrival times.
async fn watch_all(urls: Vec<(String, String)>, duration: Duration) -> Vec<(String, Vec<Seen>)> {
    let players: Vec<_> = urls
        .into_iter()
        .map(|(name, url)| {
            tokio::spawn(async move {
                let seen = play(&url, duration).await;
                let video = seen
                    .into_iter()
                    .filter(|s| s.tag.kind == TagKind::Video)
                    .collect();
                (name, video)
            })
        })
        .collect();
    let mut all = Vec::new();
    for p in players {
        all.push(p.await.expect("a player task"));
    }
    all
}

/// The longest wait between two video tags arriving after `from`.
fn longest_gap_after(seen: &[Seen], from: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for s in seen.iter().filter(|s| s.at >= from) {
        gap = gap.max(s.at - last);
        last = s.at;
    }
    gap
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_builds_itself_and_survives_a_crash_and_a_leave() {
    let started = Instant::now();
    let mut net = Network::start();
    let places = net.wait_flowing(Duration::from_secs(40));
    let depth = check_tree(&places);
    eprintln!(
        "tree of {} boxes, depth {depth}, {} supernodes, settled {:?} after the first box started",
        places.len(),
        places.values().filter(|p| p.is_supernode).count(),
        started.elapsed()
    );

    // Supernodes take three boxes each, so others were promoted, and the portal lists
    // them.
    let supernodes: Vec<&Place> = places.values().filter(|p| p.is_supernode).collect();
    assert!(supernodes.len() >= 2, "promotions happened: {supernodes:?}");
    for sn in &supernodes {
        assert!(
            sn.registered.unwrap_or(0) <= 3,
            "{} took over 3 boxes",
            sn.name
        );
    }
    let listed = net.portal.get("/api/supernodes");
    assert!(
        listed["supernodes"].as_array().unwrap().len() >= 2,
        "{listed}"
    );
    let streams = net.portal.get("/api/streams");
    assert_eq!(streams[0]["id"], STREAM, "{streams}");
    assert_eq!(streams[0]["source"]["id"], net.source.id());

    // Every box hands out frames.
    let names: Vec<String> = net.boxes.iter().map(|b| b.name.clone()).collect();
    for (name, video) in watch_all(net.urls(&names), Duration::from_secs(2)).await {
        assert!(
            video.len() > FPS as usize,
            "{name} played only {} frames",
            video.len()
        );
    }

    // The source seals each GOP, and every box checks what its parent sends against
    // the seals (a GOP counts once it came whole and its seal came after it): nothing
    // altered.
    eventually(Duration::from_secs(15), || {
        net.boxes
            .iter()
            .all(|b| b.metric("gops_verified_total", STREAM) > 0.0)
            .then_some(())
    });
    assert!(net.source.metric("gops_sealed_total", STREAM) > 0.0);
    for b in &net.boxes {
        assert_eq!(b.metric("tampered_total", STREAM), 0.0, "{}", b.name);
    }

    // kill -9 the interior box with the most descendants: each of them plays on.
    let victim = places
        .values()
        .filter(|p| p.name != "source")
        .max_by_key(|p| descendants(&places, &p.name).len())
        .unwrap()
        .name
        .clone();
    let below = descendants(&places, &victim);
    assert!(!below.is_empty(), "{victim} is interior");
    let players = tokio::spawn(watch_all(net.urls(&below), Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    net.boxes
        .iter_mut()
        .find(|b| b.name == victim)
        .unwrap()
        .kill();
    for (name, video) in players.await.unwrap() {
        let gap = longest_gap_after(&video, killed_at);
        eprintln!("{name}: after {victim} was killed, the longest wait for a frame was {gap:?}");
        assert!(
            gap <= Duration::from_secs(2),
            "{name} waited {gap:?} for frames"
        );
    }
    net.boxes.retain(|b| b.name != victim);
    let places = net.wait_flowing(Duration::from_secs(10));
    check_tree(&places);

    // An interior box leaves gracefully: its children lose no frame.
    let leaver = places
        .values()
        .filter(|p| p.name != "source" && !p.children.is_empty())
        .max_by_key(|p| p.children.len())
        .expect("an interior box is left")
        .clone();
    let players = tokio::spawn(watch_all(
        net.urls(&leaver.children),
        Duration::from_secs(8),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = net
        .boxes
        .iter_mut()
        .find(|b| b.name == leaver.name)
        .unwrap();
    let (code, body) = node.http("POST", "/leave", None);
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        node.wait_exit(Duration::from_secs(10)),
        Some(0),
        "a leaving node exits 0"
    );
    let frame_ms = 1000 / FPS;
    for (name, video) in players.await.unwrap() {
        let stamps: Vec<u32> = video
            .iter()
            .filter(|s| !s.tag.is_sequence_header())
            .map(|s| s.tag.timestamp)
            .collect();
        // 8 s of play: the frames since the last keyframe, then live ones.
        assert!(
            stamps.len() > 4 * FPS as usize,
            "{name} played {} frames",
            stamps.len()
        );
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "{name}: timestamps go forward"
        );
        let worst = stamps.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let first = video.first().map_or_else(Instant::now, |s| s.at);
        eprintln!(
            "{name}: while {} left, {} frames, the widest timestamp step was {worst} ms, \
             the longest wait for a frame {:?}",
            leaver.name,
            stamps.len(),
            longest_gap_after(&video, first)
        );
        assert!(
            worst <= 2 * frame_ms,
            "{name} lost frames while {} left: a {worst} ms step",
            leaver.name
        );
    }
    net.boxes.retain(|b| b.name != leaver.name);
    let places = net.wait_flowing(Duration::from_secs(10));
    check_tree(&places);

    // SIGTERM to a supernode (not the source): it hands its boxes on and exits 0;
    // they register elsewhere and keep playing.
    let supernode = places
        .values()
        .find(|p| p.is_supernode && p.name != "source" && p.registered.unwrap_or(0) > 0)
        .map(|p| p.name.clone());
    if let Some(name) = supernode {
        eprintln!("SIGTERM to supernode {name}");
        let node = net.boxes.iter_mut().find(|b| b.name == name).unwrap();
        let gone = node.id();
        node.terminate();
        assert_eq!(
            node.wait_exit(Duration::from_secs(10)),
            Some(0),
            "SIGTERM exits 0"
        );
        net.boxes.retain(|b| b.name != name);
        let places = net.wait_flowing(Duration::from_secs(10));
        check_tree(&places);
        // The rehome is a call of its own after the successor adopted the boxes.
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in places.values() {
            let supernode = loop {
                let status = net.get(&p.name).status();
                let supernode = status["overlay"]["supernode"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if (!supernode.is_empty() && supernode != gone) || Instant::now() > deadline {
                    break supernode;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert_ne!(
                supernode, gone,
                "{} still counts on the supernode that left",
                p.name
            );
            assert!(!supernode.is_empty(), "{} has a supernode", p.name);
        }
    }
}
