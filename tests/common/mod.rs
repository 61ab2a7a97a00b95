//! Real `astral` processes on loopback, with ffmpeg and ffprobe as outside peers.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use node::rtmp::client::{Player, Received};
use node::rtmp::url::RtmpUrl;
use proto::Tag;

pub const KEY: &str = "test-key-0123";

/// A port no one listens on, below Linux's ephemeral range (32768–60999): a port from
/// that range, free now, may be an outgoing connection's source port before the node
/// binds it. Each test process starts at its own place and never hands a port out
/// twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let (low, span) = (20_000u16, 12_000u16);
    let start = (std::process::id() % 120) as u16 * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below the ephemeral range");
        let port = low + (start + n) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An `astral node` process, killed when dropped.
pub struct NodeProc {
    pub name: String,
    pub api: SocketAddr,
    pub rtmp: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

fn spawn_node(name: &str, dir: &Path, api: SocketAddr, rtmp: SocketAddr, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .expect("a log file");
    Command::new(env!("CARGO_BIN_EXE_astral"))
        .arg("node")
        .args(["--config", dir.join("node.toml").to_str().unwrap()])
        .args(["--name", name])
        .args(["--api", &api.to_string(), "--rtmp", &rtmp.to_string()])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(args)
        .env("ASTRAL_LOG", "info,node=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting astral")
}

impl NodeProc {
    /// Starts a node with `config` as its TOML file plus `args`, and waits for its API.
    pub fn start(name: &str, config: &str, args: &[&str]) -> NodeProc {
        NodeProc::start_at(name, [127, 0, 0, 1], config, args)
    }

    /// Starts a node on a loopback address of its own, as if on a box of its own: the
    /// boxes it connects to see it come from `ip`.
    pub fn start_at(name: &str, ip: [u8; 4], config: &str, args: &[&str]) -> NodeProc {
        let api = SocketAddr::from((ip, free_port()));
        let rtmp = SocketAddr::from((ip, free_port()));
        NodeProc::start_on(name, api, rtmp, config, args)
    }

    /// A node whose API and RTMP server listen on these addresses.
    pub fn start_on(
        name: &str,
        api: SocketAddr,
        rtmp: SocketAddr,
        config: &str,
        args: &[&str],
    ) -> NodeProc {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("node.toml"), config).expect("writing the config");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn_node(name, dir.path(), api, rtmp, &args);
        let node = NodeProc {
            name: name.into(),
            api,
            rtmp,
            child,
            dir,
            args,
        };
        node.wait_ready();
        node
    }

    /// Stops the node with SIGTERM and starts it again on the same ports, config and
    /// data directory.
    pub fn restart(&mut self) {
        self.terminate();
        assert!(
            self.wait_exit(Duration::from_secs(10)).is_some(),
            "{} did not stop",
            self.name
        );
        self.start_again();
    }

    /// Starts the node again once it has exited (or was killed), on the same ports,
    /// config and data directory.
    pub fn start_again(&mut self) {
        assert!(!self.is_running(), "{} still runs", self.name);
        self.child = spawn_node(&self.name, self.dir.path(), self.api, self.rtmp, &self.args);
        self.wait_ready();
    }

    /// A node that accepts publishing `stream` with [`KEY`].
    pub fn publishing(name: &str, stream: &str) -> NodeProc {
        NodeProc::start(name, &format!("[streams.{stream}]\nkey = \"{KEY}\"\n"), &[])
    }

    /// A node that relays `stream` from `upstreams`, in order.
    pub fn relay(name: &str, stream: &str, upstreams: &[&NodeProc]) -> NodeProc {
        let mut args = Vec::new();
        for up in upstreams {
            args.push("--pull".to_owned());
            args.push(up.rtmp_url(stream));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProc::start(name, "", &args)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(self.api).is_ok()
                && TcpStream::connect(self.rtmp).is_ok()
                && self.dir.path().join("admin-token").exists()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {} did not start:\n{}", self.name, self.log());
    }

    pub fn rtmp_url(&self, stream: &str) -> String {
        format!("rtmp://{}/live/{stream}", self.rtmp)
    }

    pub fn flv_url(&self, stream: &str) -> String {
        format!("http://{}/live/{stream}.flv", self.api)
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http(&format!("http://{}{path}", self.api), "GET", None)
    }

    /// An admin call: with the token the node wrote into its data directory.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let token = self.admin_token();
        http_as(
            &format!("http://{}{path}", self.api),
            method,
            body,
            Some(&token),
        )
    }

    /// A call without the admin token or a signature, as a stranger makes it.
    pub fn http_anon(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(&format!("http://{}{path}", self.api), method, body)
    }

    /// A call signed by the test's box `signer`, as another box makes it.
    pub fn http_signed(
        &self,
        signer: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let signature = sign_as(signer, method, path, body.unwrap_or_default());
        self.http_with_signature(method, path, body, &signature)
    }

    /// A call with this `Astral-Signature`, made or copied.
    pub fn http_with_signature(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        signature: &str,
    ) -> (u16, String) {
        let url = format!("http://{}{path}", self.api);
        http_with(
            &url,
            method,
            body,
            &[(proto::identity::SIGNATURE_HEADER, signature)],
        )
    }

    /// The node id the box made from its key.
    pub fn id(&self) -> String {
        self.status()["peer"]["id"]
            .as_str()
            .expect("an id")
            .to_owned()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin-token"))
            .expect("the node writes its admin token on start")
            .trim()
            .to_owned()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stream_info(&self, stream: &str) -> serde_json::Value {
        let (status, body) = self.http_get(&format!("/streams/{stream}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// The value of a metric for `stream`, or 0 when it is not there.
    pub fn metric(&self, name: &str, stream: &str) -> f64 {
        let (_, text) = self.http_get("/metrics");
        let prefix = format!("astral_{name}{{stream=\"{stream}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as systemd does to stop a node.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name: STOP freezes the box as a power cut would, leaving
    /// its sockets open and silent.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} {}", self.name);
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.http_get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }
}

/// An `astral portal` process on a fresh database, killed when dropped.
pub struct PortalProc {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl PortalProc {
    pub fn start() -> PortalProc {
        PortalProc::start_at(SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// A portal listening at `addr`.
    pub fn start_at(addr: SocketAddr) -> PortalProc {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = std::fs::File::create(dir.path().join("portal.log")).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_astral"))
            .arg("portal")
            .args(["--listen", &addr.to_string()])
            .arg("--db")
            .arg(dir.path().join("portal.db"))
            .env("ASTRAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting astral portal");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the portal did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PortalProc { addr, child, dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn get(&self, path: &str) -> serde_json::Value {
        let (code, body) = http(&format!("{}{path}", self.url()), "GET", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("portal.log")).unwrap_or_default()
    }
}

impl Drop for PortalProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of the portal ---\n{}", self.log());
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

pub fn http(url: &str, method: &str, body: Option<&str>) -> (u16, String) {
    http_as(url, method, body, None)
}

pub fn http_as(url: &str, method: &str, body: Option<&str>, token: Option<&str>) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    http_with(url, method, body, &headers)
}

/// The key of a box the test plays itself, made from its name.
pub fn test_key(name: &str) -> proto::identity::NodeKey {
    let mut seed = [0u8; 32];
    seed[..name.len()].copy_from_slice(name.as_bytes());
    proto::identity::NodeKey::from_seed(seed)
}

/// The node id of the box the test plays as `name`.
pub fn test_id(name: &str) -> String {
    test_key(name).node_id().to_string()
}

/// The `Astral-Signature` of a request by the test's box `name`, made now.
pub fn sign_as(name: &str, method: &str, path: &str, body: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    test_key(name).sign_request(method, path, body.as_bytes(), now)
}

/// A call's status, body, and the answer's `Astral-Signature`.
pub fn http_answer(
    url: &str,
    method: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let mut request = ureq::request(method, url).timeout(Duration::from_secs(10));
    for (name, value) in headers {
        request = request.set(name, value);
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
    let signature = response
        .header(proto::identity::SIGNATURE_HEADER)
        .map(String::from);
    (
        response.status(),
        response.into_string().unwrap_or_default(),
        signature,
    )
}

pub fn http_with(
    url: &str,
    method: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, body, _) = http_answer(url, method, body, headers);
    (status, body)
}

/// A 20 s H.264 + AAC clip, made once per test process: 640x360, 30 fps, a keyframe
/// every second, no B-frames.
pub fn clip() -> &'static Path {
    static CLIP: OnceLock<PathBuf> = OnceLock::new();
    CLIP.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("astral-clip-{}.flv", std::process::id()));
        let status = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
            .args([
                "-t",
                "20",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-g", "30", "-bf", "0", "-b:v", "2000k", "-c:a", "aac", "-b:a", "64k",
            ])
            .arg(&path)
            .status()
            .expect("ffmpeg must be installed (see README)");
        assert!(status.success(), "ffmpeg could not make the test clip");
        path
    })
}

/// ffmpeg publishing the test clip in real time, looped; killed when dropped.
pub struct Publish(Child);

impl Publish {
    pub fn start(url: &str) -> Publish {
        let child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
            ])
            .arg("-i")
            .arg(clip())
            .args(["-c", "copy", "-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ffmpeg");
        Publish(child)
    }

    /// Waits for ffmpeg to exit; its status and stderr.
    pub fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = self.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status.code(), err);
            }
            if Instant::now() > deadline {
                return (None, String::new());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Publish {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One packet as ffprobe saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    pub kind: String,
    pub pts: i64,
    pub keyframe: bool,
    pub hash: String,
}

/// Reads `seconds` of `url` with ffprobe: every packet with a CRC of its payload.
pub fn ffprobe(url: &str, seconds: u32) -> Vec<Probed> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-show_data_hash", "CRC32"])
        .args([
            "-show_entries",
            "packet=codec_type,pts,flags,data_hash",
            "-of",
            "csv=p=0",
        ])
        .args(["-read_intervals", &format!("%+{seconds}")])
        .args(["-rw_timeout", "5000000"])
        .arg(url)
        .output()
        .expect("ffprobe must be installed (see README)");
    assert!(
        output.status.success(),
        "ffprobe {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            Some(Probed {
                kind: f.first()?.to_string(),
                pts: f.get(1)?.parse().ok()?,
                keyframe: f.get(2)?.starts_with('K'),
                hash: f.get(3)?.to_string(),
            })
        })
        .collect()
}

/// A stream as ffprobe decodes it: its video, and its sound if it has any.
pub struct Probe {
    pub width: u32,
    pub height: u32,
    /// As ffprobe gives it, e.g. "25/1".
    pub rate: String,
    /// The video packets' timestamps, ms.
    pub pts: Vec<i64>,
    /// The audio codec, "none" without sound, and the audio packets' timestamps.
    pub audio: String,
    pub audio_pts: Vec<i64>,
}

/// Decodes `seconds` of `url` with ffprobe.
pub fn probe_stream(url: &str, seconds: u32) -> Probe {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_type,codec_name,width,height,r_frame_rate:packet=codec_type,pts",
        ])
        .args(["-of", "json", "-read_intervals", &format!("%+{seconds}")])
        .arg(url)
        .output()
        .expect("ffprobe must be installed (see README)");
    assert!(
        output.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ffprobe's JSON");
    let stream = |kind: &str| {
        v["streams"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["codec_type"] == kind))
            .cloned()
            .unwrap_or_default()
    };
    let pts = |kind: &str| -> Vec<i64> {
        v["packets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["codec_type"] == kind)
                    .filter_map(|p| p["pts"].as_i64())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (video, audio) = (stream("video"), stream("audio"));
    Probe {
        width: video["width"].as_u64().expect("a width") as u32,
        height: video["height"].as_u64().expect("a height") as u32,
        rate: video["r_frame_rate"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        pts: pts("video"),
        audio: audio["codec_name"].as_str().unwrap_or("none").to_owned(),
        audio_pts: pts("audio"),
    }
}

/// What an RTMP player saw: each tag with the moment it arrived.
pub struct Seen {
    pub tag: Tag,
    pub at: Instant,
}

/// Plays `url` for `duration` with the node's own RTMP client (as a child box would).
pub async fn play(url: &str, duration: Duration) -> Vec<Seen> {
    let url = RtmpUrl::parse(url).expect("an RTMP URL");
    let mut player = tokio::time::timeout(Duration::from_secs(5), Player::connect(&url))
        .await
        .expect("connect in time")
        .expect("connect");
    let end = tokio::time::Instant::now() + duration;
    let mut seen = Vec::new();
    while let Ok(next) = tokio::time::timeout_at(end, player.next()).await {
        match next {
            Ok(Received::Media(tag)) => seen.push(Seen {
                tag,
                at: Instant::now(),
            }),
            Ok(Received::Meta(_)) => {}
            Err(e) => panic!("playing {url}: {e}"),
        }
    }
    seen
}

/// Raw bytes to a port, for bad-input tests; returns what came back before close.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

/// A node's arguments for a small test pattern (320x240, 25 fps, 300 kbit/s)
/// published as `stream`.
pub fn test_pattern(stream: &str) -> Vec<String> {
    [
        "--source",
        "test-pattern",
        "--source-stream",
        stream,
        "--size",
        "320x240",
        "--bitrate-kbps",
        "300",
        "--fps",
        "25",
    ]
    .map(String::from)
    .to_vec()
}

/// Retries `f` until it returns `Some`, for up to `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
