//! IPv6, used directly where both ends have it.
//!
//! A home router gives each box on its LAN a global IPv6 address of its own: no NAT
//! stands between two boxes that have one, only, at most, the router's firewall. So
//! a box that has IPv6 also listens on its own IPv6 address, on the same ports, and
//! asks the portal to dial it back there, over a request it sends over IPv6, beside
//! the IPv4 check. A box the portal reached there advertises its RTMP address on IPv6
//! (`Peer::rtmp_v6`), and any box that has IPv6 (`NodeCard::ipv6`) plays from it over
//! IPv6, whether or not either can be reached over IPv4. Two boxes behind routers that
//! map no port can then exchange video, which over IPv4 they cannot.
//!
//! The box's IPv6 address is the one its routes pick to reach the portal's IPv6
//! address, which the portal's name gives (DNS AAAA, or an IPv6 literal in its URL).
//! A portal with no IPv6 address, or one the box has no route to, means no IPv6. The
//! overlay's requests keep to IPv4 (or the portal's relay): a box names only its own
//! address in them, checked against where they come from, and an IPv6 address could
//! not be checked over IPv4. Only the media connection goes over IPv6.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::Node;

/// The box's API and RTMP server on its own IPv6 address: `None` where the box's
/// listener, bound to `[::]` or to that address, accepts there already.
pub struct Listeners6 {
    pub at: Ipv6Addresses,
    pub api: Option<TcpListener>,
    pub rtmp: Option<TcpListener>,
}

/// The box's IPv6 address and ports, and the portal's IPv6 address to ask for the
/// dial back from.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Addresses {
    pub own: Ipv6Addr,
    pub portal: SocketAddr,
    pub api_port: u16,
    pub rtmp_port: u16,
}

impl Ipv6Addresses {
    pub fn rtmp(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.own), self.rtmp_port)
    }
}

/// What the box found of its IPv6, for `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Report {
    pub address: Ipv6Addr,
    /// Whether the portal reached the box there: boxes with IPv6 then connect to it.
    pub reachable: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Listens on the box's IPv6 address, on the ports of its IPv4 listeners, when the
/// config allows it, the box serves beyond loopback, and it has an address that
/// reaches the portal's IPv6 one.
pub async fn bind(config: &Config, api_port: u16, rtmp_port: u16) -> Option<Listeners6> {
    if !config.ipv6 || config.api.ip().is_loopback() || config.rtmp.ip().is_loopback() {
        return None;
    }
    let portal = portal_address(config.portal.as_deref()?).await?;
    let Some(address) = own_address(portal) else {
        tracing::debug!(%portal, "no IPv6 address of this box reaches the portal's");
        return None;
    };
    let listen = |bound: SocketAddr, port| async move {
        if matches!(bound.ip(), IpAddr::V6(ip) if ip.is_unspecified() || ip == address) {
            return Ok(None);
        }
        let at = SocketAddr::new(IpAddr::V6(address), port);
        TcpListener::bind(at).await.map(Some)
    };
    match tokio::try_join!(listen(config.api, api_port), listen(config.rtmp, rtmp_port)) {
        Ok((api, rtmp)) => Some(Listeners6 {
            at: Ipv6Addresses {
                own: address,
                portal,
                api_port,
                rtmp_port,
            },
            api,
            rtmp,
        }),
        Err(e) => {
            tracing::warn!(%address, "cannot listen on this box's IPv6 address, so it uses IPv4 only: {e}");
            None
        }
    }
}

/// The portal's IPv6 address: its URL's, or the first its name resolves to.
async fn portal_address(portal: &str) -> Option<SocketAddr> {
    let url = url::Url::parse(portal).ok()?;
    let port = url.port_or_known_default()?;
    match url.host()? {
        url::Host::Ipv6(ip) => Some(SocketAddr::new(IpAddr::V6(ip), port)),
        url::Host::Ipv4(_) => None,
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .ok()?
            .find(SocketAddr::is_ipv6),
    }
}

/// The global IPv6 address this box's routes reach `portal` from.
fn own_address(portal: SocketAddr) -> Option<Ipv6Addr> {
    match crate::route_to(portal)? {
        IpAddr::V6(ip) if is_global(ip) => Some(ip),
        _ => None,
    }
}

/// Whether boxes anywhere can reach `ip`: not loopback, link-local, unique-local or
/// an IPv4 address in IPv6 clothing.
fn is_global(ip: Ipv6Addr) -> bool {
    !super::is_private(IpAddr::V6(ip)) && ip.to_ipv4_mapped().is_none() && !ip.is_unspecified()
}

/// Asks the portal, over IPv6, to dial the box back on its IPv6 address; `None` when
/// the portal did not answer over IPv6, and the box cannot use it.
pub async fn check(node: &Node, at: Ipv6Addresses) -> Option<Ipv6Report> {
    let address = at.own;
    let client = crate::control::http::Client::new(
        Some(IpAddr::V6(address)),
        node.control.client.key().clone(),
    );
    // The signature covers the method, path and body, not the host.
    let portal = format!("http://{}", at.portal);
    let (api_port, rtmp_port) = (at.api_port, at.rtmp_port);
    let check = proto::portal::ReachabilityCheck {
        api_port,
        rtmp_port,
        ipv6: true,
    };
    let answer = match crate::control::http::check_reachability(&client, &portal, &check).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(%address, "the portal did not answer over IPv6, so this box uses IPv4 only: {e}");
            return None;
        }
    };
    let reachable = answer.reachable();
    let why = (!reachable).then(|| {
        let errors = answer.errors();
        format!(
            "{}. Boxes with IPv6 connect to this one only if the router's firewall lets \
             IPv6 connections in to TCP ports {api_port} and {rtmp_port}",
            errors.join("; ")
        )
    });
    match &why {
        None => tracing::info!(%address, "boxes with IPv6 can reach this one directly"),
        Some(why) => tracing::info!(%address, "boxes with IPv6 cannot reach this one: {why}"),
    }
    Some(Ipv6Report {
        address,
        reachable,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_addresses_are_used() {
        let global = |s: &str| is_global(s.parse().unwrap());
        assert!(global("2001:db8:77::5"));
        assert!(global("2a02:8070::1"));
        for ip in ["::1", "fe80::1", "fd00::1", "::ffff:192.0.2.1", "::"] {
            assert!(!global(ip), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_portal_address_comes_from_its_url() {
        let v6 = portal_address("http://[2001:db8::1]:8080").await;
        assert_eq!(v6, Some("[2001:db8::1]:8080".parse().unwrap()));
        assert_eq!(portal_address("http://192.0.2.1:8080").await, None);
        assert_eq!(portal_address("not a url").await, None);
    }
}
