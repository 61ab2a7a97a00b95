//! An RTMP player: connects, plays one stream and hands out what arrives.
//!
//! Relay pulls are built on it, and so are the tests and the benchmark probe, which see
//! a stream exactly as a child box does.

use std::collections::VecDeque;

use proto::{StreamMeta, Tag};
use rml_rtmp::handshake::PeerType;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::guard::ChunkGuard;
use super::outbox::Outbox;
use super::url::RtmpUrl;
use super::{handshake, meta, RtmpError};

/// What a player receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Meta(StreamMeta),
    Media(Tag),
}

pub struct Player {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    session: ClientSession,
    received: VecDeque<Received>,
    playing: bool,
    play_path: String,
    buf: Vec<u8>,
    out: Outbox,
    /// What the server sends, checked before the session parses it.
    guard: ChunkGuard,
}

impl Player {
    /// Connects to `url` and plays its stream. Returns once the server accepted the
    /// play request; bound it with a timeout.
    pub async fn connect(url: &RtmpUrl) -> Result<Player, RtmpError> {
        let socket = TcpStream::connect(url.authority()).await?;
        Player::play_on(socket, url).await
    }

    /// Plays `url`'s stream over a socket the caller connected (to set its options).
    pub async fn play_on(socket: TcpStream, url: &RtmpUrl) -> Result<Player, RtmpError> {
        socket.set_nodelay(true)?;
        let (mut reader, mut writer) = socket.into_split();
        let mut buf = vec![0u8; 64 * 1024];

        let leftover = handshake(PeerType::Client, &mut reader, &mut writer, &mut buf).await?;

        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(url.tc_url());
        let (mut session, initial) = ClientSession::new(config)?;
        let connect = session.request_connection(url.app.clone())?;
        let mut player = Player {
            reader,
            writer,
            session,
            received: VecDeque::new(),
            playing: false,
            play_path: url.play_path.clone(),
            buf,
            out: Outbox::default(),
            guard: ChunkGuard::default(),
        };
        player.handle(initial.into_iter().chain([connect]).collect())?;
        if !leftover.is_empty() {
            player.guard.check(&leftover)?;
            let results = super::contained(|| player.session.handle_input(&leftover))??;
            player.handle(results)?;
        }
        while !player.playing {
            player.flush().await?;
            player.read().await?;
        }
        player.flush().await?;
        Ok(player)
    }

    /// The next metadata or media tag from the server. Cancel-safe: dropping the
    /// future loses nothing.
    pub async fn next(&mut self) -> Result<Received, RtmpError> {
        loop {
            if let Some(r) = self.received.pop_front() {
                return Ok(r);
            }
            self.flush().await?;
            self.read().await?;
        }
    }

    async fn read(&mut self) -> Result<(), RtmpError> {
        let n = self.reader.read(&mut self.buf).await?;
        if n == 0 {
            return Err(RtmpError::Closed("by the server"));
        }
        self.guard.check(&self.buf[..n])?;
        let bytes = &self.buf[..n];
        let results = super::contained(|| self.session.handle_input(bytes))??;
        self.handle(results)
    }

    async fn flush(&mut self) -> Result<(), RtmpError> {
        // Advances through `out` as the bytes go, so a cancelled flush resumes.
        self.writer.write_all_buf(&mut self.out).await?;
        Ok(())
    }

    fn handle(&mut self, results: Vec<ClientSessionResult>) -> Result<(), RtmpError> {
        let mut pending = VecDeque::from(results);
        while let Some(result) = pending.pop_front() {
            let event = match result {
                ClientSessionResult::OutboundResponse(packet) => {
                    self.out.push(packet.bytes.into());
                    continue;
                }
                ClientSessionResult::RaisedEvent(event) => event,
                ClientSessionResult::UnhandleableMessageReceived(_) => continue,
            };
            match event {
                ClientSessionEvent::ConnectionRequestAccepted => {
                    pending.push_back(self.session.request_playback(self.play_path.clone())?);
                }
                ClientSessionEvent::ConnectionRequestRejected { description } => {
                    return Err(RtmpError::Refused(description));
                }
                ClientSessionEvent::PlaybackRequestAccepted => self.playing = true,
                ClientSessionEvent::StreamMetadataReceived { metadata } => {
                    self.received
                        .push_back(Received::Meta(meta::from_rtmp(metadata)));
                }
                ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                    self.received
                        .push_back(Received::Media(Tag::video(timestamp.value, data)));
                }
                ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                    self.received
                        .push_back(Received::Media(Tag::audio(timestamp.value, data)));
                }
                // A refused `play` comes back as an `_error` that rml_rtmp cannot match
                // to a transaction: its description says why.
                ClientSessionEvent::UnknownTransactionResultReceived {
                    additional_values, ..
                } => {
                    if let Some(why) = refusal(&additional_values) {
                        return Err(RtmpError::Refused(why));
                    }
                }
                ClientSessionEvent::UnhandleableOnStatusCode { code } => match code.as_str() {
                    "NetStream.Play.UnpublishNotify" | "NetStream.Play.Stop" => {
                        return Err(RtmpError::Unpublished)
                    }
                    c if c.contains("Failed")
                        || c.contains("NotFound")
                        || c.contains("Rejected") =>
                    {
                        return Err(RtmpError::Refused(code));
                    }
                    _ => tracing::debug!(code, "status"),
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// The `code: description` of an error status object, if that is what `values` holds.
fn refusal(values: &[rml_amf0::Amf0Value]) -> Option<String> {
    values.iter().find_map(|value| {
        let rml_amf0::Amf0Value::Object(props) = value else {
            return None;
        };
        let text = |key: &str| match props.get(key) {
            Some(rml_amf0::Amf0Value::Utf8String(s)) => Some(s.as_str()),
            _ => None,
        };
        let error = text("level") == Some("error")
            || text("code").is_some_and(|c| c.contains("Failed") || c.contains("NotFound"));
        error.then(|| {
            format!(
                "{}: {}",
                text("code").unwrap_or("error"),
                text("description").unwrap_or("")
            )
        })
    })
}
