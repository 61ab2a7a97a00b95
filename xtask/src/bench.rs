//! `cargo xtask bench relay`: latency, CPU and memory of a relay chain, against
//! nginx-rtmp measured in the same run.
//!
//! One test-pattern source feeds two chains side by side: `astral node --pull` relays,
//! and nginx-rtmp relays with `pull`. A single probe plays every hop of both chains and
//! notes when each frame arrives; frames are matched across hops by a hash of their
//! payload, so the figures hold even where a relay rewrites timestamps. A hop's latency
//! is a frame's arrival there minus its arrival at the hop before, on one clock. CPU
//! time and peak RSS come from /proc. These machines are shared and noisy, so only the
//! ratio against the peer beside it means much.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use node::rtmp::client::{Player, Received};
use node::rtmp::url::RtmpUrl;
use proto::TagKind;

const NGINX: &str = "/usr/sbin/nginx";
const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
const STREAM: &str = "bench";

#[derive(clap::Subcommand)]
pub enum Which {
    /// Per-hop latency, CPU and memory of a relay chain, against nginx-rtmp
    Relay(RelayArgs),
    /// Capture and encoding of the box's own source, against the ffmpeg CLI
    Capture(crate::capture_bench::CaptureArgs),
    /// Glass-to-glass latency in Chromium down a chain of boxes, against the source
    Latency(crate::latency_bench::LatencyArgs),
}

#[derive(clap::Args)]
pub struct RelayArgs {
    /// Relays in each chain
    #[arg(long, default_value_t = 5)]
    hops: u16,
    /// Seconds measured, after a warm-up of 3 s
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Test-pattern size
    #[arg(long, default_value = "1280x720")]
    size: String,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    #[arg(long, default_value_t = 2500)]
    bitrate_kbps: u32,
    /// First port used; the run takes 2 × (hops + 1) + 1 ports from here
    #[arg(long, default_value_t = 28000)]
    port: u16,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Relay(args) => relay(args),
        Which::Capture(args) => crate::capture_bench::capture(args),
        Which::Latency(args) => crate::latency_bench::latency(args),
    }
}

/// A child process killed when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub(crate) fn new(name: &str, child: Child) -> Proc {
        Proc {
            name: name.into(),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn relay(args: RelayArgs) -> anyhow::Result<()> {
    ensure!(
        Path::new(NGINX).exists() && Path::new(NGINX_RTMP_MODULE).exists(),
        "nginx with its RTMP module is the peer this benchmark measures against: run `./dev bench relay`, which installs nginx-light and libnginx-mod-rtmp"
    );
    ensure!((1..=20).contains(&args.hops), "--hops: 1 to 20");
    let astral = build_astral()?;
    let work = std::env::temp_dir().join(format!("astral-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let rtmp_port = |chain: u16, hop: u16| args.port + chain * 100 + hop;
    let api_port = |hop: u16| args.port + 300 + hop;

    eprintln!(
        "bench: starting the source and two chains of {} relays",
        args.hops
    );
    let mut procs = Vec::new();
    procs.push(start_astral(
        &astral,
        &work,
        "source",
        api_port(0),
        rtmp_port(0, 0),
        &source_args(
            "test-pattern",
            STREAM,
            &args.size,
            args.fps,
            args.bitrate_kbps,
        ),
    )?);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for hop in 1..=args.hops {
        // Both chains' first relay pulls from the one source.
        let up = |chain| {
            if hop == 1 {
                rtmp_port(0, 0)
            } else {
                rtmp_port(chain, hop - 1)
            }
        };
        let pull = format!("rtmp://127.0.0.1:{}/live/{STREAM}", up(1));
        ours.push(procs.len());
        procs.push(start_astral(
            &astral,
            &work,
            &format!("relay{hop}"),
            api_port(hop),
            rtmp_port(1, hop),
            &["--pull", &pull],
        )?);
        theirs.push(procs.len());
        procs.push(start_nginx(&work, hop, rtmp_port(2, hop), up(2))?);
    }

    let mut urls = vec![rtmp_port(0, 0)];
    urls.extend((1..=args.hops).map(|h| rtmp_port(1, h)));
    urls.extend((1..=args.hops).map(|h| rtmp_port(2, h)));
    let urls: Vec<RtmpUrl> = urls
        .iter()
        .map(|p| RtmpUrl::parse(&format!("rtmp://127.0.0.1:{p}/live/{STREAM}")))
        .collect::<Result<_, _>>()?;

    eprintln!(
        "bench: warming up for 3 s, then measuring for {} s",
        args.seconds
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let warmup = Duration::from_secs(3);
    let measure = Duration::from_secs(args.seconds);
    let cpu_before = std::thread::scope(|s| {
        let t = s.spawn(|| {
            std::thread::sleep(warmup);
            procs
                .iter()
                .map(|p| cpu_seconds(p.pid()))
                .collect::<anyhow::Result<Vec<_>>>()
        });
        let arrivals = runtime.block_on(probe(&urls, warmup, measure));
        (t.join().expect("the CPU sampler does not panic"), arrivals)
    });
    let (cpu_before, arrivals) = (cpu_before.0?, cpu_before.1?);
    let cpu_after: Vec<f64> = procs
        .iter()
        .map(|p| cpu_seconds(p.pid()))
        .collect::<anyhow::Result<_>>()?;
    let rss: Vec<f64> = procs
        .iter()
        .map(|p| peak_rss_mb(p.pid()))
        .collect::<anyhow::Result<_>>()?;

    let hops = args.hops as usize;
    let chain_of = |first: usize| -> Vec<&HashMap<u64, Instant>> {
        std::iter::once(&arrivals[0])
            .chain(&arrivals[first..first + hops])
            .collect()
    };
    let (ours_lat, ours_frames) = hop_latencies(&chain_of(1));
    let (theirs_lat, theirs_frames) = hop_latencies(&chain_of(1 + hops));
    ensure!(
        ours_lat.len() > 100 && theirs_lat.len() > 100,
        "too few frames matched across hops (astral {}, nginx-rtmp {}): is the chain up?",
        ours_lat.len(),
        theirs_lat.len()
    );
    let cpu = |idx: &[usize]| {
        idx.iter()
            .map(|&i| cpu_after[i] - cpu_before[i])
            .sum::<f64>()
            / idx.len() as f64
    };
    let peak = |idx: &[usize]| idx.iter().map(|&i| rss[i]).fold(0.0, f64::max);

    let rows = [
        (
            "per-hop latency p50 (ms)",
            pct(&ours_lat, 50.0),
            pct(&theirs_lat, 50.0),
        ),
        (
            "per-hop latency p99 (ms)",
            pct(&ours_lat, 99.0),
            pct(&theirs_lat, 99.0),
        ),
        (
            "per-hop latency max (ms)",
            pct(&ours_lat, 100.0),
            pct(&theirs_lat, 100.0),
        ),
        ("CPU per relay (s)", cpu(&ours), cpu(&theirs)),
        (
            "CPU per relay (% of a core)",
            cpu(&ours) * 100.0 / measure.as_secs_f64(),
            cpu(&theirs) * 100.0 / measure.as_secs_f64(),
        ),
        ("peak RSS per relay (MB)", peak(&ours), peak(&theirs)),
    ];
    println!(
        "\nrelay chain: {} hops, test pattern {} at {} fps, {} kbit/s, {} s measured",
        args.hops, args.size, args.fps, args.bitrate_kbps, args.seconds
    );
    println!(
        "frames matched at every hop: astral {ours_frames}, nginx-rtmp {theirs_frames}; source CPU {:.2} s\n",
        cpu_after[0] - cpu_before[0]
    );
    println!(
        "| {:<28} | {:>9} | {:>10} | {:>6} |",
        "", "astral", "nginx-rtmp", "ratio"
    );
    println!("|{:-<30}|{:->11}|{:->12}|{:->8}|", "", "", "", "");
    for (name, a, n) in rows {
        println!("| {name:<28} | {a:>9.3} | {n:>10.3} | {:>6.2} |", a / n);
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The flags of a source box publishing a test pattern.
pub(crate) fn source_args(
    source: &str,
    stream: &str,
    size: &str,
    fps: u32,
    bitrate_kbps: u32,
) -> Vec<String> {
    [
        "--source",
        source,
        "--source-stream",
        stream,
        "--size",
        size,
        "--fps",
        &fps.to_string(),
        "--bitrate-kbps",
        &bitrate_kbps.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

pub(crate) fn build_astral() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "astral"])
        .status()?;
    ensure!(status.success(), "building astral failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    Ok(target.join("release/astral"))
}

pub(crate) fn start_astral(
    bin: &Path,
    work: &Path,
    name: &str,
    api: u16,
    rtmp: u16,
    extra: &[impl AsRef<std::ffi::OsStr>],
) -> anyhow::Result<Proc> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(bin)
        .args(["node", "--name", name])
        .args([
            "--api",
            &format!("127.0.0.1:{api}"),
            "--rtmp",
            &format!("127.0.0.1:{rtmp}"),
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(extra)
        .env("ASTRAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log"))?)
        .spawn()
        .context("starting astral")?;
    let proc = Proc {
        name: format!("astral {name}"),
        child,
    };
    wait_for_port(&proc.name, rtmp)?;
    Ok(proc)
}

fn start_nginx(work: &Path, hop: u16, port: u16, upstream: u16) -> anyhow::Result<Proc> {
    let prefix = work.join(format!("nginx{hop}"));
    std::fs::create_dir_all(prefix.join("logs"))?;
    let config = format!(
        "load_module {NGINX_RTMP_MODULE};
daemon off;
master_process off;
worker_processes 1;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            pull rtmp://127.0.0.1:{upstream}/live;
        }}
    }}
}}
",
        prefix = prefix.display()
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(prefix.join("logs/stderr"))?)
        .spawn()
        .context("starting nginx")?;
    let proc = Proc {
        name: format!("nginx{hop}"),
        child,
    };
    wait_for_port(&proc.name, port)?;
    Ok(proc)
}

fn wait_for_port(name: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{name} did not open port {port}")
}

/// Plays every URL at once; per URL, when each video frame (by payload hash) arrived
/// after the warm-up.
async fn probe(
    urls: &[RtmpUrl],
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Vec<HashMap<u64, Instant>>> {
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = urls
        .iter()
        .cloned()
        .map(|url| {
            tokio::spawn(async move {
                let mut player =
                    tokio::time::timeout(Duration::from_secs(5), Player::connect(&url))
                        .await
                        .with_context(|| format!("{url}: no answer"))??;
                let mut seen = HashMap::new();
                let end = start + warmup + measure;
                while let Ok(next) = tokio::time::timeout_at(end, player.next()).await {
                    let Received::Media(tag) = next.with_context(|| format!("playing {url}"))?
                    else {
                        continue;
                    };
                    let now = Instant::now();
                    if tag.kind != TagKind::Video || tag.is_sequence_header() {
                        continue;
                    }
                    if start.elapsed() >= warmup {
                        let mut h = DefaultHasher::new();
                        tag.data.hash(&mut h);
                        seen.entry(h.finish()).or_insert(now);
                    }
                }
                anyhow::Ok(seen)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Per-hop latencies (ms) of frames seen at every hop of `chain` (hop 0 = source),
/// and how many frames that was.
fn hop_latencies(chain: &[&HashMap<u64, Instant>]) -> (Vec<f64>, usize) {
    let mut latencies = Vec::new();
    let mut frames = 0;
    for (key, first) in chain[0] {
        let Some(times) = chain[1..]
            .iter()
            .map(|hop| hop.get(key).copied())
            .collect::<Option<Vec<Instant>>>()
        else {
            continue;
        };
        frames += 1;
        let mut prev = *first;
        for t in times {
            latencies.push(t.saturating_duration_since(prev).as_secs_f64() * 1000.0);
            prev = t;
        }
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, frames)
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// CPU time of a process, all threads, in seconds: the scheduler's nanosecond count
/// (the first field of each thread's schedstat), as clock ticks are too coarse here.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        ns += schedstat
            .split_whitespace()
            .next()
            .context("malformed schedstat")?
            .parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

/// Peak resident memory (VmHWM) of a process, in MB.
fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}
