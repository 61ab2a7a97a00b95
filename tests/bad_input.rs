//! Bad input on the RTMP and HTTP ports gets a clear error or a clean close, logged
//! once, and every other stream on the node keeps flowing.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use proto::TagKind;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};

/// A node with two publishable streams: `good` carries video throughout, `cam` takes
/// the abuse.
fn node() -> NodeProc {
    NodeProc::start(
        "target",
        &format!("[streams.good]\nkey = \"{KEY}\"\n[streams.cam]\nkey = \"{KEY}\"\n"),
        &[],
    )
}

/// Does a real client handshake on a blocking socket, so raw RTMP chunks can follow.
fn handshaken(node: &NodeProc) -> TcpStream {
    let mut socket = TcpStream::connect(node.rtmp).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut handshake = Handshake::new(PeerType::Client);
    socket
        .write_all(&handshake.generate_outbound_p0_and_p1().unwrap())
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "server closed during the handshake");
        match handshake.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).unwrap()
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                socket.write_all(&response_bytes).unwrap();
                return socket;
            }
        }
    }
}

fn closed_by_server(mut socket: TcpStream) -> bool {
    let mut rest = Vec::new();
    // Reads whatever the server still sent, then EOF (or a reset): never a timeout.
    match socket.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

/// At least `at_least` video frames of a 30 fps stream, none skipped.
fn assert_no_frame_skipped(seen: &[Seen], at_least: usize) {
    let frames: Vec<u32> = seen
        .iter()
        .filter(|s| s.tag.kind == TagKind::Video && !s.tag.is_sequence_header())
        .map(|s| s.tag.timestamp)
        .collect();
    assert!(
        frames.len() >= at_least,
        "only {} frames of the good stream",
        frames.len()
    );
    for w in frames.windows(2) {
        assert!(
            w[1] - w[0] <= 34,
            "the good stream skipped from {} to {}",
            w[0],
            w[1]
        );
    }
}

/// Sends `first`, then `then` once a second, until the server closes the connection;
/// how long that took from the connect, or `None` if it had not after `limit`.
fn dribble(mut socket: TcpStream, first: &[u8], then: &[u8], limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    socket.write_all(first).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match socket.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            // An answer (a 408) before the close.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if socket.write_all(then).is_err() {
                    return Some(start.elapsed());
                }
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Whether the server has closed `socket` (EOF or a reset), rather than keeping it
/// open and silent; without waiting.
fn is_closed(mut socket: &TcpStream) -> bool {
    socket.set_nonblocking(true).unwrap();
    match socket.read(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// The node with `good` published and a player on it for `watching`, whose frames
/// the handle gives.
fn good_stream_watched(
    watching: Duration,
) -> (NodeProc, Publish, tokio::task::JoinHandle<Vec<Seen>>) {
    let node = node();
    let good = Publish::start(&format!("{}?key={KEY}", node.rtmp_url("good")));
    eventually(Duration::from_secs(10), || {
        (node.stream_info("good")["tags_in"].as_u64()? > 30).then_some(())
    });
    let url = node.rtmp_url("good");
    let watcher = tokio::spawn(async move { play(&url, watching).await });
    (node, good, watcher)
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rtmp_input_is_refused_and_other_streams_keep_flowing() {
    let (node, _good, watcher) = good_stream_watched(Duration::from_secs(8));

    // The test body blocks this thread; the watcher runs on the runtime's workers.
    {
        let node = &node;
        {
            // Garbage instead of a handshake.
            let back = send_raw(node.rtmp, &[0xff; 3000]);
            assert!(
                back.len() <= 1 + 1536 * 2,
                "no more than a handshake answer"
            );

            // A handshake cut in the middle.
            let mut s = TcpStream::connect(node.rtmp).unwrap();
            s.write_all(&[3u8; 700]).unwrap();
            drop(s);

            // A chunk size beyond what RTMP allows (the high bit must be zero).
            let mut s = handshaken(node);
            let set_chunk_size = [
                0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, // fmt 0, csid 2, len 4, type 1, msid 0
                0xff, 0xff, 0xff, 0xff,
            ];
            s.write_all(&set_chunk_size).unwrap();
            assert!(
                closed_by_server(s),
                "oversized chunk size: connection closed"
            );

            // A message begun before the last one ended (a fuzzer's find: the RTMP
            // library subtracted past zero on it), and one longer than allowed.
            let mut s = handshaken(node);
            let mut interleaved = vec![0x03, 0, 0, 0, 0, 1, 0x2c, 20, 0, 0, 0, 0];
            interleaved.extend([0u8; 128]);
            interleaved.extend([0x04, 0, 0, 0, 0, 0, 10, 20, 0, 0, 0, 0]);
            s.write_all(&interleaved).unwrap();
            assert!(closed_by_server(s), "interleaved messages: closed");
            let mut s = handshaken(node);
            s.write_all(&[0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0])
                .unwrap();
            assert!(closed_by_server(s), "a 16 MB message: closed");

            // Publishing with a wrong key, and without one.
            let (code, _) = Publish::start(&format!("{}?key=wrong-key-99", node.rtmp_url("cam")))
                .wait(Duration::from_secs(10));
            assert_ne!(
                code,
                Some(0),
                "ffmpeg must fail to publish with a wrong key"
            );
            let (code, _) = Publish::start(&node.rtmp_url("cam")).wait(Duration::from_secs(10));
            assert_ne!(code, Some(0), "ffmpeg must fail to publish without a key");

            // Publishing over a live stream.
            let (code, _) = Publish::start(&format!("{}?key={KEY}", node.rtmp_url("good")))
                .wait(Duration::from_secs(10));
            assert_ne!(
                code,
                Some(0),
                "a second publisher of a live stream is refused"
            );

            // Playing a stream the node does not have.
            let status = std::process::Command::new("ffprobe")
                .args(["-v", "quiet", "-rw_timeout", "5000000"])
                .arg(node.rtmp_url("nosuch"))
                .status()
                .unwrap();
            assert!(!status.success(), "ffprobe of an unknown stream fails");
        }
    }
    // The good stream never skipped a frame while all that happened.
    assert_no_frame_skipped(&watcher.await.unwrap(), 200);

    let log = node.log();
    for (needle, times) in [
        ("bad handshake", 1),
        ("peer closed the connection during the handshake", 1),
        ("malformed chunk stream: a chunk size of 2147483647", 1),
        (
            "malformed chunk stream: a chunk on stream 4 before the message on stream 3 ended",
            1,
        ),
        ("malformed chunk stream: a message of 16777215 bytes", 1),
        ("refused: wrong key for \"cam\"", 1),
        ("refused: publishing \"cam\" needs its key", 1),
        ("refused: stream \"good\" already has a publisher", 1),
        ("refused: no stream \"nosuch\" on this node", 1),
    ] {
        assert_eq!(
            count(&log, needle),
            times,
            "log lines with {needle:?}:\n{log}"
        );
    }
    assert_eq!(
        node.stream_info("cam")["source"]["kind"],
        "idle",
        "no publisher got in"
    );
}

#[test]
fn bad_api_requests_get_json_errors_and_change_nothing() {
    let node = node();
    for (method, path, body, status, needle) in [
        ("GET", "/streams/nosuch", None, 404, "no stream"),
        ("GET", "/live/nosuch.flv", None, 404, "no stream"),
        ("GET", "/nowhere", None, 404, "no such resource"),
        (
            "POST",
            "/streams/x/pull",
            Some("{not json"),
            400,
            "Failed to parse",
        ),
        (
            "POST",
            "/streams/x/pull",
            Some(r#"{"upstreams": []}"#),
            400,
            "upstreams",
        ),
        (
            "POST",
            "/streams/x/pull",
            Some(r#"{"upstreams": ["http://h/live/x"]}"#),
            400,
            "rtmp://",
        ),
        (
            "POST",
            "/streams/x/pull",
            Some(r#"{"upstreams": ["rtmp://h/live/x"], "extra": 1}"#),
            422,
            "unknown field",
        ),
        (
            "POST",
            "/streams/bad%20name/pull",
            Some(r#"{"upstreams": ["rtmp://h/live/x"]}"#),
            400,
            "stream",
        ),
        ("DELETE", "/streams/cam/pull", None, 404, "not being pulled"),
    ] {
        let (got, text) = node.http(method, path, body);
        assert_eq!(got, status, "{method} {path}: {text}");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        let error = json["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(needle),
            "{method} {path}: {error:?} lacks {needle:?}"
        );
    }
    // Admin calls need the node's token.
    let pull = r#"{"upstreams": ["rtmp://127.0.0.1:1/live/cam"]}"#;
    let (status, text) = node.http_anon("POST", "/streams/cam/pull", Some(pull));
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("admin-token"),
        "the error says where the token is: {text}"
    );
    let url = format!("http://{}/streams/cam/pull", node.api);
    let (status, _) = common::http_as(&url, "POST", Some(pull), Some("not-the-token"));
    assert_eq!(status, 401);
    let (status, _) = node.http_anon("POST", "/leave", None);
    assert_eq!(status, 401);

    // Browsers may call from this machine's pages only.
    let preflight = |origin: &str| {
        ureq::request("OPTIONS", &format!("http://{}/streams", node.api))
            .set("origin", origin)
            .set("access-control-request-method", "POST")
            .call()
            .ok()
            .and_then(|r| r.header("access-control-allow-origin").map(String::from))
    };
    assert_eq!(
        preflight("http://localhost:3000").as_deref(),
        Some("http://localhost:3000")
    );
    assert_eq!(preflight("https://evil.example"), None);

    let (_, streams) = node.http_get("/streams");
    let streams: serde_json::Value = serde_json::from_str(&streams).unwrap();
    let names: Vec<&str> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["cam", "good"],
        "no stream was created by a bad request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_started_through_the_api_relays_and_stops() {
    let a = NodeProc::publishing("a", "cam");
    let _publish = Publish::start(&format!("{}?key={KEY}", a.rtmp_url("cam")));
    let b = NodeProc::start("b", "", &[]);
    let body = format!(r#"{{"upstreams": ["{}"]}}"#, a.rtmp_url("cam"));
    let (status, text) = b.http("POST", "/streams/cam/pull", Some(&body));
    assert_eq!(status, 201, "{text}");
    let (status, _) = b.http("POST", "/streams/cam/pull", Some(&body));
    assert_eq!(status, 409, "a stream has one feed");

    let seen = play(&b.rtmp_url("cam"), Duration::from_secs(2)).await;
    assert!(seen.iter().filter(|s| s.tag.kind == TagKind::Video).count() > 30);

    let (status, _) = b.http("DELETE", "/streams/cam/pull", None);
    assert_eq!(status, 204);
    let info = eventually(Duration::from_secs(5), || {
        let info = b.stream_info("cam");
        (info["source"]["kind"] == "idle").then_some(info)
    });
    assert_eq!(info["name"], "cam");
}

/// Slow clients and greedy addresses, on both ports. A client that sends an HTTP
/// request's head a line a second is closed at the head timeout (10 s); one that
/// shakes hands on the RTMP port and then sends a byte a second, never publishing or
/// playing, is closed 10 s after it connected. An address holding as many API
/// connections as it may has the next ones closed at once, logged once, and is
/// served again when it holds fewer. The good stream flows throughout.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_greedy_clients_are_closed_and_others_are_served() {
    let (node, _good, watcher) = good_stream_watched(Duration::from_secs(14));

    let api = node.api;
    let slow_http = std::thread::spawn(move || {
        let socket = TcpStream::connect(api).unwrap();
        dribble(
            socket,
            b"GET /status HTTP/1.1\r\n",
            b"x-slow: 1\r\n",
            Duration::from_secs(20),
        )
    });
    let slow_rtmp = {
        let socket = handshaken(&node);
        // Within the handshake's time; the setup's 10 s count from the connect.
        std::thread::spawn(move || dribble(socket, &[0x02], &[0x00], Duration::from_secs(20)))
    };
    // Meanwhile the API answers.
    let (status, _) = node.http_get("/status");
    assert_eq!(status, 200);
    let slow_http = slow_http
        .join()
        .unwrap()
        .expect("the slow HTTP client is closed");
    let slow_rtmp = slow_rtmp
        .join()
        .unwrap()
        .expect("the slow RTMP client is closed");
    for (what, took) in [("HTTP", slow_http), ("RTMP", slow_rtmp)] {
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(13)).contains(&took),
            "the slow {what} client was closed after {took:?}"
        );
    }

    // A greedy address: 70 connections, of which the 64 an address may hold stay open.
    let held: Vec<TcpStream> = (0..70).map(|_| TcpStream::connect(api).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = held.iter().filter(|s| is_closed(s)).count();
    assert!(
        (6..=10).contains(&closed),
        "{closed} of 70 connections from one address closed"
    );
    drop(held);
    // Served again once the server has seen them close (until then it resets).
    let status = format!("http://{api}/status");
    eventually(Duration::from_secs(5), || {
        let answer = ureq::get(&status).call().ok()?;
        (answer.status() == 200).then_some(())
    });

    assert_no_frame_skipped(&watcher.await.unwrap(), 300);
    let log = node.log();
    for (needle, times) in [
        ("HTTP connections open, the most an address may", 1),
        (
            "HTTP connections refused while the address was at its limit",
            1,
        ),
        ("timed out waiting for a publish or play", 1),
    ] {
        assert_eq!(
            count(&log, needle),
            times,
            "log lines with {needle:?}:\n{log}"
        );
    }
}
