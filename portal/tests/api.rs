//! The portal's API over real HTTP, with a clock the tests move: bootstrap, supernode
//! renewal and retirement, the stream directory, expiry, bad input, and a restart on
//! the same database.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use portal::{Portal, PortalArgs};
use proto::identity::{NodeKey, SIGNATURE_HEADER};
use serde_json::{json, Value};
use tokio::sync::oneshot;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: PortalArgs,
}

/// A running portal on a port of its own; stopped when dropped.
struct Running {
    url: String,
    clock: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn start(db: &Path, clock: Arc<AtomicU64>) -> Running {
        let cli = Cli::parse_from([
            "portal",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--supernode-ttl-secs",
            "180",
            "--stream-ttl-secs",
            "90",
        ]);
        let now = Arc::clone(&clock);
        let portal =
            Portal::open_with_clock(&cli.args, Arc::new(move || now.load(Ordering::SeqCst)))
                .await
                .expect("the portal opens");
        let url = format!("http://{}", portal.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(portal.serve(async {
            let _ = stopped.await;
        }));
        Running {
            url,
            clock,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    /// An unsigned request from `from` (a loopback address); the status and the JSON
    /// body.
    async fn call(
        &self,
        from: [u8; 4],
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        self.send(from, method, path, body.map(String::into_bytes), None)
            .await
    }

    /// A request signed by the box called `signer` (its key made from the name).
    async fn call_as(
        &self,
        signer: &str,
        from: [u8; 4],
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let body = body.map(String::into_bytes);
        let signature = sign(signer, method, path, body.as_deref().unwrap_or_default());
        self.send(from, method, path, body, Some(signature)).await
    }

    async fn send(
        &self,
        from: [u8; 4],
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        signature: Option<String>,
    ) -> (u16, Value) {
        let client = reqwest::Client::builder()
            .local_address(IpAddr::from(from))
            .no_proxy()
            .build()
            .unwrap();
        let mut request = client.request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        if let Some(body) = body {
            let kind = if body.starts_with(&[0xff, 0xd8]) {
                "image/jpeg"
            } else {
                "application/json"
            };
            request = request.header("content-type", kind).body(body);
        }
        let response = request.send().await.expect("the portal answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"))
        };
        (status, json)
    }

    /// `PUT /api/streams/cam` from the box at `ip`, naming itself `source`.
    async fn list_cam(&self, ip: [u8; 4], source: &str, title: &str) -> (u16, Value) {
        let body = listing(source, ip, title);
        self.call_as(source, ip, "PUT", "/api/streams/cam", Some(body))
            .await
    }

    /// `POST /api/supernodes` from the supernode `id` at `ip`.
    async fn promote(&self, ip: [u8; 4], id: &str, viewers: Value) -> (u16, Value) {
        let body = promote(id, ip, viewers);
        self.call_as(id, ip, "POST", "/api/supernodes", Some(body))
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(LOCAL, "GET", path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// The boxes of these tests, by name: each has a key made from its name.
const NAMES: &[&str] = &[
    "a", "b", "c", "garden", "shed", "src", "other", "full", "deep", "deeper",
];

fn key(name: &str) -> NodeKey {
    let mut seed = [0u8; 32];
    seed[..name.len()].copy_from_slice(name.as_bytes());
    NodeKey::from_seed(seed)
}

/// The node id of the box called `name`.
fn id(name: &str) -> String {
    key(name).node_id().to_string()
}

/// The name of the box with node id `id`.
fn name(id: &str) -> &'static str {
    NAMES
        .iter()
        .find(|n| self::id(n) == id)
        .unwrap_or_else(|| panic!("no box of these tests has the id {id}"))
}

fn sign(name: &str, method: &str, path: &str, body: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    key(name).sign_request(method, path, body, now)
}

fn peer(name: &str, ip: [u8; 4]) -> Value {
    let api = SocketAddr::from((ip, 8000));
    let rtmp = SocketAddr::from((ip, 1935));
    json!({"id": id(name), "api": api, "rtmp": rtmp})
}

fn promote(id: &str, ip: [u8; 4], viewers: Value) -> String {
    json!({"type": "promote_supernode", "peer": peer(id, ip), "viewers": viewers}).to_string()
}

fn listing(source: &str, ip: [u8; 4], title: &str) -> String {
    json!({"title": title, "description": "", "source": peer(source, ip),
           "bitrate_kbps": 2500, "width": 1280, "height": 720})
    .to_string()
}

/// The names of the boxes in a list of peers.
fn ids(list: &Value) -> Vec<&'static str> {
    let mut ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| name(p["id"].as_str().unwrap()))
        .collect();
    ids.sort();
    ids
}

async fn fresh() -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(
        &dir.path().join("portal.db"),
        Arc::new(AtomicU64::new(1_000_000)),
    )
    .await;
    (dir, running)
}

#[tokio::test(flavor = "multi_thread")]
async fn supernodes_bootstrap_renew_expire_and_retire() {
    let (_dir, portal) = fresh().await;
    let empty = portal.get("/api/supernodes").await;
    assert_eq!(empty, json!({"type": "supernodes", "supernodes": []}));

    let (status, answer) = portal.promote([127, 0, 0, 2], "a", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["supernodes"], json!([]), "no neighbours yet");
    let (_, answer) = portal.promote([127, 0, 0, 3], "b", json!({})).await;
    assert_eq!(
        ids(&answer["supernodes"]),
        ["a"],
        "its neighbours, not itself"
    );
    assert_eq!(
        ids(&portal.get("/api/supernodes").await["supernodes"]),
        ["a", "b"]
    );

    // A box speaks only for itself, from its own address, with its own key, once.
    let c = promote("c", [127, 0, 0, 4], json!({}));
    let (status, body) = portal
        .call_as("c", LOCAL, "POST", "/api/supernodes", Some(c.clone()))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("127.0.0.1"),
        "{body}"
    );
    let (status, body) = portal
        .call([127, 0, 0, 4], "POST", "/api/supernodes", Some(c.clone()))
        .await;
    assert_eq!(status, 401, "unsigned: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("not signed"),
        "{body}"
    );
    let (status, body) = portal
        .call_as(
            "b",
            [127, 0, 0, 4],
            "POST",
            "/api/supernodes",
            Some(c.clone()),
        )
        .await;
    assert_eq!(status, 403, "signed by another box: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("signed by"),
        "{body}"
    );
    let old = key("c").sign_request("POST", "/api/supernodes", c.as_bytes(), 1_000);
    let (status, body) = portal
        .send(
            [127, 0, 0, 4],
            "POST",
            "/api/supernodes",
            Some(c.clone().into_bytes()),
            Some(old),
        )
        .await;
    assert_eq!(status, 401, "signed long ago: {body}");
    assert!(body["error"].as_str().unwrap().contains("NTP"), "{body}");
    let a_path = format!("/api/supernodes/{}", id("a"));
    let (status, _) = portal.call_as("a", LOCAL, "DELETE", &a_path, None).await;
    assert_eq!(status, 403);
    assert_eq!(
        ids(&portal.get("/api/supernodes").await["supernodes"]),
        ["a", "b"],
        "nothing changed"
    );

    // b renews, a does not: after the TTL only b is listed.
    portal.advance(120);
    portal.promote([127, 0, 0, 3], "b", json!({})).await;
    portal.advance(100);
    assert_eq!(
        ids(&portal.get("/api/supernodes").await["supernodes"]),
        ["b"]
    );

    // A request copied off the wire is refused when sent again.
    let b_path = format!("/api/supernodes/{}", id("b"));
    let signature = sign("b", "DELETE", &b_path, b"");
    let retire = || {
        portal.send(
            [127, 0, 0, 3],
            "DELETE",
            &b_path,
            None,
            Some(signature.clone()),
        )
    };
    let (status, body) = retire().await;
    assert_eq!((status, &body), (200, &json!({"type": "done"})));
    let (status, body) = retire().await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("received before"),
        "{body}"
    );
    let (status, _) = portal
        .call_as("b", [127, 0, 0, 3], "DELETE", &b_path, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(portal.get("/api/status").await["supernodes"], 0);
    portal.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_directory_lists_renews_counts_and_expires_streams() {
    let (_dir, portal) = fresh().await;
    let src = [127, 0, 0, 5];
    let (status, entry) = portal.list_cam(src, "garden", "The garden").await;
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["title"], "The garden");
    let started = entry["started"].clone();

    portal.advance(30);
    let (status, entry) = portal.list_cam(src, "garden", "The garden at dusk").await;
    assert_eq!(status, 200, "a renewal: {entry}");
    assert_eq!(entry["started"], started, "started is kept");
    assert_eq!(entry["title"], "The garden at dusk");

    // Another box cannot take a live stream over.
    let other = [127, 0, 0, 6];
    let (status, body) = portal.list_cam(other, "shed", "Mine").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(&id("garden")),
        "{body}"
    );

    // Viewers: the sum over live supernodes.
    portal.promote([127, 0, 0, 2], "a", json!({"cam": 3})).await;
    portal
        .promote([127, 0, 0, 3], "b", json!({"cam": 4, "other": 1}))
        .await;
    let streams = portal.get("/api/streams").await;
    assert_eq!(streams.as_array().unwrap().len(), 1);
    assert_eq!(streams[0]["viewers"], 7);
    assert_eq!(portal.get("/api/streams/cam").await["viewers"], 7);

    // Unrenewed, the stream goes; then another box may list the name.
    portal.advance(91);
    assert_eq!(portal.get("/api/streams").await, json!([]));
    let (status, _) = portal.call(LOCAL, "GET", "/api/streams/cam", None).await;
    assert_eq!(status, 404);
    let (status, entry) = portal.list_cam(other, "shed", "Mine").await;
    assert_eq!(status, 201, "{entry}");
    assert_ne!(entry["started"], started);

    // Only its source takes it off.
    let (status, _) = portal
        .call_as("garden", src, "DELETE", "/api/streams/cam", None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = portal
        .call_as("shed", other, "DELETE", "/api/streams/cam", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(portal.get("/api/streams").await, json!([]));
    portal.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_json_error_and_changes_nothing() {
    let (_dir, portal) = fresh().await;
    let src = [127, 0, 0, 5];
    portal.list_cam(src, "garden", "ok").await;
    let long_title = listing("garden", src, &"x".repeat(500));
    let mut unknown_field: Value = serde_json::from_str(&listing("garden", src, "x")).unwrap();
    unknown_field["extra"] = json!(1);
    let huge = format!(r#"{{"title": "{}"}}"#, "x".repeat(100 * 1024));
    let many: serde_json::Map<String, Value> =
        (0..300).map(|i| (format!("s{i}"), json!(1))).collect();
    let cases: Vec<(&str, &str, Option<String>, u16)> = vec![
        ("PUT", "/api/streams/cam", Some("{not json".into()), 400),
        ("PUT", "/api/streams/cam", Some(long_title), 400),
        (
            "PUT",
            "/api/streams/cam",
            Some(listing("garden", src, "bell\u{7}")),
            400,
        ),
        (
            "PUT",
            "/api/streams/cam",
            Some(unknown_field.to_string()),
            422,
        ),
        ("PUT", "/api/streams/cam", Some(huge), 413),
        (
            "PUT",
            "/api/streams/bad%20id",
            Some(listing("garden", src, "x")),
            400,
        ),
        ("GET", "/api/streams/..%2Fetc", None, 400),
        (
            "POST",
            "/api/supernodes",
            Some(r#"{"type":"bootstrap"}"#.into()),
            400,
        ),
        (
            "POST",
            "/api/supernodes",
            Some(promote("garden", src, Value::Object(many))),
            400,
        ),
        // A check of a box's IPv6 address that comes over IPv4.
        (
            "POST",
            "/api/reachability",
            Some(r#"{"api_port":8000,"rtmp_port":1935,"ipv6":true}"#.into()),
            400,
        ),
        ("DELETE", "/api/supernodes/nosuch", None, 404),
        ("GET", "/api/nowhere", None, 404),
        ("PATCH", "/api/streams/cam", None, 405),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = portal.call_as("garden", src, method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {answer}"
        );
    }
    let entry = portal.get("/api/streams/cam").await;
    assert_eq!(entry["title"], "ok", "the listing is unchanged");
    assert_eq!(portal.get("/api/status").await["supernodes"], 0);
    portal.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state").join("portal.db");
    let clock = Arc::new(AtomicU64::new(2_000_000));
    let portal = Running::start(&db, Arc::clone(&clock)).await;
    let src = [127, 0, 0, 5];
    portal.list_cam(src, "garden", "kept").await;
    portal.promote(src, "garden", json!({"cam": 2})).await;
    portal.stop().await;

    let portal = Running::start(&db, clock).await;
    let entry = portal.get("/api/streams/cam").await;
    assert_eq!(
        (entry["title"].as_str(), entry["viewers"].as_u64()),
        (Some("kept"), Some(2))
    );
    assert_eq!(
        ids(&portal.get("/api/supernodes").await["supernodes"]),
        ["garden"]
    );
    // The key it signed with is on record.
    let recorded = portal
        .get(&format!("/api/nodes/{}/key", id("garden")))
        .await;
    assert_eq!(recorded["key"], key("garden").public().to_hex());
    portal.stop().await;
}

/// A box's report of its place: in `cam`'s tree under `parent`, with `slots` and
/// `children`.
fn report(
    id: &str,
    ip: [u8; 4],
    parent: Option<&str>,
    depth: u32,
    slots: u8,
    children: &[&str],
) -> String {
    let children: Vec<String> = children.iter().map(|c| self::id(c)).collect();
    json!({
        "peer": peer(id, ip),
        "supernode": self::id("src"),
        "is_supernode": false,
        "streams": [{
            "stream": "cam", "parent": parent.map(self::id), "depth": depth, "slots": slots,
            "children": children, "flowing": true, "viewers": 0,
        }],
    })
    .to_string()
}

/// `PUT /api/nodes/{id}` (or another method) about the box called `about`, signed by
/// `signer`, from `from`.
async fn on_node(
    portal: &Running,
    signer: &str,
    from: [u8; 4],
    method: &str,
    about: &str,
    body: Option<String>,
) -> u16 {
    let path = format!("/api/nodes/{}", id(about));
    portal.call_as(signer, from, method, &path, body).await.0
}

/// The map's WebSocket, read one event at a time.
struct Feed(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Feed {
    async fn open(portal: &Running) -> Feed {
        let url = format!("{}/api/map/ws", portal.url.replace("http://", "ws://"));
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the map's WebSocket opens");
        Feed(ws)
    }

    async fn next(&mut self) -> Value {
        use futures_util::StreamExt;
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next())
            .await
            .expect("an event within 5 s")
            .expect("the feed is open")
            .expect("a message");
        serde_json::from_str(message.to_text().unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_map_follows_the_boxes_reports_live() {
    let (_dir, portal) = fresh().await;
    let mut feed = Feed::open(&portal).await;
    assert_eq!(
        feed.next().await,
        json!({"type": "snapshot", "nodes": [], "streams": [], "thumbnails": {}})
    );

    let a = report("a", [127, 0, 0, 2], Some("src"), 1, 2, &["b"]);
    let status = on_node(&portal, "a", [127, 0, 0, 2], "PUT", "a", Some(a.clone())).await;
    assert_eq!(status, 204);
    let event = feed.next().await;
    assert_eq!(event["type"], "node");
    assert_eq!(event["node"]["streams"][0]["children"], json!([id("b")]));

    // The same report again is no news; a changed one is.
    on_node(&portal, "a", [127, 0, 0, 2], "PUT", "a", Some(a)).await;
    let moved = report("a", [127, 0, 0, 2], Some("src"), 1, 2, &[]);
    on_node(&portal, "a", [127, 0, 0, 2], "PUT", "a", Some(moved)).await;
    let event = feed.next().await;
    assert_eq!(event["node"]["streams"][0]["children"], json!([]));

    // A box reports only for itself, about itself, within bounds.
    let b = report("b", [127, 0, 0, 3], Some("a"), 2, 1, &[]);
    let b_ip = [127, 0, 0, 3];
    assert_eq!(
        on_node(&portal, "b", LOCAL, "PUT", "b", Some(b.clone())).await,
        403
    );
    assert_eq!(
        on_node(&portal, "a", b_ip, "PUT", "b", Some(b.clone())).await,
        403
    );
    assert_eq!(
        on_node(&portal, "b", b_ip, "PUT", "x", Some(b.clone())).await,
        400
    );
    let own_parent = report("b", b_ip, Some("b"), 2, 1, &[]);
    assert_eq!(
        on_node(&portal, "b", b_ip, "PUT", "b", Some(own_parent)).await,
        400
    );
    assert_eq!(
        on_node(&portal, "b", b_ip, "PUT", "b", Some("{".into())).await,
        400
    );
    assert_eq!(on_node(&portal, "a", LOCAL, "DELETE", "a", None).await, 403);
    assert_eq!(on_node(&portal, "b", b_ip, "DELETE", "a", None).await, 403);
    let impostor = report("a", [127, 0, 0, 9], None, 0, 8, &[]);
    let status = on_node(&portal, "a", [127, 0, 0, 9], "PUT", "a", Some(impostor)).await;
    assert_eq!(status, 409, "a box on the map keeps its address");
    assert_eq!(
        portal.get("/api/map").await["nodes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    on_node(&portal, "b", b_ip, "PUT", "b", Some(b)).await;
    assert_eq!(feed.next().await["node"]["peer"]["id"], id("b"));
    assert_eq!(on_node(&portal, "b", b_ip, "DELETE", "b", None).await, 204);
    assert_eq!(
        feed.next().await,
        json!({"type": "node_gone", "id": id("b")})
    );

    // A box not heard from for MAP_TTL_SECS is off the map: a dead box says nothing.
    portal.advance(proto::portal::MAP_TTL_SECS + 1);
    assert_eq!(
        feed.next().await,
        json!({"type": "node_gone", "id": id("a")})
    );
    assert_eq!(portal.get("/api/map").await["nodes"], json!([]));

    // A newcomer gets the map as it stands.
    portal
        .call_as(
            "a",
            [127, 0, 0, 2],
            "PUT",
            "/api/streams/cam",
            Some(listing("a", [127, 0, 0, 2], "Cam")),
        )
        .await;
    let mut late = Feed::open(&portal).await;
    let first = late.next().await;
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["streams"][0]["id"], "cam");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_reach_a_box_through_its_control_channel() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let (_dir, portal) = fresh().await;
    let relay = format!("/api/relay/{}/ping?stream=cam", id("a"));
    let (status, body) = portal.call(LOCAL, "GET", &relay, None).await;
    assert_eq!(status, 404, "no channel yet: {body}");

    // Box a opens its channel, signed; one signed by another box is refused.
    let open = |signer: &str| {
        let path = format!("/api/nodes/{}/channel", id("a"));
        let mut request = format!("{}{path}", portal.url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        let signature = sign(signer, "GET", &path, b"");
        request
            .headers_mut()
            .insert(SIGNATURE_HEADER, signature.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    assert!(open("b").await.is_err(), "b cannot open a's channel");
    let (mut channel, _) = open("a").await.expect("a opens its channel");

    // A request relayed to a goes down the channel as it was sent, with its caller;
    // a's answer comes back with its signature.
    let caller = sign("b", "GET", "/ping?stream=cam", b"");
    let url = format!("{}{relay}", portal.url);
    let asked = tokio::spawn({
        let caller = caller.clone();
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .header(SIGNATURE_HEADER, caller)
                .send()
                .await
                .unwrap();
            let signature = response.headers().get(SIGNATURE_HEADER).cloned();
            (
                response.status().as_u16(),
                signature,
                response.text().await.unwrap(),
            )
        }
    });
    let request: Value = loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), channel.next())
            .await
            .expect("a request within 5 s")
            .unwrap()
            .unwrap();
        // The portal pings its channels.
        if let Message::Text(text) = message {
            break serde_json::from_str(&text).unwrap();
        }
    };
    assert_eq!(request["type"], "request");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["path"], "/ping?stream=cam");
    assert_eq!(request["caller"], "127.0.0.1");
    assert_eq!(request["signature"], caller.as_str());
    let answer = json!({"type": "answer", "id": request["id"], "status": 200,
                        "signature": "x.y.z", "body": "{\"type\":\"pong\"}"});
    channel
        .send(Message::Text(answer.to_string().into()))
        .await
        .unwrap();
    let (status, signature, body) = asked.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"type\":\"pong\"}"));
    assert_eq!(signature.unwrap(), "x.y.z");

    // Closed, the channel is gone.
    channel.close(None).await.unwrap();
    let gone = eventually_async(|| async {
        let (status, _) = portal.call(LOCAL, "GET", &relay, None).await;
        (status == 404).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the channel is forgotten once closed");
}

async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    mut f: impl FnMut() -> F,
) -> Option<T> {
    for _ in 0..50 {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_box_on_the_map_reports_a_tampering_parent() {
    let (_dir, portal) = fresh().await;
    let b_ip = [127, 0, 0, 3];
    let tamper = |parent: &str, what: &str| {
        json!({"stream": "cam", "parent": id(parent), "what": what}).to_string()
    };
    let path = format!("/api/nodes/{}/reports", id("b"));
    let portal = &portal;
    let path = &path;
    let reports = |signer: &'static str, from: [u8; 4], body: String| async move {
        portal.call_as(signer, from, "POST", path, Some(body)).await
    };
    let (status, body) = reports("b", b_ip, tamper("a", "sent a forged seal")).await;
    assert_eq!(status, 404, "not on the map: {body}");
    assert!(body["error"].as_str().unwrap().contains("on the map"));

    let b = report("b", b_ip, Some("a"), 2, 1, &[]);
    assert_eq!(on_node(portal, "b", b_ip, "PUT", "b", Some(b)).await, 204);
    let (status, _) = reports("a", b_ip, tamper("a", "x")).await;
    assert_eq!(status, 403, "signed by another box");
    let (status, _) = reports("b", LOCAL, tamper("a", "x")).await;
    assert_eq!(status, 403, "from another address");
    let (status, body) = reports("b", b_ip, tamper("a", "bell\u{7}")).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = reports("b", b_ip, tamper("b", "x")).await;
    assert_eq!(status, 400, "about itself");
    assert_eq!(
        portal.get("/api/reports").await,
        json!([]),
        "nothing recorded"
    );

    for what in ["sent a forged seal", "sent a tag the source did not seal"] {
        let (status, body) = reports("b", b_ip, tamper("a", what)).await;
        assert_eq!(status, 204, "{body}");
    }
    let listed = portal.get("/api/reports").await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "one per reporter and parent"
    );
    let entry = &listed[0];
    assert_eq!(entry["reporter"], id("b"));
    assert_eq!(entry["parent"], id("a"));
    assert_eq!(entry["what"], "sent a tag the source did not seal");
    assert_eq!(entry["count"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn stills_come_from_the_source_only() {
    let (_dir, portal) = fresh().await;
    let src = [127, 0, 0, 2];
    portal.list_cam(src, "src", "Cam").await;
    let mut feed = Feed::open(&portal).await;
    feed.next().await;
    let put = |body: Vec<u8>, kind: &'static str| {
        let path = "/api/streams/cam/thumbnail";
        let signature = sign("src", "PUT", path, &body);
        reqwest::Client::builder()
            .local_address(IpAddr::from(src))
            .no_proxy()
            .build()
            .unwrap()
            .put(format!("{}{path}", portal.url))
            .header("content-type", kind)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
    };
    let jpeg = [&[0xff, 0xd8, 0xff, 0xe0][..], &[7; 500], &[0xff, 0xd9]].concat();
    assert_eq!(
        put(b"GIF89a".to_vec(), "image/jpeg")
            .await
            .unwrap()
            .status(),
        415
    );
    assert_eq!(put(jpeg.clone(), "text/plain").await.unwrap().status(), 415);
    let huge = [&jpeg[..4], &vec![0; proto::portal::MAX_THUMBNAIL_BYTES]].concat();
    assert_eq!(put(huge, "image/jpeg").await.unwrap().status(), 413);
    let (status, _) = portal
        .call(LOCAL, "GET", "/api/streams/cam/thumbnail.jpg", None)
        .await;
    assert_eq!(status, 404, "no still yet");
    assert_eq!(put(jpeg.clone(), "image/jpeg").await.unwrap().status(), 204);
    let event = feed.next().await;
    assert_eq!(event["type"], "thumbnail");
    assert_eq!(event["id"], "cam");
    let mut late = Feed::open(&portal).await;
    assert_eq!(
        late.next().await["thumbnails"],
        json!({"cam": event["version"]})
    );
    let got = reqwest::get(format!("{}/api/streams/cam/thumbnail.jpg", portal.url))
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(got.bytes().await.unwrap().to_vec(), jpeg);

    // Another box may not send stills of this stream.
    let (status, _) = portal
        .call_as(
            "other",
            [127, 0, 0, 3],
            "PUT",
            "/api/streams/cam/thumbnail",
            None,
        )
        .await;
    let other = portal
        .send(
            [127, 0, 0, 3],
            "PUT",
            "/api/streams/cam/thumbnail",
            Some(jpeg.clone()),
            Some(sign("other", "PUT", "/api/streams/cam/thumbnail", &jpeg)),
        )
        .await;
    assert_eq!((status, other.0), (415, 403));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_without_a_box_is_sent_to_the_shallowest_free_slot() {
    let (_dir, portal) = fresh().await;
    let (status, _) = portal
        .call(LOCAL, "GET", "/api/streams/cam/play", None)
        .await;
    assert_eq!(status, 404, "no such stream");
    portal.list_cam([127, 0, 0, 2], "src", "Cam").await;
    let (status, body) = portal
        .call(LOCAL, "GET", "/api/streams/cam/play", None)
        .await;
    assert_eq!(status, 503, "nobody holds it yet: {body}");
    for (id, ip, depth, slots, children) in [
        ("full", [127, 0, 0, 3], 1, 1, vec!["deep"]),
        ("deep", [127, 0, 0, 4], 2, 2, vec![]),
        ("deeper", [127, 0, 0, 5], 3, 2, vec![]),
    ] {
        let body = report(id, ip, Some("src"), depth, slots, &children);
        assert_eq!(on_node(&portal, id, ip, "PUT", id, Some(body)).await, 204);
    }
    let (status, at) = portal
        .call(LOCAL, "GET", "/api/streams/cam/play", None)
        .await;
    assert_eq!(status, 200, "{at}");
    assert_eq!(at["node"]["id"], id("deep"));
    assert_eq!(at["depth"], 2);
    assert_eq!(
        at["ticket_url"],
        "http://127.0.0.4:8000/streams/cam/viewers"
    );
}

#[tokio::test]
async fn owners_claim_boxes_with_their_pairing_code_and_command_them_through_the_channel() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let (_dir, portal) = fresh().await;
    let http = reqwest::Client::new();
    let as_owner = |token: &str, method: &str, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method.parse().unwrap(), format!("{}{path}", portal.url))
            .header("authorization", format!("Bearer {token}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (status, owner) = portal.call(LOCAL, "POST", "/api/owners", None).await;
    assert_eq!(status, 201, "{owner}");
    let token = owner["token"].as_str().unwrap().to_owned();
    let (status, body) = as_owner("not-a-token", "GET", "/api/owner/boxes", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = as_owner(&token, "GET", "/api/owner/boxes", None).await;
    assert_eq!((status, body), (200, json!([])));

    // Box a opens its channel and says its pairing code.
    let path = format!("/api/nodes/{}/channel", id("a"));
    let mut request = format!("{}{path}", portal.url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    let signature = sign("a", "GET", &path, b"");
    request
        .headers_mut()
        .insert(SIGNATURE_HEADER, signature.parse().unwrap());
    let (mut channel, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let pairing = json!({"type": "pairing", "code": "ABCD-EFGH"});
    channel
        .send(Message::Text(pairing.to_string().into()))
        .await
        .unwrap();
    let claim = |code: &'static str| {
        as_owner(
            &token,
            "POST",
            "/api/owner/boxes",
            Some(json!({ "code": code })),
        )
    };
    let (status, body) = claim("WXYZ-WXYZ").await;
    assert_eq!(status, 404, "{body}");

    // The claim goes down the channel; the box takes it.
    // The portal reads the code off the channel in its own time: until then the code
    // finds no box, and nothing goes down the channel.
    let claimed = async {
        for _ in 0..100 {
            let (status, body) = claim("abcd efgh").await;
            if status != 404 {
                return (status, body);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the portal never took the box's pairing code");
    };
    let box_side = async {
        let asked = next_text(&mut channel).await;
        assert_eq!(asked["type"], "claim");
        assert_eq!(asked["owner"], owner["id"]);
        assert_eq!(asked["code"], "abcd efgh");
        let answer = json!({"type": "answer", "id": asked["id"], "status": 200, "body": "{}"});
        channel
            .send(Message::Text(answer.to_string().into()))
            .await
            .unwrap();
    };
    let ((status, body), ()) = tokio::join!(claimed, box_side);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["node"], json!(id("a")));

    // A command goes down the channel with the owner; the box's answer comes back.
    let config = format!("/api/owner/boxes/{}/config", id("a"));
    let patched = tokio::spawn(as_owner(
        &token,
        "PATCH",
        &config,
        Some(json!({"max_forwards": 3})),
    ));
    let command = next_text(&mut channel).await;
    assert_eq!(command["type"], "command");
    assert_eq!(command["owner"], owner["id"]);
    assert_eq!(
        (command["method"].as_str(), command["path"].as_str()),
        (Some("PATCH"), Some("/config"))
    );
    assert_eq!(command["body"], json!({"max_forwards": 3}).to_string());
    let answer = json!({"type": "answer", "id": command["id"], "status": 200, "body": "{\"max_forwards\":3}"});
    channel
        .send(Message::Text(answer.to_string().into()))
        .await
        .unwrap();
    assert_eq!(patched.await.unwrap(), (200, json!({"max_forwards": 3})));

    // Another owner reaches neither the box nor its code.
    let (_, other) = portal.call(LOCAL, "POST", "/api/owners", None).await;
    let other = other["token"].as_str().unwrap();
    let (status, body) = as_owner(other, "GET", &config, None).await;
    assert_eq!(status, 404, "{body}");

    // The box says it is no one's now (released by its admin): the portal forgets
    // the claim.
    let released = json!({"type": "pairing", "code": "JKMN-PQRT"});
    channel
        .send(Message::Text(released.to_string().into()))
        .await
        .unwrap();
    let forgotten = eventually_async(|| async {
        let (_, boxes) = as_owner(&token, "GET", "/api/owner/boxes", None).await;
        (boxes == json!([])).then_some(())
    })
    .await;
    assert!(forgotten.is_some(), "the claim is forgotten");
}

/// The next text message on a box's channel, as JSON (the portal's pings skipped).
async fn next_text(
    channel: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), channel.next())
            .await
            .expect("a message within 5 s")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            break serde_json::from_str(&text).unwrap();
        }
    }
}
