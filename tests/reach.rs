//! Reachability on loopback, where every box reaches every other: a box that could not
//! reach the portal when it started cannot tell, says so, and checks again until the
//! portal answers; then it is reachable. (Boxes behind routers: tests/home_routers.rs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

#[test]
fn a_box_that_started_without_its_portal_checks_again_once_it_answers() {
    let portal_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let portal_url = format!("http://{portal_addr}");
    let node = NodeProc::start_at("late", [127, 0, 0, 30], "", &["--portal", &portal_url]);
    let reach = eventually(Duration::from_secs(10), || {
        let reach = node.status()["reach"].clone();
        reach["why"].is_string().then_some(reach)
    });
    assert_eq!(reach["state"], "unknown", "{reach}");
    assert!(
        reach["why"].as_str().unwrap().contains("portal"),
        "says it could not ask the portal: {reach}"
    );

    let _portal = PortalProc::start_at(portal_addr);
    let reach = eventually(Duration::from_secs(45), || {
        let reach = node.status()["reach"].clone();
        (reach["state"] == "reachable").then_some(reach)
    });
    assert_eq!(
        reach["api"].as_str(),
        Some(node.api.to_string().as_str()),
        "{reach}"
    );
    assert!(
        reach["mapped_by"].is_null(),
        "no mapping on loopback: {reach}"
    );
}
