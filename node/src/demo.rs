//! `astral demo`: a test-pattern source and a chain of relays on loopback, in one
//! process, so a newcomer sees a stream cross several boxes with one command.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;

use crate::config::{Config, NodeArgs};
use crate::Listeners;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Relays chained behind the source
    #[arg(long, default_value_t = 3)]
    pub relays: u16,
    /// First HTTP port; node i serves HTTP on PORT+i and RTMP on PORT+1350+i
    #[arg(long, default_value_t = 18000)]
    pub port: u16,
    /// Test-pattern size, WIDTHxHEIGHT
    #[arg(long, default_value = "1280x720")]
    pub size: String,
    /// Test-pattern frame rate
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Test-pattern bitrate in kbit/s
    #[arg(long, default_value_t = 2500)]
    pub bitrate_kbps: u32,
    /// Stop after this many seconds (default: run until Ctrl-C)
    #[arg(long)]
    pub seconds: Option<u64>,
}

const STREAM: &str = "demo";

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.relays > 16 {
        anyhow::bail!("--relays: at most 16");
    }
    let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let rtmp_port = |i: u16| args.port + 1350 + i;
    let data_dir = std::env::temp_dir().join("astral-demo");

    let mut nodes = Vec::new();
    for i in 0..=args.relays {
        let mut node_args = NodeArgs {
            name: Some(if i == 0 {
                "source".into()
            } else {
                format!("relay{i}")
            }),
            api: Some(loopback(args.port + i)),
            rtmp: Some(loopback(rtmp_port(i))),
            data_dir: Some(data_dir.join(i.to_string())),
            ..NodeArgs::default()
        };
        if i == 0 {
            node_args.source = Some("test-pattern".into());
            node_args.source_stream = Some(STREAM.into());
            node_args.size = Some(args.size.clone());
            node_args.fps = Some(args.fps);
            node_args.bitrate_kbps = Some(args.bitrate_kbps);
        } else {
            // Each relay pulls from the one before it, and from the source if that fails.
            node_args.pull.push(format!(
                "rtmp://127.0.0.1:{}/live/{STREAM}",
                rtmp_port(i - 1)
            ));
            if i > 1 {
                node_args
                    .pull
                    .push(format!("rtmp://127.0.0.1:{}/live/{STREAM}", rtmp_port(0)));
            }
        }
        let config = Config::from_toml("", &node_args)?;
        let listeners = Listeners::bind(&config)
            .await
            .context("the demo's ports are taken; pick others with --port")?;
        nodes.push(config.clone());
        // The nodes live as long as the process.
        tokio::spawn(async move {
            if let Err(e) = crate::run(config, listeners, std::future::pending()).await {
                tracing::error!("demo node failed: {e:#}");
            }
        });
    }

    println!("Astral demo: a test-pattern source and {} relays on loopback, each pulling from the one before.\n", args.relays);
    for config in &nodes {
        println!(
            "  {:<8} rtmp://{}/live/{STREAM}   http://{}/live/{STREAM}.flv",
            config.name, config.rtmp, config.api
        );
    }
    let last = nodes.last().expect("the source is always there");
    println!(
        "\nWatch the last hop:  ffplay http://{}/live/{STREAM}.flv   (or open it in VLC)",
        last.api
    );
    println!("Stream state:        curl http://{}/streams", last.api);
    println!("Metrics:             curl http://{}/metrics", last.api);
    println!("Ctrl-C stops the demo.");

    match args.seconds {
        Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    Ok(())
}
