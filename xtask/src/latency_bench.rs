//! `cargo xtask bench latency`: glass-to-glass latency in a browser, at the source and
//! down a chain of boxes.
//!
//! A source publishes `test-pattern:clock`, which burns the wall clock into each
//! picture as it is drawn; boxes with one forward slot each join one after the other,
//! so they form a chain. Debian's Chromium (`web/tests/browser.mjs`, the same watch
//! page a viewer uses) plays the stream through the source itself, the first box and
//! the last, and reads the clock off the video forty times against its own. Playing
//! from the source is the peer: encoding, HTTP-FLV and the browser's player without
//! any relaying, measured in the same run; the other depths are compared with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::bench::{build_astral, pct, source_args, start_astral, Proc};
use crate::util::http_get;

const STREAM: &str = "clock";

#[derive(clap::Args)]
pub struct LatencyArgs {
    /// Boxes in the chain
    #[arg(long, default_value_t = 5)]
    hops: u16,
    /// Measurements at each depth
    #[arg(long, default_value_t = 3)]
    runs: u32,
    #[arg(long, default_value = "640x360")]
    size: String,
    #[arg(long, default_value_t = 25)]
    fps: u32,
    #[arg(long, default_value_t = 800)]
    bitrate_kbps: u32,
    /// First port used; the run takes 2 × (hops + 1) + 1 ports from here
    #[arg(long, default_value_t = 28500)]
    port: u16,
}

pub fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    ensure!((1..=20).contains(&args.hops), "--hops: 1 to 20");
    ensure!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("ASTRAL_CHROMIUM").is_some(),
        "the browser is Debian's chromium: `./dev bench latency` installs it"
    );
    let astral = build_astral()?;
    let work = tempfile::tempdir()?;
    let portal_port = args.port;
    let portal_url = format!("http://127.0.0.1:{portal_port}");
    let _portal = start_portal(&astral, work.path(), portal_port)?;
    let api = |hop: u16| args.port + 1 + hop;
    let rtmp = |hop: u16| args.port + 101 + hop;
    let common = ["--portal", &portal_url, "--max-forwards", "1"];

    eprintln!("bench: a source and a chain of {} boxes", args.hops);
    let mut boxes = vec![start_astral(
        &astral,
        work.path(),
        "source",
        api(0),
        rtmp(0),
        &[
            common.map(String::from).to_vec(),
            source_args(
                "test-pattern:clock",
                STREAM,
                &args.size,
                args.fps,
                args.bitrate_kbps,
            ),
        ]
        .concat(),
    )?];
    wait_until("the portal lists the stream", || {
        get(&format!("{portal_url}/api/streams/{STREAM}")).is_ok()
    })?;
    for hop in 1..=args.hops {
        let name = format!("box{hop}");
        boxes.push(start_astral(
            &astral,
            work.path(),
            &name,
            api(hop),
            rtmp(hop),
            &common,
        )?);
        let token = std::fs::read_to_string(work.path().join(&name).join("admin-token"))?;
        ureq::post(&format!(
            "http://127.0.0.1:{}/streams/{STREAM}/watch",
            api(hop)
        ))
        .set("authorization", &format!("Bearer {}", token.trim()))
        .call()
        .with_context(|| format!("{name} does not watch"))?;
        wait_until(&format!("{name} plays at depth {hop}"), || {
            let Ok(status) = get(&format!("http://127.0.0.1:{}/status", api(hop))) else {
                return false;
            };
            status["overlay"]["streams"][0]["flowing"] == true
                && status["overlay"]["streams"][0]["depth"] == hop
        })?;
    }

    let depths = [0, 1, args.hops];
    let mut table = Vec::new();
    for depth in depths {
        let (mut total, mut arrived) = (Vec::new(), Vec::new());
        for run in 1..=args.runs {
            let (t, a) = watch(&portal_url, &format!("http://127.0.0.1:{}", api(depth)))?;
            eprintln!(
                "bench: depth {depth}, run {run}: p50 {:.0} ms on screen, {:.0} ms on arrival",
                pct(&t, 50.0),
                pct(&a, 50.0)
            );
            total.extend(t);
            arrived.extend(a);
        }
        total.sort_by(f64::total_cmp);
        arrived.sort_by(f64::total_cmp);
        table.push((depth, total, arrived));
    }
    drop(boxes);

    println!(
        "\nglass to glass in Chromium, {} at {} fps and {} kbit/s, {} runs of 40 readings per depth",
        args.size, args.fps, args.bitrate_kbps, args.runs
    );
    println!("(on arrival: less what the player held in its buffer at each reading)");
    println!(
        "{:>6} {:>14} {:>14} {:>17} {:>13}",
        "depth", "screen p50 ms", "screen p90 ms", "arrival p50 ms", "vs source"
    );
    let source = pct(&table[0].2, 50.0);
    for (depth, total, arrived) in &table {
        println!(
            "{depth:>6} {:>14.0} {:>14.0} {:>17.0} {:>+10.0} ms",
            pct(total, 50.0),
            pct(total, 90.0),
            pct(arrived, 50.0),
            pct(arrived, 50.0) - source
        );
    }
    Ok(())
}

fn start_portal(astral: &Path, work: &Path, port: u16) -> anyhow::Result<Proc> {
    let child = Command::new(astral)
        .args(["portal", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--db")
        .arg(work.join("portal.db"))
        .env("ASTRAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("portal.log"))?)
        .spawn()
        .context("starting the portal")?;
    let portal = Proc::new("astral portal", child);
    wait_until("the portal answers", || {
        get(&format!("http://127.0.0.1:{port}/api/status")).is_ok()
    })?;
    Ok(portal)
}

/// One watch through `node`: glass-to-glass latencies read off the picture, and the
/// same less what the player held back in its buffer at each reading (ms).
fn watch(portal: &str, node: &str) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web");
    let config =
        serde_json::json!({"portal": portal, "stream": STREAM, "node": node, "clock": true});
    let out = Command::new("node")
        .arg(web.join("tests/browser.mjs"))
        .arg("watch")
        .arg(config.to_string())
        .current_dir(&web)
        .output()
        .context("running node (Node.js)")?;
    ensure!(
        out.status.success(),
        "the browser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = out
        .stdout
        .rsplit(|b| *b == b'\n')
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_slice(last).context("the browser's answer")?;
    let numbers = |key: &str| -> Vec<f64> {
        seen[key]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (total, buffered) = (numbers("latencies"), numbers("buffered"));
    ensure!(
        total.len() >= 20 && total.len() == buffered.len(),
        "the clock was read {} times of 40",
        total.len()
    );
    let mut arrived: Vec<f64> = total.iter().zip(&buffered).map(|(t, b)| t - b).collect();
    let mut total = total;
    total.sort_by(f64::total_cmp);
    arrived.sort_by(f64::total_cmp);
    Ok((total, arrived))
}

fn get(url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&http_get(url)?)?)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("waited 30 s in vain: {what}")
}
