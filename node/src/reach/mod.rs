//! Whether boxes beyond this one's router can reach it, and at what address.
//!
//! Before it joins the overlay, a box asks the portal to dial it back
//! (`POST /api/reachability`): the portal dials the address the request came from, on
//! the box's API and RTMP ports. A box that answers is reachable there. One that does
//! not, and sits on a private address, asks its router for port mappings (UPnP IGD,
//! then PCP and NAT-PMP: `mapping.rs`) and is dialled back again on the mapped ports.
//! A box no one can reach says why in `GET /status` (`astral status`, the admin page).
//! It forwards only to boxes that can be reached, by connecting to them (connection
//! reversal: `Request::Dial`, `crate::rtmp::dial`); with `reversal = false` it offers
//! no forward slot and plays as a viewer.
//!
//! Afterwards mappings are renewed at half their lease and the check repeated every
//! `RECHECK` (`RECHECK_UNKNOWN` while no portal has answered); a box that becomes
//! reachable or unreachable changes its slots. The address it advertises is the one
//! it joined with: a new external address takes a restart. As the box leaves, its
//! mappings are removed.
//!
//! A box with IPv6 is also dialled back on its own IPv6 address, once, as it starts
//! (`ipv6.rs`): boxes with IPv6 connect to it there, through no NAT.

pub mod ipv6;
pub mod mapping;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::portal::{Reachability, ReachabilityCheck};
use serde::{Deserialize, Serialize};

use crate::{lock, Node};
use mapping::{Mapping, Protocol};

/// How often reachability is checked again; sooner while the box cannot tell.
const RECHECK: Duration = Duration::from_secs(600);
const RECHECK_UNKNOWN: Duration = Duration::from_secs(30);

/// What the box knows of its reachability, for `GET /status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachReport {
    pub state: ReachState,
    /// Where other boxes reach the API and RTMP, when the box knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmp: Option<SocketAddr>,
    /// The router protocol that mapped the ports, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_by: Option<String>,
    /// Why the box cannot be reached, or cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// How long after the box started it first knew (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_after_ms: Option<u64>,
    /// Its own IPv6 address, when it has one the portal answered on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<ipv6::Ipv6Report>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReachState {
    /// Not checked yet, or no portal to check with.
    #[default]
    Unknown,
    Reachable,
    /// Boxes beyond the router cannot connect: the box forwards nothing.
    Unreachable,
}

/// The box's reachability and its port mappings.
#[derive(Default)]
pub struct Reach {
    report: Mutex<ReachReport>,
    mapping: tokio::sync::Mutex<Option<Mapping>>,
}

impl Reach {
    pub fn report(&self) -> ReachReport {
        lock(&self.report).clone()
    }

    /// Whether boxes beyond the router can connect to this one: unless it found that
    /// they cannot.
    pub fn can_be_reached(&self) -> bool {
        lock(&self.report).state != ReachState::Unreachable
    }

    /// Whether boxes with IPv6 reach this one on its own IPv6 address.
    pub fn reached_over_ipv6(&self) -> bool {
        lock(&self.report)
            .ipv6
            .as_ref()
            .is_some_and(|v6| v6.reachable)
    }
}

/// The outcome of one round: the portal's answer with the ports it dialled, and the
/// mapping that made them, if any.
struct Round {
    answer: Reachability,
    api_port: u16,
    rtmp_port: u16,
    mapped_by: Option<Protocol>,
    /// Why the router mapped no port, when it was asked.
    unmapped: Option<String>,
    /// The box's own address, for advice.
    local: IpAddr,
}

/// Finds out whether the box can be reached, mapping ports on the router if it must,
/// and returns the addresses to advertise: `None` when no portal answered, and the
/// box keeps the addresses it found for itself.
pub async fn settle(
    node: &Arc<Node>,
    api: SocketAddr,
    rtmp: SocketAddr,
) -> Option<(SocketAddr, SocketAddr)> {
    let round = match check(node, api, rtmp).await {
        Ok(round) => round,
        Err(e) => {
            tracing::warn!("cannot tell whether other boxes can reach this one: {e}");
            set(node, unknown(e));
            return None;
        }
    };
    let report = report_of(&round, node.config().reversal);
    let advertised = report.api.zip(report.rtmp);
    let address = round.answer.address;
    match &report.why {
        None => tracing::info!(%address, "other boxes can reach this one"),
        Some(why) => tracing::warn!(
            %address,
            "other boxes cannot reach this one, so it forwards nothing: {why}"
        ),
    }
    set(node, report);
    advertised
}

/// One round: dialled back on the ports the router maps, or on the local ones; if
/// that fails from a private address, mapped on the router (again) and dialled back
/// on the mapped ports.
async fn check(node: &Arc<Node>, api: SocketAddr, rtmp: SocketAddr) -> Result<Round, String> {
    let mut held = node.reach.mapping.lock().await;
    let (api_port, rtmp_port, mapped_by) = match held.as_ref() {
        Some(m) => (m.api, m.rtmp, Some(m.protocol)),
        None => (api.port(), rtmp.port(), None),
    };
    let local = local_address(node, api);
    let first = Round {
        answer: dial_back(node, api_port, rtmp_port).await?,
        api_port,
        rtmp_port,
        mapped_by,
        unmapped: None,
        local,
    };
    if first.answer.reachable() || !node.config().port_mapping || !is_private(local) {
        return Ok(first);
    }
    if let Some(old) = held.take() {
        old.remove().await;
    }
    let local_api = SocketAddr::new(local, api.port());
    let mapping = match Mapping::create(local_api, SocketAddr::new(local, rtmp.port())).await {
        Ok(mapping) => mapping,
        Err(e) => {
            return Ok(Round {
                unmapped: Some(e),
                ..first
            })
        }
    };
    tracing::info!(
        protocol = %mapping.protocol,
        external = %mapping.external_ip,
        api = mapping.api,
        rtmp = mapping.rtmp,
        lease_secs = mapping.lease_secs,
        "the router mapped this box's ports"
    );
    let (api_port, rtmp_port, protocol) = (mapping.api, mapping.rtmp, mapping.protocol);
    *held = Some(mapping);
    drop(held);
    Ok(Round {
        answer: dial_back(node, api_port, rtmp_port).await?,
        api_port,
        rtmp_port,
        mapped_by: Some(protocol),
        unmapped: None,
        local,
    })
}

/// Asks the portal to dial the box back on these ports.
async fn dial_back(node: &Node, api_port: u16, rtmp_port: u16) -> Result<Reachability, String> {
    let portal = node.control.portal().ok_or("no portal")?;
    let check = ReachabilityCheck {
        api_port,
        rtmp_port,
        ipv6: false,
    };
    crate::control::http::check_reachability(&node.control.client, portal, &check)
        .await
        .map_err(|e| format!("the portal did not check: {e}"))
}

/// The box's own address towards the internet: the API's, or the one its route to
/// the portal leaves from.
fn local_address(node: &Node, api: SocketAddr) -> IpAddr {
    if !api.ip().is_unspecified() {
        return api.ip();
    }
    crate::route_to_portal(node.config().portal.as_deref()).unwrap_or(api.ip())
}

/// What a round found; `reversal` says whether a box that cannot be reached forwards
/// to boxes that can.
fn report_of(round: &Round, reversal: bool) -> ReachReport {
    let address = round.answer.address;
    let reachable = round.answer.reachable();
    ReachReport {
        state: if reachable {
            ReachState::Reachable
        } else {
            ReachState::Unreachable
        },
        api: Some(SocketAddr::new(address, round.api_port)),
        rtmp: Some(SocketAddr::new(address, round.rtmp_port)),
        mapped_by: round.mapped_by.map(|p| p.to_string()),
        why: (!reachable).then(|| why(round, reversal)),
        known_after_ms: None,
        ipv6: None,
    }
}

/// Why a box cannot be reached, and what its owner can do.
fn why(round: &Round, reversal: bool) -> String {
    let mut why = round.answer.errors();
    if let Some(unmapped) = &round.unmapped {
        why.push(format!("the router mapped no port ({unmapped})"));
    }
    let fix = match round.mapped_by {
        Some(protocol) => format!(
            "the router mapped the ports over {protocol}, but lets no connection through: \
             check its firewall"
        ),
        None => format!(
            "enable UPnP or NAT-PMP on the router, or forward TCP ports {} and {} to {}",
            round.api_port, round.rtmp_port, round.local
        ),
    };
    let forwards = if reversal {
        "It forwards only to boxes that can be reached, by connecting to them. \
         To forward to any box"
    } else {
        "To forward streams to other boxes"
    };
    format!("{}. {forwards}: {fix}", why.join("; "))
}

fn unknown(why: String) -> ReachReport {
    ReachReport {
        state: ReachState::Unknown,
        why: Some(why),
        ..ReachReport::default()
    }
}

/// Records a new report; a change of whether the box can be reached changes its
/// card, and its slots without reversal.
fn set(node: &Arc<Node>, mut report: ReachReport) {
    let before = node.reach.can_be_reached();
    let mut held = lock(&node.reach.report);
    report.known_after_ms = held.known_after_ms.or_else(|| {
        (report.state != ReachState::Unknown).then(|| node.uptime().as_millis() as u64)
    });
    report.ipv6 = held.ipv6.take();
    *held = report;
    drop(held);
    if node.reach.can_be_reached() != before {
        node.capacity_changed();
    }
}

/// Records what the box found of its IPv6.
pub fn set_ipv6(node: &Arc<Node>, ipv6: Option<ipv6::Ipv6Report>) {
    let before = node.reach.reached_over_ipv6();
    lock(&node.reach.report).ipv6 = ipv6;
    if node.reach.reached_over_ipv6() != before {
        node.capacity_changed();
    }
}

/// Keeps the mappings leased and checks reachability again from time to time.
pub async fn keep(node: Arc<Node>, api: SocketAddr, rtmp: SocketAddr) {
    let renew_every = mapping::LEASE / 2;
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    let cannot_tell = |node: &Node| lock(&node.reach.report).state == ReachState::Unknown;
    if cannot_tell(&node) {
        recheck.reset_after(RECHECK_UNKNOWN);
    }
    loop {
        tokio::select! {
            _ = renew.tick() => {
                let mut held = node.reach.mapping.lock().await;
                let Some(mapping) = held.as_mut() else { continue };
                if let Err(e) = mapping.renew().await {
                    tracing::warn!("cannot renew the port mappings, mapping again: {e}");
                    *held = None;
                    drop(held);
                    recheck.reset_immediately();
                }
            }
            _ = recheck.tick() => {
                let advertised = lock(&node.reach.report).api;
                match check(&node, api, rtmp).await {
                    Ok(round) => {
                        let report = report_of(&round, node.config().reversal);
                        if advertised.is_some() && report.api != advertised {
                            tracing::warn!(
                                before = ?advertised,
                                now = ?report.api,
                                "this box's address changed: restart it to advertise the new one"
                            );
                        }
                        set(&node, report);
                    }
                    Err(e) => tracing::debug!("cannot check reachability: {e}"),
                }
                if cannot_tell(&node) {
                    recheck.reset_after(RECHECK_UNKNOWN);
                }
            }
        }
    }
}

/// Removes the port mappings, as the box leaves.
pub async fn release(node: &Node) {
    if let Some(mapping) = node.reach.mapping.lock().await.take() {
        mapping.remove().await;
    }
}

/// Whether `ip` is an address boxes beyond a router cannot reach: private, shared
/// (carrier-grade NAT), link-local or loopback; IPv6 unique-local or link-local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (a == 100 && b & 0xc0 == 64)
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unique_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_those_behind_a_router() {
        let private = |s: &str| is_private(s.parse().unwrap());
        for ip in [
            "10.1.2.3",
            "192.168.1.20",
            "172.16.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(private(ip), "{ip}");
        }
        for ip in [
            "203.0.113.7",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:198.51.100.1",
        ] {
            assert!(!private(ip), "{ip}");
        }
    }
}
