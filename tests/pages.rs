//! What the web pages stand on, over plain HTTP: viewer tickets for players beyond a
//! box's network, the admin page's session and whose pages may use it, the box's own
//! map, and Chrome's Private Network Access preflight.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const STREAM: &str = "cam";

/// A call with extra headers; the status, the headers asked for, and the body.
fn call(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    want: &[&str],
) -> (u16, Vec<Option<String>>, String) {
    let mut request = ureq::request(method, url).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        request = request.set(k, v);
    }
    let result = match body {
        Some(body) => request
            .set("content-type", "application/json")
            .send_string(body),
        None => request.call(),
    };
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let got = want
        .iter()
        .map(|h| response.header(h).map(String::from))
        .collect();
    (
        response.status(),
        got,
        response.into_string().unwrap_or_default(),
    )
}

/// A source with `slots` forward slots, in an overlay, to which this test's process
/// (127.0.0.1) is a stranger.
fn source(slots: &str) -> (PortalProc, NodeProc) {
    let portal = PortalProc::start();
    let node = NodeProc::start_at(
        "src",
        [127, 0, 0, 20],
        "",
        &[
            "--portal",
            &portal.url(),
            "--max-forwards",
            slots,
            "--play-without-ticket",
            "127.0.0.2/32",
            "--source",
            "test-pattern",
            "--source-stream",
            STREAM,
            "--size",
            "320x240",
            "--fps",
            "15",
            "--bitrate-kbps",
            "300",
        ],
    );
    eventually(Duration::from_secs(15), || {
        (portal.get("/api/streams")[0]["id"] == STREAM).then_some(())
    });
    (portal, node)
}

/// Waits until the box gets the stream's video.
fn wait_flowing(node: &NodeProc) {
    eventually(Duration::from_secs(15), || {
        (node.status()["overlay"]["streams"][0]["flowing"] == true).then_some(())
    });
}

fn viewers(node: &NodeProc) -> Value {
    node.status()["overlay"]["streams"][0]["viewers"].clone()
}

#[test]
fn a_viewer_ticket_takes_a_free_slot_plays_once_and_lapses_unused() {
    let (_portal, node) = source("1");
    let (code, body) = node.http_anon("GET", &format!("/live/{STREAM}.flv"), None);
    assert_eq!(code, 403, "a stranger without a ticket: {body}");
    assert!(
        body.contains("/viewers"),
        "the error says what to do: {body}"
    );

    let (code, _) = node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), None);
    assert_eq!(code, 415, "a JSON body, so that browsers ask first (CORS)");
    let (code, body) = node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(code, 201, "{body}");
    let ticket: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(viewers(&node), 1, "the ticket holds the slot");
    let (code, body) = node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(code, 503, "one slot, taken: {body}");
    let (code, _) = node.http_anon("GET", &format!("/live/{STREAM}.flv?ticket=forged"), None);
    assert_eq!(code, 403);

    // It plays, once.
    let flv = ticket["flv"].as_str().unwrap();
    let probe = probe_stream(flv, 2);
    assert!(
        probe.pts.len() >= 20,
        "{} frames through the ticket",
        probe.pts.len()
    );
    assert_eq!((probe.width, probe.height), (320, 240));
    eventually(Duration::from_secs(5), || {
        (viewers(&node) == 0).then_some(())
    });
    let (code, _) = node.http_anon(
        "GET",
        &flv.replace(&format!("http://{}", node.api), ""),
        None,
    );
    assert_eq!(code, 403, "a ticket is good for one play");

    // Over RTMP too.
    let (_, body) = node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    let ticket: Value = serde_json::from_str(&body).unwrap();
    let probe = probe_stream(ticket["rtmp"].as_str().unwrap(), 2);
    assert!(
        probe.pts.len() >= 20,
        "{} frames over RTMP",
        probe.pts.len()
    );

    // A ticket nobody plays with gives its slot back.
    eventually(Duration::from_secs(5), || {
        (viewers(&node) == 0).then_some(())
    });
    let (code, _) = node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(code, 201);
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(viewers(&node), 0, "an unused ticket lapsed");
    let (code, _) = node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(code, 201, "the slot is free again");
}

#[test]
fn the_admin_session_works_only_on_the_boxs_own_pages() {
    let node = NodeProc::start("box", "", &[]);
    let base = format!("http://{}", node.api);
    let own = base.as_str();

    let (code, _, page) = call(&format!("{base}/"), "GET", &[], None, &[]);
    assert_eq!(code, 200);
    assert!(page.contains("/assets/admin.js"));
    let (code, _, _) = call(&format!("{base}/logs"), "GET", &[], None, &[]);
    assert_eq!(code, 401);

    let login = |token: &str, origin: &str| {
        call(
            &format!("{base}/session"),
            "POST",
            &[("origin", origin)],
            Some(&format!(r#"{{"token": "{token}"}}"#)),
            &["set-cookie"],
        )
    };
    let (code, cookie, _) = login("wrong", own);
    assert_eq!((code, cookie[0].clone()), (401, None));
    let (code, _, _) = login(&node.admin_token(), "http://evil.example");
    assert_eq!(code, 403, "no login from another site's page");
    let (code, cookie, _) = login(&node.admin_token(), own);
    assert_eq!(code, 204);
    let cookie = cookie[0].clone().expect("a session cookie");
    assert!(cookie.starts_with("astral-box="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();

    let with = |origin: Option<&str>| {
        let mut headers = vec![("cookie", cookie.as_str())];
        if let Some(origin) = origin {
            headers.push(("origin", origin));
        }
        call(&format!("{base}/config"), "GET", &headers, None, &[]).0
    };
    assert_eq!(with(None), 200);
    assert_eq!(with(Some(own)), 200);
    assert_eq!(with(Some("http://evil.example")), 403);
    assert_eq!(
        with(Some("http://127.0.0.1:1")),
        403,
        "another port is another page"
    );
    let (_, _, session) = call(
        &format!("{base}/session"),
        "GET",
        &[("cookie", &cookie)],
        None,
        &[],
    );
    assert_eq!(session, r#"{"name":"box","admin":true}"#);
    let (code, _, lines) = call(
        &format!("{base}/logs"),
        "GET",
        &[("cookie", &cookie)],
        None,
        &[],
    );
    assert_eq!(code, 200);
    assert!(lines.contains("lines"));

    // Watching for local players needs no token from a trusted page; another site's
    // page may not steer the box. (This box is in no overlay: past the gate, 409.)
    let watch = |origin: &str| {
        call(
            &format!("{base}/streams/{STREAM}/watch"),
            "POST",
            &[("origin", origin)],
            Some("{}"),
            &[],
        )
        .0
    };
    assert_eq!(watch("http://localhost:8080"), 409);
    assert_eq!(watch("http://evil.example"), 403);

    // A portal on the internet may call a box on a private network: Chrome asks first.
    let (code, allowed, _) = call(
        &format!("{base}/streams/{STREAM}/watch"),
        "OPTIONS",
        &[
            ("origin", "http://localhost:8080"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
            ("access-control-request-private-network", "true"),
        ],
        None,
        &[
            "access-control-allow-origin",
            "access-control-allow-private-network",
        ],
    );
    assert_eq!(code, 200);
    assert_eq!(allowed[0].as_deref(), Some("http://localhost:8080"));
    assert_eq!(allowed[1].as_deref(), Some("true"));

    assert!(
        !cookie.contains(&node.admin_token()),
        "the cookie is not the token"
    );
    let (code, _, _) = call(
        &format!("{base}/session"),
        "DELETE",
        &[("cookie", &cookie)],
        None,
        &[],
    );
    assert_eq!(code, 204);
    assert_eq!(with(None), 401, "logging out ends the session on the box");
    let (_, _, map) = call(&format!("{base}/map"), "GET", &[], None, &[]);
    let map: Value = serde_json::from_str(&map).unwrap();
    assert_eq!(map["type"], "snapshot");
    assert_eq!(map["nodes"][0]["peer"]["id"], node.id());
    assert_eq!(map["nodes"][0]["name"], "box");
}

#[test]
fn a_stream_a_viewer_asked_for_is_dropped_when_no_one_plays_it() {
    let (portal, _source) = source("1");
    let node = NodeProc::start_at(
        "home",
        [127, 0, 0, 21],
        "[relay]\nview_idle_secs = 5\n",
        &[
            "--portal",
            &portal.url(),
            "--play-without-ticket",
            "127.0.0.1/32",
        ],
    );
    let role = || node.status()["overlay"]["streams"][0]["role"].clone();
    let (code, _, body) = call(
        &format!("http://{}/streams/{STREAM}/watch", node.api),
        "POST",
        &[("origin", &portal.url())],
        Some("{}"),
        &[],
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(role(), "view");
    wait_flowing(&node);
    // Kept while someone here plays it...
    let probe = probe_stream(&node.flv_url(STREAM), 7);
    assert!(probe.pts.len() >= 90, "{} frames", probe.pts.len());
    assert_eq!(role(), "view");
    // ...and dropped a few seconds after the last player went.
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(15), || {
        node.status()["overlay"]["streams"]
            .as_array()
            .is_some_and(|s| s.is_empty())
            .then_some(())
    });
    let idle = started.elapsed();
    assert!(idle >= Duration::from_secs(4), "dropped after {idle:?}");

    // What the owner asks for stays, whoever asks after.
    let (code, _) = node.http("POST", &format!("/streams/{STREAM}/watch"), None);
    assert_eq!(code, 202);
    let (code, _, _) = call(
        &format!("http://{}/streams/{STREAM}/watch", node.api),
        "POST",
        &[],
        Some("{}"),
        &[],
    );
    assert_eq!(code, 202);
    assert_eq!(role(), "watch");
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(role(), "watch", "the owner's watch does not idle out");
}

#[test]
fn one_address_cannot_take_every_slot() {
    let (_portal, node) = source("3");
    let ask = || node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(ask().0, 201);
    assert_eq!(ask().0, 201);
    let (code, body) = ask();
    assert_eq!(code, 429, "{body}");
    assert_eq!(viewers(&node), 2, "one slot is left for others");
}

#[test]
fn viewers_are_sent_away_when_the_box_drops_the_stream() {
    let (portal, _source) = source("1");
    let node = NodeProc::start_at(
        "relay",
        [127, 0, 0, 22],
        "",
        &[
            "--portal",
            &portal.url(),
            "--max-forwards",
            "2",
            "--play-without-ticket",
            "127.0.0.2/32",
        ],
    );
    let watch = format!("/streams/{STREAM}/watch");
    assert_eq!(node.http("POST", &watch, None).0, 202);
    wait_flowing(&node);
    let (code, body) = node.http_anon("POST", &format!("/streams/{STREAM}/viewers"), Some("{}"));
    assert_eq!(code, 201, "{body}");
    let flv = serde_json::from_str::<Value>(&body).unwrap()["flv"]
        .as_str()
        .unwrap()
        .to_owned();
    let player = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let probe = probe_stream(&flv, 15);
        (started.elapsed(), probe.pts.len())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(viewers(&node), 1);
    assert_eq!(node.http("DELETE", &watch, None).0, 204);
    let (played, frames) = player.join().unwrap();
    assert!(frames > 20, "{frames} frames before the stream was dropped");
    assert!(
        played < Duration::from_secs(10),
        "the viewer was not sent away: it played {played:?}"
    );
    // Watched again, the box counts no viewer it sent away.
    assert_eq!(node.http("POST", &watch, None).0, 202);
    wait_flowing(&node);
    assert_eq!(viewers(&node), 0);
}
