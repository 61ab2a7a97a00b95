//! Requests signed by boxes (`proto::identity`), as a server reads them: the body is
//! read whole, the signature checked against it, the method and the path, and each
//! signature is taken once. A refused request is logged once a minute per address, so
//! that a flood of them cannot flood the log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use proto::identity::{verify_request, SeenSignatures, SignatureError, SignedBy, SIGNATURE_HEADER};

/// How often one address's refusals are logged.
const LOG_EVERY_MS: u64 = 60_000;

/// The clock signatures are checked against: the wall clock, which the signer's is
/// compared with.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One server's check of signed requests.
#[derive(Clone, Default)]
pub struct Verifier {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    seen: SeenSignatures,
    /// Per address: when its last refusal was logged, and the refusals since.
    logged: HashMap<IpAddr, (u64, u64)>,
}

/// A signed body as JSON: 400 when it is not JSON, 422 when it is JSON of the wrong
/// shape (as axum's `Json` answers).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| Rejection {
        status: match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        },
        error: format!("cannot parse the request: {e}"),
    })
}

/// Why a signed request was not read.
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub error: String,
}

impl Verifier {
    /// Reads `request`'s body (at most `limit` bytes) and checks its signature.
    pub async fn read(
        &self,
        request: Request,
        limit: usize,
    ) -> Result<(SignedBy, Bytes), Rejection> {
        let (parts, body) = request.into_parts();
        let caller = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| Rejection {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                error: format!("the body is larger than {limit} bytes, or was cut short"),
            })?;
        let header = parts
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str());
        let what = format!("{} {}", parts.method, parts.uri.path());
        let checked = verify_request(header, parts.method.as_str(), path, &body, now_unix_ms());
        self.take(caller, &what, checked)
            .map(|signed| (signed, body))
    }

    /// Takes a signature checked elsewhere (`what`, from `caller`, for the log): once
    /// only, and a refusal logged as [`Verifier::read`] logs them.
    pub fn take(
        &self,
        caller: Option<IpAddr>,
        what: &str,
        checked: Result<SignedBy, SignatureError>,
    ) -> Result<SignedBy, Rejection> {
        let now = now_unix_ms();
        let checked = checked.and_then(|signed| {
            self.lock().seen.take(&signed, now)?;
            Ok(signed)
        });
        checked.map_err(|e| self.refuse(caller, what, e, now))
    }

    /// Checks that a signed request speaks for its signer.
    pub fn speaks_for(
        &self,
        signed: &SignedBy,
        claimed: &proto::overlay::NodeId,
        caller: IpAddr,
    ) -> Result<(), Rejection> {
        if signed.node == *claimed {
            return Ok(());
        }
        let e = SignatureError::NotYours {
            claimed: claimed.clone(),
            signer: signed.node.clone(),
        };
        Err(self.refuse(Some(caller), "", e, now_unix_ms()))
    }

    fn refuse(&self, caller: Option<IpAddr>, what: &str, e: SignatureError, now: u64) -> Rejection {
        let status = match e {
            SignatureError::Missing
            | SignatureError::Malformed(_)
            | SignatureError::Stale { .. } => StatusCode::UNAUTHORIZED,
            SignatureError::Forged
            | SignatureError::Replayed
            | SignatureError::NotYours { .. }
            | SignatureError::NotHolder { .. } => StatusCode::FORBIDDEN,
            SignatureError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        };
        let error = e.to_string();
        if let Some(ip) = caller {
            self.log_refusal(ip, what, &error, now);
        }
        Rejection { status, error }
    }

    /// Logs a refused request (`what`, for the log, may be empty): the first from an
    /// address in a minute, then how many followed, so that a flood of refused
    /// requests cannot flood the log.
    pub fn log_refusal(&self, ip: IpAddr, what: &str, error: &str, now: u64) {
        let mut inner = self.lock();
        if inner.logged.len() > 4096 {
            inner.logged.clear();
        }
        let (last, since) = inner.logged.entry(ip).or_insert((0, 0));
        if now.saturating_sub(*last) >= LOG_EVERY_MS {
            let what = if what.is_empty() {
                String::new()
            } else {
                format!(" ({what})")
            };
            tracing::warn!(%ip, refused_since = *since, "refused a request{what}: {error}");
            (*last, *since) = (now, 0);
        } else {
            *since += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a request from `caller` may name `claimed` as its own address: the same
/// address, whether written as IPv4 or as IPv4-mapped IPv6. A box that could name
/// any address could have others connect to a victim for it.
pub fn same_host(caller: IpAddr, claimed: IpAddr) -> bool {
    caller.to_canonical() == claimed.to_canonical()
}

/// Whether `peer`'s addresses are `caller`'s own; if not, the error to answer.
pub fn check_own_address(
    caller: IpAddr,
    peer: &proto::overlay::Peer,
    what: &str,
) -> Result<(), String> {
    for named in [peer.api.ip(), peer.rtmp.ip()] {
        if !same_host(caller, named) {
            return Err(format!(
                "{what} names {named} but comes from {}; a box names only its own address",
                caller.to_canonical()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same_host;

    #[test]
    fn a_box_names_only_its_own_address() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(same_host(ip("192.0.2.7"), ip("192.0.2.7")));
        assert!(same_host(ip("::ffff:192.0.2.7"), ip("192.0.2.7")));
        assert!(!same_host(ip("127.0.0.1"), ip("127.0.0.52")));
        assert!(!same_host(ip("192.0.2.7"), ip("192.0.2.8")));
        assert!(!same_host(ip("127.0.0.1"), ip("192.0.2.8")));
        assert!(!same_host(ip("192.0.2.7"), ip("127.0.0.1")));
    }
}
