//! `cargo xtask image-test`: boots the amd64 image the way a user's box boots it, and
//! checks that it becomes a node of the network with nothing done by hand.
//!
//! QEMU (TCG), its UEFI firmware (OVMF) and BIOS files come from Debian's packages,
//! unpacked beside the image. The test writes `astral.toml` onto a copy of the image's
//! boot partition, as a user would on the SD card, and adds `modules-load=vivid` to
//! the kernel command line: the vivid driver stands in for the USB camera that udev
//! would load a driver for. Then:
//!
//! 1. the portal on this machine (the guest reaches it at 10.0.2.2) lists the box's
//!    stream: systemd started astral-firstboot and astral-node, the settings were
//!    applied, the node captured from V4L2 and registered;
//! 2. ffprobe, through a forwarded port, decodes the stream at the configured size;
//! 3. the node's status says it is live;
//! 4. an ACPI power-off stops the node cleanly and the machine powers off;
//! 5. the root partition grew to fill a disk bigger than the image;
//! 6. the boot partition now holds `astral.toml.applied`.

use std::fs;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::cross::target_dir;
use crate::image::{self, ImageArch, BOOT_OFFSET};
use crate::run;
use crate::util::{http_get, probe_video, Guard};

const NAME: &str = "imagebox";
/// How much bigger the test's disk is than the image.
const GROW_MIB: u64 = 512;

/// What the test needs per architecture.
struct Guest {
    /// QEMU and the firmware it boots with, from Debian's packages.
    packages: &'static [&'static str],
    /// The camera's mode: less on arm64, whose every instruction QEMU translates.
    width: u32,
    height: u32,
    fps: u32,
    console: &'static str,
}

fn guest(arch: ImageArch) -> Guest {
    match arch {
        ImageArch::Amd64 => Guest {
            packages: &[
                "qemu-system-x86",
                "qemu-system-common",
                "qemu-system-data",
                "ovmf",
                "seabios",
            ],
            width: 640,
            height: 360,
            fps: 15,
            console: "ttyS0,115200",
        },
        ImageArch::Arm64 => Guest {
            packages: &["qemu-system-arm", "qemu-system-common", "qemu-system-data"],
            width: 320,
            height: 240,
            fps: 10,
            console: "ttyAMA0",
        },
    }
}

#[derive(clap::Args)]
pub struct ImageTestArgs {
    /// amd64 boots through UEFI (OVMF, systemd-boot); arm64 boots the image's own
    /// kernel and initrd on QEMU's virt machine, as the Pi's firmware would load them
    #[arg(value_enum, default_value = "amd64")]
    arch: ImageArch,
    /// Boot this image instead of building one
    #[arg(long)]
    image: Option<PathBuf>,
    /// Seconds to wait for the stream to appear on the portal
    #[arg(long, default_value_t = DEFAULT_TIMEOUT)]
    timeout: u64,
}

const DEFAULT_TIMEOUT: u64 = 300;

impl Default for ImageTestArgs {
    fn default() -> ImageTestArgs {
        ImageTestArgs {
            arch: ImageArch::Amd64,
            image: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

pub fn image_test(args: ImageTestArgs) -> anyhow::Result<()> {
    let arch = args.arch;
    let guest_parts = guest(arch);
    let (width, height, fps) = (guest_parts.width, guest_parts.height, guest_parts.fps);
    let image = match args.image {
        Some(image) => image,
        None => image::build(arch)?,
    };
    let work = target_dir()?.join("image-test").join(arch.name());
    fs::create_dir_all(&work)?;
    let qemu = qemu_parts(&work.join("qemu"), guest_parts.packages)?;

    // A copy, set up as a user would set up a card. QEMU's user network is a NAT:
    // the portal sees the box come from 127.0.0.1, so the box advertises that, as a
    // box behind a router with a forwarded port advertises the router's address.
    let disk = work.join("disk.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&image)
        .arg(&disk))?;
    // A card bigger than the image: the root partition must grow into it.
    let image_len = fs::metadata(&disk)?.len();
    fs::OpenOptions::new()
        .write(true)
        .open(&disk)?
        .set_len(image_len + (GROW_MIB << 20))?;
    let portal_port = free_port()?;
    let settings = format!(
        "portal = \"http://10.0.2.2:{portal_port}\"\nname = \"{NAME}\"\n\
         title = \"A box booted from the image\"\nsource = \"v4l2:/dev/video0\"\n\
         advertise = \"127.0.0.1\"\n\n\
         [video]\nsize = \"{width}x{height}\"\nfps = {fps}\nbitrate_kbps = 800\n"
    );
    mtools_write(&disk, "astral.toml", &settings)?;
    let astral = target_dir()?.join("release/astral");
    let portal_dir = tempfile::tempdir()?;
    let db = portal_dir.path().join("portal.db");
    let portal = Guard(
        Command::new(&astral)
            .args(["portal", "--listen"])
            .arg(format!("127.0.0.1:{portal_port}"))
            .arg("--db")
            .arg(&db)
            .stdout(fs::File::create(work.join("portal.log"))?)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", astral.display()))?,
    );

    let up = Instant::now();
    while http_get(&format!("http://127.0.0.1:{portal_port}/api/streams")).is_err() {
        ensure!(
            up.elapsed() < Duration::from_secs(10),
            "the portal did not start; its log is in {}",
            work.join("portal.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (rtmp_port, api_port, monitor_port) = (free_port()?, free_port()?, free_port()?);
    let console = work.join("console.log");
    let started = Instant::now();
    let mut guest = Guard(
        boot_command(arch, guest_parts.console, &qemu, &disk, &work)?
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{rtmp_port}-:1935,\
                 hostfwd=tcp:127.0.0.1:{api_port}-:8000"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .arg("-monitor")
            .arg(format!("tcp:127.0.0.1:{monitor_port},server=on,wait=off"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&console)?)
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start QEMU (its libraries come from ./dev test)")?,
    );
    let console_tail = || {
        let text = fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };

    // 1. The portal lists the box's stream.
    eprintln!("xtask: booting the image under QEMU (TCG); waiting for {NAME} on the portal");
    let portal_url = format!("http://127.0.0.1:{portal_port}/api/streams/{NAME}");
    let listed = loop {
        if let Ok(entry) = http_get(&portal_url) {
            break entry;
        }
        if let Some(status) = guest.0.try_wait()? {
            bail!(
                "the guest stopped ({status}) before its stream was listed:\n{}",
                console_tail()
            );
        }
        if started.elapsed() > Duration::from_secs(args.timeout) {
            bail!(
                "no stream {NAME} on the portal {} s after power-on; the console:\n{}",
                args.timeout,
                console_tail()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let boot_to_listed = started.elapsed();
    let entry: serde_json::Value = serde_json::from_str(&listed)?;
    ensure!(
        entry["width"] == width && entry["height"] == height,
        "the portal lists {NAME} at {}x{}, not {width}x{height}: {listed}",
        entry["width"],
        entry["height"]
    );
    eprintln!(
        "xtask: listed {:.0} s after power-on: {listed}",
        boot_to_listed.as_secs_f64()
    );

    // 2. The stream decodes at its size.
    let probe = probe_video(&format!("rtmp://127.0.0.1:{rtmp_port}/live/{NAME}"), 4)?;
    let frames = probe.frames;
    ensure!(
        (probe.codec.as_str(), probe.width, probe.height) == ("h264", width, height)
            && frames >= 2 * fps,
        "the guest's stream is not {width}x{height} H.264 with {} frames in 4 s: {probe:?}",
        2 * fps
    );
    eprintln!("xtask: ffprobe decodes H.264 {width}x{height}, {frames} frames in 4 s");

    // 3. The node says it is live.
    let status: serde_json::Value =
        serde_json::from_str(&http_get(&format!("http://127.0.0.1:{api_port}/status"))?)?;
    ensure!(
        status["name"] == NAME && status["broadcast"] == "live",
        "the node's status: {status}"
    );

    // 4. A clean power-off.
    let powerdown = Instant::now();
    let mut monitor = TcpStream::connect(("127.0.0.1", monitor_port))?;
    monitor.write_all(b"system_powerdown\n")?;
    let exit = loop {
        if let Some(status) = guest.0.try_wait()? {
            break status;
        }
        if powerdown.elapsed() > Duration::from_secs(90) {
            bail!("the guest did not power off in 90 s:\n{}", console_tail());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(exit.success(), "QEMU exited with {exit}");
    let log = fs::read_to_string(&console)?;
    ensure!(
        log.contains("reboot: Power down"),
        "the guest did not power down cleanly:\n{}",
        console_tail()
    );
    eprintln!(
        "xtask: powered off in {:.1} s",
        powerdown.elapsed().as_secs_f64()
    );

    // The node left: its stream is off the portal at once, not at its expiry.
    ensure!(
        http_get(&portal_url).is_err(),
        "the portal still lists {NAME} after the box powered off"
    );

    // 5. The root partition grew to the end of the disk.
    ensure!(
        log.contains("Finished astral-growroot.service"),
        "the root partition was not grown:\n{}",
        console_tail()
    );
    let table = Command::new("sfdisk").arg("--dump").arg(&disk).output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    let root_end = table
        .lines()
        .filter(|l| l.contains("start="))
        .nth(1)
        .and_then(|l| {
            let field = |name: &str| -> Option<u64> {
                let rest = l.split(&format!("{name}=")).nth(1)?;
                rest.split(',').next()?.trim().parse().ok()
            };
            Some((field("start")? + field("size")?) * 512)
        })
        .with_context(|| format!("no root partition in:\n{table}"))?;
    // growpart leaves the odd sector or two at the end.
    let disk_len = fs::metadata(&disk)?.len();
    ensure!(
        root_end > image_len && disk_len - root_end < 1 << 20,
        "the root partition ends at {root_end}, not at the disk's end ({disk_len}):\n{table}"
    );

    // 6. The settings were applied once.
    let dir = mtools("mdir", &disk).args(["-b", "::/"]).output()?;
    let listing = String::from_utf8_lossy(&dir.stdout);
    ensure!(
        listing.contains("astral.toml.applied") && !listing.contains("astral.toml\n"),
        "the boot partition after the first boot:\n{listing}"
    );
    drop(portal);
    fs::remove_file(&disk)?;
    println!(
        "image test passed: listed on the portal {:.0} s after power-on, {frames} frames \
         in 4 s, powered off in {:.1} s",
        boot_to_listed.as_secs_f64(),
        powerdown.elapsed().as_secs_f64()
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An mtools command on the disk's boot partition.
fn mtools(program: &str, disk: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("-i")
        .arg(format!("{}@@{BOOT_OFFSET}", disk.display()))
        .env("MTOOLS_SKIP_CHECK", "1");
    cmd
}

fn mtools_write(disk: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    fs::write(file.path(), contents)?;
    run(mtools("mcopy", disk)
        .arg("-o")
        .arg(file.path())
        .arg(format!("::/{name}")))
}

fn mtools_read(disk: &Path, name: &str) -> anyhow::Result<String> {
    let out = mtools("mtype", disk)
        .arg(format!("::/{name}"))
        .output()
        .context("cannot run mtype (Debian's mtools)")?;
    ensure!(
        out.status.success(),
        "mtype {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// QEMU booting `disk`. The kernel command line adds `modules-load=vivid`, the
/// camera, and sends the journal to the serial console, which the test keeps: what
/// to read when something fails.
fn boot_command(
    arch: ImageArch,
    console: &str,
    qemu: &Path,
    disk: &Path,
    work: &Path,
) -> anyhow::Result<Command> {
    let extra =
        format!("modules-load=vivid systemd.journald.forward_to_console=1 console={console}");
    let mut cmd;
    match arch {
        ImageArch::Amd64 => {
            // UEFI firmware, then systemd-boot and its loader entry.
            let entry = mtools_read(disk, "loader/entries/astral.conf")?;
            let entry = format!("{} {extra}\n", entry.trim_end());
            mtools_write(disk, "loader/entries/astral.conf", &entry)?;
            let vars = work.join("OVMF_VARS.fd");
            fs::copy(qemu.join("usr/share/OVMF/OVMF_VARS_4M.fd"), &vars)?;
            cmd = Command::new(qemu.join("usr/bin/qemu-system-x86_64"));
            cmd.arg("-L")
                .arg(qemu.join("usr/share/seabios"))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    qemu.join("usr/share/OVMF/OVMF_CODE_4M.fd").display()
                ))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        ImageArch::Arm64 => {
            // What the Pi's firmware would load, as config.txt and cmdline.txt
            // name it, on QEMU's generic machine.
            let config = mtools_read(disk, "config.txt")?;
            let named = |key: &str| {
                config
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(key))
                    .map(|v| v.trim().to_owned())
                    .with_context(|| format!("no {key:?} line in config.txt"))
            };
            let kernel = work.join("vmlinuz");
            let initrd = work.join("initrd.img");
            mtools_copy_out(disk, &named("kernel=")?, &kernel)?;
            mtools_copy_out(disk, &named("initramfs ")?, &initrd)?;
            let cmdline = mtools_read(disk, "cmdline.txt")?;
            cmd = Command::new(qemu.join("usr/bin/qemu-system-aarch64"));
            cmd.args(["-M", "virt", "-cpu", "cortex-a72"])
                .arg("-kernel")
                .arg(&kernel)
                .arg("-initrd")
                .arg(&initrd)
                .arg("-append")
                .arg(format!("{} {extra}", cmdline.trim()));
        }
    }
    cmd.arg("-L")
        .arg(qemu.join("usr/share/qemu"))
        .args(["-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-drive")
        .arg(format!("if=virtio,format=raw,file={}", disk.display()));
    Ok(cmd)
}

fn mtools_copy_out(disk: &Path, name: &str, to: &Path) -> anyhow::Result<()> {
    run(mtools("mcopy", disk)
        .arg("-o")
        .arg(format!("::/{name}"))
        .arg(to))
}

/// Debian's QEMU and firmware packages, unpacked once into `dir`.
fn qemu_parts(dir: &Path, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    let done = dir.join("unpacked");
    if fs::read_to_string(&done).is_ok_and(|s| s == packages.join(" ")) {
        return Ok(root);
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    run(Command::new("apt-get")
        .arg("download")
        .args(packages)
        .current_dir(&debs))
    .context("apt-get download of QEMU failed: run `apt-get update` and try again")?;
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::write(&done, packages.join(" "))?;
    Ok(root)
}
