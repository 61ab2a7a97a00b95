//! `cargo xtask bench capture`: a box's own source, from picture to FLV tag, against
//! the ffmpeg command line doing the same encode beside it.
//!
//! Ours is `capture`'s source run in this process: the test pattern by default, or a
//! camera with `--device /dev/videoN`. A frame's latency is the moment its tags come
//! out minus the moment the picture was taken (the tag's timestamp on the source's
//! clock), so it covers capture, conversion and encoding. CPU is this process's, over
//! the run. The peer is `ffmpeg` encoding the same pictures with the same settings to
//! nowhere: two seconds of the test pattern as raw video, looped, paced with `-re`
//! (or the same camera); its CPU is read from /proc. Hardware encoders are measured
//! the same way with `--encoder`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use capture::{Camera, CameraConfig, Source, TestPattern, TestPatternConfig, VideoConfig};

use crate::bench::{cpu_seconds, pct};

#[derive(clap::Args)]
pub struct CaptureArgs {
    /// A V4L2 camera, e.g. /dev/video0 [default: the test pattern]
    #[arg(long)]
    device: Option<String>,
    /// auto, h264_v4l2m2m, h264_vaapi or libx264
    #[arg(long, default_value = "libx264")]
    encoder: String,
    /// Seconds measured per mode, after a warm-up of 2 s
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// WIDTHxHEIGHT@FPS; repeat for more [default: 640x480@25 and 1280x720@30]
    #[arg(long = "mode")]
    modes: Vec<String>,
}

struct Ours {
    latencies: Vec<f64>,
    frames: usize,
    cpu: f64,
    encoder: String,
}

pub fn capture(args: CaptureArgs) -> anyhow::Result<()> {
    let modes = if args.modes.is_empty() {
        vec!["640x480@25".to_owned(), "1280x720@30".to_owned()]
    } else {
        args.modes.clone()
    };
    let mut rows = Vec::new();
    for mode in &modes {
        let (width, height, fps) = parse_mode(mode)?;
        let video = VideoConfig {
            width,
            height,
            fps,
            bitrate_kbps: width * height * fps / 11_000,
            keyframe_interval_frames: fps * 2,
            encoder: args.encoder.clone(),
        };
        eprintln!("bench capture: {mode}, ours for {} s", args.seconds + 2);
        let ours = run_ours(&args, &video)?;
        eprintln!("bench capture: {mode}, ffmpeg for {} s", args.seconds + 2);
        let peer = run_ffmpeg(&args, &video)?;
        rows.push((mode.clone(), ours, peer));
    }
    let source = args.device.as_deref().unwrap_or("test pattern");
    println!(
        "\ncapture → encode → tag, {source}, {} s per mode\n",
        args.seconds
    );
    println!("| mode | encoder | frames | latency p50 / p99 | CPU % of a core, ours / ffmpeg | CPU ratio |");
    println!("|---|---|---:|---|---|---:|");
    for (mode, ours, peer) in rows {
        println!(
            "| {mode} | {} | {} | {:.1} / {:.1} ms | {:.1} / {:.1} | {:.2} |",
            ours.encoder,
            ours.frames,
            pct(&ours.latencies, 50.0),
            pct(&ours.latencies, 99.0),
            ours.cpu * 100.0,
            peer * 100.0,
            ours.cpu / peer
        );
    }
    Ok(())
}

fn parse_mode(mode: &str) -> anyhow::Result<(u32, u32, u32)> {
    let parse = || -> Option<(u32, u32, u32)> {
        let (size, fps) = mode.split_once('@')?;
        let (w, h) = size.split_once('x')?;
        Some((w.parse().ok()?, h.parse().ok()?, fps.parse().ok()?))
    };
    parse().with_context(|| format!("{mode:?}: write WIDTHxHEIGHT@FPS, e.g. 1280x720@30"))
}

fn run_ours(args: &CaptureArgs, video: &VideoConfig) -> anyhow::Result<Ours> {
    // Each source's clock starts when it does: the pattern's at its first frame, a
    // camera's when it is opened.
    let (t0, mut source): (Instant, Box<dyn Source>) = match &args.device {
        None => {
            let pattern = TestPattern::open(TestPatternConfig {
                video: video.clone(),
                realtime: true,
                clock: false,
                noise: false,
            })?;
            (Instant::now(), Box::new(pattern))
        }
        Some(device) => {
            let t0 = Instant::now();
            let camera = Camera::open(CameraConfig {
                device: device.into(),
                video: video.clone(),
            })?;
            (t0, Box::new(camera))
        }
    };
    let me = std::process::id();
    let warm_up = t0 + Duration::from_secs(2);
    let end = warm_up + Duration::from_secs(args.seconds);
    let mut cpu_start = None;
    let mut latencies = Vec::new();
    let mut tags = Vec::new();
    while Instant::now() < end {
        source.next_tags(&mut tags)?;
        let now = Instant::now();
        if now < warm_up {
            tags.clear();
            continue;
        }
        if cpu_start.is_none() {
            cpu_start = Some((now, cpu_seconds(me)?));
        }
        let clock_ms = now.duration_since(t0).as_secs_f64() * 1000.0;
        for tag in tags.drain(..).filter(|t| !t.is_sequence_header()) {
            latencies.push(clock_ms - f64::from(tag.timestamp));
        }
    }
    let (since, cpu_then) = cpu_start.context("no frame came")?;
    let cpu = (cpu_seconds(me)? - cpu_then) / since.elapsed().as_secs_f64();
    if latencies.is_empty() {
        bail!("the source gave no frames");
    }
    let frames = latencies.len();
    latencies.sort_by(f64::total_cmp);
    let encoder = source
        .meta()
        .encoder
        .clone()
        .unwrap_or_else(|| args.encoder.clone());
    Ok(Ours {
        latencies,
        frames,
        cpu,
        encoder,
    })
}

/// ffmpeg encoding the same input the same way; its CPU share of one core.
fn run_ffmpeg(args: &CaptureArgs, video: &VideoConfig) -> anyhow::Result<f64> {
    let (w, h, fps) = (video.width, video.height, video.fps);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    let raw = std::env::temp_dir().join(format!("astral-bench-{w}x{h}.yuv"));
    match &args.device {
        None => {
            let mut pattern = TestPattern::open(TestPatternConfig {
                video: video.clone(),
                realtime: false,
                clock: false,
                noise: false,
            })?;
            let mut frames = Vec::new();
            for index in 0..u64::from(fps) * 2 {
                pattern.raw_frame(index, &mut frames);
            }
            std::fs::write(&raw, frames)?;
            cmd.args([
                "-re",
                "-stream_loop",
                "-1",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "yuv420p",
            ])
            .args([
                "-video_size",
                &format!("{w}x{h}"),
                "-framerate",
                &fps.to_string(),
            ])
            .arg("-i")
            .arg(&raw)
        }
        Some(device) => cmd
            .args(["-f", "v4l2", "-framerate", &fps.to_string()])
            .args(["-video_size", &format!("{w}x{h}"), "-i", device]),
    };
    let encoder = if args.encoder == "auto" {
        "libx264"
    } else {
        args.encoder.as_str()
    };
    cmd.args(["-c:v", encoder, "-pix_fmt", "yuv420p"])
        .args([
            "-g",
            &video.keyframe_interval_frames.to_string(),
            "-bf",
            "0",
        ])
        .args(["-b:v", &format!("{}k", video.bitrate_kbps)]);
    if encoder == "libx264" {
        cmd.args(["-preset", "veryfast", "-tune", "zerolatency"]);
    }
    cmd.args(["-t", &(args.seconds + 2).to_string(), "-f", "null", "-"])
        .stdout(Stdio::null());
    let mut child = cmd.spawn().context("ffmpeg must be installed")?;
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    let (start, cpu_start) = (Instant::now(), cpu_seconds(pid)?);
    let mut last = cpu_start;
    let mut last_at = start;
    while child.try_wait()?.is_none() {
        if let Ok(cpu) = cpu_seconds(pid) {
            (last, last_at) = (cpu, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(&raw);
    Ok((last - cpu_start) / last_at.duration_since(start).as_secs_f64())
}
