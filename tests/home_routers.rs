//! Boxes behind home routers, in the namespace testbed: each router masquerades its LAN
//! (nftables) and lets nothing in unasked; one answers UPnP IGD, NAT-PMP and PCP
//! (Debian's miniupnpd), one NAT-PMP and PCP only, one nothing. The portal dials each
//! box back:
//!
//! - the box behind the UPnP router has its ports mapped, is reached at the router's
//!   address, and forwards: a box on the internet plays from it;
//! - the box behind the NAT-PMP router has its ports mapped over PCP;
//! - the box behind the plain router cannot be reached and says why; other boxes
//!   still reach its API through its control channel to the portal;
//! - yet it forwards to a box that can be reached, by connecting to it (connection
//!   reversal): the source's one slot goes to the unreachable box, the mapped box
//!   plays from it, and the box on the internet from the mapped box.
//!
//! With IPv6, boxes behind routers that map nothing still exchange video: each has an
//! IPv6 address of its own, and a router that lets IPv6 connections in makes its box
//! reachable there (`ipv6_lets_boxes_behind_routers_play_from_each_other`).
//!
//! Needs root, nftables and miniupnpd; elsewhere it says so and does nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{RouterKind, Testbed};

fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One testbed at a time: two side by side, each with a source encoding, share two
/// cores; in one CI run that way the box under the source showed no slot where it
/// has one (its slots follow the stream's measured rate).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn place(bed: &Testbed, i: usize) -> Value {
    bed.viewers[i]
        .get("/status")
        .map(|s| s["overlay"]["streams"][0].clone())
        .unwrap_or(Value::Null)
}

/// Box `i`'s place once the stream flows to it.
fn flowing(bed: &Testbed, i: usize, logs: &str) -> Value {
    eventually(Duration::from_secs(30), || {
        let p = place(bed, i);
        (p["flowing"] == true).then_some(p)
    })
    .unwrap_or_else(|| panic!("{} does not play\n{logs}", bed.viewers[i].name))
}

/// Box `i`'s hub takes in more frames.
fn frames_keep_coming(bed: &Testbed, i: usize) {
    let hub = || {
        bed.viewers[i]
            .get("/streams")
            .map_or(Value::Null, |s| s[0].clone())
    };
    let before = hub()["tags_in"].as_u64().unwrap_or(0);
    let more = eventually(Duration::from_secs(5), || {
        let now = hub()["tags_in"].as_u64().unwrap_or(0);
        (now > before + 10).then_some(now)
    });
    assert!(more.is_some(), "frames keep coming: {}", hub());
}

#[test]
fn boxes_behind_home_routers_map_their_ports_or_play_as_viewers() {
    let _alone = one_at_a_time();
    if !testbed::can_run() {
        eprintln!("skipped: the testbed needs root (network namespaces, nftables)");
        return;
    }
    let astral = PathBuf::from(env!("CARGO_BIN_EXE_astral"));
    // One box on the internet that forwards nothing; a source with one slot.
    let mut options = testbed::Options::new(astral, 1);
    options.uplinks_kbps = vec![1500];
    options.source_uplink_kbps = 3000;
    let mut bed = Testbed::start(options).expect("the testbed starts");
    let outside = 0;
    let mapping = bed
        .add_router(RouterKind::Upnp, false)
        .expect("a UPnP router");
    let port_control = bed
        .add_router(RouterKind::NatPmp, false)
        .expect("a NAT-PMP router");
    let plain = bed
        .add_router(RouterKind::Plain, false)
        .expect("a plain router");
    let booted = Instant::now();
    // One slot each: neither can take the other's place under the source.
    let one_slot = ["--max-forwards".to_owned(), "1".to_owned()];
    let mapped = bed
        .add_home_box(mapping, 6000, &one_slot)
        .expect("a box behind it");
    let unmapped = bed
        .add_home_box(plain, 6000, &one_slot)
        .expect("a box behind it");
    let pcp = bed
        .add_home_box(port_control, 6000, &[])
        .expect("a box behind it");
    let logs = format!("logs in {}", bed.work_dir().display());

    let reach = |i: usize| bed.viewers[i].get("/status").map(|s| s["reach"].clone());
    let reached = eventually(Duration::from_secs(20), || {
        reach(mapped).ok().filter(|r| r["state"] == "reachable")
    })
    .unwrap_or_else(|| panic!("not reachable: {:?}\n{logs}", reach(mapped)));
    eprintln!(
        "behind the UPnP router: {reached}, {:?} after the box was asked to start",
        booted.elapsed()
    );
    assert!(reached["known_after_ms"].as_u64().is_some(), "{reached}");
    let wan = bed.routers[mapping].wan.to_string();
    assert_eq!(reached["mapped_by"], "UPnP", "{reached}");
    assert!(
        reached["api"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{wan}:")),
        "reached at the router's address: {reached}"
    );
    let status = bed.viewers[mapped].get("/status").unwrap();
    assert_eq!(
        status["peer"]["api"], reached["api"],
        "and advertised there"
    );

    let by_pcp = eventually(Duration::from_secs(20), || {
        reach(pcp).ok().filter(|r| r["state"] == "reachable")
    })
    .unwrap_or_else(|| panic!("not reachable: {:?}\n{logs}", reach(pcp)));
    eprintln!("behind the NAT-PMP router: {by_pcp}");
    assert_eq!(by_pcp["mapped_by"], "PCP", "{by_pcp}");
    let wan = bed.routers[port_control].wan.to_string();
    assert!(by_pcp["api"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{wan}:")));

    let refused = eventually(Duration::from_secs(20), || {
        reach(unmapped).ok().filter(|r| r["state"] == "unreachable")
    })
    .unwrap_or_else(|| panic!("not found unreachable: {:?}\n{logs}", reach(unmapped)));
    eprintln!("behind the plain router: {refused}");
    let why = refused["why"].as_str().unwrap();
    assert!(why.contains("did not answer"), "{why}");
    assert!(why.contains("the router mapped no port"), "{why}");
    assert!(
        why.contains("enable UPnP or NAT-PMP on the router, or forward TCP ports 8000 and 1935"),
        "says what to do: {why}"
    );
    assert!(
        why.contains("It forwards only to boxes that can be reached, by connecting to them"),
        "{why}"
    );
    assert_eq!(
        refused["api"].as_str().unwrap().split(':').next(),
        Some(bed.routers[plain].wan.to_string().as_str()),
        "the portal saw the router's address"
    );

    // The unreachable box takes the source's one slot. The mapped box can then only
    // play from it: it asks through the portal, and the unreachable box connects to
    // it. The box on the internet can then only play from the mapped box, through
    // the router's mapping.
    let id = |bed: &Testbed, i: usize| bed.viewers[i].get("/status").unwrap()["peer"]["id"].clone();
    let (mapped_id, unmapped_id) = (id(&bed, mapped), id(&bed, unmapped));
    bed.watch(unmapped).unwrap();
    let p = flowing(&bed, unmapped, &logs);
    assert_eq!(p["depth"], 1, "under the source: {p}");
    assert_eq!(p["slots"], 1, "it keeps its slot for boxes it dials: {p}");
    bed.watch(mapped).unwrap();
    let p = flowing(&bed, mapped, &logs);
    assert_eq!(
        p["parent"], unmapped_id,
        "plays from the unreachable box: {p}"
    );
    let dialled = eventually(Duration::from_secs(5), || {
        let u = place(&bed, unmapped);
        let child = u["tickets"][0].clone();
        (child["child"] == mapped_id && child["connected"] == true).then_some(u)
    })
    .unwrap_or_else(|| panic!("no connected child: {}\n{logs}", place(&bed, unmapped)));
    eprintln!("the unreachable box forwards over the connection it made: {dialled}");
    frames_keep_coming(&bed, mapped);
    bed.watch(outside).unwrap();
    let p = flowing(&bed, outside, &logs);
    assert_eq!(p["parent"], mapped_id, "plays from the mapped box: {p}");

    // Its router lets nothing in, yet other boxes reach it through its control
    // channel to the portal: a signed ping relayed there comes back signed by it.
    let unmapped_id = bed.viewers[unmapped].get("/status").unwrap()["peer"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let caller = proto::identity::NodeKey::from_seed([9; 32]);
    let header = caller.sign_request("GET", "/ping", b"", now);
    let relay = format!("http://{}:8080/api/relay/{unmapped_id}/ping", bed.portal.ip);
    let answer = eventually(Duration::from_secs(10), || {
        ureq::get(&relay)
            .set(proto::identity::SIGNATURE_HEADER, &header)
            .timeout(Duration::from_secs(5))
            .call()
            .ok()
    })
    .unwrap_or_else(|| panic!("no answer through the portal\n{logs}"));
    let signed = answer
        .header(proto::identity::SIGNATURE_HEADER)
        .map(str::to_owned);
    let body = answer.into_string().unwrap();
    let by = proto::identity::verify_response(
        signed.as_deref(),
        header.rsplit('.').next().unwrap(),
        200,
        body.as_bytes(),
        now,
    )
    .expect("an answer signed for the ping");
    assert_eq!(by.node.to_string(), unmapped_id, "{body}");

    // Its owner manages it from the portal, through the same channel: it claims the
    // box with the pairing code the box shows its admin, then reads its status and
    // changes its settings.
    let portal = format!("http://{}:8080", bed.portal.ip);
    let code = bed.viewers[unmapped].get_as_admin("/owner").unwrap()["pairing_code"]
        .as_str()
        .expect("an unowned box has a pairing code")
        .to_owned();
    assert!(
        bed.viewers[unmapped]
            .log()
            .contains(&format!("pairing code {code}")),
        "and logs it"
    );
    let new_owner = || -> String {
        let text = ureq::post(&format!("{portal}/api/owners"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let owner: Value = serde_json::from_str(&text).unwrap();
        format!("Bearer {}", owner["token"].as_str().unwrap())
    };
    let owner = new_owner();
    let call = |auth: &str, method: &str, path: &str, body: Option<Value>| {
        let request = ureq::request(method, &format!("{portal}{path}"))
            .set("authorization", auth)
            .timeout(Duration::from_secs(10));
        let answer = match body {
            Some(body) => request
                .set("content-type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        let (status, text) = match answer {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap()),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    let claim = |auth: &str, code: &str| {
        call(
            auth,
            "POST",
            "/api/owner/boxes",
            Some(serde_json::json!({ "code": code })),
        )
    };
    let (status, body) = claim(&owner, "AAAA-AAAA");
    assert_eq!(status, 404, "no box shows that code: {body}");
    let (status, body) = claim(&owner, &code.to_lowercase());
    assert_eq!(status, 201, "{body}\n{logs}");
    assert_eq!(body["node"].as_str(), Some(unmapped_id.as_str()));
    let (status, body) = claim(&new_owner(), &code);
    assert_eq!(status, 404, "the code is gone once used: {body}");
    let owned = bed.viewers[unmapped].get_as_admin("/owner").unwrap();
    assert!(owned["pairing_code"].is_null(), "{owned}");

    let (status, boxes) = call(&owner, "GET", "/api/owner/boxes", None);
    assert_eq!(status, 200, "{boxes}");
    let listed = &boxes[0];
    assert_eq!(
        listed["node"].as_str(),
        Some(unmapped_id.as_str()),
        "{boxes}"
    );
    assert_eq!(listed["online"], true);
    assert_eq!(
        listed["status"]["reach"]["state"], "unreachable",
        "{listed}"
    );
    assert_eq!(
        listed["status"]["overlay"]["streams"][0]["depth"], 1,
        "its place in the tree: {listed}"
    );

    let config = format!("/api/owner/boxes/{unmapped_id}/config");
    let (status, body) = call(
        &owner,
        "PATCH",
        &config,
        Some(serde_json::json!({ "max_forwards": 2 })),
    );
    assert_eq!(status, 200, "{body}");
    let slots = eventually(Duration::from_secs(5), || {
        (place(&bed, unmapped)["slots"] == 2).then_some(())
    });
    assert!(slots.is_some(), "two slots now: {}", place(&bed, unmapped));
    let (_, effective) = call(&owner, "GET", &config, None);
    assert_eq!(effective["max_forwards"], 2, "{effective}");
    let (status, body) = call(
        &owner,
        "PUT",
        &format!("/api/owner/boxes/{unmapped_id}/broadcast"),
        Some(serde_json::json!({ "on": true })),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no source configured"),
        "{body}"
    );
    let (status, body) = call(
        &owner,
        "POST",
        &format!("/api/owner/boxes/{unmapped_id}/leave"),
        None,
    );
    assert_eq!(
        status, 403,
        "an owner cannot stop the box from afar: {body}"
    );
    let (status, body) = call(&new_owner(), "GET", &config, None);
    assert_eq!(status, 404, "nor can anyone but its owner: {body}");
    let log = bed.viewers[unmapped].log();
    assert!(
        log.contains("PATCH /config from the owner through the portal: 200"),
        "every command is logged on the box:\n{log}"
    );
    assert!(log.contains("refused POST /leave from the portal"), "{log}");
}

/// Two boxes behind routers that map no port, each with an IPv6 address of its own.
/// One router lets IPv6 connections in, the other, as most do, only replies. Over
/// IPv4 neither box can be connected to, so they could not exchange video; over IPv6
/// the first can, and the second plays from it directly.
#[test]
fn ipv6_lets_boxes_behind_routers_play_from_each_other() {
    let _alone = one_at_a_time();
    if !testbed::can_run() {
        eprintln!("skipped: the testbed needs root (network namespaces, nftables)");
        return;
    }
    let astral = PathBuf::from(env!("CARGO_BIN_EXE_astral"));
    // No box on the internet but the source, with one slot.
    let mut options = testbed::Options::new(astral, 0);
    options.source_uplink_kbps = 3000;
    options.ipv6 = true;
    let mut bed = Testbed::start(options).expect("the testbed starts");
    let open = bed.add_router(RouterKind::Plain, true).expect("a router");
    let closed = bed.add_router(RouterKind::Plain, false).expect("a router");
    let one_slot = ["--max-forwards".to_owned(), "1".to_owned()];
    let served = bed.add_home_box(open, 6000, &one_slot).expect("a box");
    let walled = bed.add_home_box(closed, 6000, &one_slot).expect("a box");
    let logs = format!("logs in {}", bed.work_dir().display());

    let reach = |bed: &Testbed, i: usize| {
        eventually(Duration::from_secs(20), || {
            let reach = bed.viewers[i].get("/status").ok()?["reach"].clone();
            (reach["state"] != "unknown" && reach["ipv6"].is_object()).then_some(reach)
        })
        .unwrap_or_else(|| panic!("{} did not check IPv6\n{logs}", bed.viewers[i].name))
    };
    let (open_reach, closed_reach) = (reach(&bed, served), reach(&bed, walled));
    eprintln!("behind the open router: {open_reach}\nbehind the closed one: {closed_reach}");
    let served_ip6 = bed.viewers[served]
        .ip6
        .expect("an IPv6 address")
        .to_string();
    assert_eq!(
        open_reach["state"], "unreachable",
        "over IPv4: {open_reach}"
    );
    assert_eq!(open_reach["ipv6"]["address"], served_ip6.as_str());
    assert_eq!(open_reach["ipv6"]["reachable"], true, "{open_reach}");
    assert_eq!(closed_reach["ipv6"]["reachable"], false, "{closed_reach}");
    let why = closed_reach["ipv6"]["why"].as_str().unwrap();
    assert!(
        why.contains(
            "only if the router's firewall lets IPv6 connections in to TCP ports 8000 and 1935"
        ),
        "says what to do: {why}"
    );
    let status = bed.viewers[served].get("/status").unwrap();
    assert_eq!(
        status["peer"]["rtmp_v6"],
        format!("[{}]:1935", served_ip6).as_str(),
        "advertised: {status}"
    );

    let upstream = |bed: &Testbed, i: usize| {
        bed.viewers[i].get("/streams").unwrap()[0]["source"]["upstream"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // The box reached over IPv6 takes the source's slot, and plays from it over IPv6.
    bed.watch(served).unwrap();
    let p = flowing(&bed, served, &logs);
    assert_eq!(p["depth"], 1, "under the source: {p}");
    let source_ip6 = bed.source.ip6.unwrap().to_string();
    let from = upstream(&bed, served);
    assert!(
        from.starts_with(&format!("rtmp://[{source_ip6}]:1935/")),
        "over IPv6: {from}"
    );
    // The box behind the closed router plays from it, over IPv6.
    let served_id = bed.viewers[served].get("/status").unwrap()["peer"]["id"].clone();
    bed.watch(walled).unwrap();
    let p = flowing(&bed, walled, &logs);
    assert_eq!(p["parent"], served_id, "{p}");
    let from = upstream(&bed, walled);
    assert!(
        from.starts_with(&format!("rtmp://[{}]:1935/", served_ip6)),
        "over IPv6: {from}"
    );
    frames_keep_coming(&bed, walled);
}
