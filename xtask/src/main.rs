//! Project automation: `cargo xtask demo|test|bench`. Reached through `./dev`, which
//! first installs what a fresh machine is missing.

mod bench;
mod capture_bench;
mod cross;
mod fuzz;
mod image;
mod image_test;
mod latency_bench;
mod package;
mod plot;
mod testbed_cmd;
mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
    /// Formatting, lints, every test of the workspace, a short pass of each fuzz
    /// target, and the box as shipped
    Test,
    /// Benchmarks, printed as ratios against a peer run beside them
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// The box's binary for a Raspberry Pi, with Debian's cross gcc and a sysroot of
    /// Debian's packages (no containers)
    Cross(cross::CrossArgs),
    /// The Debian package (cargo-deb): the binary, units, default config
    Deb(package::DebArgs),
    /// A bootable Debian bookworm disk image with the node installed (needs root)
    Image(image::ImageArgs),
    /// Build an image, boot it under QEMU and check it joins a portal and streams
    ImageTest(image_test::ImageTestArgs),
    /// Many boxes in network namespaces with household uploads (needs root)
    Testbed(testbed_cmd::TestbedArgs),
    /// The cargo-fuzz targets, each for a bounded number of executions (Rust nightly
    /// and cargo-fuzz, installed if missing)
    Fuzz(fuzz::FuzzArgs),
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
            test_workspace()?;
            fuzz::fuzz(fuzz::FuzzArgs::smoke())?;
            test_appliance()
        }
        Task::Bench { which } => bench::run(which),
        Task::Cross(args) => cross::cross(args),
        Task::Deb(args) => package::deb_command(args),
        Task::Image(args) => image::image_command(args),
        Task::ImageTest(args) => image_test::image_test(args),
        Task::Testbed(args) => testbed_cmd::testbed(args),
        Task::Fuzz(args) => fuzz::fuzz(args),
    }
}

/// Runs every test, passing cargo's output through, and closes with one summary
/// line over all test binaries (cargo's own last line is whichever binary ran last,
/// often a doc-test run of none).
fn test_workspace() -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--color", "never"])
        .stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("cargo test's output")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            for part in result.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("\n{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The box as users get it: the Pi's binary, run under qemu-user, and the amd64
/// image booted under QEMU. Both need an x86_64 Debian host; the image needs root.
fn test_appliance() -> anyhow::Result<()> {
    if !cfg!(target_arch = "x86_64") {
        println!("skipped the cross-built binary and image tests: they run on x86_64 hosts");
        return Ok(());
    }
    cross::cross(cross::CrossArgs::check(cross::Arch::Aarch64))?;
    if !image::is_root() {
        println!(
            "skipped the image test: it needs root (sudo ./dev test, or sudo ./dev image-test)"
        );
        return Ok(());
    }
    image_test::image_test(image_test::ImageTestArgs::default())
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
