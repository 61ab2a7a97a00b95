//! `cargo xtask deb [--arch amd64|arm64|armhf]`: the Debian package, through
//! cargo-deb. Its contents are declared in the root Cargo.toml
//! (`[package.metadata.deb]`); a Pi's binary comes from `cross`.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context};

use crate::cross::{self, Arch};
use crate::util::host_deb_arch;
use crate::{cargo, run};

/// The cargo-deb this project's packaging is written for.
const CARGO_DEB: &str = "3.8.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DebArch {
    Amd64,
    Arm64,
    Armhf,
}

impl DebArch {
    pub fn name(self) -> &'static str {
        match self {
            DebArch::Amd64 => "amd64",
            DebArch::Arm64 => "arm64",
            DebArch::Armhf => "armhf",
        }
    }

    /// The cross build for this architecture, or None when this machine is one.
    fn cross(self) -> anyhow::Result<Option<Arch>> {
        if host_deb_arch()? == self.name() {
            return Ok(None);
        }
        match self {
            DebArch::Amd64 => bail!("amd64 packages are built on an amd64 machine"),
            DebArch::Arm64 => Ok(Some(Arch::Aarch64)),
            DebArch::Armhf => Ok(Some(Arch::Armv7)),
        }
    }
}

#[derive(clap::Args)]
pub struct DebArgs {
    #[arg(long, value_enum, default_value = "amd64")]
    arch: DebArch,
}

pub fn deb_command(args: DebArgs) -> anyhow::Result<()> {
    let deb = deb(args.arch)?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the package for `arch` (and its -dbgsym package beside it); returns the
/// .deb's path.
pub fn deb(arch: DebArch) -> anyhow::Result<PathBuf> {
    install_cargo_deb()?;
    let out = cross::target_dir()?.join("debian");
    let mut cmd = cargo();
    cmd.args(["deb", "-p", "astral", "--dbgsym", "--output"])
        .arg(&out);
    if let Some(cross_arch) = arch.cross()? {
        cross::build(cross_arch)?;
        cmd.args(["--no-build", "--target", cross_arch.rust_target()]);
    }
    eprintln!("xtask: {cmd:?}");
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo deb")?;
    if !output.status.success() {
        bail!("cargo deb failed ({})", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb did not say where the package is")
}

fn install_cargo_deb() -> anyhow::Result<()> {
    let version = cargo().args(["deb", "--version"]).output();
    if version.is_ok_and(|v| String::from_utf8_lossy(&v.stdout).contains(CARGO_DEB)) {
        return Ok(());
    }
    run(cargo().args(["install", "--locked", "cargo-deb", "--version", CARGO_DEB]))
}
