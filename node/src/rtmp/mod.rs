//! RTMP, the one media protocol between boxes and to and from outside players:
//! the server (publish and play) and the relay pull client.

pub mod chunk;
pub mod client;
pub mod dial;
pub mod guard;
pub mod meta;
mod outbox;
pub mod pull;
pub mod server;
pub mod url;

use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ClientSessionError, ServerSessionError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The one RTMP application a node serves: `rtmp://HOST:PORT/live/STREAM`.
pub const APP: &str = "live";

/// Why an RTMP connection ended. Each is logged once, by the connection's task.
#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("protocol error: {0}")]
    Server(#[from] ServerSessionError),
    #[error("protocol error: {0}")]
    Client(#[from] ClientSessionError),
    #[error("malformed chunk stream: {0}")]
    Chunks(#[from] guard::ChunkError),
    #[error("malformed input: the RTMP library failed on it")]
    Library,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("peer closed the connection {0}")]
    Closed(&'static str),
    #[error("refused: {0}")]
    Refused(String),
    #[error("dropped: the player stayed behind the stream")]
    Lagging,
    #[error("upstream stalled: no media for {0} ms")]
    Stalled(u128),
    #[error("upstream ended the stream")]
    Unpublished,
    #[error("the ticket ended")]
    TicketEnded,
}

/// Runs rml_rtmp's parsing of a peer's bytes, which `guard` checked first; a panic in
/// it (a bug of the library on input the guard let through) closes the connection
/// like any malformed input, instead of unwinding through its task.
pub(crate) fn contained<T>(parse: impl FnOnce() -> T) -> Result<T, RtmpError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).map_err(|_| RtmpError::Library)
}

/// How `RtmpError::Closed` reads when the peer closed without sending a byte: health
/// checks and port scans, not worth reporting.
pub const BEFORE_HANDSHAKE: &str = "before the handshake";

/// Runs either side of the RTMP handshake on a fresh connection; returns the bytes that
/// followed it, which belong to the session.
pub async fn handshake(
    peer: PeerType,
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    buf: &mut [u8],
) -> Result<Vec<u8>, RtmpError> {
    let client = peer == PeerType::Client;
    let mut handshake = Handshake::new(peer);
    if client {
        writer
            .write_all(&handshake.generate_outbound_p0_and_p1()?)
            .await?;
    }
    let mut received = false;
    loop {
        let n = reader.read(buf).await?;
        if n == 0 {
            return Err(RtmpError::Closed(if received {
                "during the handshake"
            } else {
                BEFORE_HANDSHAKE
            }));
        }
        received = true;
        match handshake.process_bytes(&buf[..n])? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                writer.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                writer.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}
