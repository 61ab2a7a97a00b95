//! `cargo xtask cross aarch64|armv7`: the box's binary for a Raspberry Pi, built on
//! this machine with Debian's cross gcc, no containers.
//!
//! The target's libraries (FFmpeg and everything it links, the C library) come from
//! Debian bookworm's packages for that architecture, resolved and downloaded by apt
//! with a private state directory and unpacked with `dpkg -x` into a sysroot under
//! `target/sysroot/`. The host's dpkg is never touched, so no multiarch setup is
//! needed, and armhf works where the mirror's multiarch does not. bindgen (FFmpeg,
//! V4L2) and the linker both use the sysroot.
//!
//! `--check` then runs the binary under qemu-user: `astral --version`, and a node
//! publishing the test pattern, whose stream ffprobe must decode.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::util::{probe_video, Guard};
use crate::{cargo, run};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// 64-bit Raspberry Pi OS (Pi 3, 4, 5)
    Aarch64,
    /// 32-bit Raspberry Pi OS (Pi 2 and later)
    Armv7,
}

impl Arch {
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
            Arch::Armv7 => "armv7-unknown-linux-gnueabihf",
        }
    }

    /// Debian's name of the architecture.
    pub fn deb_arch(self) -> &'static str {
        match self {
            Arch::Aarch64 => "arm64",
            Arch::Armv7 => "armhf",
        }
    }

    /// The GNU triple: Debian's multiarch directory and the cross tools' prefix.
    fn gnu(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-linux-gnu",
            Arch::Armv7 => "arm-linux-gnueabihf",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::Aarch64 => "qemu-aarch64-static",
            Arch::Armv7 => "qemu-arm-static",
        }
    }

    fn loader(self) -> &'static str {
        match self {
            Arch::Aarch64 => "lib/ld-linux-aarch64.so.1",
            Arch::Armv7 => "lib/ld-linux-armhf.so.3",
        }
    }
}

#[derive(clap::Args)]
pub struct CrossArgs {
    arch: Arch,
    /// Then run the binary under qemu-user and check the stream it publishes
    #[arg(long)]
    check: bool,
}

impl CrossArgs {
    /// Build for `arch` and check the binary.
    pub fn check(arch: Arch) -> CrossArgs {
        CrossArgs { arch, check: true }
    }
}

/// The target packages the build links against, with everything they depend on.
const SYSROOT_PACKAGES: &[&str] = &[
    "libc6-dev",
    "libavcodec-dev",
    "libavdevice-dev",
    "libavfilter-dev",
    "libavformat-dev",
    "libavutil-dev",
    "libswresample-dev",
    "libswscale-dev",
];

const DEBIAN_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

pub fn cross(args: CrossArgs) -> anyhow::Result<()> {
    let binary = build(args.arch)?;
    println!("{}", binary.display());
    if args.check {
        check(args.arch, &binary)?;
    }
    Ok(())
}

/// Builds `astral` in release mode for `arch`; returns the binary's path.
pub fn build(arch: Arch) -> anyhow::Result<PathBuf> {
    let target = arch.rust_target();
    let gcc = format!("{}-gcc", arch.gnu());
    ensure!(
        which(&gcc),
        "{gcc} not found: install Debian's gcc-{} (./dev cross does)",
        arch.gnu()
    );
    add_rust_target(target)?;
    let sysroot = sysroot(arch)?;
    let root = sysroot.display().to_string();

    let upper = target.to_uppercase().replace('-', "_");
    let lower = target.replace('-', "_");
    let mut clang_args = format!("--sysroot={root}");
    if arch == Arch::Armv7 {
        // bindgen's clang rejects a 32-bit-only _Static_assert in FFmpeg's headers.
        clang_args.push_str(" -D_Static_assert(c,m)=");
    }
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--bin", "astral", "--target", target])
        .env(format!("CARGO_TARGET_{upper}_LINKER"), &gcc)
        .env(
            format!("CARGO_TARGET_{upper}_RUSTFLAGS"),
            format!("-C link-arg=--sysroot={root}"),
        )
        .env(format!("CC_{lower}"), &gcc)
        .env(format!("BINDGEN_EXTRA_CLANG_ARGS_{lower}"), clang_args)
        .env("PKG_CONFIG_ALLOW_CROSS", "1")
        .env("PKG_CONFIG_SYSROOT_DIR", &sysroot)
        .env(
            "PKG_CONFIG_LIBDIR",
            format!(
                "{root}/usr/lib/{}/pkgconfig:{root}/usr/share/pkgconfig",
                arch.gnu()
            ),
        );
    run(&mut cmd)?;
    Ok(target_dir()?.join(target).join("release/astral"))
}

pub fn target_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    Ok(workspace_root()?.join("target"))
}

pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask lies in the workspace")?
        .to_path_buf())
}

fn add_rust_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup: cross builds need a rustup toolchain")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|t| t == target)
    {
        run(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The sysroot for `arch`, made once and kept while the package list is the same.
pub fn sysroot(arch: Arch) -> anyhow::Result<PathBuf> {
    let dir = target_dir()?.join("sysroot").join(arch.deb_arch());
    let root = dir.join("root");
    let stamp = dir.join("packages");
    // Bump the recipe when the way the sysroot is made changes.
    let wanted = format!("recipe 2\n{}", SYSROOT_PACKAGES.join("\n"));
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(root);
    }
    eprintln!(
        "xtask: making the {} sysroot in {}",
        arch.deb_arch(),
        dir.display()
    );
    let apt = dir.join("apt");
    let archives = apt.join("archives");
    for d in [apt.join("lists/partial"), archives.join("partial")] {
        fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    fs::write(apt.join("sources.list"), DEBIAN_SOURCES)?;
    // An empty dpkg status: apt resolves the whole closure, as for a new system.
    fs::write(apt.join("status"), "")?;
    let options = |cmd: &mut Command| {
        for (key, value) in [
            ("APT::Architecture", arch.deb_arch().to_owned()),
            ("APT::Architectures", arch.deb_arch().to_owned()),
            ("Dir::State::Lists", apt.join("lists").display().to_string()),
            (
                "Dir::State::status",
                apt.join("status").display().to_string(),
            ),
            ("Dir::Cache::archives", archives.display().to_string()),
            ("Dir::Cache::pkgcache", String::new()),
            ("Dir::Cache::srcpkgcache", String::new()),
            (
                "Dir::Etc::SourceList",
                apt.join("sources.list").display().to_string(),
            ),
            ("Dir::Etc::SourceParts", "/nonexistent".to_owned()),
            ("Debug::NoLocking", "1".to_owned()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
    };
    let mut update = Command::new("apt-get");
    options(&mut update);
    // A mirror caught mid-sync serves an index that fails its hash (seen here with
    // bookworm-security for armhf): the build goes on with the indexes that came.
    if let Err(e) = run(update.args(["-qq", "update"])) {
        eprintln!("xtask: warning: {e:#}; going on with the package indexes apt did read");
    }
    let mut download = Command::new("apt-get");
    options(&mut download);
    run(download
        .args([
            "-qq",
            "-y",
            "--no-install-recommends",
            "--download-only",
            "install",
        ])
        .args(SYSROOT_PACKAGES))?;

    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    let mut debs: Vec<PathBuf> = fs::read_dir(&archives)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    eprintln!("xtask: unpacking {} packages", debs.len());
    for deb in &debs {
        run_quiet(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
    }
    relink_absolute(&root, &root)?;
    // What update-alternatives would do on a real system: the BLAS and LAPACK that
    // FFmpeg's dependencies link sit in subdirectories of their own.
    let libdir = root.join("usr/lib").join(arch.gnu());
    for alternative in ["blas", "lapack"] {
        let Ok(entries) = fs::read_dir(libdir.join(alternative)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let link = libdir.join(&name);
            if !link.exists() && name.to_string_lossy().contains(".so") {
                std::os::unix::fs::symlink(Path::new(alternative).join(&name), link)?;
            }
        }
    }
    separate_ffmpeg_headers(&root, arch)?;
    fs::write(&stamp, wanted)?;
    Ok(root)
}

/// Gives FFmpeg's headers an include directory of their own.
///
/// Debian keeps them in the multiarch directory beside the C library's
/// architecture headers, and ffmpeg-sys-next compiles a feature check for the
/// *host* with FFmpeg's include path: the target's `gnu/stubs.h` would win over the
/// host's (for armhf it then asks for a soft-float header). So each FFmpeg library
/// gets a link in `usr/include/TRIPLE/ffmpeg/`, and its pkg-config file points there.
fn separate_ffmpeg_headers(root: &Path, arch: Arch) -> anyhow::Result<()> {
    let multiarch = format!("/usr/include/{}", arch.gnu());
    let own = root.join(multiarch.trim_start_matches('/')).join("ffmpeg");
    fs::create_dir_all(&own)?;
    let pkgconfig = root.join("usr/lib").join(arch.gnu()).join("pkgconfig");
    for entry in fs::read_dir(&pkgconfig)? {
        let path = entry?.path();
        let Some(library) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let text = fs::read_to_string(&path)?;
        let old = format!("includedir={multiarch}\n");
        if !text.contains(&old) || !root.join(&multiarch[1..]).join(library).is_dir() {
            continue;
        }
        std::os::unix::fs::symlink(Path::new("..").join(library), own.join(library))?;
        let new = format!("includedir={multiarch}/ffmpeg\n");
        fs::write(&path, text.replace(&old, &new))?;
    }
    Ok(())
}

/// Points the absolute symlinks under `dir` (`/lib/…/libm.so.6`) into the sysroot.
fn relink_absolute(root: &Path, dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            relink_absolute(root, &path)?;
        } else if meta.is_symlink() {
            let target = fs::read_link(&path)?;
            if let Ok(inside) = target.strip_prefix("/") {
                let parent = path.parent().context("a link has a parent")?;
                let depth = parent.strip_prefix(root)?.components().count();
                let mut relative = PathBuf::new();
                for _ in 0..depth {
                    relative.push("..");
                }
                relative.push(inside);
                fs::remove_file(&path)?;
                std::os::unix::fs::symlink(relative, &path)?;
            }
        }
    }
    Ok(())
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A command running `binary` under qemu-user with the sysroot's loader and
/// libraries. (QEMU_LD_PREFIX would do the same, but it makes qemu look up every
/// path in the sysroot first, and the node's threads hang on it.)
fn emulated(arch: Arch, binary: &Path) -> anyhow::Result<Command> {
    ensure!(
        which(arch.qemu()),
        "{} not found: install Debian's qemu-user-static",
        arch.qemu()
    );
    let root = sysroot(arch)?;
    let mut dirs: Vec<String> = Vec::new();
    for top in [root.join("lib"), root.join("usr/lib")] {
        library_dirs(&top.join(arch.gnu()), &mut dirs)?;
    }
    let mut cmd = Command::new(arch.qemu());
    cmd.arg(root.join(arch.loader()))
        .arg("--library-path")
        .arg(dirs.join(":"))
        .arg(binary);
    Ok(cmd)
}

fn library_dirs(dir: &Path, found: &mut Vec<String>) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut has_libraries = false;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            library_dirs(&path, found)?;
        } else if entry.file_name().to_string_lossy().contains(".so") {
            has_libraries = true;
        }
    }
    if has_libraries {
        found.push(dir.display().to_string());
    }
    Ok(())
}

/// Runs the cross-built binary under qemu-user: its version, then a node publishing
/// the test pattern, whose stream ffprobe must decode at the configured size.
fn check(arch: Arch, binary: &Path) -> anyhow::Result<()> {
    let out = emulated(arch, binary)?
        .arg("--version")
        .output()
        .context("cannot run the binary under qemu-user")?;
    let version = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && version.starts_with("astral "),
        "`astral --version` under {} failed ({}): {version}{}",
        arch.qemu(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("xtask: {} says {}", arch.qemu(), version.trim());

    let data = tempfile::tempdir().context("cannot make a data directory")?;
    let data = data.path();
    let rtmp_port = 29_000 + std::process::id() % 1000;
    let api_port = rtmp_port + 1000;
    let log = fs::File::create(data.join("node.log"))?;
    let node = Guard(
        emulated(arch, binary)?
            .args(["node", "--name", "pi", "--source", "test-pattern"])
            .args(["--size", "320x240", "--fps", "15", "--bitrate-kbps", "400"])
            .arg("--rtmp")
            .arg(format!("127.0.0.1:{rtmp_port}"))
            .arg("--api")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg("--data-dir")
            .arg(data)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the node under qemu-user")?,
    );
    let url = format!("rtmp://127.0.0.1:{rtmp_port}/live/pi");
    let started = Instant::now();
    let probe = loop {
        match probe_video(&url, 3) {
            Ok(probe) => break probe,
            Err(e) if started.elapsed() > Duration::from_secs(60) => bail!(
                "no stream from the emulated node in 60 s ({e:#}); its log:\n{}",
                fs::read_to_string(data.join("node.log")).unwrap_or_default()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    drop(node);
    ensure!(
        (probe.codec.as_str(), probe.width, probe.height) == ("h264", 320, 240)
            && probe.frames >= 15,
        "the emulated node's stream is not 320x240 H.264 with at least 15 frames in 3 s: \
         {probe:?}"
    );
    eprintln!(
        "xtask: the {} node's stream decodes: H.264 320x240, {} frames in 3 s",
        arch.deb_arch(),
        probe.frames
    );
    Ok(())
}
