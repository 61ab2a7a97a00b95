//! The overlay's requests as HTTP: which route each one takes, and what an answer or a
//! failure means. The server side of the same routes is in `crate::api::peer`.

use std::net::SocketAddr;
use std::time::Duration;

use overlay::{CallError, Target};
use proto::overlay::{Peer, Refusal, RefusalKind, Request, Response, StreamId};
use proto::portal::{StreamEntry, StreamUpdate};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// The overlay gives up on a call after its own `call_timeout`; this bounds the socket.
const TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from a peer: a lying peer cannot make us buffer more.
const MAX_BODY: usize = 1 << 20;

/// The client for overlay calls; they leave from `local` when the node's API is bound
/// to a specific address, so that peers and the portal see the address it advertises.
pub fn client(local: Option<std::net::IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local)
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("astral/", env!("CARGO_PKG_VERSION")))
        // Boxes talk to each other directly, never through a proxy from the
        // environment.
        .no_proxy()
        .build()
        .expect("a client without TLS always builds")
}

/// The method and path of `request` on a node's API or on the portal.
fn route(request: &Request) -> (Method, String) {
    match request {
        Request::Register { .. } => (Method::POST, "/nodes".into()),
        Request::Announce { node, .. } => (Method::PUT, format!("/nodes/{node}")),
        Request::Unregister { node } => (Method::DELETE, format!("/nodes/{node}")),
        Request::Search { .. } => (Method::POST, "/search".into()),
        Request::Ticket { .. } => (Method::POST, "/tickets".into()),
        Request::EndTicket { ticket, .. } => (Method::DELETE, format!("/tickets/{ticket}")),
        Request::Path { ticket, .. } => (Method::PUT, format!("/tickets/{ticket}")),
        Request::Ping { stream } => (
            Method::GET,
            match stream {
                Some(s) => format!("/ping?stream={s}"),
                None => "/ping".into(),
            },
        ),
        Request::Adopt { .. } => (Method::POST, "/supernode".into()),
        Request::Rehome { .. } => (Method::PUT, "/supernode".into()),
        Request::Neighbour { .. } => (Method::POST, "/supernode/neighbours".into()),
        Request::Bootstrap => (Method::GET, "/api/supernodes".into()),
        Request::PromoteSupernode { .. } => (Method::POST, "/api/supernodes".into()),
        Request::RetireSupernode { id } => (Method::DELETE, format!("/api/supernodes/{id}")),
    }
}

/// A short name of a request for logs.
pub fn describe(request: &Request) -> String {
    let (method, path) = route(request);
    format!("{method} {}", path.split('?').next().unwrap_or_default())
}

/// Carries one overlay call and reads its answer.
pub async fn call(
    client: &reqwest::Client,
    portal: Option<&str>,
    to: &Target,
    request: &Request,
) -> Result<Response, CallError> {
    let base = match to {
        Target::Node(peer) => format!("http://{}", peer.api),
        Target::Portal => portal
            .ok_or_else(|| CallError::Unreachable("no portal configured".into()))?
            .to_owned(),
    };
    let (method, path) = route(request);
    let mut builder = client.request(method.clone(), format!("{base}{path}"));
    if method != Method::GET {
        builder = builder.json(request);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
    let status = response.status();
    let body = read_body(response).await.map_err(CallError::Unreachable)?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            CallError::Unreachable(format!("answer is not an overlay response: {e}"))
        });
    }
    Err(CallError::Refused(refusal(status, &body)))
}

/// A refusal from an error answer: the peer's own `Refusal`, or one made from the
/// status and its `{"error": …}`.
fn refusal(status: StatusCode, body: &[u8]) -> Refusal {
    if let Ok(refusal) = serde_json::from_slice::<Refusal>(body) {
        return refusal;
    }
    let kind = match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => RefusalKind::Forbidden,
        StatusCode::NOT_FOUND => RefusalKind::NotFound,
        StatusCode::CONFLICT => RefusalKind::Full,
        s if s.is_client_error() => RefusalKind::Invalid,
        _ => RefusalKind::Unavailable,
    };
    let error = serde_json::from_slice::<proto::ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("HTTP {status}"));
    Refusal::new(kind, error)
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("answer larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's errors say "error sending request"; the cause is further down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why the portal could not help.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("the portal is unreachable: {0}")]
    Unreachable(String),
    #[error("the portal has no live stream {0:?}")]
    NoSuchStream(String),
    #[error("the portal refused: {error}")]
    Refused { status: u16, error: String },
}

async fn portal_json<T: DeserializeOwned>(
    builder: reqwest::RequestBuilder,
) -> Result<(StatusCode, Option<T>), PortalError> {
    let response = builder
        .send()
        .await
        .map_err(|e| PortalError::Unreachable(error_chain(&e)))?;
    let status = response.status();
    let body = read_body(response)
        .await
        .map_err(PortalError::Unreachable)?;
    if status.is_success() {
        if body.is_empty() {
            return Ok((status, None));
        }
        return serde_json::from_slice(&body)
            .map(|v| (status, Some(v)))
            .map_err(|e| PortalError::Unreachable(format!("unexpected answer: {e}")));
    }
    Err(PortalError::Refused {
        status: status.as_u16(),
        error: refusal(status, &body).error,
    })
}

/// The portal's directory entry of `stream`.
pub async fn stream_entry(
    client: &reqwest::Client,
    portal: &str,
    stream: &StreamId,
) -> Result<StreamEntry, PortalError> {
    let url = format!("{portal}/api/streams/{stream}");
    match portal_json::<StreamEntry>(client.get(url)).await {
        Ok((_, Some(entry))) => Ok(entry),
        Ok((_, None)) => Err(PortalError::Unreachable("empty answer".into())),
        Err(PortalError::Refused { status: 404, .. }) => {
            Err(PortalError::NoSuchStream(stream.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// Creates or renews the directory entry of a stream published here.
pub async fn list_stream(
    client: &reqwest::Client,
    portal: &str,
    stream: &StreamId,
    listing: &StreamUpdate,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/streams/{stream}");
    portal_json::<StreamEntry>(client.put(url).json(listing))
        .await
        .map(drop)
}

pub async fn unlist_stream(
    client: &reqwest::Client,
    portal: &str,
    stream: &StreamId,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/streams/{stream}");
    portal_json::<serde_json::Value>(client.delete(url))
        .await
        .map(drop)
}

/// Reports this box's place in the network, for the portal's map.
pub async fn report_place(
    client: &reqwest::Client,
    portal: &str,
    report: &proto::portal::NodeReport,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/nodes/{}", report.peer.id);
    portal_json::<serde_json::Value>(client.put(url).json(report))
        .await
        .map(drop)
}

/// Takes this box off the portal's map.
pub async fn forget_place(
    client: &reqwest::Client,
    portal: &str,
    node: &proto::overlay::NodeId,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/nodes/{node}");
    portal_json::<serde_json::Value>(client.delete(url))
        .await
        .map(drop)
}

/// Sends a still of a stream published here.
pub async fn send_still(
    client: &reqwest::Client,
    portal: &str,
    stream: &StreamId,
    jpeg: bytes::Bytes,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/streams/{stream}/thumbnail");
    let request = client
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "image/jpeg")
        .body(jpeg);
    portal_json::<serde_json::Value>(request).await.map(drop)
}

/// Who answers at a node's API address: its `GET /status` names it.
pub async fn status_peer(client: &reqwest::Client, api: SocketAddr) -> Result<Peer, String> {
    #[derive(serde::Deserialize)]
    struct Status {
        peer: Peer,
    }
    let response = client
        .get(format!("http://{api}/status"))
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let body = read_body(response).await?;
    serde_json::from_slice::<Status>(&body)
        .map(|s| s.peer)
        .map_err(|e| format!("not an Astral node: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_kind_or_follow_the_status() {
        let body = br#"{"kind":"loop","error":"that is my ancestor"}"#;
        let r = refusal(StatusCode::CONFLICT, body);
        assert_eq!(r.kind, RefusalKind::Loop);
        let r = refusal(StatusCode::NOT_FOUND, br#"{"error":"no such ticket"}"#);
        assert_eq!(
            (r.kind, r.error.as_str()),
            (RefusalKind::NotFound, "no such ticket")
        );
        let r = refusal(StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(r.kind, RefusalKind::Unavailable);
    }

    #[test]
    fn every_request_has_a_route() {
        let stream = StreamId::new("cam").unwrap();
        assert_eq!(
            route(&Request::Ping {
                stream: Some(stream)
            }),
            (Method::GET, "/ping?stream=cam".into())
        );
        assert_eq!(
            describe(&Request::Bootstrap),
            "GET /api/supernodes".to_string()
        );
    }
}
