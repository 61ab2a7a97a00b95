//! Home routers: a household's boxes on a LAN behind a router that masquerades their
//! traffic to the internet (nftables) and lets nothing in that they did not ask for,
//! as home routers do. A router may answer UPnP IGD, NAT-PMP and PCP requests for port
//! mappings (Debian's `miniupnpd`), or not.
//!
//! A router is a namespace with one leg on the testbed's bridge (its WAN address) and
//! a LAN bridge, 192.168.N.0/24 with the router at .1, into which each box behind it
//! has a veth. The driver cannot reach those boxes: it reads them from inside their
//! namespace (`curl`). In a testbed with IPv6 the LAN is also 2001:db8:100:N::/64,
//! routed, not masqueraded; the router lets IPv6 connections in only if it is open.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};

use crate::{ip, run, wait_for, Host, Testbed};

/// What a router does besides NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKind {
    /// Masquerade only: no port mapping, nothing comes in.
    Plain,
    /// miniupnpd answers UPnP IGD, NAT-PMP and PCP on the LAN.
    Upnp,
    /// miniupnpd answers NAT-PMP and PCP only.
    NatPmp,
}

pub struct Router {
    pub name: String,
    pub ns: String,
    /// The router's address on the internet.
    pub wan: Ipv4Addr,
    /// Its LAN is 192.168.`lan`.0/24.
    lan: u8,
    kind: RouterKind,
    hosts: usize,
    dir: PathBuf,
    miniupnpd: Option<Child>,
}

impl Router {
    pub fn kind(&self) -> RouterKind {
        self.kind
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.lan, 1)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut child) = self.miniupnpd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        crate::ipv6::delete_namespace(&self.ns);
    }
}

/// The ruleset of a home router: the LAN goes out, masqueraded over IPv4; only
/// replies and what miniupnpd forwards come in, and, if `ipv6_open`, any IPv6
/// connection. The chains miniupnpd fills are there on every router, empty where it
/// does not run.
fn ruleset(wan: &str, lan: &str, ipv6_open: bool) -> String {
    let ipv6 = if ipv6_open {
        format!("meta nfproto ipv6 iifname \"{wan}\" oifname \"{lan}\" accept")
    } else {
        String::new()
    };
    format!(
        "table inet filter {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname \"{lan}\" oifname \"{wan}\" accept
        {ipv6}
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        meta nfproto ipv4 oifname \"{wan}\" masquerade
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"
    )
}

fn miniupnpd_conf(
    kind: RouterKind,
    dir: &std::path::Path,
    wan: &str,
    lan: &str,
    ext_ip: Ipv4Addr,
    index: usize,
) -> String {
    format!(
        "ext_ifname={wan}
ext_ip={ext_ip}
listening_ip={lan}
http_port=0
enable_upnp={upnp}
enable_natpmp=yes
secure_mode=yes
system_uptime=no
uuid=3d3cec3a-8cf0-11e0-98ee-{index:012x}
lease_file={leases}
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 192.168.0.0/16 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
",
        leases = dir.join("leases").display(),
        upnp = if kind == RouterKind::Upnp {
            "yes"
        } else {
            "no"
        },
    )
}

impl Testbed {
    /// A home router on the internet, with an empty LAN; in a testbed with IPv6 it
    /// lets IPv6 connections in if `ipv6_open`.
    pub fn add_router(&mut self, kind: RouterKind, ipv6_open: bool) -> anyhow::Result<usize> {
        let index = self.routers.len();
        ensure!(index < 200, "at most 200 routers");
        let name = format!("router{:02}", index + 1);
        let ns = format!("tb{}{}", self.tag, name);
        let wan = router_address(index);
        let lan = (index + 1) as u8;
        let dir = self.work.path().join(&name);
        std::fs::create_dir_all(&dir)?;
        self.add_namespace(&ns)?;
        let mut router = Router {
            name,
            ns,
            wan,
            lan,
            kind,
            hosts: 0,
            dir,
            miniupnpd: None,
        };
        let ns = router.ns.as_str();
        let port = format!("r{index}");
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        crate::veth(ns, "wan0", &self.switch, &port, "br0")?;
        ip(&["-n", ns, "addr", "add", &format!("{wan}/24"), "dev", "wan0"])?;
        ip(&["-n", ns, "link", "set", "wan0", "up"])?;
        // The rest of the internet is on the same bridge.
        ip(&["-n", ns, "route", "add", crate::INTERNET, "dev", "wan0"])?;
        ip(&["-n", ns, "link", "add", "lan0", "type", "bridge"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", router.gateway()),
            "dev",
            "lan0",
        ])?;
        ip(&["-n", ns, "link", "set", "lan0", "up"])?;
        if self.options.ipv6 {
            let wan6 = crate::ipv6::router_address(index);
            crate::ipv6::address(ns, "wan0", wan6)?;
            crate::ipv6::address(ns, "lan0", crate::ipv6::lan_address(lan, 1))?;
            crate::ipv6::forward(ns)?;
            crate::ipv6::route_to_homes(ns)?;
            crate::ipv6::route_home(&self.switch, lan, wan6)?;
        }
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        let rules = router.dir.join("rules.nft");
        std::fs::write(&rules, ruleset("wan0", "lan0", ipv6_open))?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nft",
                "-f",
                &rules.display().to_string(),
            ],
        )
        .context("nftables (nft) is needed for home routers")?;
        if kind != RouterKind::Plain {
            let conf = router.dir.join("miniupnpd.conf");
            std::fs::write(
                &conf,
                miniupnpd_conf(kind, &router.dir, "wan0", "lan0", wan, index),
            )?;
            let log = std::fs::File::create(router.dir.join("log"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", ns, "miniupnpd", "-d", "-f"])
                .arg(&conf)
                .arg("-P")
                .arg(router.dir.join("pid"))
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .context("miniupnpd is needed for routers that map ports")?;
            router.miniupnpd = Some(child);
            // It answers NAT-PMP once its socket is bound.
            let listening = router.dir.join("log");
            wait_for(Duration::from_secs(10), || {
                std::fs::read_to_string(&listening)
                    .is_ok_and(|l| l.contains("Listening for NAT-PMP"))
            })
            .with_context(|| {
                format!(
                    "miniupnpd did not start: {}",
                    std::fs::read_to_string(&listening).unwrap_or_default()
                )
            })?;
        }
        self.routers.push(router);
        Ok(index)
    }

    /// A box behind `router`, started as the others are, with `extra` flags; it does
    /// not watch yet.
    pub fn add_home_box(
        &mut self,
        router: usize,
        uplink_kbps: u32,
        extra: &[String],
    ) -> anyhow::Result<usize> {
        let (ns, address, gateway, name, lan) = {
            let r = &mut self.routers[router];
            r.hosts += 1;
            ensure!(r.hosts < 250, "at most 249 boxes behind a router");
            let name = format!("{}box{}", r.name, r.hosts);
            let address = Ipv4Addr::new(192, 168, r.lan, 1 + r.hosts as u8);
            (r.ns.clone(), address, r.gateway(), name, (r.lan, r.hosts))
        };
        let host_ns = format!("tb{}{}", self.tag, name);
        self.add_namespace(&host_ns)?;
        let port = format!("l{}", self.routers[router].hosts);
        ip(&["-n", &host_ns, "link", "set", "lo", "up"])?;
        crate::veth(&host_ns, "eth0", &ns, &port, "lan0")?;
        let (cidr, gateway) = (format!("{address}/24"), gateway.to_string());
        ip(&["-n", &host_ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &host_ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &host_ns, "route", "add", "default", "via", &gateway])?;
        let ip6 = self
            .options
            .ipv6
            .then(|| crate::ipv6::lan_address(lan.0, 1 + lan.1 as u16));
        if let Some(ip6) = ip6 {
            crate::ipv6::address(&host_ns, "eth0", ip6)?;
            let gateway6 = crate::ipv6::lan_address(lan.0, 1).to_string();
            ip(&[
                "-n", &host_ns, "-6", "route", "add", "default", "via", &gateway6,
            ])?;
            self.name_portal(&host_ns)?;
        }
        crate::limit_upload(&host_ns, uplink_kbps)?;
        let data_dir = self.work.path().join(&name);
        std::fs::create_dir_all(&data_dir)?;
        let mut host = Host {
            name,
            ns: host_ns,
            ip: address,
            ip6,
            port: (ns.clone(), port.clone()),
            uplink_kbps,
            data_dir,
            child: None,
            behind_router: true,
        };
        host.child = Some(self.spawn_node(&host, extra)?);
        self.viewers.push(host);
        self.asked.push(None);
        self.joined.push(None);
        Testbed::wait_serving(self.viewers.last().expect("just pushed"))?;
        Ok(self.viewers.len() - 1)
    }
}

/// Routers' addresses on the internet. miniupnpd maps no port on a router whose
/// own address is private, as the testbed's 10.77.0.0/16 is, so routers take theirs
/// from a block of the public internet. It is routed only inside the testbed's
/// namespaces, on the same bridge: the driver's own namespace has no route to it.
pub(crate) const ROUTERS: &str = "25.77.0.0/24";

/// A router's address on the internet.
fn router_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(25, 77, 0, 1 + index as u8)
}

/// GET from inside a box's namespace, for boxes the driver cannot reach.
pub(crate) fn text_inside(ns: &str, url: &str, limit: Duration) -> anyhow::Result<String> {
    curl_inside(ns, url, limit, &[])
}

/// POST with the owner's token from inside a box's namespace.
pub(crate) fn post_inside(ns: &str, url: &str, token: &str) -> anyhow::Result<()> {
    let header = format!("authorization: Bearer {token}");
    let limit = Duration::from_secs(5);
    curl_inside(ns, url, limit, &["-X", "POST", "-H", &header]).map(drop)
}

pub(crate) fn get_inside(ns: &str, url: &str, token: &str) -> anyhow::Result<String> {
    let header = format!("authorization: Bearer {token}");
    curl_inside(ns, url, Duration::from_secs(5), &["-H", &header])
}

/// curl, in namespace `ns`: the body, or why there is none.
fn curl_inside(ns: &str, url: &str, limit: Duration, extra: &[&str]) -> anyhow::Result<String> {
    let seconds = format!("{:.1}", limit.as_secs_f64());
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sSf", "--max-time", &seconds])
        .args(extra)
        .arg(url)
        .output()
        .context("curl is needed to reach boxes behind routers")?;
    ensure!(
        out.status.success(),
        "{url} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}
