//! `cargo xtask testbed --hosts N`: the namespace testbed (`testbed/`) at any size,
//! printing what every box saw after the joins and over a window of steady play.

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
    /// Keep the boxes' data directories and logs
    #[arg(long)]
    keep: bool,
}

pub fn testbed(args: TestbedArgs) -> anyhow::Result<()> {
    let astral = crate::bench::build_astral()?;
    let mut options = testbed::Options::new(astral, args.hosts);
    options.bitrate_kbps = args.bitrate_kbps;
    options.uplinks_kbps = args.uplinks_kbps;
    eprintln!(
        "testbed: starting a portal, a source and {} boxes",
        args.hosts
    );
    let mut bed = testbed::Testbed::start(options).context("the testbed did not start")?;
    if args.keep {
        eprintln!("testbed: logs in {}", bed.work_dir().display());
        bed.keep();
    }
    bed.watch_all()?;
    bed.wait_all_playing(Duration::from_secs(60 + args.hosts as u64))?;
    let joined = bed.report()?;
    println!("after the joins:\n{}", joined.table());
    std::thread::sleep(Duration::from_secs(args.seconds));
    let window = bed.report()?.since(&joined);
    println!("{} s of steady play:\n{}", args.seconds, window.table());
    Ok(())
}
