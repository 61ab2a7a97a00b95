//! Benchmarks (being written).

#[derive(clap::Subcommand)]
pub enum Which {
    /// Per-hop latency, CPU and memory of a 5-hop relay chain, against nginx-rtmp
    Relay,
}

pub fn run(_which: Which) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
