//! Project automation: `cargo xtask demo|test|bench`. Reached through `./dev`, which
//! first installs what a fresh machine is missing.

mod bench;

use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build in release mode and run `astral demo` (extra arguments go to it)
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting, lints, and every test of the workspace
    Test,
    /// Benchmarks, printed as ratios against a peer run beside them
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Demo { args } => {
            let mut cmd = cargo();
            cmd.args(["run", "--release", "--bin", "astral", "--", "demo"])
                .args(args);
            run(&mut cmd)
        }
        Task::Test => {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            run(cargo().args(["test", "--workspace"]))
        }
        Task::Bench { which } => bench::run(which),
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
