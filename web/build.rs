//! Bundles the pages' JavaScript with esbuild, from the npm packages that
//! `package-lock.json` pins, into `OUT_DIR`; `src/lib.rs` embeds the result.
//!
//! `npm ci` runs when `node_modules` is missing or older than the lockfile, so a fresh
//! clone builds with one `cargo build` where Node.js and npm are installed (`./dev`
//! installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Entry points, each bundled with what it imports into one file of the same name.
const ENTRIES: &[&str] = &["ui/portal.js", "ui/admin.js"];

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    for watched in ["ui", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed={watched}");
    }
    if let Err(e) = npm_ci(&dir).and_then(|()| bundle(&dir, &out)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn npm_ci(dir: &Path) -> Result<(), String> {
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&installed) >= modified(&dir.join("package-lock.json")) {
        return Ok(());
    }
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir),
        "npm ci (Node.js and npm are needed to build: `./dev` installs them, or `sudo apt install nodejs npm`)",
    )
}

fn bundle(dir: &Path, out: &Path) -> Result<(), String> {
    let mut esbuild = Command::new(dir.join("node_modules/.bin/esbuild"));
    esbuild
        .args(ENTRIES)
        .args([
            "--bundle",
            "--minify",
            "--format=iife",
            "--target=es2020",
            "--log-level=warning",
            "--legal-comments=eof",
        ])
        .arg(format!("--outdir={}", out.display()))
        .current_dir(dir);
    run(&mut esbuild, "esbuild")
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{what} failed: {status}")),
        Err(e) => Err(format!("cannot run {what}: {e}")),
    }
}
