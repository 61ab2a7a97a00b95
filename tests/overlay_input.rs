//! Bad input on the overlay's routes and on ticketed RTMP play: each gets a 4xx with a
//! JSON error (or a refused play) and changes nothing.

mod common;

use std::time::Duration;

use common::*;
use node::rtmp::client::{Player, Received};
use node::rtmp::url::RtmpUrl;
use serde_json::{json, Value};

const STREAM: &str = "live";

/// A source with one slot, in an overlay of its own. Players from the test (on
/// 127.0.0.1) count as strangers: only 127.0.0.9 plays without a ticket.
fn source() -> NodeProc {
    NodeProc::start_at(
        "src",
        [127, 0, 0, 20],
        "",
        &[
            // No portal answers there: the node becomes a supernode of its own.
            "--portal",
            "http://127.0.0.1:1",
            "--source",
            "test-pattern",
            "--source-stream",
            STREAM,
            "--size",
            "160x120",
            "--max-forwards",
            "1",
            "--play-without-ticket",
            "127.0.0.9/32",
        ],
    )
}

/// A ticket request for the test's box `child` (its id, or `child` as it is when it
/// is not a valid name for a key).
fn ticket_request(child: &str, stream: &str) -> Value {
    let id = if child.len() <= 32 && !child.contains(' ') {
        test_id(child)
    } else {
        child.to_owned()
    };
    json!({
        "type": "ticket",
        "stream": stream,
        "child": {
            "peer": {"id": id, "api": "127.0.0.1:1", "rtmp": "127.0.0.1:2"},
            "max_forwards": 2,
            "upload_kbps": 10000
        },
        "path": null,
        "replaces": null
    })
}

fn tickets(node: &NodeProc) -> Value {
    let (code, body) = node.http_get("/tickets");
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn try_play(url: &str) -> Result<usize, String> {
    let url = RtmpUrl::parse(url).unwrap();
    let mut player = tokio::time::timeout(Duration::from_secs(5), Player::connect(&url))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let mut media = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(next) = tokio::time::timeout_at(end, player.next()).await {
        match next {
            Ok(Received::Media(_)) => media += 1,
            Ok(Received::Meta(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(media)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_overlay_requests_get_json_errors_and_change_nothing() {
    let node = source();
    eventually(Duration::from_secs(10), || {
        (node.status()["overlay"]["is_supernode"] == true).then_some(())
    });
    let big = format!(r#"{{"type":"search","pad":"{}"}}"#, "x".repeat(300 * 1024));
    let ghost_end = json!({"type": "end_ticket", "ticket": 1, "token": "x", "handover": null});
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("POST", "/tickets".into(), "{not json".into(), 400, "parse"),
        (
            "POST",
            "/tickets".into(),
            r#"{"type":"ping"}"#.into(),
            400,
            "takes a request of type",
        ),
        (
            "POST",
            "/tickets".into(),
            ticket_request("x", "nosuch").to_string(),
            404,
            "",
        ),
        (
            "POST",
            "/tickets".into(),
            ticket_request("bad id!", STREAM).to_string(),
            422,
            "node id",
        ),
        (
            "POST",
            "/search".into(),
            json!({"type": "search", "query": 7, "stream": STREAM, "ttl": 200,
                   "requester": "x", "requester_slots": 1})
            .to_string(),
            400,
            "",
        ),
        ("POST", "/search".into(), big, 413, ""),
        (
            "DELETE",
            "/tickets/0000000000000001".into(),
            ghost_end.to_string(),
            404,
            "",
        ),
        (
            "DELETE",
            "/tickets/xyz".into(),
            ghost_end.to_string(),
            400,
            "ticket id",
        ),
        (
            "PUT",
            format!("/nodes/{}", test_id("ghost")),
            json!({"type": "announce", "node": test_id("other"), "holdings": []}).to_string(),
            400,
            "differ",
        ),
        (
            "PUT",
            format!("/nodes/{}", test_id("ghost")),
            json!({"type": "announce", "node": test_id("ghost"), "holdings": []}).to_string(),
            404,
            "",
        ),
        ("GET", "/ping?stream=a/b".into(), String::new(), 400, ""),
    ];
    for (method, path, body, status, needle) in cases {
        let body = (!body.is_empty()).then_some(body);
        let signer = if path.starts_with("/nodes/") {
            "ghost"
        } else {
            "x"
        };
        let (got, text) = node.http_signed(signer, method, &path, body.as_deref());
        assert_eq!(got, status, "{method} {path}: {text}");
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        let error = json["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{method} {path}: no error message");
        assert!(
            error.to_lowercase().contains(&needle.to_lowercase()),
            "{method} {path}: {error:?} lacks {needle:?}"
        );
    }
    assert_eq!(tickets(&node), json!([]), "no ticket came of bad requests");
    assert_eq!(
        node.status()["overlay"]["registered"],
        0,
        "no box registered"
    );

    // Every request between boxes is signed by the box it speaks for, and taken once.
    let kid = ticket_request("kid", STREAM).to_string();
    let (code, body) = node.http_anon("POST", "/tickets", Some(&kid));
    assert_eq!(code, 401, "unsigned: {body}");
    assert!(body.contains("not signed"), "{body}");
    let (code, body) = node.http_signed("thief", "POST", "/tickets", Some(&kid));
    assert_eq!(code, 403, "a ticket for another box: {body}");
    assert!(body.contains("cannot speak for"), "{body}");
    let forged = sign_as("kid", "POST", "/tickets", "{}");
    let (code, body) = node.http_with_signature("POST", "/tickets", Some(&kid), &forged);
    assert_eq!(code, 403, "a signature of another body: {body}");
    let long_ago = test_key("kid").sign_request("POST", "/tickets", kid.as_bytes(), 1_000);
    let (code, body) = node.http_with_signature("POST", "/tickets", Some(&kid), &long_ago);
    assert_eq!(code, 401, "signed long ago: {body}");
    assert!(body.contains("NTP"), "{body}");
    let search = json!({"type": "search", "query": 9, "stream": STREAM, "ttl": 1,
                        "requester": test_id("x"), "requester_slots": 1})
    .to_string();
    let signature = sign_as("x", "POST", "/search", &search);
    let (code, body) = node.http_with_signature("POST", "/search", Some(&search), &signature);
    assert_eq!(code, 200, "{body}");
    let (code, body) = node.http_with_signature("POST", "/search", Some(&search), &signature);
    assert_eq!(code, 403, "a replayed search: {body}");
    assert!(body.contains("received before"), "{body}");
    assert_eq!(tickets(&node), json!([]), "no ticket came of them");
    let log = node.log();
    assert_eq!(
        log.matches("refused a request").count(),
        1,
        "refusals from one address are logged once a minute:\n{log}"
    );

    // A box names only its own address: no one can send others to connect to a
    // third party for it.
    let mut elsewhere = ticket_request("kid", STREAM);
    elsewhere["child"]["peer"]["api"] = json!("192.0.2.1:8000");
    let (code, body) = node.http_signed("kid", "POST", "/tickets", Some(&elsewhere.to_string()));
    assert_eq!(code, 403, "a ticket for another address: {body}");
    assert!(body.contains("names only its own address"), "{body}");

    // A box's own searches: a burst of ten, then it must wait.
    let flood = |query: u64| {
        json!({"type": "search", "query": query, "stream": STREAM, "ttl": 0,
               "requester": test_id("flood"), "requester_slots": 1})
        .to_string()
    };
    for query in 100..110 {
        let (code, body) = node.http_signed("flood", "POST", "/search", Some(&flood(query)));
        assert_eq!(code, 200, "search {query}: {body}");
    }
    let (code, body) = node.http_signed("flood", "POST", "/search", Some(&flood(110)));
    assert_eq!(code, 429, "the eleventh search at once: {body}");
    assert!(body.contains("too many searches from this box"), "{body}");
    let (code, body) = node.http_signed("other", "POST", "/search", Some(&flood(111)));
    assert_eq!(
        code, 200,
        "a search forwarded by a supernode is counted apart: {body}"
    );
    assert_eq!(tickets(&node), json!([]), "no ticket came of them");
    assert_eq!(
        node.log().matches("refused a request").count(),
        1,
        "still logged once a minute"
    );

    // One slot: a first child gets a ticket, signed by the parent for that request;
    // a second is refused.
    let request = sign_as("kid", "POST", "/tickets", &kid);
    let url = format!("http://{}/tickets", node.api);
    let header = [(proto::identity::SIGNATURE_HEADER, request.as_str())];
    let (code, body, answer) = http_answer(&url, "POST", Some(&kid), &header);
    assert_eq!(code, 200, "{body}");
    let for_request = request.rsplit('.').next().unwrap();
    let verify = |body: &str, request: &str| {
        proto::identity::verify_response(
            answer.as_deref(),
            request,
            200,
            body.as_bytes(),
            unix_ms(),
        )
    };
    assert_eq!(
        verify(&body, for_request).map(|s| s.node.to_string()),
        Ok(node.id())
    );
    let altered = body.replacen("\"token\":\"", "\"token\":\"0", 1);
    assert!(verify(&altered, for_request).is_err(), "altered");
    assert!(verify(&body, "00").is_err(), "for another request");
    let ticket: Value = serde_json::from_str(&body).unwrap();
    let ticket = &ticket["ticket"];
    let token = ticket["token"].as_str().unwrap().to_owned();
    let id = format!("{:016x}", ticket["id"].as_u64().unwrap());
    let (code, body) = node.http_signed(
        "kid2",
        "POST",
        "/tickets",
        Some(&ticket_request("kid2", STREAM).to_string()),
    );
    assert_eq!(code, 409, "{body}");
    assert_eq!(tickets(&node).as_array().unwrap().len(), 1);

    // Ending a ticket needs its token.
    let end = |token: &str| {
        json!({"type": "end_ticket", "ticket": ticket["id"], "token": token, "handover": null})
            .to_string()
    };
    let (code, body) = node.http_signed(
        "kid",
        "DELETE",
        &format!("/tickets/{id}"),
        Some(&end("forged")),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        tickets(&node).as_array().unwrap().len(),
        1,
        "the ticket lives on"
    );

    // RTMP play: a stranger needs a ticket, a forged one is refused, the real one plays.
    let plain = format!("rtmp://{}/live/{STREAM}", node.rtmp);
    let err = try_play(&plain).await.expect_err("no ticket, no play");
    assert!(err.contains("ticket"), "{err}");
    let err = try_play(&format!("{plain}?ticket=0123456789abcdef"))
        .await
        .expect_err("forged");
    assert!(err.contains("ticket"), "{err}");
    // The ticket is the child's: the play must be signed by the box it was granted
    // to, and each signed play is taken once.
    let err = try_play(&format!("{plain}?ticket={token}"))
        .await
        .expect_err("the token alone");
    assert!(err.contains("not signed"), "{err}");
    let proof = |name: &str| test_key(name).prove_play(STREAM, &token, unix_ms());
    let err = try_play(&format!("{plain}?ticket={token}&{}", proof("thief")))
        .await
        .expect_err("another box's play of the ticket");
    assert!(err.contains("granted to"), "{err}");
    let kids = format!("{plain}?ticket={token}&{}", proof("kid"));
    let frames = try_play(&kids).await.expect("the ticket plays");
    assert!(frames > 5, "{frames} frames with a ticket");
    let err = try_play(&kids).await.expect_err("the same play again");
    assert!(err.contains("received before"), "{err}");

    // Once ended, the ticket's token is worth nothing.
    let (code, body) = node.http_signed(
        "kid",
        "DELETE",
        &format!("/tickets/{id}"),
        Some(&end(&token)),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(tickets(&node), json!([]));
    let err = try_play(&format!("{plain}?ticket={token}&{}", proof("kid")))
        .await
        .expect_err("an ended ticket");
    assert!(err.contains("ticket"), "{err}");

    // A publish key made through the API, once per stream, by the owner only.
    let new = r#"{"id": "cam2", "title": "The garden"}"#;
    let (code, _) = node.http_anon("POST", "/streams", Some(new));
    assert_eq!(code, 401);
    let (code, body) = node.http("POST", "/streams", Some(new));
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let url = created["publish_url"].as_str().unwrap();
    assert!(url.contains("/live/cam2?key="), "{url}");
    let (code, _) = node.http("POST", "/streams", Some(new));
    assert_eq!(code, 409, "one key per stream");
    let (code, body) = node.http("PUT", "/streams/cam2", Some(r#"{"title": "x\u0007"}"#));
    assert_eq!(code, 400, "control characters in a title: {body}");
    let (code, body) = node.http("PUT", "/streams/nosuch", Some(r#"{"title": "x"}"#));
    assert_eq!(code, 404, "{body}");

    // Every peer request is counted against its address before its signature is
    // checked: a flood with fresh keys is stopped there, and the owner's admin API
    // and the stream are not touched by it. The flood goes on until it is stopped
    // (400 at once, then 100 a second): how soon depends on how fast this machine
    // sends.
    let mut codes = std::collections::BTreeMap::new();
    let mut limited = String::new();
    for _ in 0..5000 {
        let (code, body) = node.http_anon("GET", "/ping", None);
        *codes.entry(code).or_insert(0) += 1;
        if code == 429 {
            limited = body;
            break;
        }
    }
    assert!(codes.contains_key(&429) && codes[&401] >= 300, "{codes:?}");
    assert!(
        limited.contains("too many requests from this address"),
        "{limited}"
    );
    let (code, _) = node.http("GET", "/status", None);
    assert_eq!(code, 200, "the admin API is not limited");
    std::thread::sleep(Duration::from_secs(1));
    let (code, body) = node.http_signed("late", "GET", "/ping", None);
    assert_eq!(code, 200, "a second later: {body}");
}
