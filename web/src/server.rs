//! HTTP serving for the node's API and the portal: an axum router on hyper, with what
//! `axum::serve` leaves out and a server that faces the internet needs.
//!
//! - **Slow clients are closed.** A request's head must arrive whole within
//!   [`HEAD_TIMEOUT`], on a new connection and between requests on a kept one: a client
//!   that dribbles its headers, or sends nothing (slow-loris), does not hold a
//!   connection, and the file descriptor behind it, for ever.
//! - **An address holds at most so many connections at once** (`per_address`).
//!   Beyond it a connection is closed as it comes, and logged once while the address
//!   stays over. [`PerAddress`] does the same for the node's RTMP port.
//! - **Graceful shutdown.** Once `shutdown` completes nothing new is accepted, and open
//!   connections finish the request they are in, for at most [`DRAIN`].

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// Longest wait for a request's head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for open connections at shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listeners` (an IPv4 and an IPv6 address, say) until `shutdown`
/// completes. The handlers see the client's address as `ConnectInfo<SocketAddr>`;
/// `tune` sets each accepted socket's options.
pub async fn serve(
    listeners: Vec<TcpListener>,
    app: Router,
    per_address: usize,
    tune: fn(&TcpStream),
    shutdown: impl Future<Output = ()>,
) {
    let open = PerAddress::new("HTTP", per_address);
    // Each connection holds a receiver: the shutdown is sent on it, and the server
    // knows all have closed when the sender has no receiver left.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept_any(&listeners) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = open.take(peer.ip()) else {
            continue;
        };
        tune(&stream);
        tokio::spawn(connection(stream, peer, app.clone(), stop_rx.clone(), slot));
    }
    drop(stop_rx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, stop_tx.closed()).await.is_err() {
        tracing::debug!("HTTP connections still open after {DRAIN:?}: dropped");
    }
}

/// The next connection on any of `listeners`.
pub async fn accept_any(listeners: &[TcpListener]) -> std::io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        listeners
            .iter()
            .find_map(|listener| match listener.poll_accept(cx) {
                std::task::Poll::Ready(accepted) => Some(accepted),
                std::task::Poll::Pending => None,
            })
            .map_or(std::task::Poll::Pending, std::task::Poll::Ready)
    })
    .await
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut conn = std::pin::pin!(hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades());
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // Sent once, at shutdown (or the server is gone).
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP connection ended: {e}");
    }
}

/// Open connections per client address, with a cap; for the RTMP port too.
#[derive(Clone)]
pub struct PerAddress {
    /// What the connections are, for the log.
    what: &'static str,
    per_address: usize,
    open: Arc<Mutex<HashMap<IpAddr, Open>>>,
}

#[derive(Default)]
struct Open {
    count: usize,
    /// Refused since the address last had room: logged once.
    refused: u64,
}

impl PerAddress {
    pub fn new(what: &'static str, per_address: usize) -> PerAddress {
        PerAddress {
            what,
            per_address,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, held until dropped; `None` if the
    /// address has as many as it may.
    pub fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = open.entry(ip).or_default();
        if entry.count >= self.per_address {
            if entry.refused == 0 {
                tracing::warn!(
                    %ip,
                    "{ip} has {} {} connections open, the most an address may: \
                     further ones are closed until some end",
                    self.per_address,
                    self.what
                );
            }
            entry.refused += 1;
            return None;
        }
        entry.count += 1;
        Some(Slot {
            connections: self.clone(),
            ip,
        })
    }
}

/// One connection's place in [`PerAddress`], given back when dropped.
pub struct Slot {
    connections: PerAddress,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = open.get_mut(&self.ip) else {
            return;
        };
        entry.count -= 1;
        // The address has room again.
        if entry.refused > 0 {
            tracing::info!(
                ip = %self.ip,
                refused = entry.refused,
                "{} connections refused while the address was at its limit",
                self.connections.what
            );
            entry.refused = 0;
        }
        if entry.count == 0 {
            open.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_connections() {
        let connections = PerAddress::new("test", 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = connections.take(a).expect("room");
        let _second = connections.take(a).expect("room");
        assert!(
            connections.take(a).is_none(),
            "a third from the same address"
        );
        assert!(connections.take(b).is_some(), "another address has its own");
        drop(first);
        assert!(connections.take(a).is_some(), "room again once one closed");
    }
}
