//! `astral`: the one binary. Subcommands only; each one's logic lives in its crate.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Live video from home boxes over a peer-to-peer relay tree.
#[derive(Parser)]
#[command(name = "astral", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: the daemon of every box
    Node(Box<node::NodeArgs>),
    /// Run a portal, a test-pattern source and a few boxes on loopback, and print their URLs
    Demo(demo::DemoArgs),
    /// Run the portal: supernode bootstrap and the directory of live streams
    Portal(portal::PortalArgs),
    /// Simulate the overlay with many boxes and churn, and print what it measured
    Sim(sim::Params),
    /// Apply the first-boot settings from the boot partition (run by the image's
    /// astral-firstboot service)
    Firstboot(node::firstboot::FirstBootArgs),
    #[command(flatten)]
    Local(node::cli::Command),
}

/// Exit status for a configuration that cannot work (sysexits' EX_USAGE); the systemd
/// unit does not restart on it.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Firstboot(args) = &cli.command {
        return firstboot(args);
    }
    if let Command::Sim(params) = &cli.command {
        let report = sim::run(params);
        print!("{report}");
        return if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // The demo and the CLI talk to people on the terminal: only trouble is logged.
    let default_log = match cli.command {
        Command::Demo(_) | Command::Local(_) => "warn",
        _ => "info",
    };
    // Lines go to stderr (the journal, under systemd) and to the admin page's log.
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_env("ASTRAL_LOG").unwrap_or_else(|_| EnvFilter::new(default_log)))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| node::logs::recent().writer()),
        )
        .init();

    // A node serves a handful of sockets (its upstream, one or two child boxes, local
    // players): one thread carries that many times over, and spares every tag the
    // cross-thread wake-ups of a multi-threaded scheduler. Capture has threads of its
    // own. The demo runs several nodes in one process and gets a worker per core.
    let mut builder = match cli.command {
        Command::Node(_) | Command::Local(_) => tokio::runtime::Builder::new_current_thread(),
        Command::Portal(_) => tokio::runtime::Builder::new_multi_thread(),
        Command::Demo(_) => tokio::runtime::Builder::new_multi_thread(),
        Command::Sim(_) | Command::Firstboot(_) => unreachable!("handled above"),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("astral: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Node(args) => {
            let config = match node::Config::load(&args) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("astral: bad configuration: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            runtime.block_on(async {
                let listeners = node::Listeners::bind(&config).await?;
                node::run(config, listeners, shutdown_signal()).await
            })
        }
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Local(command) => runtime.block_on(node::cli::run(command)),
        Command::Portal(args) => runtime.block_on(async {
            portal::Portal::open(&args)
                .await?
                .serve(shutdown_signal())
                .await
        }),
        Command::Sim(_) | Command::Firstboot(_) => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("astral: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn firstboot(args: &node::firstboot::FirstBootArgs) -> ExitCode {
    match node::firstboot::apply(args) {
        Ok(None) => {
            println!("astral: no {}, nothing to apply", args.settings.display());
            ExitCode::SUCCESS
        }
        Ok(Some(applied)) => {
            if !applied.keys.is_empty() {
                println!(
                    "astral: set {} in {}",
                    applied.keys.join(", "),
                    args.config.display()
                );
            }
            if let Some(wifi) = applied.wifi {
                println!("astral: wrote the Wi-Fi network to {}", wifi.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("astral: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
