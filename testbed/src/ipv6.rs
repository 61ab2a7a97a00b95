//! IPv6 in the testbed (`Options::ipv6`): every host and every box behind a router also
//! has a global IPv6 address of its own, through no NAT.
//!
//! The internet is 2001:db8:77::/64 on the bridge. The switch's namespace routes each
//! home's /64, 2001:db8:100:N::/64, to its router's address on the bridge; a router's
//! firewall lets IPv6 connections into its LAN, or, as most home routers do, only the
//! replies to those its boxes made. Boxes find the portal by name, with an A and an
//! AAAA record in their namespace's own hosts file (`/etc/netns/NS/hosts`, which
//! `ip netns exec` mounts over `/etc/hosts`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::Context;

use crate::{ip, run};

/// The portal's name, as the boxes know it.
pub(crate) const PORTAL_NAME: &str = "portal.astral.test";

/// The switch's own address: the internet's router to the homes.
const SWITCH: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0xfffe);

/// The block the homes' /64s come from.
const HOMES: &str = "2001:db8:100::/48";

/// The internet address of the host with this index.
pub(crate) fn internet_address(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1 + index as u16)
}

/// A router's address on the internet.
pub(crate) fn router_address(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 1, 0, 1 + index as u16)
}

/// Host `host` (the router is 1) on the LAN numbered `lan`.
pub(crate) fn lan_address(lan: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, lan.into(), 0, 0, 0, host)
}

/// Gives `dev` in `ns` the address `addr`/64, usable at once (no duplicate detection).
pub(crate) fn address(ns: &str, dev: &str, addr: Ipv6Addr) -> anyhow::Result<()> {
    let cidr = format!("{addr}/64");
    ip(&["-n", ns, "-6", "addr", "add", &cidr, "dev", dev, "nodad"])
}

/// Links made in `ns` from now on skip duplicate address detection, so that their
/// link-local addresses work at once: a box asks the portal over IPv6 as it starts,
/// which would otherwise lose its first packets.
pub(crate) fn no_dad(ns: &str) -> anyhow::Result<()> {
    for key in ["all", "default"] {
        let sysctl = format!("net.ipv6.conf.{key}.accept_dad=0");
        run("ip", &["netns", "exec", ns, "sysctl", "-qw", &sysctl])?;
    }
    Ok(())
}

/// Turns on IPv6 forwarding in `ns`.
pub(crate) fn forward(ns: &str) -> anyhow::Result<()> {
    let sysctl = "net.ipv6.conf.all.forwarding=1";
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", sysctl])
}

/// The switch routes between the internet and the homes.
pub(crate) fn wire_switch(switch: &str) -> anyhow::Result<()> {
    address(switch, "br0", SWITCH)?;
    forward(switch)
}

/// A host on the internet, or a router, reaches the homes through the switch.
pub(crate) fn route_to_homes(ns: &str) -> anyhow::Result<()> {
    let via = SWITCH.to_string();
    ip(&["-n", ns, "-6", "route", "add", HOMES, "via", &via])
}

/// The switch routes home `lan` to its router at `router`.
pub(crate) fn route_home(switch: &str, lan: u8, router: Ipv6Addr) -> anyhow::Result<()> {
    let prefix = format!("{}/64", lan_address(lan, 0));
    let via = router.to_string();
    ip(&["-n", switch, "-6", "route", "add", &prefix, "via", &via])
}

/// Where `ip netns exec` finds `ns`'s own files.
fn etc(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Names the portal in `ns`'s hosts file.
pub(crate) fn name_portal(ns: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> anyhow::Result<()> {
    let dir = etc(ns);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let hosts =
        format!("127.0.0.1 localhost\n::1 localhost\n{v4} {PORTAL_NAME}\n{v6} {PORTAL_NAME}\n");
    std::fs::write(dir.join("hosts"), hosts)?;
    Ok(())
}

/// Deletes namespace `ns`, and its own files if it has them.
pub(crate) fn delete_namespace(ns: &str) {
    let _ = ip(&["netns", "del", ns]);
    let _ = std::fs::remove_dir_all(etc(ns));
}
