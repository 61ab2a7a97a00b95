//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/` for a bounded number of
//! executions, starting from the corpus kept in the repository, and a table of what
//! each did. It builds and keeps its copy of the corpus under the target directory's
//! `fuzz/`. Needs Rust nightly and cargo-fuzz, which it installs when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The targets, in `fuzz/fuzz_targets/`.
const TARGETS: [&str; 4] = ["overlay_messages", "api_bodies", "rtmp_session", "flv_avc"];

#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// Executions per target
    #[arg(long, default_value_t = 100_000)]
    pub runs: u64,
    /// Only these targets [default: all]
    pub targets: Vec<String>,
}

impl FuzzArgs {
    /// What the tests run: a short pass over every target.
    pub fn smoke() -> FuzzArgs {
        FuzzArgs {
            runs: 20_000,
            targets: Vec::new(),
        }
    }
}

/// One target's run, from libFuzzer's final statistics.
struct Ran {
    target: String,
    executions: u64,
    seconds: u64,
    new_units: u64,
}

pub fn fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf();
    ensure_tools()?;
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets.clone()
    };
    let mut ran = Vec::new();
    for target in &targets {
        eprintln!("xtask: fuzzing {target} for {} executions", args.runs);
        ran.push(run_target(&root, target, args.runs)?);
    }
    println!("| target | executions | seconds | new corpus units | findings |");
    println!("|---|---:|---:|---:|---:|");
    for r in &ran {
        println!(
            "| {} | {} | {} | {} | 0 |",
            r.target, r.executions, r.seconds, r.new_units
        );
    }
    Ok(())
}

/// Nightly and cargo-fuzz, installed if missing.
fn ensure_tools() -> anyhow::Result<()> {
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!(
            "fuzzing needs Rust nightly through rustup, and there is no rustup here: \
             install it (https://rustup.rs), or let ./dev install it where cargo is missing"
        );
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        eprintln!("xtask: installing Rust nightly (cargo-fuzz builds with sanitizers)");
        crate::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let cargo_fuzz = nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !cargo_fuzz {
        eprintln!("xtask: installing cargo-fuzz");
        crate::run(nightly_cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Nightly's cargo, whichever toolchain runs xtask.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

/// Runs `target` from a working copy of its corpus (libFuzzer adds what it finds to
/// the first directory given, so the repository's stays as committed).
fn run_target(root: &Path, target: &str, runs: u64) -> anyhow::Result<Ran> {
    let kept = root.join("fuzz/corpus").join(target);
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("fuzz");
    let work = out.join("corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let artifacts = out.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let output = nightly_cargo()
        .current_dir(root)
        .args(["fuzz", "run", "--fuzz-dir", "fuzz"])
        .arg("--target-dir")
        .arg(out.join("build"))
        .arg(target)
        .arg(&work)
        .arg(&kept)
        .arg("--")
        .arg(format!("-runs={runs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-max_len=8192", "-print_final_stats=1"])
        .output()
        .context("cannot run cargo fuzz")?;
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed (a finding, or the build): the input is in {}\n{}",
            artifacts.display(),
            tail.join("\n")
        );
    }
    let stat = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // "Done 20000 runs in 3 second(s)"
    let seconds = log
        .lines()
        .find_map(|l| l.strip_prefix("Done ")?.split(" runs in ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(Ran {
        target: target.to_owned(),
        executions: stat("number_of_executed_units"),
        seconds,
        new_units: stat("new_units_added"),
    })
}
