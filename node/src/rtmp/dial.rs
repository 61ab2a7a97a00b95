//! Connection reversal: a parent that boxes beyond its router cannot connect to
//! connects to its child instead, and the child's play runs over that connection
//! exactly as over one it made. RTMP's roles stay: the child is the client that plays
//! with its ticket and proof, the parent the server that checks them and forwards.
//!
//! The child asks with a fresh nonce (`Request::Dial`, through the portal's relay: the
//! parent's API cannot be connected to either) and waits. The parent connects to the
//! RTMP address on the child's card (checked against the child's own address when the
//! ticket was granted, never one from the request) and sends [`PREFACE`], the nonce
//! and a newline before anything else. The child's RTMP server sees that line where
//! RTMP's first byte (3) would be, and hands the socket to the pull that waits for
//! that nonce. A nonce is taken once, and only while its pull waits; any other line
//! closes the connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::RtmpError;
use crate::lock;

/// What a dialling parent says first.
pub const PREFACE: &[u8] = b"ASTRAL-DIAL ";
/// A nonce: 16 random bytes, in hex.
const NONCE_LEN: usize = 32;
/// A parent that does not connect and say its line within this long is not waited
/// for.
const LINE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the first byte of a connection opens a dialling parent's line rather than
/// an RTMP handshake.
pub fn is_preface(first: u8) -> bool {
    first == PREFACE[0]
}

/// The child's side: pulls waiting for their parents to connect, by nonce.
#[derive(Default)]
pub struct Dials {
    waiting: Mutex<HashMap<String, oneshot::Sender<TcpStream>>>,
}

/// A connection a pull waits for.
pub struct Awaited {
    pub nonce: String,
    socket: oneshot::Receiver<TcpStream>,
}

impl Awaited {
    /// The parent's connection, once it said this nonce.
    pub async fn arrival(self) -> Result<TcpStream, RtmpError> {
        self.socket
            .await
            .map_err(|_| RtmpError::Closed("before the parent dialled"))
    }
}

impl Dials {
    /// A fresh nonce to give the parent, and its connection to come.
    pub fn expect(&self) -> Awaited {
        let mut bytes = [0u8; NONCE_LEN / 2];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let (tx, rx) = oneshot::channel();
        let mut waiting = lock(&self.waiting);
        // Pulls that gave up waiting dropped their receivers.
        waiting.retain(|_, tx| !tx.is_closed());
        waiting.insert(nonce.clone(), tx);
        Awaited { nonce, socket: rx }
    }

    /// A connection that opened with a dialling parent's line: given to the pull that
    /// waits for its nonce.
    pub async fn arrived(&self, mut socket: TcpStream) -> Result<(), RtmpError> {
        let mut line = [0u8; PREFACE.len() + NONCE_LEN + 1];
        timeout(LINE_TIMEOUT, socket.read_exact(&mut line))
            .await
            .map_err(|_| RtmpError::Timeout("a dialling parent's line"))??;
        let (preface, rest) = line.split_at(PREFACE.len());
        let (nonce, end) = rest.split_at(NONCE_LEN);
        let nonce = std::str::from_utf8(nonce)
            .ok()
            .filter(|n| {
                preface == PREFACE && end == b"\n" && n.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .ok_or_else(|| {
                RtmpError::Refused("neither RTMP nor a dialling parent's line".into())
            })?;
        let waiting = lock(&self.waiting).remove(nonce);
        match waiting {
            Some(tx) => tx
                .send(socket)
                .map_err(|_| RtmpError::Refused("the pull stopped waiting for its parent".into())),
            None => Err(RtmpError::Refused(
                "a dialling parent's nonce that no pull waits for".into(),
            )),
        }
    }
}

/// The parent's side: connects to the child's RTMP server from `bind` and says
/// `nonce`; the child's play is then served on the socket.
pub async fn call_child(
    bind: IpAddr,
    child: SocketAddr,
    nonce: &str,
) -> Result<TcpStream, RtmpError> {
    if nonce.len() != NONCE_LEN || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RtmpError::Refused(format!("{nonce:?} is not a nonce")));
    }
    let mut socket = timeout(LINE_TIMEOUT, connect_from(bind, child))
        .await
        .map_err(|_| RtmpError::Timeout("the connection to the child"))??;
    let mut line = Vec::with_capacity(PREFACE.len() + NONCE_LEN + 1);
    line.extend_from_slice(PREFACE);
    line.extend_from_slice(nonce.as_bytes());
    line.push(b'\n');
    socket.write_all(&line).await?;
    Ok(socket)
}

/// Connects to `to` from `bind` when that is a specific address of the same family,
/// so that the peer sees the address this box advertises.
pub async fn connect_from(bind: IpAddr, to: SocketAddr) -> Result<TcpStream, RtmpError> {
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if !bind.is_unspecified() && bind.is_ipv4() == to.is_ipv4() {
        socket.bind(SocketAddr::new(bind, 0))?;
    }
    Ok(socket.connect(to).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The accepted end of a connection on which `line` was sent, kept open.
    async fn saying(line: &[&[u8]]) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (out, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut out = out.unwrap();
        out.write_all(&line.concat()).await.unwrap();
        (accepted.unwrap().0, out)
    }

    #[tokio::test]
    async fn a_parent_saying_the_nonce_reaches_the_pull_that_waits_for_it() {
        let dials = Dials::default();
        let awaited = dials.expect();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let child = listener.local_addr().unwrap();
        let nonce = awaited.nonce.clone();
        let parent = tokio::spawn(async move {
            let mut socket = call_child("127.0.0.1".parse().unwrap(), child, &nonce)
                .await
                .unwrap();
            socket.write_all(b"\x03rtmp").await.unwrap();
            socket
        });
        let (accepted, _) = listener.accept().await.unwrap();
        dials.arrived(accepted).await.unwrap();
        let mut socket = awaited.arrival().await.unwrap();
        let mut next = [0u8; 5];
        socket.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"\x03rtmp", "what follows the line is the session's");
        drop(parent.await.unwrap());
    }

    #[tokio::test]
    async fn unknown_nonces_and_other_lines_are_refused() {
        let dials = Dials::default();
        let awaited = dials.expect();
        let nonce = awaited.nonce.clone();
        let other = "0".repeat(NONCE_LEN);
        for line in [
            [PREFACE, other.as_bytes(), b"\n"],
            [b"ASTRAL-DIAX ", nonce.as_bytes(), b"\n"],
            [PREFACE, nonce.as_bytes(), b"\r"],
        ] {
            let (accepted, _out) = saying(&line).await;
            let refused = dials.arrived(accepted).await;
            assert!(matches!(refused, Err(RtmpError::Refused(_))), "{refused:?}");
        }
        // The right one still arrives, once.
        let (accepted, _out) = saying(&[PREFACE, nonce.as_bytes(), b"\n"]).await;
        dials.arrived(accepted).await.unwrap();
        awaited.arrival().await.unwrap();
        let (accepted, _out) = saying(&[PREFACE, nonce.as_bytes(), b"\n"]).await;
        assert!(
            dials.arrived(accepted).await.is_err(),
            "a nonce is taken once"
        );
    }
}
