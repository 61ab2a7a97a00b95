//! The overlay's requests as HTTP: which route each one takes, and what an answer or a
//! failure means. The server side of the same routes is in `crate::api::peer`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use overlay::{CallError, Target};
use proto::identity::{verify_response, NodeKey, SIGNATURE_HEADER};
use proto::overlay::{NodeId, Peer, Refusal, RefusalKind, Request, Response, StreamId};
use proto::portal::{StreamEntry, StreamUpdate};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::lock;

/// The overlay gives up on a call after its own `call_timeout`; this bounds the socket.
const TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from a peer: a lying peer cannot make us buffer more.
const MAX_BODY: usize = 1 << 20;
/// A box found unreachable is called through the portal for this long before it is
/// tried directly again.
const UNREACHABLE_FOR: Duration = Duration::from_secs(600);

/// The client for calls to peers and the portal. Every request is signed with the
/// node's key (`proto::identity`); they leave from `local` when the node's API is
/// bound to a specific address, so that peers and the portal see the address it
/// advertises.
pub struct Client {
    http: reqwest::Client,
    key: NodeKey,
    /// Boxes that cannot be connected to, as a search said or a call found, with when
    /// that was learnt: they are called through the portal, and pulled from by
    /// connection reversal.
    unreachable: std::sync::Mutex<HashMap<NodeId, Instant>>,
}

impl Client {
    pub fn new(local: Option<std::net::IpAddr>, key: NodeKey) -> Client {
        let http = reqwest::Client::builder()
            .local_address(local)
            .dns_resolver(std::sync::Arc::new(Ipv4First))
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("astral/", env!("CARGO_PKG_VERSION")))
            // Boxes talk to each other directly, never through a proxy from the
            // environment.
            .no_proxy()
            .build()
            .expect("a client without TLS always builds");
        Client {
            http,
            key,
            unreachable: Default::default(),
        }
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// Whether `node` was lately found to accept no connection from beyond its router.
    pub fn is_unreachable(&self, node: &NodeId) -> bool {
        lock(&self.unreachable)
            .get(node)
            .is_some_and(|since| since.elapsed() < UNREACHABLE_FOR)
    }

    fn learn(&self, node: &NodeId, reachable: bool) {
        let mut unreachable = lock(&self.unreachable);
        if reachable {
            unreachable.remove(node);
        } else {
            unreachable.retain(|_, since| since.elapsed() < UNREACHABLE_FOR);
            unreachable.insert(node.clone(), Instant::now());
        }
    }

    /// A request to `url` with `body` (of `content_type`), signed.
    fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<(&'static str, bytes::Bytes)>,
    ) -> Result<reqwest::RequestBuilder, String> {
        self.signed(method, url, body).map(|(builder, _)| builder)
    }

    /// A signed request, and its `Astral-Signature` header.
    fn signed(
        &self,
        method: Method,
        url: &str,
        body: Option<(&'static str, bytes::Bytes)>,
    ) -> Result<(reqwest::RequestBuilder, String), String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let bytes = body.as_ref().map_or(&[][..], |(_, b)| b);
        let signature =
            self.key
                .sign_request(method.as_str(), &path, bytes, web::signed::now_unix_ms());
        let builder = self.with_signature(method, url.as_str(), &signature, body);
        Ok((builder, signature))
    }

    /// A request to `url` carrying `signature`, made for it elsewhere (a request
    /// relayed through the portal keeps the signature of its route on the box).
    fn with_signature(
        &self,
        method: Method,
        url: &str,
        signature: &str,
        body: Option<(&'static str, bytes::Bytes)>,
    ) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .request(method, url)
            .header(SIGNATURE_HEADER, signature);
        if let Some((content_type, body)) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        builder
    }

    fn json(
        &self,
        method: Method,
        url: &str,
        value: &impl serde::Serialize,
    ) -> Result<reqwest::RequestBuilder, String> {
        self.signed_json(method, url, value)
            .map(|(builder, _)| builder)
    }

    fn signed_json(
        &self,
        method: Method,
        url: &str,
        value: &impl serde::Serialize,
    ) -> Result<(reqwest::RequestBuilder, String), String> {
        let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        self.signed(method, url, Some(("application/json", body.into())))
    }
}

/// Resolves a name (the portal's) to its IPv4 addresses when it has any: the overlay's
/// requests go over IPv4 where they can, as a box's card names its IPv4 address, checked
/// against where its requests come from. IPv6 is for media (`crate::reach::ipv6`).
struct Ipv4First;

impl reqwest::dns::Resolve for Ipv4First {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let v4: Vec<SocketAddr> = all.iter().copied().filter(SocketAddr::is_ipv4).collect();
            let addrs = if v4.is_empty() { all } else { v4 };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
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
        Request::Dial { .. } => (Method::POST, "/dial".into()),
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
    client: &Client,
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
    let url = format!("{base}{path}");
    let body = if method == Method::GET {
        None
    } else {
        let json =
            serde_json::to_vec(request).map_err(|e| CallError::Unreachable(e.to_string()))?;
        Some(("application/json", bytes::Bytes::from(json)))
    };
    let (builder, header) = client
        .signed(method.clone(), &url, body.clone())
        .map_err(CallError::Unreachable)?;
    let signature = header.rsplit('.').next().unwrap_or_default().to_owned();
    // A box behind a router that lets nothing in is reached through its control
    // channel to the portal, with the same signed request.
    let relay = match (to, portal) {
        (Target::Node(peer), Some(portal)) => Some(format!("{portal}/api/relay/{}{path}", peer.id)),
        _ => None,
    };
    let known_unreachable = matches!(to, Target::Node(peer) if client.is_unreachable(&peer.id));
    let direct = match &relay {
        Some(relay) if known_unreachable => {
            client.with_signature(method.clone(), relay, &header, body.clone())
        }
        _ => builder,
    };
    let response = match (direct.send().await, to, relay) {
        (Ok(response), _, _) => response,
        (Err(e), Target::Node(peer), Some(relay)) if e.is_connect() && !known_unreachable => {
            let response = client
                .with_signature(method, &relay, &header, body)
                .send()
                .await
                .map_err(|relayed| {
                    CallError::Unreachable(format!(
                        "{}; through the portal: {}",
                        error_chain(&e),
                        error_chain(&relayed)
                    ))
                })?;
            if response.status().is_success() {
                client.learn(&peer.id, false);
            }
            response
        }
        (Err(e), _, _) => return Err(CallError::Unreachable(error_chain(&e))),
    };
    let status = response.status();
    let answer_signature = response
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(response).await.map_err(CallError::Unreachable)?;
    // A box's answer is signed by that box, for this request: one altered on the way,
    // or from someone else, counts as no answer.
    if let Target::Node(peer) = to {
        let signed = verify_response(
            answer_signature.as_deref(),
            &signature,
            status.as_u16(),
            &body,
            web::signed::now_unix_ms(),
        );
        match signed {
            Ok(by) if by.node == peer.id => {}
            Ok(by) => {
                return Err(CallError::Unreachable(format!(
                    "the answer is signed by {}, not by {}",
                    by.node, peer.id
                )))
            }
            // Refused before the request was read (too many from this address, a
            // signature refused): the box's error says why, unsigned.
            Err(_) if !status.is_success() && answer_signature.is_none() => {
                let error = serde_json::from_slice::<proto::ApiError>(&body)
                    .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |e| e.error);
                return Err(CallError::Unreachable(format!(
                    "{} refused the request ({status}, unsigned): {error}",
                    peer.id
                )));
            }
            Err(e) => {
                return Err(CallError::Unreachable(format!(
                    "the answer of {} does not hold: {e}",
                    peer.id
                )))
            }
        }
    }
    if status.is_success() {
        let response = serde_json::from_slice(&body).map_err(|e| {
            CallError::Unreachable(format!("answer is not an overlay response: {e}"))
        })?;
        // A search says which candidates can be connected to.
        if let Response::Candidates { candidates } = &response {
            for c in candidates {
                client.learn(&c.peer.id, c.holding.reachable);
            }
        }
        return Ok(response);
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
    builder: Result<reqwest::RequestBuilder, String>,
) -> Result<(StatusCode, Option<T>), PortalError> {
    let response = builder
        .map_err(PortalError::Unreachable)?
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
    client: &Client,
    portal: &str,
    stream: &StreamId,
) -> Result<StreamEntry, PortalError> {
    let url = format!("{portal}/api/streams/{stream}");
    match portal_json::<StreamEntry>(client.request(Method::GET, &url, None)).await {
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
    client: &Client,
    portal: &str,
    stream: &StreamId,
    listing: &StreamUpdate,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/streams/{stream}");
    portal_json::<StreamEntry>(client.json(Method::PUT, &url, listing))
        .await
        .map(drop)
}

pub async fn unlist_stream(
    client: &Client,
    portal: &str,
    stream: &StreamId,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/streams/{stream}");
    portal_json::<serde_json::Value>(client.request(Method::DELETE, &url, None))
        .await
        .map(drop)
}

/// Reports this box's place in the network, for the portal's map.
pub async fn report_place(
    client: &Client,
    portal: &str,
    report: &proto::portal::NodeReport,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/nodes/{}", report.peer.id);
    portal_json::<serde_json::Value>(client.json(Method::PUT, &url, report))
        .await
        .map(drop)
}

/// Asks the portal to dial this box back on these ports.
pub async fn check_reachability(
    client: &Client,
    portal: &str,
    check: &proto::portal::ReachabilityCheck,
) -> Result<proto::portal::Reachability, PortalError> {
    let url = format!("{portal}/api/reachability");
    match portal_json(client.json(Method::POST, &url, check)).await? {
        (_, Some(answer)) => Ok(answer),
        (_, None) => Err(PortalError::Unreachable("an empty answer".into())),
    }
}

/// Reports a parent that sent video the source did not seal.
pub async fn report_tamper(
    client: &Client,
    portal: &str,
    me: &proto::overlay::NodeId,
    report: &proto::portal::TamperReport,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/nodes/{me}/reports");
    portal_json::<serde_json::Value>(client.json(Method::POST, &url, report))
        .await
        .map(drop)
}

/// Takes this box off the portal's map.
pub async fn forget_place(
    client: &Client,
    portal: &str,
    node: &proto::overlay::NodeId,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/nodes/{node}");
    portal_json::<serde_json::Value>(client.request(Method::DELETE, &url, None))
        .await
        .map(drop)
}

/// Sends a still of a stream published here.
pub async fn send_still(
    client: &Client,
    portal: &str,
    stream: &StreamId,
    jpeg: bytes::Bytes,
) -> Result<(), PortalError> {
    let url = format!("{portal}/api/streams/{stream}/thumbnail");
    let request = client.request(Method::PUT, &url, Some(("image/jpeg", jpeg)));
    portal_json::<serde_json::Value>(request).await.map(drop)
}

/// Who answers at a node's API address: its `GET /status` names it.
pub async fn status_peer(client: &Client, api: SocketAddr) -> Result<Peer, String> {
    #[derive(serde::Deserialize)]
    struct Status {
        peer: Peer,
    }
    let response = client
        .request(Method::GET, &format!("http://{api}/status"), None)?
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
