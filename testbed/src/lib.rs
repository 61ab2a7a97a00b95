//! Many boxes on one machine, as far apart as a kernel can make them: each box is an
//! `astral node` in a network namespace of its own, with a veth link to one bridge in
//! a namespace of its own (the "internet"), its upload limited with `tc tbf` to a
//! household's (1.5, 3 or 6 Mbit/s by default). The portal and the source are hosts
//! too. Nothing here leaves these namespaces: the process driving the testbed reaches
//! the boxes' APIs through one veth of its own into the bridge, and only reads.
//!
//! It needs root (namespaces, links, qdiscs) and `ip`/`tc` from iproute2. Everything
//! it makes is named after the driving process and removed when the testbed drops.
//! `cargo xtask testbed` prints its report; `tests/testbed.rs` asserts on it.

mod chaos;
mod home;
mod ipv6;
mod report;
pub mod timeline;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

pub use chaos::Chaos;
pub use home::{Router, RouterKind};
pub use report::{Report, Viewer};
pub use timeline::{Fault, Sampler, Timeline, CONTINUITY_GOAL, LONGEST_WAIT_GOAL};

/// The stream the source publishes.
pub const STREAM: &str = "tb";
const PORTAL_PORT: u16 = 8080;

#[derive(Debug, Clone)]
pub struct Options {
    /// The `astral` binary.
    pub astral: PathBuf,
    /// Boxes that watch the stream.
    pub hosts: usize,
    /// Their uploads, in kbit/s, dealt out in turn.
    pub uplinks_kbps: Vec<u32>,
    pub source_uplink_kbps: u32,
    /// The source's test pattern: noisy, so the stream is as heavy as its bitrate.
    pub bitrate_kbps: u32,
    pub size: String,
    pub fps: u32,
    /// Boxes per supernode: small, so that a testbed has several supernodes.
    pub supernode_max_children: usize,
    /// How boxes keep a hot-standby parent (`--standby full` or `idle`); `None`, none.
    pub standby: Option<String>,
    /// Every host, and every box behind a router, also has IPv6 (`ipv6.rs`).
    pub ipv6: bool,
}

impl Options {
    pub fn new(astral: PathBuf, hosts: usize) -> Options {
        Options {
            astral,
            hosts,
            uplinks_kbps: vec![1500, 3000, 6000],
            source_uplink_kbps: 8000,
            // 2.5 Mbit/s leaves a 3 Mbit/s household no slot (80 % of its upload
            // is 2.4), and then this mix cannot carry every box; 2 Mbit/s can.
            bitrate_kbps: 2000,
            size: "640x360".into(),
            fps: 25,
            supernode_max_children: 8,
            standby: None,
            ipv6: false,
        }
    }
}

/// One host: a namespace, its address, its upload, and the process it runs.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a testbed with IPv6.
    pub ip6: Option<Ipv6Addr>,
    pub uplink_kbps: u32,
    pub data_dir: PathBuf,
    child: Option<Child>,
    /// On a home LAN: the driver reads it from inside its namespace.
    behind_router: bool,
    /// The far end of its link: the namespace and name of the bridge's port.
    port: (String, String),
}

impl Host {
    pub fn api(&self) -> String {
        format!("http://{}:8000", self.ip)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.reader().get(path, Duration::from_secs(3))
    }

    /// Where the driver reads this box's API.
    pub(crate) fn reader(&self) -> Api {
        Api {
            url: self.api(),
            inside: self.behind_router.then(|| self.ns.clone()),
        }
    }

    /// An admin route of this box, with its token.
    pub fn get_as_admin(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let token = self.admin_token()?;
        let url = format!("{}{path}", self.api());
        let text = if self.behind_router {
            home::get_inside(&self.ns, &url, &token)?
        } else {
            ureq::get(&url)
                .set("authorization", &format!("Bearer {token}"))
                .timeout(Duration::from_secs(5))
                .call()
                .with_context(|| format!("GET {url}"))?
                .into_string()?
        };
        Ok(serde_json::from_str(&text)?)
    }

    /// What the box logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("log")).unwrap_or_default()
    }

    pub fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.data_dir.join("admin-token");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("{}: no admin token", self.name))?
            .trim()
            .to_owned())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the box's process with SIGKILL, as a power cut would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Testbed {
    tag: String,
    switch: String,
    monitor: String,
    pub portal: Host,
    pub source: Host,
    pub viewers: Vec<Host>,
    /// When each viewer was asked to watch, and when it first played.
    pub asked: Vec<Option<Instant>>,
    pub joined: Vec<Option<Duration>>,
    /// The faults caused so far: when, to which viewer, what.
    pub faults: Vec<(Instant, usize, Fault)>,
    /// Home routers, with boxes behind them among `viewers`.
    pub routers: Vec<Router>,
    work: tempfile::TempDir,
    options: Options,
    _neighbours: NeighbourLimits,
}

/// The host's neighbour (ARP) table is one for every namespace, and its default limit
/// of 1,024 entries is too small for a hundred boxes that each know dozens of others:
/// past it the kernel drops new neighbours ("neighbor table overflow") and connections
/// hang. The testbed raises the limits for its run and puts them back after.
struct NeighbourLimits {
    old: Option<[String; 3]>,
}

const GC_THRESH: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

impl NeighbourLimits {
    fn raise(hosts: usize) -> anyhow::Result<NeighbourLimits> {
        let old = GC_THRESH.map(|p| std::fs::read_to_string(p).unwrap_or_default());
        let hard: u64 = old[2].trim().parse().unwrap_or(0);
        // Every box may come to know every other, and the driver knows them all.
        let needed = 2 * (hosts as u64 + 3).pow(2);
        if hard >= needed {
            return Ok(NeighbourLimits { old: None });
        }
        for (path, value) in GC_THRESH.iter().zip([needed / 4, needed / 2, needed]).rev() {
            std::fs::write(path, value.to_string())
                .with_context(|| format!("cannot raise {path} to {value}"))?;
        }
        Ok(NeighbourLimits { old: Some(old) })
    }
}

impl Drop for NeighbourLimits {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            for (path, value) in GC_THRESH.iter().zip(old) {
                let _ = std::fs::write(path, value.trim());
            }
        }
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (iproute2)"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

/// A veth link from namespace `ns` (`inside`) to the bridge `bridge` in namespace
/// `peer_ns` (`outside`), that end up; the inside end is addressed and brought up by
/// the caller.
fn veth(ns: &str, inside: &str, peer_ns: &str, outside: &str, bridge: &str) -> anyhow::Result<()> {
    ip(&[
        "-n", ns, "link", "add", inside, "type", "veth", "peer", "name", outside, "netns", peer_ns,
    ])?;
    ip(&[
        "-n", peer_ns, "link", "set", outside, "master", bridge, "up",
    ])
}

/// The internet: one bridge, one subnet (and the routers', `home::ROUTERS`).
const INTERNET: &str = "10.77.0.0/16";
const INTERNET_PREFIX: u8 = 16;

/// The driver's own address on the internet.
const MONITOR_INDEX: usize = 16_000;
const PORTAL_INDEX: usize = 1;

/// The internet address of the host with this index.
fn internet_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, (index / 250) as u8, (index % 250 + 1) as u8)
}

/// The household's upload: a token bucket on what leaves the box's `eth0`.
fn limit_upload(ns: &str, uplink_kbps: u32) -> anyhow::Result<()> {
    let burst = format!("{}", (uplink_kbps as usize * 1000 / 8 / 50).max(16_000));
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            &format!("{uplink_kbps}kbit"),
            "burst",
            &burst,
            "latency",
            "200ms",
        ],
    )
}

/// Where the driver reads a box's API: over the bridge, or, for a box behind a home
/// router, from inside the box's namespace.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    url: String,
    inside: Option<String>,
}

impl Api {
    pub(crate) fn get(&self, path: &str, limit: Duration) -> anyhow::Result<serde_json::Value> {
        let text = self.text(path, limit)?;
        Ok(serde_json::from_str(&text)?)
    }

    fn text(&self, path: &str, limit: Duration) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.url);
        match &self.inside {
            Some(ns) => home::text_inside(ns, &url, limit),
            None => Ok(ureq::get(&url)
                .timeout(limit)
                .call()
                .with_context(|| format!("GET {url}"))?
                .into_string()?),
        }
    }
}

/// GET `url` from the driver, within 3 s: a box whose link is down answers nothing,
/// and the sampler must not wait on it for long.
pub fn get(url: &str) -> anyhow::Result<serde_json::Value> {
    Api {
        url: url.to_owned(),
        inside: None,
    }
    .get("", Duration::from_secs(3))
}

/// Whether this process may make namespaces (root, or CAP_NET_ADMIN and friends).
pub fn can_run() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
        && is_root()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

impl Testbed {
    /// Makes the switch, the portal, the source and `hosts` boxes, and starts them;
    /// the boxes do not watch yet.
    pub fn start(options: Options) -> anyhow::Result<Testbed> {
        ensure!(can_run(), "the testbed needs root (network namespaces, tc)");
        ensure!(options.hosts <= 1000, "hosts: at most 1000");
        // Unique among the testbeds of this process too: tests run side by side.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:05}{nth}", std::process::id() % 100_000);
        let switch = format!("tb{tag}sw");
        let monitor = format!("tb{tag}m");
        let work = tempfile::tempdir()?;
        let neighbours = NeighbourLimits::raise(options.hosts)?;
        ip(&["netns", "add", &switch])?;
        if options.ipv6 {
            ipv6::no_dad(&switch)?;
        }
        let mut bed = Testbed {
            portal: placeholder(),
            source: placeholder(),
            viewers: Vec::new(),
            asked: vec![None; options.hosts],
            joined: vec![None; options.hosts],
            faults: Vec::new(),
            routers: Vec::new(),
            tag,
            switch,
            monitor,
            work,
            options,
            _neighbours: neighbours,
        };
        bed.wire_switch()?;
        bed.portal = bed.host("portal", PORTAL_INDEX, 100_000)?;
        bed.start_portal()?;
        bed.source = bed.host("source", 2, bed.options.source_uplink_kbps)?;
        bed.start_source()?;
        for i in 0..bed.options.hosts {
            let uplink = bed.options.uplinks_kbps[i % bed.options.uplinks_kbps.len()];
            let mut host = bed.host(&format!("box{:03}", i + 1), 10 + i, uplink)?;
            host.child = Some(bed.spawn_node(&host, &[])?);
            // Kept before it is waited for, so that one that never serves is cleaned up.
            bed.viewers.push(host);
            Testbed::wait_serving(bed.viewers.last().expect("just pushed"))?;
        }
        Ok(bed)
    }

    fn wire_switch(&self) -> anyhow::Result<()> {
        let sw = self.switch.as_str();
        ip(&["-n", sw, "link", "set", "lo", "up"])?;
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", sw, "link", "set", "br0", "up"])?;
        if self.options.ipv6 {
            ipv6::wire_switch(sw)?;
        }
        // The driver's own way in: a veth from this namespace to the bridge.
        ip(&[
            "link",
            "add",
            &self.monitor,
            "type",
            "veth",
            "peer",
            "name",
            "mon",
            "netns",
            sw,
        ])?;
        let monitor = format!("{}/{INTERNET_PREFIX}", internet_address(MONITOR_INDEX));
        ip(&["addr", "add", &monitor, "dev", &self.monitor])?;
        ip(&["link", "set", &self.monitor, "up"])?;
        ip(&["-n", sw, "link", "set", "mon", "master", "br0", "up"])?;
        Ok(())
    }

    /// A namespace with one veth into the bridge, its address, and its upload limit.
    fn host(&self, name: &str, index: usize, uplink_kbps: u32) -> anyhow::Result<Host> {
        let ns = format!("tb{}{}", self.tag, name);
        let addr = internet_address(index);
        let port = format!("h{}", index);
        self.add_namespace(&ns)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        veth(&ns, "eth0", &self.switch, &port, "br0")?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/{INTERNET_PREFIX}"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", home::ROUTERS, "dev", "eth0"])?;
        let ip6 = self.options.ipv6.then(|| ipv6::internet_address(index));
        if let Some(ip6) = ip6 {
            ipv6::address(&ns, "eth0", ip6)?;
            ipv6::route_to_homes(&ns)?;
            self.name_portal(&ns)?;
        }
        limit_upload(&ns, uplink_kbps)?;
        let data_dir = self.work.path().join(name);
        std::fs::create_dir_all(&data_dir)?;
        Ok(Host {
            name: name.into(),
            ns,
            ip: addr,
            ip6,
            uplink_kbps,
            data_dir,
            child: None,
            behind_router: false,
            port: (self.switch.clone(), port),
        })
    }

    fn spawn(&self, host: &Host, args: &[String]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(host.data_dir.join("log"))?;
        Command::new("ip")
            .args(["netns", "exec", &host.ns])
            .arg(&self.options.astral)
            .args(args)
            // The driver's own ASTRAL_LOG reaches every box (info when unset).
            .env(
                "ASTRAL_LOG",
                std::env::var("ASTRAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", host.name))
    }

    fn add_namespace(&self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        if self.options.ipv6 {
            ipv6::no_dad(ns)?;
        }
        Ok(())
    }

    /// Names the portal in `ns`, for boxes to find its IPv6 address.
    fn name_portal(&self, ns: &str) -> anyhow::Result<()> {
        let v4 = internet_address(PORTAL_INDEX);
        ipv6::name_portal(ns, v4, ipv6::internet_address(PORTAL_INDEX))
    }

    /// The portal's URL, as boxes know it: by name in a testbed with IPv6.
    fn portal_url(&self) -> String {
        if self.options.ipv6 {
            format!("http://{}:{PORTAL_PORT}", ipv6::PORTAL_NAME)
        } else {
            format!("http://{}:{PORTAL_PORT}", self.portal.ip)
        }
    }

    fn start_portal(&mut self) -> anyhow::Result<()> {
        let mut args = vec![
            "portal".into(),
            "--listen".into(),
            format!("{}:{PORTAL_PORT}", self.portal.ip),
            "--db".into(),
            self.portal.data_dir.join("portal.db").display().to_string(),
        ];
        if let Some(ip6) = self.portal.ip6 {
            args.extend(["--listen".into(), format!("[{ip6}]:{PORTAL_PORT}")]);
        }
        self.portal.child = Some(self.spawn(&self.portal, &args)?);
        wait_for(Duration::from_secs(10), || {
            get(&format!(
                "http://{}:{PORTAL_PORT}/api/status",
                self.portal.ip
            ))
            .is_ok()
        })
        .context("the portal did not start")
    }

    fn node_args(&self, host: &Host) -> Vec<String> {
        [
            "node",
            "--name",
            &host.name,
            "--api",
            &format!("{}:8000", host.ip),
            "--rtmp",
            &format!("{}:1935", host.ip),
            "--portal",
            &self.portal_url(),
            "--upload-kbps",
            &host.uplink_kbps.to_string(),
            "--data-dir",
            &host.data_dir.display().to_string(),
            "--supernode-max-children",
            &self.options.supernode_max_children.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn spawn_node(&self, host: &Host, extra: &[String]) -> anyhow::Result<Child> {
        let mut args = self.node_args(host);
        if let Some(mode) = &self.options.standby {
            args.extend(["--standby".into(), mode.clone()]);
        }
        args.extend_from_slice(extra);
        self.spawn(host, &args)
    }

    /// Waits until a box's API answers.
    fn wait_serving(host: &Host) -> anyhow::Result<()> {
        wait_for(Duration::from_secs(30), || host.get("/status").is_ok())
            .with_context(|| format!("{} did not start", host.name))
    }

    fn start_source(&mut self) -> anyhow::Result<()> {
        let o = &self.options;
        let extra: Vec<String> = [
            "--source",
            "test-pattern:noise",
            "--source-stream",
            STREAM,
            "--size",
            &o.size,
            "--fps",
            &o.fps.to_string(),
            "--bitrate-kbps",
            &o.bitrate_kbps.to_string(),
        ]
        .map(String::from)
        .to_vec();
        // Kept before it is waited for, so that a source that never serves is killed.
        let child = self.spawn_node(&self.source, &extra)?;
        self.source.child = Some(child);
        Testbed::wait_serving(&self.source)?;
        let portal = format!(
            "http://{}:{PORTAL_PORT}/api/streams/{STREAM}",
            self.portal.ip
        );
        wait_for(Duration::from_secs(20), || get(&portal).is_ok())
            .context("the source's stream was not listed")
    }

    /// Asks every box to watch the stream, all at once.
    pub fn watch_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.viewers.len() {
            self.watch(i)?;
        }
        Ok(())
    }

    /// Asks viewer `i` to watch the stream.
    pub fn watch(&mut self, i: usize) -> anyhow::Result<()> {
        let host = &self.viewers[i];
        let token = host.admin_token()?;
        let url = format!("{}/streams/{STREAM}/watch", host.api());
        if host.behind_router {
            home::post_inside(&host.ns, &url, &token)
        } else {
            ureq::post(&url)
                .set("authorization", &format!("Bearer {token}"))
                .timeout(Duration::from_secs(5))
                .call()
                .map(drop)
                .map_err(anyhow::Error::from)
        }
        .with_context(|| format!("{} does not watch", host.name))?;
        self.asked[i] = Some(Instant::now());
        self.joined[i] = None;
        Ok(())
    }

    /// `kill -9` of viewer `i`, as a power cut would.
    pub fn kill(&mut self, i: usize, fault: Fault) {
        self.viewers[i].kill();
        self.faults.push((Instant::now(), i, fault));
    }

    /// A power cut at viewer `i`: its link goes down first, so that no peer hears
    /// its sockets close and every one of them must notice the silence; then the
    /// process dies. [`Testbed::restart`] brings the link back. The bridge's end goes
    /// down, not the box's: the box's own end keeps its addresses and routes, which
    /// the kernel drops from a link set down (IPv6 addresses too).
    pub fn cut_power(&mut self, i: usize, fault: Fault) -> anyhow::Result<()> {
        let (ns, port) = &self.viewers[i].port;
        ip(&["-n", ns, "link", "set", port, "down"])?;
        self.kill(i, fault);
        Ok(())
    }

    /// SIGTERM to viewer `i`: it leaves gracefully, in the background.
    pub fn leave(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.viewers[i].pid().context("not running")?;
        // `ip netns exec` execs the node, so the pid is the node's own.
        run("kill", &["-TERM", &pid.to_string()])?;
        self.faults.push((Instant::now(), i, Fault::Left));
        Ok(())
    }

    /// Reaps viewers that left or died by themselves; returns which.
    pub fn reap(&mut self) -> Vec<usize> {
        let mut gone = Vec::new();
        for (i, host) in self.viewers.iter_mut().enumerate() {
            if let Some(child) = host.child.as_mut() {
                if child.try_wait().is_ok_and(|s| s.is_some()) {
                    host.child = None;
                    gone.push(i);
                }
            }
        }
        gone
    }

    /// Starts a viewer that was killed or left again, with its data directory, and
    /// asks it to watch once it serves.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.viewers[i].kill();
        let (ns, port) = &self.viewers[i].port;
        ip(&["-n", ns, "link", "set", port, "up"])?;
        let child = self.spawn_node(&self.viewers[i], &[])?;
        self.viewers[i].child = Some(child);
        Testbed::wait_serving(&self.viewers[i])?;
        self.watch(i)?;
        self.faults.push((Instant::now(), i, Fault::Restarted));
        Ok(())
    }

    /// Starts sampling every viewer every `period` (see [`Timeline`]).
    pub fn sample(&self, period: Duration) -> Sampler {
        Sampler::start(
            self.viewers.iter().map(Host::reader).collect(),
            self.source.api(),
            period,
        )
    }

    /// Every viewer's upload, kbit/s, in order.
    pub fn uplinks(&self) -> Vec<u32> {
        self.viewers.iter().map(|h| h.uplink_kbps).collect()
    }

    /// Waits until every box plays the stream, noting when each began.
    pub fn wait_all_playing(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            for (i, host) in self.viewers.iter().enumerate() {
                if self.joined[i].is_some() || host.child.is_none() {
                    continue;
                }
                let flowing = host.get("/status").is_ok_and(|s| {
                    let place = &s["overlay"]["streams"][0];
                    place["flowing"] == true && place["depth"].as_u64() >= Some(1)
                });
                if let (true, Some(asked)) = (flowing, self.asked[i]) {
                    self.joined[i] = Some(asked.elapsed());
                }
            }
            let waiting: Vec<&str> = self
                .viewers
                .iter()
                .zip(&self.joined)
                .filter(|(h, j)| h.child.is_some() && j.is_none())
                .map(|(h, _)| h.name.as_str())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not playing after {limit:?}: {}", waiting.join(", "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every box's figures as they stand.
    pub fn report(&self) -> anyhow::Result<Report> {
        report::gather(self)
    }

    fn bytes_out(host: &Host) -> f64 {
        let prefix = format!("astral_bytes_out_total{{stream=\"{STREAM}\"}} ");
        host.reader()
            .text("/metrics", Duration::from_secs(3))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().ok()))
            })
            .flatten()
            .unwrap_or(0.0)
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Leaves the boxes' data directories and logs behind when the testbed drops.
    pub fn keep(&mut self) {
        self.work.disable_cleanup(true);
    }
}

fn placeholder() -> Host {
    Host {
        name: String::new(),
        ns: String::new(),
        ip: Ipv4Addr::UNSPECIFIED,
        ip6: None,
        uplink_kbps: 0,
        data_dir: PathBuf::new(),
        child: None,
        behind_router: false,
        port: Default::default(),
    }
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("waited {limit:?} in vain")
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for host in self
            .viewers
            .iter_mut()
            .chain([&mut self.source, &mut self.portal])
        {
            host.kill();
            if !host.ns.is_empty() {
                ipv6::delete_namespace(&host.ns);
            }
        }
        let _ = ip(&["link", "del", &self.monitor]);
        let _ = ip(&["netns", "del", &self.switch]);
    }
}
