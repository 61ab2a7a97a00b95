//! The web pages in a real browser: Debian's Chromium, driven by playwright-core
//! (`web/tests/browser.mjs`), against a portal and boxes running as processes.
//!
//! A source and five boxes form a chain (one forward slot each), every box on a
//! loopback address of its own. The browser, on 127.0.0.1, is at home only on the
//! first box (`play_without_ticket`); to the others it is a stranger, which needs a
//! viewer ticket. The test pattern burns in the wall clock, so the watch page's
//! readings of it against the page's clock are the glass-to-glass latency.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const STREAM: &str = "cam";
const CHAIN: usize = 5;

/// One browser test at a time: each runs Chromium and a handful of boxes, and the
/// demo takes a block of ports that another test's boxes could hold.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `astral demo`, stopped when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Chain {
    portal: PortalProc,
    source: NodeProc,
    boxes: Vec<NodeProc>,
}

impl Chain {
    fn start() -> Chain {
        let portal = PortalProc::start();
        let url = portal.url();
        let args = |home: &str| {
            vec![
                "--portal".to_owned(),
                url.clone(),
                "--max-forwards".into(),
                "1".into(),
                "--play-without-ticket".into(),
                home.into(),
            ]
        };
        let mut source_args = args("127.0.0.2/32");
        source_args.extend(
            [
                "--source",
                "test-pattern:clock",
                "--source-stream",
                STREAM,
                "--title",
                "Browser test",
                "--size",
                "640x360",
                "--fps",
                "25",
                "--bitrate-kbps",
                "800",
            ]
            .map(String::from),
        );
        let source = start_at("source", 10, &source_args);
        eventually(Duration::from_secs(15), || {
            (portal.get("/api/streams")[0]["id"] == STREAM).then_some(())
        });
        // One at a time, so that each box's only free parent is the one before it.
        let mut boxes: Vec<NodeProc> = Vec::new();
        for i in 1..=CHAIN {
            let home = if i == 1 {
                "127.0.0.1/32"
            } else {
                "127.0.0.2/32"
            };
            let node = start_at(&format!("b{i}"), 10 + i as u8, &args(home));
            let (code, body) = node.http("POST", &format!("/streams/{STREAM}/watch"), None);
            assert_eq!(code, 202, "{}: {body}", node.name);
            eventually(Duration::from_secs(20), || {
                let place = place(&node);
                (place["flowing"] == true && place["depth"] == i).then_some(())
            });
            boxes.push(node);
        }
        Chain {
            portal,
            source,
            boxes,
        }
    }

    fn names(&self) -> Vec<String> {
        std::iter::once(&self.source)
            .chain(&self.boxes)
            .map(|n| n.name.clone())
            .collect()
    }
}

fn start_at(name: &str, last_octet: u8, args: &[String]) -> NodeProc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProc::start_at(name, [127, 0, 0, last_octet], "", &args)
}

/// The box's place in the stream's tree, from its `GET /status`.
fn place(node: &NodeProc) -> Value {
    node.status()["overlay"]["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|h| h["stream"] == STREAM))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Runs one scenario of the browser driver and returns what it saw.
fn browser(scenario: &str, config: Value) -> Value {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web");
    let out = Command::new("node")
        .arg(web.join("tests/browser.mjs"))
        .arg(scenario)
        .arg(config.to_string())
        .current_dir(&web)
        .output()
        .expect("node runs (./dev installs Node.js, npm and chromium)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser's {scenario} failed:\n{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{scenario}: not JSON ({e}): {stdout}"));
    assert_eq!(seen["pageErrors"], json!([]), "{scenario}: the page threw");
    eprintln!("{scenario}: {seen}");
    seen
}

/// Glass-to-glass latencies read off the picture: median and worst, in ms.
fn latency(seen: &Value) -> (i64, i64) {
    let mut ms: Vec<i64> = seen["latencies"]
        .as_array()
        .expect("latency readings")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert!(
        ms.len() >= 20,
        "the clock in the picture was read {} times of 40: {seen}",
        ms.len()
    );
    ms.sort_unstable();
    assert!(
        ms[0] > 0 && ms[ms.len() - 1] < 10_000,
        "readings are not a latency: {ms:?}"
    );
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

#[test]
fn the_demo_shows_in_the_browser() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let _demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_astral"))
            .args(["demo", "--nodes", "3", "--port", &port.to_string()])
            .args(["--size", "640x360", "--fps", "25", "--bitrate-kbps", "800"])
            .args(["--seconds", "120"])
            .stdout(Stdio::null())
            .spawn()
            .expect("astral demo starts"),
    );
    let portal = format!("http://127.0.0.1:{port}");
    let list = browser("list", json!({"portal": portal, "stream": "demo"}));
    assert_eq!(list["streams"], json!(["demo"]));
    assert_eq!(list["title"], "Astral demo: a test pattern");
    assert_eq!(list["thumbnail"], json!({"width": 320, "height": 180}));
    let nodes = ["box1", "box2", "box3", "source"];
    let map = browser("map", json!({"portal": portal, "nodes": nodes}));
    assert_eq!(map["before"]["nodes"], json!(nodes));
    assert_eq!(map["before"]["edges"].as_array().unwrap().len(), 3, "{map}");
}

#[test]
fn the_portal_and_the_box_pages_work_in_chromium() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let chain = Chain::start();
    let portal = chain.portal.url();
    let (first, last) = (&chain.boxes[0], &chain.boxes[CHAIN - 1]);

    // The list: the stream with its facts and a still from the source, once the
    // supernodes have counted every box (they report a change within seconds).
    eventually(Duration::from_secs(20), || {
        (chain.portal.get("/api/streams")[0]["viewers"] == CHAIN).then_some(())
    });
    let list = browser("list", json!({"portal": portal, "stream": STREAM}));
    assert_eq!(list["streams"], json!([STREAM]));
    assert_eq!(list["title"], "Browser test");
    let facts: Vec<&str> = list["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(facts.contains(&"from source"), "{facts:?}");
    assert!(facts.contains(&"640×360"), "{facts:?}");
    assert!(
        facts.contains(&format!("{CHAIN} watching").as_str()),
        "{facts:?}"
    );
    assert_eq!(list["thumbnail"], json!({"width": 320, "height": 180}));

    // Watch through the viewer's own box: the first of the chain, depth 1.
    let own = browser(
        "watch",
        json!({"portal": portal, "stream": STREAM, "node": format!("http://{}", first.api), "clock": true}),
    );
    assert!(own["advance"].as_f64().unwrap() >= 3.0, "{own}");
    assert_eq!(
        (own["width"].clone(), own["height"].clone()),
        (json!(640), json!(360))
    );
    assert!(
        own["picture"]["lumaStddev"].as_f64().unwrap() > 20.0,
        "blank: {own}"
    );
    assert!(
        own["picture"]["colours"].as_u64().unwrap() > 8,
        "blank: {own}"
    );
    assert_eq!(own["facts"]["Depth in tree"], "1");
    assert_eq!(own["facts"]["Parent"], "source");
    assert_eq!(own["facts"]["Playing via"], "b1 (your box)");
    let (own_median, own_worst) = latency(&own);

    // No box of one's own: the portal sends the browser to the one box with a free
    // slot, the end of the chain, where it plays with a viewer ticket.
    let public = browser(
        "watch",
        json!({"portal": portal, "stream": STREAM, "node": "http://127.0.0.1:1", "clock": true}),
    );
    assert!(public["advance"].as_f64().unwrap() >= 3.0, "{public}");
    assert_eq!(public["width"], 640);
    assert_eq!(
        public["facts"]["Playing via"],
        format!("b{CHAIN} (public box)")
    );
    assert_eq!(public["facts"]["Depth in tree"], CHAIN.to_string());
    assert_eq!(public["facts"]["Parent"], format!("b{}", CHAIN - 1));
    let (public_median, public_worst) = latency(&public);
    eprintln!(
        "glass to glass: depth 1 median {own_median} ms (worst {own_worst}), \
         depth {CHAIN} median {public_median} ms (worst {public_worst})"
    );

    // A stranger without a ticket gets nothing; a ticket takes the last free slot.
    let (code, _) = last.http_anon("GET", &format!("/live/{STREAM}.flv"), None);
    assert_eq!(code, 403);
    eventually(Duration::from_secs(15), || {
        (place(last)["viewers"] == 0).then_some(())
    });
    let (code, body) = last.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(code, 201, "{body}");
    assert_eq!(place(last)["viewers"], 1);
    let (code, body) = last.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(code, 503, "the slot is taken: {body}");

    // The source's admin page: log in, lower the bitrate; the relays carry the change.
    let admin = browser(
        "admin",
        json!({"box": format!("http://{}/", chain.source.api), "token": chain.source.admin_token(), "bitrate": 300}),
    );
    assert_eq!(admin["wrong"], "wrong admin token");
    assert_eq!(admin["before"], "800");
    assert_eq!(admin["note"], "Saved and applied: bitrate_kbps.");
    assert_eq!(
        admin["documentCookie"], "",
        "the session cookie is HttpOnly"
    );
    assert_eq!(
        admin["cookies"],
        json!([{"name": "astral-source", "httpOnly": true, "sameSite": "Strict"}])
    );
    assert!(!admin["url"]
        .as_str()
        .unwrap()
        .contains(&chain.source.admin_token()));
    assert_eq!(admin["stillWidth"], 320);
    let status = admin["status"].as_str().unwrap();
    assert!(
        status.contains(&format!("Reachableyes, at {}", chain.source.api)),
        "the portal reached the source: {status}"
    );
    let relay = &chain.boxes[2];
    let kbps = eventually(Duration::from_secs(30), || {
        let kbps = relay.stream_info(STREAM)["bitrate_kbps"].as_u64()?;
        (kbps > 0 && kbps < 450).then_some(kbps)
    });
    eprintln!("bitrate at {} after the change: {kbps} kbit/s", relay.name);

    // The map: every box, then, after one is killed, its child under a new parent.
    let victim = &chain.boxes[2];
    let map = browser(
        "map",
        json!({
            "portal": portal,
            "nodes": chain.names(),
            "source": "source",
            "kill": {"pid": victim.pid(), "name": victim.name},
        }),
    );
    assert_eq!(
        map["before"]["edges"],
        json!(["b1>b2", "b2>b3", "b3>b4", "b4>b5", "source>b1"])
    );
    let after: Vec<&str> = map["after"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        after.contains(&"b2>b4"),
        "b4 is not under its grandparent: {after:?}"
    );
    assert!(!map["after"]["nodes"]
        .as_array()
        .unwrap()
        .contains(&json!("b3")));

    // The owner's page: the source's owner claims it with the code its admin page
    // showed, and stops and starts its broadcast through the portal.
    let code = admin["pairingCode"].as_str().unwrap();
    assert_eq!(code.len(), 9, "{admin}");
    let boxes = browser("boxes", json!({"portal": portal, "code": code}));
    assert!(
        boxes["key"]
            .as_str()
            .unwrap()
            .starts_with("Your owner key: "),
        "{boxes}"
    );
    assert!(
        boxes["wrong"]
            .as_str()
            .unwrap()
            .contains("no box online shows that pairing code"),
        "{boxes}"
    );
    let source_id = chain.source.status()["peer"]["id"].clone();
    assert_eq!(boxes["box"], source_id, "{boxes}");
    assert!(
        boxes["card"].as_str().unwrap().contains("online"),
        "{boxes}"
    );
    assert_eq!(boxes["before"], "live");
    assert_eq!(boxes["stopped"], "source: broadcast stopped");
    assert_eq!(boxes["after"], "live");
    assert_eq!(boxes["pageErrors"], json!([]));
    let log = chain.source.log();
    assert!(
        log.contains("broadcast stopped by the admin API")
            && log.contains("PUT /broadcast from the owner through the portal: 200"),
        "the box logs its owner's commands:\n{log}"
    );
}
