//! `cargo xtask testbed --hosts N`: the namespace testbed (`testbed/`) at any size,
//! printing what every box saw after the joins and over a window of steady play; with
//! `--chaos-secs`, then a run of faults (`testbed::Chaos`) and its table; with
//! `--plots DIR`, the figures as SVG; with `--homes N`, N more boxes each behind a
//! home router of its own (UPnP, NAT-PMP/PCP and none in turn), and whether and how
//! soon each could be reached; with `--ipv6`, every box also has IPv6, and routers
//! let IPv6 connections in (`open`) or not (`closed`, as most do).

use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct TestbedArgs {
    /// Boxes that watch the stream
    #[arg(long, default_value_t = 24)]
    hosts: usize,
    /// Seconds of steady play measured after the joins
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The source's bitrate, kbit/s
    #[arg(long, default_value_t = 2000)]
    bitrate_kbps: u32,
    /// Household uploads, kbit/s, dealt out in turn
    #[arg(long, value_delimiter = ',', default_value = "1500,3000,6000")]
    uplinks_kbps: Vec<u32>,
    /// Then kill, restart and remove boxes for this many seconds
    #[arg(long, default_value_t = 0)]
    chaos_secs: u64,
    /// Share of the relays' deaths that are power cuts rather than kill -9
    #[arg(long, default_value_t = 0.0)]
    power_cut_share: f64,
    /// Seed of the faults' choices and moments
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Write continuity.svg, depths.svg and stalls.svg here
    #[arg(long)]
    plots: Option<std::path::PathBuf>,
    /// Write every sample of every box (twice a second) here, as CSV
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Boxes keep a hot-standby parent: full (both parents send) or idle (the
    /// standby sends once the parent stalls)
    #[arg(long, num_args = 0..=1, default_missing_value = "full", value_parser = ["full", "idle"])]
    standby: Option<String>,
    /// Keep the boxes' data directories and logs
    #[arg(long)]
    keep: bool,
    /// More boxes, each behind a home router of its own: one with UPnP IGD (and
    /// NAT-PMP, PCP), one with NAT-PMP and PCP only, one with no port mapping, in turn
    #[arg(long, default_value_t = 0)]
    homes: usize,
    /// The boxes behind routers do not ask them for port mappings
    #[arg(long)]
    no_port_mapping: bool,
    /// Boxes that cannot be reached forward to no one, instead of connecting to
    /// boxes that can be reached (connection reversal)
    #[arg(long)]
    no_reversal: bool,
    /// Every box also has IPv6 of its own; home routers let IPv6 connections in
    /// (open) or only replies (closed)
    #[arg(long, num_args = 0..=1, default_missing_value = "closed", value_parser = ["closed", "open"])]
    ipv6: Option<String>,
}

pub fn testbed(args: TestbedArgs) -> anyhow::Result<()> {
    let astral = crate::bench::build_astral()?;
    let mut options = testbed::Options::new(astral, args.hosts);
    options.bitrate_kbps = args.bitrate_kbps;
    options.uplinks_kbps = args.uplinks_kbps.clone();
    options.standby = args.standby.clone();
    options.ipv6 = args.ipv6.is_some();
    eprintln!(
        "testbed: starting a portal, a source and {} boxes",
        args.hosts
    );
    let mut bed = testbed::Testbed::start(options).context("the testbed did not start")?;
    if args.keep {
        eprintln!("testbed: logs in {}", bed.work_dir().display());
        bed.keep();
    }
    if args.homes > 0 {
        reachability(&mut bed, &args)?;
    }
    let sampler = bed.sample(Duration::from_millis(500));
    bed.watch_all()?;
    bed.wait_all_playing(Duration::from_secs(60 + args.hosts as u64))?;
    let joined = bed.report()?;
    println!("after the joins:\n{}", joined.table());
    if args.homes > 0 {
        forwarding(&bed)?;
    }
    let steady_from = sampler.start_instant().elapsed();
    std::thread::sleep(Duration::from_secs(args.seconds));
    let window = bed.report()?.since(&joined);
    println!("{} s of steady play:\n{}", args.seconds, window.table());
    let mut from = steady_from;
    if args.chaos_secs > 0 {
        from = sampler.start_instant().elapsed();
        let mut plan = testbed::Chaos::new(Duration::from_secs(args.chaos_secs));
        plan.seed = args.seed;
        plan.power_cut_share = args.power_cut_share.clamp(0.0, 1.0);
        eprintln!("testbed: {} s of faults", args.chaos_secs);
        bed.chaos(&plan)?;
    }
    let timeline = sampler.finish(bed.faults.clone());
    let summary = timeline.summary(from, &bed.uplinks());
    let what = if args.chaos_secs > 0 {
        "the faults"
    } else {
        "steady play"
    };
    println!("over {what}:\n{}", summary.table());
    for o in &summary.overruns {
        println!(
            "at {:.1} s {} forwarded to {} players with {} slots ({} kbit/s)",
            o.at.as_secs_f64(),
            bed.viewers[o.host].name,
            o.forwards,
            o.slots,
            o.kbps
        );
    }
    for st in &summary.stalls {
        println!(
            "stall: {} went {} ms without a frame, until {:.1} s",
            bed.viewers[st.host].name,
            st.length.as_millis(),
            st.ended.as_secs_f64()
        );
    }
    for (host, index) in summary.short_of_goal() {
        println!(
            "short: {} had continuity {:.4} at 0.5 s, {:.4} at 1 s, {:.4} at 2 s",
            bed.viewers[*host].name, index[0], index[1], index[2]
        );
    }
    if let Some(path) = &args.csv {
        let names: Vec<String> = bed.viewers.iter().map(|h| h.name.clone()).collect();
        std::fs::write(path, timeline.csv(&names))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("testbed: samples in {}", path.display());
    }
    if let Some(dir) = &args.plots {
        crate::plot::write(dir, &timeline, &summary)?;
        eprintln!("testbed: plots in {}", dir.display());
    }
    Ok(())
}

/// Starts `--homes` boxes behind routers and prints how each can be reached: by
/// itself, through its router's port mapping, or not at all, and how long after it
/// started the box knew.
fn reachability(bed: &mut testbed::Testbed, args: &TestbedArgs) -> anyhow::Result<()> {
    use testbed::RouterKind;
    let kinds = [RouterKind::Upnp, RouterKind::NatPmp, RouterKind::Plain];
    let mut extra: Vec<String> = Vec::new();
    if args.no_port_mapping {
        extra.extend(["--port-mapping".into(), "false".into()]);
    }
    if args.no_reversal {
        extra.extend(["--reversal".into(), "false".into()]);
    }
    eprintln!("testbed: {} boxes behind home routers", args.homes);
    let mut started = Vec::new();
    for i in 0..args.homes {
        let open = args.ipv6.as_deref() == Some("open");
        let router = bed.add_router(kinds[i % kinds.len()], open)?;
        let uplink = args.uplinks_kbps[i % args.uplinks_kbps.len()];
        started.push((router, bed.add_home_box(router, uplink, &extra)?));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut rows = Vec::new();
    for (router, host) in started {
        let reach = loop {
            let reach = bed.viewers[host].get("/status")?["reach"].clone();
            let checked =
                reach["state"] != "unknown" && (args.ipv6.is_none() || reach["ipv6"].is_object());
            if checked || std::time::Instant::now() > deadline {
                break reach;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        rows.push((bed.routers[router].kind(), reach));
    }
    let total = bed.viewers.len();
    let homes = rows.len();
    let reachable = rows
        .iter()
        .filter(|(_, r)| r["state"] == "reachable")
        .count();
    let over_ipv6 = |r: &serde_json::Value| r["ipv6"]["reachable"] == true;
    println!("| router | box | reached | through | over IPv6 | known after |");
    println!("|---|---|---|---|---|---:|");
    for ((kind, reach), host) in rows.iter().zip(&bed.viewers[total - homes..]) {
        println!(
            "| {kind:?} | {} | {} | {} | {} | {} ms |",
            host.name,
            reach["state"].as_str().unwrap_or("?"),
            reach["mapped_by"].as_str().unwrap_or("-"),
            if over_ipv6(reach) { "reached" } else { "-" },
            reach["known_after_ms"].as_u64().unwrap_or_default()
        );
    }
    let reached = total - homes + reachable;
    // Boxes with IPv6 connect to one reached there.
    let reached_somehow = reached
        + rows
            .iter()
            .filter(|(_, r)| r["state"] != "reachable" && over_ipv6(r))
            .count();
    let forwarders = if args.no_reversal {
        reached_somehow
    } else {
        total
    };
    println!(
        "boxes that can be reached: {reached} of {total}; behind routers {reachable} of {homes}"
    );
    println!(
        "boxes that can forward: {forwarders} of {total} ({:.0} %){}",
        100.0 * forwarders as f64 / total as f64,
        if args.no_reversal {
            ""
        } else {
            ", those that cannot be reached to boxes that can"
        }
    );
    Ok(())
}

/// Which boxes forward once all play: by whether they can be reached; and how many
/// play over IPv6.
fn forwarding(bed: &testbed::Testbed) -> anyhow::Result<()> {
    let (mut reached, mut unreached, mut over_ipv6) = ((0, 0), (0, 0), 0);
    for host in &bed.viewers {
        let status = host.get("/status")?;
        let streams = host.get("/streams")?;
        let upstream = &streams[0]["source"]["upstream"];
        over_ipv6 += usize::from(upstream.as_str().is_some_and(|u| u.contains('[')));
        let children = status["overlay"]["streams"][0]["tickets"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| t["connected"] == true).count());
        let count = if status["reach"]["state"] == "unreachable" {
            &mut unreached
        } else {
            &mut reached
        };
        count.0 += 1;
        count.1 += usize::from(children > 0);
    }
    println!(
        "forwarding after the joins: {} of {} boxes that can be reached, {} of {} that cannot",
        reached.1, reached.0, unreached.1, unreached.0
    );
    println!(
        "playing over IPv6: {over_ipv6} of {} boxes",
        bed.viewers.len()
    );
    Ok(())
}
