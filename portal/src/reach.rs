//! `POST /api/reachability`: a box asks the portal to dial it back, to learn whether
//! boxes beyond its router can reach it (the box's `reach.rs`). The portal dials only
//! the address the request came from, on the two ports the box names: its API must
//! answer as the box that signed the request (`GET /status` names it), its RTMP port
//! must answer a handshake. Each dial gives up after `DIAL_TIMEOUT`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use proto::overlay::NodeId;
use proto::portal::{Dialled, Reachability, ReachabilityCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::routes::{ApiError, Result, Signed};
use crate::State;

/// How long one dial back may take: a box that answers later is as good as
/// unreachable to a peer, which gives up after two seconds.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

pub fn routes() -> Router<State> {
    Router::new().route("/api/reachability", post(reachability))
}

async fn reachability(signed: Signed) -> Result<Json<Reachability>> {
    let check: ReachabilityCheck = signed.json()?;
    if check.api_port == 0 || check.rtmp_port == 0 {
        return Err(ApiError::BadRequest("ports: 1 to 65535".into()));
    }
    let address = signed.caller.ip().to_canonical();
    if check.ipv6 && !address.is_ipv6() {
        return Err(ApiError::BadRequest(format!(
            "a check of an IPv6 address must come over IPv6, not from {address}"
        )));
    }
    let (api, rtmp) = tokio::join!(
        dial_api(SocketAddr::new(address, check.api_port), &signed.by.node),
        dial_rtmp(SocketAddr::new(address, check.rtmp_port)),
    );
    let answer = Reachability {
        address,
        api: Dialled::from_result(api),
        rtmp: Dialled::from_result(rtmp),
    };
    tracing::debug!(node = %signed.by.node, %address, reachable = answer.reachable(), "dialled back");
    Ok(Json(answer))
}

/// The box's API answers there, as the box `expected`.
async fn dial_api(api: SocketAddr, expected: &NodeId) -> std::result::Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Status {
        peer: proto::overlay::Peer,
    }
    let client = reqwest::Client::builder()
        .timeout(DIAL_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(format!("http://{api}/status"))
        .send()
        .await
        .map_err(|e| format!("the API port {api} did not answer: {}", reason(&e)))?;
    let status: Status = response
        .json()
        .await
        .map_err(|_| format!("{api} answers, but not as an Astral box"))?;
    if status.peer.id != *expected {
        return Err(format!(
            "{api} is box {}, not this one: the router forwards the port elsewhere",
            status.peer.id
        ));
    }
    Ok(())
}

/// The box's RTMP port answers a handshake there: C0 and C1 in, S0 out.
async fn dial_rtmp(rtmp: SocketAddr) -> std::result::Result<(), String> {
    let dial = async {
        let mut stream = TcpStream::connect(rtmp).await?;
        let mut c0c1 = vec![0u8; 1 + 1536];
        c0c1[0] = 3;
        stream.write_all(&c0c1).await?;
        stream.read_u8().await
    };
    match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
        Ok(Ok(3)) => Ok(()),
        Ok(Ok(version)) => Err(format!(
            "{rtmp} answers, but not as an RTMP server (version {version})"
        )),
        Ok(Err(e)) => Err(format!("the RTMP port {rtmp} did not answer: {e}")),
        Err(_) => Err(format!(
            "the RTMP port {rtmp} did not answer within {} s",
            DIAL_TIMEOUT.as_secs()
        )),
    }
}

fn reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {} s", DIAL_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        e.to_string()
    }
}
