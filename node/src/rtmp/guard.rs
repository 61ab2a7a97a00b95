//! The chunk stream a peer sends, checked before rml_rtmp parses it.
//!
//! rml_rtmp's deserializer keeps one message in progress for the whole connection, so
//! it assumes what every encoder does: the chunks of a message follow one another. A
//! peer that starts another message before the last one ended makes it subtract past
//! zero (found by `cargo xtask fuzz`, target `rtmp_session`): a panic in a debug
//! build, a wrapped length and an attempt to allocate the address space in a release
//! one. It takes the first three values of a command for granted, and panics on one
//! with fewer; and it subtracts 0xffffff from the extended timestamp of a delta
//! header, which a peer may set lower (both found the same way). The guard follows the chunk headers
//! (formats, chunk streams, lengths, extended timestamps, the peer's chunk size)
//! without copying media, reads commands whole, and refuses such a stream with a
//! clear error, along with a message longer than [`MAX_MESSAGE_LEN`], a command
//! longer than [`MAX_COMMAND_LEN`] or a chunk size over [`MAX_CHUNK_SIZE`].

use std::collections::HashMap;

/// The longest message a peer may send: a keyframe of a 4K stream at 50 Mbit/s fits.
pub const MAX_MESSAGE_LEN: usize = 8 << 20;
/// The longest command (AMF0 or AMF3-flagged): a `connect` is a few hundred bytes.
pub const MAX_COMMAND_LEN: usize = 64 << 10;
/// The largest chunk size a peer may set (encoders use 128 to 64 KiB).
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;
/// Chunk streams one connection may use (encoders use a handful).
const MAX_CHUNK_STREAMS: usize = 64;
/// A 24-bit timestamp field of all ones: the timestamp follows in 4 more bytes.
const EXTENDED: u32 = 0xff_ffff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk stream {0} continues a message it never began")]
    NoHeader(u32),
    #[error(
        "a chunk on stream {0} before the message on stream {1} ended: \
         send the chunks of a message one after another"
    )]
    Interleaved(u32, u32),
    #[error("a message of {0} bytes; at most {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    #[error("a chunk size of {0}; it must be 1 to {MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyStreams,
    #[error("a command of {0} bytes; at most {MAX_COMMAND_LEN}")]
    LongCommand(usize),
    #[error("a command without a name, a transaction id and an object")]
    ShortCommand,
    #[error("an extended timestamp delta of {0}, below the 24-bit range it extends")]
    ExtendedDelta(u32),
}

/// What the last header on a chunk stream said.
#[derive(Debug, Clone, Copy)]
struct Stream {
    len: usize,
    kind: u8,
    /// Its 24-bit timestamp field: `EXTENDED` means each chunk carries 4 more bytes.
    ts_field: u32,
}

#[derive(Debug)]
pub struct ChunkGuard {
    /// The peer's chunk size (it starts at 128 and changes with Set Chunk Size).
    chunk_size: usize,
    streams: HashMap<u32, Stream>,
    /// The chunk header being read.
    header: Vec<u8>,
    /// The message in progress: its chunk stream and the bytes of it seen so far.
    message: Option<(u32, usize)>,
    /// Payload bytes left in the chunk being read.
    left_in_chunk: usize,
    /// The body of a control message (Set Chunk Size) or a command, read whole.
    control: Vec<u8>,
}

impl Default for ChunkGuard {
    fn default() -> Self {
        ChunkGuard {
            chunk_size: 128,
            streams: HashMap::new(),
            header: Vec::with_capacity(18),
            message: None,
            left_in_chunk: 0,
            control: Vec::with_capacity(4),
        }
    }
}

impl ChunkGuard {
    /// Follows `bytes`, which come after those checked before.
    pub fn check(&mut self, mut bytes: &[u8]) -> Result<(), ChunkError> {
        while !bytes.is_empty() {
            if self.left_in_chunk > 0 {
                let n = self.left_in_chunk.min(bytes.len());
                self.payload(&bytes[..n])?;
                bytes = &bytes[n..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            self.header()?;
        }
        Ok(())
    }

    /// Reads the header in `self.header` once it is whole.
    fn header(&mut self) -> Result<(), ChunkError> {
        let h = &self.header;
        let fmt = h[0] >> 6;
        let (csid, mut at) = match h[0] & 0x3f {
            0 if h.len() >= 2 => (64 + u32::from(h[1]), 2),
            1 if h.len() >= 3 => (64 + u32::from(h[1]) + 256 * u32::from(h[2]), 3),
            0 | 1 => return Ok(()),
            id => (u32::from(id), 1),
        };
        let fields = [11, 7, 3, 0][usize::from(fmt)];
        if h.len() < at + fields {
            return Ok(());
        }
        let known = self.streams.get(&csid).copied();
        let ts_field = match fmt {
            3 => known.ok_or(ChunkError::NoHeader(csid))?.ts_field,
            _ => u32::from_be_bytes([0, h[at], h[at + 1], h[at + 2]]),
        };
        let (len, kind) = match fmt {
            0 | 1 => (
                usize::from(h[at + 3]) << 16 | usize::from(h[at + 4]) << 8 | usize::from(h[at + 5]),
                h[at + 6],
            ),
            _ => {
                let s = known.ok_or(ChunkError::NoHeader(csid))?;
                (s.len, s.kind)
            }
        };
        at += fields;
        let mut extended = None;
        if ts_field == EXTENDED {
            at += 4;
            if h.len() >= at {
                extended = Some(u32::from_be_bytes([
                    h[at - 4],
                    h[at - 3],
                    h[at - 2],
                    h[at - 1],
                ]));
            }
        }
        if h.len() < at {
            return Ok(());
        }
        self.header.clear();

        // Where the chunk belongs: a message in progress takes only its own
        // continuation; otherwise a new message begins.
        let seen = match self.message {
            Some((stream, seen)) if stream == csid && fmt == 3 => seen,
            Some((stream, _)) => return Err(ChunkError::Interleaved(csid, stream)),
            None => 0,
        };
        // rml_rtmp takes the extended field of a delta header, at a message's first
        // chunk, as 0xffffff more than the delta, and subtracts that back.
        if let Some(value) = extended.filter(|&v| fmt != 0 && seen == 0 && v < EXTENDED) {
            return Err(ChunkError::ExtendedDelta(value));
        }
        if len > MAX_MESSAGE_LEN {
            return Err(ChunkError::TooLong(len));
        }
        if is_command(kind) && len > MAX_COMMAND_LEN {
            return Err(ChunkError::LongCommand(len));
        }
        if known.is_none() && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyStreams);
        }
        self.streams.insert(
            csid,
            Stream {
                len,
                kind,
                ts_field,
            },
        );
        if seen == 0 {
            self.control.clear();
        }
        // As rml_rtmp takes it: a message longer than a chunk comes a chunk at a time.
        self.left_in_chunk = if len > self.chunk_size {
            (len - seen).min(self.chunk_size)
        } else {
            len
        };
        self.message = Some((csid, seen));
        if self.left_in_chunk == 0 {
            self.message_done(csid)?;
        }
        Ok(())
    }

    /// Payload of the chunk being read.
    fn payload(&mut self, bytes: &[u8]) -> Result<(), ChunkError> {
        let (csid, seen) = self.message.expect("a chunk belongs to a message");
        let stream = self.streams[&csid];
        if stream.kind == 1 && self.control.len() < 4 {
            let n = (4 - self.control.len()).min(bytes.len());
            self.control.extend_from_slice(&bytes[..n]);
        } else if is_command(stream.kind) {
            self.control.extend_from_slice(bytes);
        }
        self.left_in_chunk -= bytes.len();
        let seen = seen + bytes.len();
        self.message = Some((csid, seen));
        if self.left_in_chunk == 0 && seen >= stream.len {
            self.message_done(csid)?;
        }
        Ok(())
    }

    /// A message ended; a Set Chunk Size changes how the next ones are cut. (An Abort
    /// drops a message in progress, and there is none between messages.)
    fn message_done(&mut self, csid: u32) -> Result<(), ChunkError> {
        self.message = None;
        let kind = self.streams[&csid].kind;
        if is_command(kind) {
            return check_command(kind, &self.control);
        }
        if kind != 1 {
            return Ok(());
        }
        let Ok(value) = <[u8; 4]>::try_from(self.control.as_slice()) else {
            return Ok(());
        };
        // The top bit is reserved.
        let size = u32::from_be_bytes(value) & 0x7fff_ffff;
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::ChunkSize(size));
        }
        self.chunk_size = size as usize;
        Ok(())
    }
}

/// AMF0 commands, and AMF3-flagged ones (which rml_rtmp reads as AMF0).
fn is_command(kind: u8) -> bool {
    matches!(kind, 17 | 20)
}

/// A command rml_rtmp can take: its first three values are there (what they are, it
/// checks itself). One that does not parse is left to it, which refuses it.
fn check_command(kind: u8, body: &[u8]) -> Result<(), ChunkError> {
    let body = match body {
        [0, rest @ ..] if kind == 17 => rest,
        _ => body,
    };
    match rml_amf0::deserialize(&mut std::io::Cursor::new(body)) {
        Ok(values) if values.len() < 3 => Err(ChunkError::ShortCommand),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type 0 chunk header on `csid` for a message of `len` bytes of `kind`.
    fn full(csid: u32, ts: u32, len: usize, kind: u8) -> Vec<u8> {
        let mut h = match csid {
            2..=63 => vec![csid as u8],
            _ => vec![0, (csid - 64) as u8],
        };
        h.extend_from_slice(&ts.to_be_bytes()[1..]);
        h.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        h.push(kind);
        h.extend_from_slice(&1u32.to_le_bytes());
        h
    }

    #[test]
    fn whole_messages_in_chunks_pass_byte_by_byte_or_at_once() {
        let mut stream = Vec::new();
        // Set Chunk Size to 4096, then a 10,000-byte video message in three chunks,
        // then a small audio message with an extended timestamp.
        stream.extend(full(2, 0, 4, 1));
        stream.extend(4096u32.to_be_bytes());
        stream.extend(full(6, 40, 10_000, 9));
        stream.extend(vec![0x17; 4096]);
        stream.push(0xc6);
        stream.extend(vec![1; 4096]);
        stream.push(0xc6);
        stream.extend(vec![2; 10_000 - 8192]);
        stream.extend(full(4, EXTENDED, 10, 8));
        stream.extend(20_000_000u32.to_be_bytes());
        stream.extend([0xaf; 10]);
        // A type 3 header starting the next message of the same length on stream 4.
        stream.push(0xc4);
        stream.extend(20_000_040u32.to_be_bytes());
        stream.extend([0xaf; 10]);
        assert_eq!(ChunkGuard::default().check(&stream), Ok(()));
        let mut guard = ChunkGuard::default();
        for b in &stream {
            assert_eq!(guard.check(std::slice::from_ref(b)), Ok(()));
        }
        assert_eq!(guard.chunk_size, 4096);
    }

    #[test]
    fn a_message_begun_before_the_last_ended_is_refused() {
        // 300 bytes at the default chunk size of 128: after the first chunk, another
        // message's header on another stream (the fuzzer's find), or on the same.
        let mut first = full(3, 0, 300, 20);
        first.extend(vec![0; 128]);
        let mut other = first.clone();
        other.extend(full(4, 0, 10, 20));
        assert_eq!(
            ChunkGuard::default().check(&other),
            Err(ChunkError::Interleaved(4, 3))
        );
        let mut same = first;
        same.extend(full(3, 0, 10, 20));
        assert_eq!(
            ChunkGuard::default().check(&same),
            Err(ChunkError::Interleaved(3, 3))
        );
        assert_eq!(
            ChunkGuard::default().check(&[0xc5, 0, 0]),
            Err(ChunkError::NoHeader(5))
        );
    }

    #[test]
    fn an_extended_delta_below_its_range_is_refused() {
        let mut stream = full(5, 0, 2, 8);
        stream.extend([0xaf, 0]);
        // Type 1: a delta of 0xffffff or more, said to be 5.
        stream.extend([0x45, 0xff, 0xff, 0xff, 0, 0, 2, 8, 0, 0, 0, 5]);
        assert_eq!(
            ChunkGuard::default().check(&stream),
            Err(ChunkError::ExtendedDelta(5))
        );
    }

    #[test]
    fn a_command_without_its_first_three_values_is_refused() {
        // A `connect` with only its name: rml_rtmp would index past its values.
        let name = [2, 0, 7, b'c', b'o', b'n', b'n', b'e', b'c', b't'];
        let mut short = full(3, 0, name.len(), 20);
        short.extend(name);
        assert_eq!(
            ChunkGuard::default().check(&short),
            Err(ChunkError::ShortCommand)
        );
        let mut whole = name.to_vec();
        whole.extend([0, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 5]); // 1.0, null
        let mut ok = full(3, 0, whole.len(), 20);
        ok.extend(&whole);
        assert_eq!(ChunkGuard::default().check(&ok), Ok(()));
        assert_eq!(
            ChunkGuard::default().check(&full(3, 0, MAX_COMMAND_LEN + 1, 20)),
            Err(ChunkError::LongCommand(MAX_COMMAND_LEN + 1))
        );
    }

    #[test]
    fn limits_hold() {
        assert_eq!(
            ChunkGuard::default().check(&full(3, 0, MAX_MESSAGE_LEN + 1, 9)),
            Err(ChunkError::TooLong(MAX_MESSAGE_LEN + 1))
        );
        let mut huge = full(2, 0, 4, 1);
        huge.extend((MAX_CHUNK_SIZE + 1).to_be_bytes());
        assert_eq!(
            ChunkGuard::default().check(&huge),
            Err(ChunkError::ChunkSize(MAX_CHUNK_SIZE + 1))
        );
        let mut many = Vec::new();
        for csid in 3..3 + MAX_CHUNK_STREAMS as u32 {
            many.extend(full(csid, 0, 0, 9));
        }
        assert_eq!(ChunkGuard::default().check(&many), Ok(()));
        many.extend(full(3 + MAX_CHUNK_STREAMS as u32, 0, 0, 9));
        assert_eq!(
            ChunkGuard::default().check(&many),
            Err(ChunkError::TooManyStreams)
        );
    }
}
