//! Port mappings on the home router: UPnP IGD (igd-next) first, then PCP and NAT-PMP
//! (crab_nat), each given a couple of seconds. The box's API and RTMP ports are mapped
//! to the same external ports where the router allows, to others where a box of the
//! same household holds those. Mappings are leased; `renew` extends them, `remove`
//! gives them back as the box leaves.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};
use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};

/// How long a mapping is asked for; it is renewed at half of that.
pub const LEASE: Duration = Duration::from_secs(3600);
/// How long the search for a UPnP gateway may take.
const UPNP_SEARCH: Duration = Duration::from_secs(2);
const DESCRIPTION: &str = "Astral";

/// The protocol a mapping was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    #[serde(rename = "UPnP")]
    Upnp,
    #[serde(rename = "PCP")]
    Pcp,
    #[serde(rename = "NAT-PMP")]
    NatPmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Upnp => "UPnP",
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
        })
    }
}

/// The box's ports as the router maps them.
pub struct Mapping {
    pub protocol: Protocol,
    pub external_ip: IpAddr,
    /// External ports of the API and of RTMP.
    pub api: u16,
    pub rtmp: u16,
    /// Seconds each mapping lasts; 0 for a router that only keeps them for good.
    pub lease_secs: u32,
    local: SocketAddr,
    local_rtmp: SocketAddr,
    via: Via,
}

enum Via {
    Upnp(Gateway<Tokio>),
    /// PCP or NAT-PMP: the API's mapping, then RTMP's.
    PortControl(Box<[PortMapping; 2]>),
}

impl Mapping {
    /// Maps the API (`local`) and RTMP (`local_rtmp`) ports on the router, asking first
    /// over UPnP, then PCP and NAT-PMP. The error says what each answered.
    pub async fn create(local: SocketAddr, local_rtmp: SocketAddr) -> Result<Mapping, String> {
        let upnp = match upnp(local, local_rtmp).await {
            Ok(mapping) => return Ok(mapping),
            Err(e) => e,
        };
        let gateway = default_gateway()
            .ok_or_else(|| format!("UPnP: {upnp}; no default route for PCP or NAT-PMP"))?;
        match port_control(gateway, local, local_rtmp).await {
            Ok(mapping) => Ok(mapping),
            Err(pcp) => Err(format!("UPnP: {upnp}; PCP and NAT-PMP at {gateway}: {pcp}")),
        }
    }

    /// Extends the lease of both mappings; an error means they are gone (the router
    /// restarted or forgot them) and must be made again.
    pub async fn renew(&mut self) -> Result<(), String> {
        match &mut self.via {
            Via::Upnp(gateway) => {
                for (external, local) in [(self.api, self.local), (self.rtmp, self.local_rtmp)] {
                    gateway
                        .add_port(
                            PortMappingProtocol::TCP,
                            external,
                            local,
                            self.lease_secs,
                            DESCRIPTION,
                        )
                        .await
                        .map_err(|e| format!("UPnP: {e}"))?;
                }
                Ok(())
            }
            Via::PortControl(mappings) => {
                for mapping in mappings.iter_mut() {
                    mapping
                        .renew()
                        .await
                        .map_err(|e| format!("{}: {e}", self.protocol))?;
                }
                Ok(())
            }
        }
    }

    /// Removes both mappings from the router.
    pub async fn remove(self) {
        let protocol = self.protocol;
        let failed = match self.via {
            Via::Upnp(gateway) => {
                let mut failed = None;
                for external in [self.api, self.rtmp] {
                    if let Err(e) = gateway
                        .remove_port(PortMappingProtocol::TCP, external)
                        .await
                    {
                        failed = Some(e.to_string());
                    }
                }
                failed
            }
            Via::PortControl(mappings) => {
                let mut failed = None;
                for mapping in *mappings {
                    if let Err((e, _)) = mapping.try_drop().await {
                        failed = Some(e.to_string());
                    }
                }
                failed
            }
        };
        match failed {
            None => tracing::info!("removed the port mappings ({protocol})"),
            Some(e) => tracing::debug!("cannot remove the port mappings ({protocol}): {e}"),
        }
    }
}

async fn upnp(local: SocketAddr, local_rtmp: SocketAddr) -> Result<Mapping, String> {
    let mut options = SearchOptions::default();
    options.bind_addr = SocketAddr::new(local.ip(), 0);
    options.timeout = Some(UPNP_SEARCH);
    options.single_search_timeout = Some(UPNP_SEARCH);
    let gateway = igd_next::aio::tokio::search_gateway(options)
        .await
        .map_err(|_| format!("no gateway answered within {} s", UPNP_SEARCH.as_secs()))?;
    let external_ip = gateway.get_external_ip().await.map_err(|e| {
        format!(
            "the gateway at {} has no external address: {e}",
            gateway.addr
        )
    })?;
    let mut lease_secs = LEASE.as_secs() as u32;
    let mut ports = [0u16; 2];
    for (port, local) in ports.iter_mut().zip([local, local_rtmp]) {
        let same = gateway
            .add_port(
                PortMappingProtocol::TCP,
                local.port(),
                local,
                lease_secs,
                DESCRIPTION,
            )
            .await;
        *port = match same {
            Ok(()) => local.port(),
            Err(AddPortError::OnlyPermanentLeasesSupported) => {
                lease_secs = 0;
                gateway
                    .add_port(
                        PortMappingProtocol::TCP,
                        local.port(),
                        local,
                        0,
                        DESCRIPTION,
                    )
                    .await
                    .map_err(|e| format!("the gateway at {} refused: {e}", gateway.addr))?;
                local.port()
            }
            // Another box of the household holds the port: any other will do.
            Err(AddPortError::PortInUse) => gateway
                .add_any_port(PortMappingProtocol::TCP, local, lease_secs, DESCRIPTION)
                .await
                .map_err(|e| format!("the gateway at {} refused: {e}", gateway.addr))?,
            Err(e) => return Err(format!("the gateway at {} refused: {e}", gateway.addr)),
        };
    }
    Ok(Mapping {
        protocol: Protocol::Upnp,
        external_ip,
        api: ports[0],
        rtmp: ports[1],
        lease_secs,
        local,
        local_rtmp,
        via: Via::Upnp(gateway),
    })
}

async fn port_control(
    gateway: Ipv4Addr,
    local: SocketAddr,
    local_rtmp: SocketAddr,
) -> Result<Mapping, String> {
    let options = |port: u16| PortMappingOptions {
        external_port: NonZeroU16::new(port),
        lifetime_seconds: Some(LEASE.as_secs() as u32),
        timeout_config: Some(TimeoutConfig {
            initial_timeout: Duration::from_millis(250),
            max_retries: 2,
            max_retry_timeout: Some(Duration::from_secs(1)),
        }),
    };
    let map = |local: SocketAddr| async move {
        let port = NonZeroU16::new(local.port()).ok_or("port 0")?;
        PortMapping::new(
            IpAddr::V4(gateway).into(),
            local.ip(),
            InternetProtocol::Tcp,
            port,
            options(local.port()),
        )
        .await
        .map_err(|e| e.to_string())
    };
    let api = map(local).await?;
    let rtmp = map(local_rtmp).await?;
    let (protocol, external_ip) = match api.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => (Protocol::Pcp, external_ip),
        PortMappingType::NatPmp => {
            let timeout = api.timeout_config;
            let ip = crab_nat::natpmp::external_address(IpAddr::V4(gateway).into(), Some(timeout))
                .await
                .map_err(|e| format!("no external address: {e}"))?;
            (Protocol::NatPmp, IpAddr::V4(ip))
        }
    };
    Ok(Mapping {
        protocol,
        external_ip,
        api: api.external_port().get(),
        rtmp: rtmp.external_port().get(),
        lease_secs: api.lifetime(),
        local,
        local_rtmp,
        via: Via::PortControl(Box::new([api, rtmp])),
    })
}

/// The IPv4 default gateway, from the kernel's routing table.
fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&table)
}

/// The gateway of the first default route (destination 0, flag RTF_GATEWAY) in
/// `/proc/net/route`, which prints each address's bytes as a hex number in the host's
/// byte order.
fn parse_default_gateway(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (destination, gateway, flags) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let flags = u16::from_str_radix(flags, 16).ok()?;
        if *destination != "00000000" || flags & 0x2 == 0 {
            return None;
        }
        let gateway = u32::from_str_radix(gateway, 16).ok()?;
        Some(Ipv4Addr::from(gateway.to_ne_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_comes_from_the_routing_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateway(table),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        assert_eq!(parse_default_gateway("Iface\tDestination\n"), None);
    }
}
