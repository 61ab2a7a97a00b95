//! RTMP, the one media protocol between boxes and to and from outside players:
//! the server (publish and play) and the relay pull client.

pub mod client;
pub mod meta;
pub mod pull;
pub mod server;
pub mod url;

use rml_rtmp::handshake::HandshakeError;
use rml_rtmp::sessions::{ClientSessionError, ServerSessionError};

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
    #[error("no data for too long ({0})")]
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
}
