//! `astral demo`: a portal, a test-pattern source and a handful of boxes on loopback,
//! in one process, so that a newcomer sees a relay tree build itself with one command.
//!
//! Every box is a whole node with its own ports and data directory, joined through the
//! portal exactly as a real box is; half of them forward to two children, half to one.
//! Ctrl-C makes every box leave gracefully.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use tokio::task::JoinSet;

use node::api::Status;
use node::config::{Config, NodeArgs};
use node::Listeners;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Boxes that watch the stream, besides the source
    #[arg(long, default_value_t = 6)]
    pub nodes: u16,
    /// The portal's port; box i serves HTTP on PORT+1+i and RTMP on PORT+1001+i
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

/// The portal's flags, as `astral portal` takes them.
#[derive(Parser)]
struct PortalCli {
    #[command(flatten)]
    args: portal::PortalArgs,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(1..=32).contains(&args.nodes) {
        anyhow::bail!("--nodes: 1 to 32");
    }
    let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let dir = std::env::temp_dir().join("astral-demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    // A fresh directory each time: yesterday's demo streams are not today's.
    let db = dir.join("portal.db");
    for stale in ["portal.db", "portal.db-wal", "portal.db-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let portal_addr = loopback(args.port);
    let portal = PortalCli::parse_from([
        "portal",
        "--listen",
        &portal_addr.to_string(),
        "--db",
        db.to_str().context("the temp dir's path is not UTF-8")?,
    ]);
    let portal = portal::Portal::open(&portal.args)
        .await
        .context("cannot start the demo's portal; pick other ports with --port")?;
    let portal_url = format!("http://{portal_addr}");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(portal.serve(stopped(stop_rx.clone())));

    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut configs = Vec::new();
    for i in 0..=args.nodes {
        let mut node_args = NodeArgs {
            name: Some(if i == 0 {
                "source".into()
            } else {
                format!("box{i}")
            }),
            api: Some(loopback(args.port + 1 + i)),
            rtmp: Some(loopback(args.port + 1001 + i)),
            data_dir: Some(dir.join(format!("node{i}"))),
            portal: Some(portal_url.clone()),
            // Odd boxes forward to two children, even ones to one.
            max_forwards: Some(if i % 2 == 1 || i == 0 { 2 } else { 1 }),
            ..NodeArgs::default()
        };
        if i == 0 {
            node_args.source = Some("test-pattern".into());
            node_args.source_stream = Some(STREAM.into());
            node_args.title = Some("Astral demo: a test pattern".into());
            node_args.size = Some(args.size.clone());
            node_args.fps = Some(args.fps);
            node_args.bitrate_kbps = Some(args.bitrate_kbps);
        }
        let config = Config::from_toml("", &node_args)?;
        let listeners = Listeners::bind(&config)
            .await
            .context("the demo's ports are taken; pick others with --port")?;
        configs.push(config.clone());
        let stop = stopped(stop_rx.clone());
        let node_config = config.clone();
        tasks.spawn(async move {
            let name = node_config.name.clone();
            node::run(node_config, listeners, stop)
                .await
                .with_context(|| format!("demo box {name} failed"))
        });
        // Boxes come one after the other, as they would in a real network: each
        // finds the supernodes the ones before it made.
        if i == 0 {
            wait_listed(&client, &portal_url).await;
        } else {
            tokio::time::sleep(Duration::from_millis(150)).await;
            // Each box asks its node to watch, as `astral watch demo` would.
            if let Err(e) = watch_stream(&client, config.api, &config.data_dir).await {
                tracing::warn!(node = %config.name, "cannot watch the demo stream: {e:#}");
            }
        }
    }

    println!(
        "Astral demo: a portal, a test-pattern source and {} boxes on loopback.\n",
        args.nodes
    );
    println!("  portal   {portal_url}/   (live streams, watch, the network map)");
    for config in &configs {
        println!(
            "  {:<7}  http://{}/live/{STREAM}.flv   (forwards to {} at most)",
            config.name, config.api, config.max_forwards
        );
    }

    print_tree(&client, &configs).await;

    let last = configs.last().expect("the source is always there");
    println!(
        "\nWatch a box:   ffplay http://{}/live/{STREAM}.flv   (or open it in VLC)",
        last.api
    );
    println!(
        "In a browser:  {portal_url}/watch/{STREAM}?node=http://{}   (through that box)",
        last.api
    );
    println!(
        "Its state:     astral status --api {} --data-dir {}",
        last.api,
        last.data_dir.display()
    );
    println!(
        "Its own page:  http://{}/   (log in with the token in {})",
        last.api,
        node::auth::token_path(&last.data_dir).display()
    );
    println!("Ctrl-C makes every box leave gracefully and stops the demo.");

    let ended = async {
        match args.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        () = ended => {}
        Some(done) = tasks.join_next() => {
            // A box or the portal stopped on its own: that is a failure.
            done??;
            anyhow::bail!("a part of the demo stopped unexpectedly");
        }
    }
    println!("\nleaving…");
    stop_tx.send_replace(true);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Waits (up to five seconds) until the source's stream is on the portal.
async fn wait_listed(client: &reqwest::Client, portal: &str) {
    for _ in 0..50 {
        let listed = async {
            client
                .get(format!("{portal}/api/streams/{STREAM}"))
                .send()
                .await
                .map(|r| r.status().is_success())
        };
        if listed.await.unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("the source's stream is not on the portal yet");
}

async fn watch_stream(
    client: &reqwest::Client,
    api: SocketAddr,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let token = node::auth::read(&node::auth::token_path(data_dir))?;
    let response = client
        .post(format!("http://{api}/streams/{STREAM}/watch"))
        .bearer_auth(token)
        .send()
        .await?;
    if !response.status().is_success() {
        anyhow::bail!("{}: {}", response.status(), response.text().await?);
    }
    Ok(())
}

/// Waits until every box receives the stream (or ten seconds), then prints the tree.
async fn print_tree(client: &reqwest::Client, configs: &[Config]) {
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.clear();
        for config in configs {
            let status = async {
                client
                    .get(format!("http://{}/status", config.api))
                    .send()
                    .await?
                    .json::<Status>()
                    .await
            };
            if let Ok(status) = status.await {
                statuses.push(status);
            }
        }
        let flowing = statuses
            .iter()
            .filter(|s| s.overlay.streams.iter().any(|h| h.flowing))
            .count();
        if flowing == configs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("\nThe relay tree:");
    print_subtree(&statuses, None, 0);
}

fn print_subtree(statuses: &[Status], parent: Option<&str>, depth: usize) {
    for status in statuses {
        let Some(held) = status.overlay.streams.first() else {
            continue;
        };
        if held.parent.as_deref() != parent {
            continue;
        }
        let slots = format!("{} of {} slots used", held.tickets.len(), held.slots);
        println!(
            "  {}{:<8} {}{}",
            "    ".repeat(depth),
            status.name,
            slots,
            if status.overlay.is_supernode {
                ", supernode"
            } else {
                ""
            }
        );
        print_subtree(statuses, Some(status.peer.id.as_str()), depth + 1);
    }
}
