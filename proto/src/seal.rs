//! Seals: the source's signature of each GOP, so that every box can tell the stream it
//! relays is the source's, frame for frame.
//!
//! When a GOP ends (the next keyframe arrives), the source's hub seals it: a digest of
//! each of its tags (kind, timestamp, body), a digest of the sequence headers in force,
//! the stream's name and the GOP's first timestamp, signed with the source's node key.
//! The seal travels to child boxes beside the media as a video tag of frame type 5
//! ("video info/command frame", which decoders skip) whose body starts with
//! [`SEAL_MARKER`]; players are never sent one. A box checks the tags it received of a
//! GOP against its seal: one missing is a frame its parent skipped while the box lagged,
//! one not in the seal was altered or injected.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::identity::{NodeKey, PublicKey, SignatureError};
use crate::{Tag, TagKind};

/// The start of a seal's tag body: frame type 5 and codec 0, then a name.
pub const SEAL_MARKER: &[u8] = b"\x50astral-seal-1";

/// Most tags a seal lists: a GOP of 10 s at 60 fps with audio, and room to spare.
pub const MAX_SEALED_TAGS: usize = 2048;

/// A tag's digest: the first 16 bytes of SHA-256 over its kind, timestamp and body.
pub type TagDigest = [u8; 16];

pub fn tag_digest(tag: &Tag) -> TagDigest {
    let mut hash = Sha256::new();
    hash.update([tag.kind as u8]);
    hash.update(tag.timestamp.to_be_bytes());
    hash.update(&tag.data);
    hash.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// The digest of the sequence headers in force: video's, then audio's (each may be
/// missing).
pub fn headers_digest(video: Option<&[u8]>, audio: Option<&[u8]>) -> TagDigest {
    let mut hash = Sha256::new();
    for header in [video, audio] {
        let header = header.unwrap_or_default();
        hash.update((header.len() as u32).to_be_bytes());
        hash.update(header);
    }
    hash.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// One GOP's seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub stream: String,
    /// The timestamp of the GOP's keyframe.
    pub start: u32,
    pub headers: TagDigest,
    /// The digests of the GOP's tags, in order.
    pub tags: Vec<TagDigest>,
    pub key: PublicKey,
    pub signature: [u8; 64],
}

/// Why a tag body that claims to be a seal is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the seal is cut short or malformed")]
    Malformed,
    #[error("the seal lists more than {MAX_SEALED_TAGS} tags")]
    TooLong,
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

impl Seal {
    /// Seals a GOP of `stream`: its tags, whose first is the keyframe at `start`.
    pub fn sign(
        key: &NodeKey,
        stream: &str,
        start: u32,
        headers: TagDigest,
        tags: Vec<TagDigest>,
    ) -> Seal {
        let mut seal = Seal {
            stream: stream.to_owned(),
            start,
            headers,
            tags,
            key: key.public(),
            signature: [0; 64],
        };
        seal.signature = key.sign(&seal.signed_part());
        seal
    }

    /// Whether the signature holds (not whose it is: see [`Seal::key`]).
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.key.verify(&self.signed_part(), &self.signature)
    }

    /// Everything but the signature, after a domain of its own.
    fn signed_part(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(64 + self.tags.len() * 16);
        out.put_slice(SEAL_MARKER);
        out.put_u8(self.stream.len() as u8);
        out.put_slice(self.stream.as_bytes());
        out.put_u32(self.start);
        out.put_slice(&self.headers);
        out.put_slice(self.key.as_bytes());
        out.put_u16(self.tags.len() as u16);
        for tag in &self.tags {
            out.put_slice(tag);
        }
        out.to_vec()
    }

    /// The seal as a video tag (timestamped with the GOP's start).
    pub fn to_tag(&self) -> Tag {
        let mut body = self.signed_part();
        body.extend_from_slice(&self.signature);
        Tag {
            kind: TagKind::Video,
            timestamp: self.start,
            data: Bytes::from(body),
        }
    }

    /// The seal in a tag; `None` when the tag is not a seal at all.
    pub fn from_tag(tag: &Tag) -> Option<Result<Seal, SealError>> {
        if tag.kind != TagKind::Video || !tag.data.starts_with(SEAL_MARKER) {
            return None;
        }
        Some(Seal::parse(&tag.data[SEAL_MARKER.len()..]))
    }

    fn parse(mut body: &[u8]) -> Result<Seal, SealError> {
        let mut take = |n: usize| -> Result<&[u8], SealError> {
            if body.len() < n {
                return Err(SealError::Malformed);
            }
            let (head, rest) = body.split_at(n);
            body = rest;
            Ok(head)
        };
        let len = usize::from(take(1)?[0]);
        let stream = std::str::from_utf8(take(len)?)
            .map_err(|_| SealError::Malformed)?
            .to_owned();
        let start = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
        let headers: TagDigest = take(16)?.try_into().expect("16 bytes");
        let key: [u8; 32] = take(32)?.try_into().expect("32 bytes");
        let key = PublicKey::from_bytes(&key)?;
        let count = usize::from(u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")));
        if count > MAX_SEALED_TAGS {
            return Err(SealError::TooLong);
        }
        let tags = (0..count)
            .map(|_| Ok(take(16)?.try_into().expect("16 bytes")))
            .collect::<Result<Vec<TagDigest>, SealError>>()?;
        let signature: [u8; 64] = take(64)?.try_into().expect("64 bytes");
        if !body.is_empty() {
            return Err(SealError::Malformed);
        }
        Ok(Seal {
            stream,
            start,
            headers,
            tags,
            key,
            signature,
        })
    }

    /// Whether `tag` is one of the sealed GOP's.
    pub fn covers(&self, digest: &TagDigest) -> bool {
        self.tags.contains(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(kind: TagKind, timestamp: u32, body: &'static [u8]) -> Tag {
        Tag {
            kind,
            timestamp,
            data: Bytes::from_static(body),
        }
    }

    #[test]
    fn a_seal_travels_as_a_tag_and_holds_for_its_gop_only() {
        let key = NodeKey::from_seed([3; 32]);
        let gop = [
            tag(TagKind::Video, 1000, b"\x17\x01key"),
            tag(TagKind::Audio, 1010, b"\xaf\x01aac"),
            tag(TagKind::Video, 1033, b"\x27\x01inter"),
        ];
        let digests = gop.iter().map(tag_digest).collect();
        let headers = headers_digest(Some(b"sps"), None);
        let seal = Seal::sign(&key, "cam", 1000, headers, digests);
        let back = Seal::from_tag(&seal.to_tag()).unwrap().unwrap();
        assert_eq!(back, seal);
        assert_eq!(back.verify(), Ok(()));
        assert!(gop.iter().all(|t| back.covers(&tag_digest(t))));
        let altered = tag(TagKind::Video, 1033, b"\x27\x01INTER");
        assert!(!back.covers(&tag_digest(&altered)));
        let moved = tag(TagKind::Video, 1034, b"\x27\x01inter");
        assert!(!back.covers(&tag_digest(&moved)));
        assert_ne!(headers, headers_digest(Some(b"sps2"), None));

        // A byte changed anywhere breaks it; a media tag is not a seal.
        let mut body = seal.to_tag().data.to_vec();
        let at = body.len() - 70;
        body[at] ^= 1;
        let changed = Tag {
            data: Bytes::from(body),
            ..seal.to_tag()
        };
        assert!(matches!(
            Seal::from_tag(&changed),
            Some(Ok(s)) if s.verify().is_err()
        ));
        assert!(Seal::from_tag(&gop[0]).is_none());
        let short = Tag {
            data: seal.to_tag().data.slice(..40),
            ..seal.to_tag()
        };
        assert_eq!(Seal::from_tag(&short), Some(Err(SealError::Malformed)));
    }
}
