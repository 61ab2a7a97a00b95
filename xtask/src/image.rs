//! `cargo xtask image amd64|arm64`: a bootable Debian bookworm disk image with the
//! astral package installed and its node enabled.
//!
//! The root file system is made by debootstrap (for arm64 its second stage runs
//! under qemu-user through binfmt_misc), then the file systems are made from folders
//! without mounting anything: `mkfs.ext4 -d` for the root, `mkfs.vfat` and mtools for
//! the boot partition, and both are written into an MBR disk image:
//!
//! - partition 1, FAT32 `ASTRAL-BOOT`, mounted at /boot/firmware: on amd64 the UEFI
//!   system partition with systemd-boot, the kernel and its initrd; on arm64 the
//!   Raspberry Pi's firmware, kernel and device trees from Debian's raspi-firmware
//!   and linux-image-arm64, as Debian's own Pi images have them. Either way it holds
//!   `astral.toml`, the first-boot settings a user edits on any computer.
//! - partition 2, ext4 `astral-root`, grown to fill the disk at first boot.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};

use crate::cross::target_dir;
use crate::package::{self, DebArch};
use crate::run;
use crate::util::host_deb_arch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageArch {
    /// A PC or a virtual machine, booting through UEFI
    Amd64,
    /// A Raspberry Pi 3, 4 or 400
    Arm64,
}

impl ImageArch {
    fn deb(self) -> DebArch {
        match self {
            ImageArch::Amd64 => DebArch::Amd64,
            ImageArch::Arm64 => DebArch::Arm64,
        }
    }

    pub fn name(self) -> &'static str {
        self.deb().name()
    }

    /// Packages beyond debootstrap's minimal base; astral's own dependencies come
    /// with its package.
    fn packages(self) -> &'static [&'static str] {
        match self {
            ImageArch::Amd64 => &["linux-image-amd64", "systemd-boot-efi"],
            ImageArch::Arm64 => &["linux-image-arm64", "raspi-firmware", "firmware-brcm80211"],
        }
    }
}

/// Both architectures: init, devices, network, clock, Wi-Fi, growing the root.
const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "systemd-resolved",
    "systemd-timesyncd",
    "iproute2",
    "wpasupplicant",
    "cloud-guest-utils",
    "fdisk",
    "dosfstools",
];

const MIRROR: &str = "http://deb.debian.org/debian";

/// Sizes in MiB.
const BOOT_MIB: u64 = 256;
const ROOT_SLACK_MIB: u64 = 300;

#[derive(clap::Args)]
pub struct ImageArgs {
    #[arg(value_enum)]
    arch: ImageArch,
}

pub fn image_command(args: ImageArgs) -> anyhow::Result<()> {
    let image = build(args.arch)?;
    println!("{}", image.display());
    Ok(())
}

/// Builds the image for `arch`; returns its path.
pub fn build(arch: ImageArch) -> anyhow::Result<PathBuf> {
    ensure!(
        is_root(),
        "building an image needs root (debootstrap, chroot)"
    );
    let deb = package::deb(arch.deb())?;
    let work = target_dir()?.join("image").join(arch.name());
    fs::create_dir_all(&work)?;
    let rootfs = work.join("rootfs");
    if rootfs.exists() {
        // Whatever an interrupted run left mounted goes first.
        drop(Mounts::leftover(&rootfs));
        // A half-built tree from an interrupted run: start again.
        fs::remove_dir_all(&rootfs)
            .with_context(|| format!("cannot remove {}", rootfs.display()))?;
    }
    debootstrap(arch, &rootfs)?;
    let mounts = Mounts::mount(&rootfs)?;
    configure(arch, &rootfs)?;
    install_packages(arch, &rootfs, &deb)?;
    drop(mounts);
    clean(&rootfs)?;

    let boot = work.join("boot");
    if boot.exists() {
        fs::remove_dir_all(&boot)?;
    }
    stage_boot(arch, &rootfs, &boot)?;
    let image = target_dir()?.join(format!("astral-{}.img", arch.name()));
    assemble(arch, &work, &rootfs, &boot, &image)?;
    Ok(image)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn debootstrap(arch: ImageArch, rootfs: &Path) -> anyhow::Result<()> {
    let foreign = host_deb_arch()? != arch.name();
    if foreign {
        register_binfmt(arch)?;
    }
    eprintln!(
        "xtask: debootstrap bookworm {} into {} (a few minutes)",
        arch.name(),
        rootfs.display()
    );
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--arch", arch.name()])
        .arg("--components=main,non-free-firmware")
        .arg(format!("--include={}", BASE_PACKAGES.join(",")))
        .args(["bookworm"])
        .arg(rootfs)
        .arg(MIRROR))
}

/// Lets the kernel run arm64 programs in the chroot through qemu-user-static.
fn register_binfmt(arch: ImageArch) -> anyhow::Result<()> {
    let name = match arch {
        ImageArch::Arm64 => "qemu-aarch64",
        ImageArch::Amd64 => "qemu-x86_64",
    };
    let misc = Path::new("/proc/sys/fs/binfmt_misc");
    if !misc.join("register").exists() {
        run(Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(misc))?;
    }
    if !misc.join(name).exists() {
        let conf = format!("/usr/lib/binfmt.d/{name}.conf");
        ensure!(
            Path::new(&conf).exists(),
            "{conf} not found: install Debian's qemu-user-static"
        );
        run(Command::new("/usr/lib/systemd/systemd-binfmt").arg(&conf))?;
    }
    Ok(())
}

/// /proc, /sys and /dev in the chroot while packages install; unmounted on drop.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn leftover(rootfs: &Path) -> Mounts {
        Mounts(
            ["proc", "sys", "dev", "dev/pts"]
                .iter()
                .map(|dir| rootfs.join(dir))
                .collect(),
        )
    }

    fn mount(rootfs: &Path) -> anyhow::Result<Mounts> {
        let mut mounts = Mounts(Vec::new());
        for (dir, how) in [
            ("proc", ["-t", "proc", "proc"]),
            ("sys", ["-t", "sysfs", "sysfs"]),
            ("dev", ["--bind", "/dev", ""]),
            ("dev/pts", ["--bind", "/dev/pts", ""]),
        ] {
            let target = rootfs.join(dir);
            let args: Vec<&str> = how.iter().copied().filter(|a| !a.is_empty()).collect();
            run(Command::new("mount").args(args).arg(&target))?;
            mounts.0.push(target);
        }
        Ok(mounts)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(target)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn write(rootfs: &Path, path: &str, contents: &str) -> anyhow::Result<()> {
    let path = rootfs.join(path.trim_start_matches('/'));
    fs::create_dir_all(path.parent().context("a file has a folder")?)?;
    fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn chroot(rootfs: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8"))
}

/// The system's own files, written before the kernel and astral are installed (their
/// hooks read some of them).
fn configure(arch: ImageArch, rootfs: &Path) -> anyhow::Result<()> {
    write(rootfs, "/etc/hostname", "astral\n")?;
    write(
        rootfs,
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\tastral\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    write(
        rootfs,
        "/etc/fstab",
        "# The image's two partitions, by label.\n\
         LABEL=astral-root\t/\text4\tdefaults,noatime\t0\t1\n\
         LABEL=ASTRAL-BOOT\t/boot/firmware\tvfat\tdefaults,noatime,umask=0022\t0\t2\n",
    )?;
    write(
        rootfs,
        "/etc/apt/sources.list",
        "deb http://deb.debian.org/debian bookworm main non-free-firmware\n\
         deb http://deb.debian.org/debian bookworm-updates main non-free-firmware\n\
         deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware\n",
    )?;
    write(
        rootfs,
        "/etc/systemd/network/20-wired.network",
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    )?;
    write(
        rootfs,
        "/etc/systemd/network/25-wireless.network",
        "[Match]\nName=wl*\n\n[Network]\nDHCP=yes\n",
    )?;
    // Grow the root partition, then its file system, to the card's size at first boot.
    write(
        rootfs,
        "/etc/systemd/system/astral-growroot.service",
        "[Unit]\n\
         Description=Grow the root partition to fill the disk\n\
         ConditionFirstBoot=yes\n\
         DefaultDependencies=no\n\
         After=local-fs.target\n\
         Before=astral-node.service\n\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/sh -c 'dev=$(findmnt -no SOURCE /); disk=/dev/$(lsblk -no PKNAME \"$dev\"); \
         growpart \"$disk\" 2 || [ $? = 1 ]; resize2fs \"$dev\"'\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
    )?;
    match arch {
        ImageArch::Amd64 => {
            // systemd-boot starts the kernel and initrd on the boot partition: keep
            // them the newest installed, as raspi-firmware's hooks do on a Pi.
            for dir in ["/etc/kernel/postinst.d", "/etc/initramfs/post-update.d"] {
                let hook = format!("{dir}/zz-astral-boot");
                write(rootfs, &hook, KERNEL_HOOK)?;
                set_mode(&rootfs.join(&hook[1..]), 0o755)?;
            }
        }
        ImageArch::Arm64 => {
            // raspi-firmware writes cmdline.txt and config.txt from this.
            write(
                rootfs,
                "/etc/default/raspi-firmware",
                "ROOTPART=LABEL=astral-root\nCONSOLES=\"tty0\"\n",
            )?;
        }
    }
    fs::create_dir_all(rootfs.join("boot/firmware"))?;
    Ok(())
}

const KERNEL_HOOK: &str = "\
#!/bin/sh
# Copies the newest kernel and initrd to the boot partition, where systemd-boot
# starts them (the image's loader entry names /vmlinuz and /initrd.img there).
set -e
boot=/boot/firmware
[ -d \"$boot/loader\" ] && [ -e /vmlinuz ] && [ -e /initrd.img ] || exit 0
cp -L /vmlinuz \"$boot/vmlinuz.new\" && mv \"$boot/vmlinuz.new\" \"$boot/vmlinuz\"
cp -L /initrd.img \"$boot/initrd.img.new\" && mv \"$boot/initrd.img.new\" \"$boot/initrd.img\"
";

fn install_packages(arch: ImageArch, rootfs: &Path, deb: &Path) -> anyhow::Result<()> {
    // No daemons start in the chroot.
    write(rootfs, "/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n")?;
    set_mode(&rootfs.join("usr/sbin/policy-rc.d"), 0o755)?;
    let copy = rootfs
        .join("tmp")
        .join(deb.file_name().context("a .deb file")?);
    fs::copy(deb, &copy)?;
    let inside = format!("/tmp/{}", copy.file_name().unwrap().to_string_lossy());
    // systemd-resolved made resolv.conf a link to its stub, which answers only on
    // the booted box: apt uses this machine's resolver meanwhile.
    let resolv = rootfs.join("etc/resolv.conf");
    let link = fs::read_link(&resolv).ok();
    let _ = fs::remove_file(&resolv);
    fs::copy("/etc/resolv.conf", &resolv).context("this machine's /etc/resolv.conf")?;
    chroot(rootfs, &["apt-get", "-qq", "update"])?;
    // Keep the config files written above (raspi-firmware's defaults, for one).
    let mut install = vec![
        "apt-get",
        "-qq",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
        "install",
    ];
    install.extend(arch.packages());
    install.push(&inside);
    chroot(rootfs, &install)?;
    // No one is at a box's console to answer the first-boot wizard's questions.
    chroot(
        rootfs,
        &["systemctl", "mask", "--quiet", "systemd-firstboot.service"],
    )?;
    for unit in [
        "systemd-networkd.service",
        "systemd-resolved.service",
        "systemd-timesyncd.service",
        "astral-growroot.service",
    ] {
        chroot(rootfs, &["systemctl", "enable", "--quiet", unit])?;
    }
    // An absolute link, into the image: look at the link itself.
    ensure!(
        fs::symlink_metadata(
            rootfs.join("etc/systemd/system/multi-user.target.wants/astral-node.service")
        )
        .is_ok(),
        "the astral package did not enable astral-node.service"
    );
    fs::remove_file(&copy)?;
    fs::remove_file(rootfs.join("usr/sbin/policy-rc.d"))?;
    if let Some(link) = link {
        fs::remove_file(&resolv)?;
        std::os::unix::fs::symlink(link, &resolv)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Leaves what makes every box its own to its first boot (the machine id), and drops
/// the package lists and downloads.
fn clean(rootfs: &Path) -> anyhow::Result<()> {
    chroot(rootfs, &["apt-get", "clean"])?;
    let lists = rootfs.join("var/lib/apt/lists");
    for entry in fs::read_dir(&lists)? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(path)?;
        }
    }
    // systemd makes the machine id at the first boot, and counts that boot as the
    // first (ConditionFirstBoot=, which grows the root partition).
    fs::write(rootfs.join("etc/machine-id"), "uninitialized\n")?;
    let _ = fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    Ok(())
}

const FIRSTBOOT_TEMPLATE: &str = "\
# Astral: settings for this box, applied at its first boot, then this file is
# renamed astral.toml.applied. Uncomment what you need. A mistake is logged
# (journalctl -u astral-firstboot) and changes nothing.

# The portal that lists streams and introduces boxes to each other.
# portal = \"http://portal.example:8080\"

# This box's name in the network: letters, digits, '-', '_', '.'.
# name = \"kitchen\"

# The title of its stream, and its camera (or \"test-pattern\").
# title = \"Kitchen window\"
# source = \"v4l2:/dev/video0\"

# Behind a router that forwards ports 1935 and 8000 to this box: its public address.
# advertise = \"203.0.113.7\"

# [video]
# size = \"1280x720\"
# fps = 30
# bitrate_kbps = 2500

# [wifi]
# ssid = \"My network\"
# password = \"its password\"
# country = \"GB\"
";

/// The boot partition's contents.
fn stage_boot(arch: ImageArch, rootfs: &Path, boot: &Path) -> anyhow::Result<()> {
    match arch {
        ImageArch::Amd64 => {
            let efi = boot.join("EFI/BOOT");
            fs::create_dir_all(&efi)?;
            fs::copy(
                rootfs.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
                efi.join("BOOTX64.EFI"),
            )?;
            fs::copy(rootfs.join("vmlinuz"), boot.join("vmlinuz"))
                .context("the kernel at /vmlinuz")?;
            fs::copy(rootfs.join("initrd.img"), boot.join("initrd.img"))
                .context("the initrd at /initrd.img")?;
            fs::create_dir_all(boot.join("loader/entries"))?;
            fs::write(
                boot.join("loader/loader.conf"),
                "default astral.conf\ntimeout 0\n",
            )?;
            fs::write(
                boot.join("loader/entries/astral.conf"),
                "title Astral\nlinux /vmlinuz\ninitrd /initrd.img\n\
                 options root=LABEL=astral-root rw quiet console=ttyS0,115200 console=tty0\n",
            )?;
        }
        ImageArch::Arm64 => {
            // raspi-firmware's hooks filled /boot/firmware in the chroot.
            let firmware = rootfs.join("boot/firmware");
            ensure!(
                firmware.join("config.txt").exists(),
                "raspi-firmware left no config.txt in /boot/firmware"
            );
            // Moved out whole; the root keeps an empty mount point.
            fs::rename(&firmware, boot)?;
            fs::create_dir(&firmware)?;
        }
    }
    fs::write(boot.join("astral.toml"), FIRSTBOOT_TEMPLATE)?;
    Ok(())
}

/// Where a partition starts in the disk image, in bytes.
pub const BOOT_OFFSET: u64 = 1 << 20;

fn assemble(
    arch: ImageArch,
    work: &Path,
    rootfs: &Path,
    boot: &Path,
    image: &Path,
) -> anyhow::Result<()> {
    let boot_img = work.join("boot.img");
    let root_img = work.join("root.img");
    let _ = fs::remove_file(&boot_img);
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ASTRAL-BOOT", "-C"])
        .arg(&boot_img)
        .arg((BOOT_MIB * 1024).to_string()))?;
    let mut mcopy = Command::new("mcopy");
    mcopy.args(["-s", "-p", "-i"]).arg(&boot_img);
    for entry in fs::read_dir(boot)? {
        mcopy.arg(entry?.path());
    }
    run(mcopy.arg("::/").env("MTOOLS_SKIP_CHECK", "1"))?;

    let used_mib = du_mib(rootfs)?;
    let root_mib = used_mib + used_mib / 5 + ROOT_SLACK_MIB;
    let _ = fs::remove_file(&root_img);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-L", "astral-root", "-d"])
        .arg(rootfs)
        .arg(&root_img)
        .arg(format!("{root_mib}M")))?;

    let boot_sectors = BOOT_MIB * 2048;
    let root_start = BOOT_OFFSET / 512 + boot_sectors;
    let root_sectors = root_mib * 2048;
    let total = (root_start + root_sectors) * 512;
    let _ = fs::remove_file(image);
    fs::File::create(image)?.set_len(total)?;
    // The UEFI system partition's type on amd64; FAT32 (LBA), which the Pi's boot
    // ROM wants, on arm64.
    let boot_type = match arch {
        ImageArch::Amd64 => "ef",
        ImageArch::Arm64 => "c",
    };
    let layout = format!(
        "label: dos\n\
         start={}, size={boot_sectors}, type={boot_type}, bootable\n\
         start={root_start}, size={root_sectors}, type=83\n",
        BOOT_OFFSET / 512
    );
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot run sfdisk (Debian's fdisk package)")?;
    sfdisk
        .stdin
        .take()
        .context("sfdisk's input")?
        .write_all(layout.as_bytes())?;
    ensure!(sfdisk.wait()?.success(), "sfdisk failed on {layout}");
    for (part, offset) in [(&boot_img, BOOT_OFFSET), (&root_img, root_start * 512)] {
        run(Command::new("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", image.display()))
            .args([
                "bs=4M",
                "conv=notrunc,sparse",
                "status=none",
                "oflag=seek_bytes",
            ])
            .arg(format!("seek={offset}")))?;
    }
    fs::remove_file(&boot_img)?;
    fs::remove_file(&root_img)?;
    eprintln!(
        "xtask: {} ({} MiB: boot {BOOT_MIB} MiB, root {root_mib} MiB, {used_mib} MiB of it used)",
        image.display(),
        total >> 20
    );
    Ok(())
}

fn du_mib(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du")
        .args(["-s", "-m", "-x"])
        .arg(dir)
        .output()
        .context("cannot run du")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du said {text:?}"))
}
