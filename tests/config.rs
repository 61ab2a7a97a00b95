//! Remote configuration on a real node: `GET`/`PATCH /config` and `astral config`.
//! A change is validated, saved in the data directory, applied without a restart
//! (the source restarts, the node and its players do not), and kept across one.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, probe_stream, NodeProc};
use serde_json::{json, Value};

const STREAM: &str = "cam";

fn start() -> NodeProc {
    NodeProc::start(
        "cambox",
        "",
        &[
            "--source",
            "test-pattern",
            "--source-stream",
            STREAM,
            "--size",
            "320x240",
            "--fps",
            "25",
            "--bitrate-kbps",
            "800",
        ],
    )
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Width, height and frame rate of the stream as ffprobe decodes it from HTTP-FLV.
fn probe(node: &NodeProc) -> (u32, u32, String) {
    let p = probe_stream(&node.flv_url(STREAM), 2);
    (p.width, p.height, p.rate)
}

fn last_timestamp(node: &NodeProc) -> u64 {
    node.stream_info(STREAM)["last_timestamp_ms"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn settings_change_live_are_saved_and_survive_a_restart() {
    let mut node = start();
    eventually(Duration::from_secs(5), || {
        (last_timestamp(&node) > 500).then_some(())
    });

    // Admin only.
    let (status, _) = node.http_anon("GET", "/config", None);
    assert_eq!(status, 401);
    let (status, _) = node.http_anon("PATCH", "/config", Some(r#"{"fps": 10}"#));
    assert_eq!(status, 401);

    assert_eq!(node.status()["broadcast"], "live");
    let (status, body) = node.http("GET", "/config", None);
    assert_eq!(status, 200, "{body}");
    let before = json_body(&body);
    assert_eq!(before["source"], "test-pattern");
    assert_eq!(before["size"], "320x240");
    assert_eq!(before["fps"], 25);
    assert_eq!(before["bitrate_kbps"], 800);
    assert_eq!(before["set_remotely"], json!([]));

    // Bad values: a 400 naming the field, and nothing changes.
    for (patch, field) in [
        (r#"{"fps": "fast"}"#, "fps"),
        (r#"{"fps": 500}"#, "fps"),
        (r#"{"size": "321x240"}"#, "size"),
        (r#"{"encoder": "h265_magic"}"#, "encoder"),
        (r#"{"max_forwards": 99}"#, "max_forwards"),
        (r#"{"camera_angle": 3}"#, "camera_angle"),
    ] {
        let (status, body) = node.http("PATCH", "/config", Some(patch));
        assert_eq!(status, 400, "{patch}: {body}");
        assert_eq!(json_body(&body)["field"], field, "{patch}: {body}");
    }
    let (status, body) = node.http("PATCH", "/config", Some("{not json"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_body(&node.http("GET", "/config", None).1), before);
    assert!(!node.data_dir().join("settings.toml").exists());

    // A good change: applied at once, the stream's clock going on.
    let ts_before = last_timestamp(&node);
    let (status, body) = node.http(
        "PATCH",
        "/config",
        Some(r#"{"size": "160x120", "fps": "10", "bitrate_kbps": 300, "title": "Garden"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let after = json_body(&body);
    assert_eq!(
        (
            &after["size"],
            &after["fps"],
            &after["bitrate_kbps"],
            &after["title"]
        ),
        (&json!("160x120"), &json!(10), &json!(300), &json!("Garden"))
    );
    let mut set: Vec<String> = serde_json::from_value(after["set_remotely"].clone()).unwrap();
    set.sort();
    assert_eq!(set, ["bitrate_kbps", "fps", "size", "title"]);
    assert_eq!(probe(&node), (160, 120, "10/1".to_owned()));
    let ts_after = last_timestamp(&node);
    assert!(
        ts_after > ts_before,
        "the stream's timestamps go on ({ts_before} ms, then {ts_after} ms)"
    );
    let saved = std::fs::read_to_string(node.data_dir().join("settings.toml")).unwrap();
    assert!(saved.contains("fps = 10"), "{saved}");

    // Kept over the flags after a restart; null goes back to them.
    node.restart();
    let (_, body) = node.http("GET", "/config", None);
    assert_eq!(json_body(&body)["fps"], 10);
    assert_eq!(probe(&node).0, 160);
    let (status, body) = node.http("PATCH", "/config", Some(r#"{"fps": null, "size": null}"#));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body)["fps"], 25);
    assert_eq!(probe(&node), (320, 240, "25/1".to_owned()));
}

#[test]
fn the_cli_gets_and_sets_settings() {
    let node = start();
    let astral = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_astral"))
            .args(args)
            .args(["--api", &node.api.to_string()])
            .args(["--data-dir", node.data_dir().to_str().unwrap()])
            .output()
            .expect("running astral");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = astral(&["config", "set", "max_forwards=1", "description=On the roof"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("max_forwards"), "{out}");
    let (code, out, err) = astral(&["config", "get", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let got = json_body(&out);
    assert_eq!(
        (&got["max_forwards"], &got["description"]),
        (&json!(1), &json!("On the roof"))
    );

    let (code, _, err) = astral(&["config", "set", "fps=fast"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("fps"), "{err}");
    let (code, _, err) = astral(&["config", "set", "fps"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("KEY=VALUE"), "{err}");
}

#[test]
fn a_missing_camera_is_an_error_the_node_survives() {
    let node = NodeProc::start("nocam", "", &["--source", "v4l2:/dev/video-not-plugged-in"]);
    assert_eq!(node.status()["broadcast"], "connecting");
    // Five seconds without a frame: the tally says error, the node keeps serving.
    eventually(Duration::from_secs(10), || {
        (node.status()["broadcast"] == "error").then_some(())
    });
    let warnings = node
        .log()
        .lines()
        .filter(|l| l.contains("camera unavailable"))
        .count();
    assert_eq!(warnings, 1, "logged once:\n{}", node.log());
    let (status, _) = node.http("PATCH", "/config", Some(r#"{"source": "test-pattern"}"#));
    assert_eq!(status, 200);
    eventually(Duration::from_secs(5), || {
        (node.status()["broadcast"] == "live").then_some(())
    });
}

/// The settings a writer sends in its `i`th `PATCH /config`: a title naming `i` and a
/// description whose length depends on it, so that a file holding parts of two writes
/// would not read back as any one of them.
fn settings_patch(i: usize) -> (String, String) {
    let title = format!("write {i}");
    let description = format!("{i}:{}", "x".repeat(i * 97 % 1900));
    (title, description)
}

/// Settings are saved whole (write, fsync, rename). A node killed with SIGKILL while
/// it saves them, again and again, starts again with the settings of one whole write:
/// the last it acknowledged, or one in flight when it died, never a mix and never
/// an older one.
#[test]
fn a_node_killed_while_saving_settings_starts_with_one_whole_write() {
    let mut node = NodeProc::start("savebox", "", &[]);
    let mut next = 0;
    for round in 0..6 {
        let (url, token) = (format!("http://{}/config", node.api), node.admin_token());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(None::<usize>));
        let writer = {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            let first = next;
            std::thread::spawn(move || {
                let mut i = first;
                while !stop.load(Ordering::Relaxed) {
                    let (title, description) = settings_patch(i);
                    let body = json!({"title": title, "description": description}).to_string();
                    let sent = ureq::request("PATCH", &url)
                        .timeout(Duration::from_secs(2))
                        .set("authorization", &format!("Bearer {token}"))
                        .set("content-type", "application/json")
                        .send_string(&body);
                    match sent {
                        Ok(r) if r.status() == 200 => *acked.lock().unwrap() = Some(i),
                        Ok(r) => panic!("PATCH /config answered {}", r.status()),
                        // The node is gone.
                        Err(_) => return i,
                    }
                    i += 1;
                }
                i
            })
        };
        std::thread::sleep(Duration::from_millis(300 + 70 * round));
        node.kill();
        stop.store(true, Ordering::Relaxed);
        let sent_up_to = writer.join().expect("the writer");
        let acked = acked
            .lock()
            .unwrap()
            .expect("some writes were acknowledged");
        assert!(
            acked - next > 3,
            "round {round}: only {} writes before the kill",
            acked - next
        );

        // On disk: one whole write.
        let saved = node::settings::Settings::load(node.data_dir())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let title = saved.title.clone().expect("a title");
        let i: usize = title
            .strip_prefix("write ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("round {round}: the title is {title:?}"));
        assert!(
            (acked..=sent_up_to).contains(&i),
            "round {round}: write {i} on disk, {acked} acknowledged, {sent_up_to} sent"
        );
        assert_eq!(
            saved.description.as_deref(),
            Some(settings_patch(i).1.as_str()),
            "round {round}: the description is not write {i}'s"
        );
        // And the node starts from it.
        node.start_again();
        let (status, body) = node.http("GET", "/config", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            json_body(&body)["set_remotely"],
            json!(["description", "title"])
        );
        next = sent_up_to + 1;
    }
}
