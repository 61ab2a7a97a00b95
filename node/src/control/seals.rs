//! A parent's stream checked against the source's seals (`proto::seal`), one check
//! per connection.
//!
//! A GOP counts once its keyframe came on this connection (the tags before it, a
//! resumed pull's first GOP, cannot be checked); when its seal comes, every tag of it
//! that came must be in the seal. One that is not was altered or injected by the
//! parent, or by someone between. Tags the parent skipped while this box lagged are
//! simply missing, which is no fault. A parent that sends no seal for
//! [`MAX_UNSEALED`] GOPs in a row withholds them.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use proto::overlay::NodeId;
use proto::seal::{headers_digest, tag_digest, Seal, TagDigest};
use proto::{Tag, TagKind};

/// GOPs that may close without a seal before the parent counts as withholding them: a
/// seal comes one GOP late, and a source that restarts its clock seals one GOP less.
pub const MAX_UNSEALED: usize = 3;

/// GOPs kept for their seal; older ones are forgotten.
const KEPT: usize = 8;

/// What the parent did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// A seal whose signature does not hold.
    Forged,
    /// A seal signed by another node than the stream's source.
    NotTheSource { signer: NodeId, source: NodeId },
    /// A seal of another stream.
    OtherStream(String),
    /// The sequence headers are not the ones the source sealed.
    Headers,
    /// A tag of the GOP at `gop` that is not in its seal.
    Altered { gop: u32, timestamp: u32 },
    /// No seal for this many GOPs in a row.
    Unsealed(usize),
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tamper::Forged => write!(f, "a seal whose signature does not hold"),
            Tamper::NotTheSource { signer, source } => {
                write!(f, "a seal signed by {signer}, not by the source {source}")
            }
            Tamper::OtherStream(s) => write!(f, "a seal of another stream, {s:?}"),
            Tamper::Headers => write!(f, "sequence headers the source did not seal"),
            Tamper::Altered { gop, timestamp } => write!(
                f,
                "a tag at {timestamp} ms that the source did not seal in the GOP at {gop} ms \
                 (altered or injected)"
            ),
            Tamper::Unsealed(n) => write!(f, "no seal for {n} GOPs in a row"),
        }
    }
}

pub struct SealCheck {
    stream: String,
    video_header: Option<Bytes>,
    audio_header: Option<Bytes>,
    /// The GOP coming in: its keyframe's timestamp, and its tags' timestamps and
    /// digests.
    current: Option<(u32, Vec<(u32, TagDigest)>)>,
    /// GOPs closed and waiting for their seal.
    closed: VecDeque<(u32, Vec<(u32, TagDigest)>)>,
    /// GOPs closed since the last seal.
    unsealed: usize,
}

impl SealCheck {
    pub fn new(stream: &str) -> SealCheck {
        SealCheck {
            stream: stream.to_owned(),
            video_header: None,
            audio_header: None,
            current: None,
            closed: VecDeque::new(),
            unsealed: 0,
        }
    }

    /// A tag from the parent, seals aside.
    pub fn tag(&mut self, tag: &Tag) -> Result<(), Tamper> {
        if tag.kind == TagKind::Script {
            return Ok(());
        }
        if tag.is_sequence_header() {
            match tag.kind {
                TagKind::Video => self.video_header = Some(tag.data.clone()),
                _ => self.audio_header = Some(tag.data.clone()),
            }
            return Ok(());
        }
        if tag.is_keyframe() {
            if let Some(gop) = self.current.take() {
                self.closed.push_back(gop);
                if self.closed.len() > KEPT {
                    self.closed.pop_front();
                }
                self.unsealed += 1;
                if self.unsealed > MAX_UNSEALED {
                    return Err(Tamper::Unsealed(self.unsealed));
                }
            }
            self.current = Some((tag.timestamp, Vec::new()));
        }
        if let Some((_, digests)) = self.current.as_mut() {
            digests.push((tag.timestamp, tag_digest(tag)));
        }
        Ok(())
    }

    /// A seal from the parent, which `source` (when the overlay knows it) must have
    /// signed. `Ok(true)`: it covered a GOP that came whole on this connection.
    pub fn seal(&mut self, seal: &Seal, source: Option<&NodeId>) -> Result<bool, Tamper> {
        seal.verify().map_err(|_| Tamper::Forged)?;
        if seal.stream != self.stream {
            return Err(Tamper::OtherStream(seal.stream.clone()));
        }
        if let Some(source) = source.filter(|s| !seal.key.is_of(s)) {
            return Err(Tamper::NotTheSource {
                signer: seal.key.node_id(),
                source: source.clone(),
            });
        }
        self.unsealed = 0;
        // The headers in force when the source sealed: the ones this box has now, if
        // the seal is of the GOP that closed last (an older one, replayed after a
        // reconnect, may have been sealed before a change).
        let last = self.closed.back().map(|(start, _)| *start);
        if last == Some(seal.start)
            && seal.headers
                != headers_digest(self.video_header.as_deref(), self.audio_header.as_deref())
        {
            return Err(Tamper::Headers);
        }
        let Some(at) = self
            .closed
            .iter()
            .position(|(start, _)| *start == seal.start)
        else {
            return Ok(false);
        };
        let (start, digests) = self.closed.remove(at).expect("found");
        match digests.iter().find(|(_, d)| !seal.covers(d)) {
            Some(&(timestamp, _)) => Err(Tamper::Altered {
                gop: start,
                timestamp,
            }),
            None => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::identity::NodeKey;

    fn video(ts: u32, key: bool, body: &[u8]) -> Tag {
        let mut data = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        data.extend_from_slice(body);
        Tag {
            kind: TagKind::Video,
            timestamp: ts,
            data: Bytes::from(data),
        }
    }

    fn header() -> Tag {
        Tag {
            kind: TagKind::Video,
            timestamp: 0,
            data: Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2, 3]),
        }
    }

    /// A source's GOP at `start` of `n` frames, and its seal.
    fn gop(key: &NodeKey, start: u32, n: u32) -> (Vec<Tag>, Seal) {
        let tags: Vec<Tag> = (0..n)
            .map(|i| video(start + i * 40, i == 0, &[i as u8; 10]))
            .collect();
        let headers = headers_digest(Some(&header().data), None);
        let seal = Seal::sign(
            key,
            "cam",
            start,
            headers,
            tags.iter().map(tag_digest).collect(),
        );
        (tags, seal)
    }

    /// A check that has the headers and the GOPs at 0 and 1000 (the second closed by
    /// the keyframe of the third).
    fn receiving(key: &NodeKey) -> (SealCheck, [Seal; 2]) {
        let mut check = SealCheck::new("cam");
        check.tag(&header()).unwrap();
        let (a, seal_a) = gop(key, 0, 25);
        let (b, seal_b) = gop(key, 1000, 25);
        for tag in a.iter().chain(&b) {
            check.tag(tag).unwrap();
        }
        check.tag(&video(2000, true, b"next")).unwrap();
        (check, [seal_a, seal_b])
    }

    #[test]
    fn gops_as_the_source_sealed_them_pass_and_skipped_tags_are_no_fault() {
        let key = NodeKey::from_seed([1; 32]);
        let source = key.node_id();
        let (mut check, [a, b]) = receiving(&key);
        assert_eq!(check.seal(&a, Some(&source)), Ok(true));
        assert_eq!(check.seal(&b, Some(&source)), Ok(true));
        assert_eq!(check.seal(&b, Some(&source)), Ok(false), "once");

        // A box that lagged missed frames of a GOP: still the source's.
        let mut check = SealCheck::new("cam");
        check.tag(&header()).unwrap();
        let (tags, seal) = gop(&key, 0, 25);
        for tag in tags.iter().step_by(3) {
            check.tag(tag).unwrap();
        }
        check.tag(&video(1000, true, b"next")).unwrap();
        assert_eq!(check.seal(&seal, Some(&source)), Ok(true));
    }

    #[test]
    fn an_altered_or_injected_tag_a_forged_seal_or_another_signer_is_caught() {
        let key = NodeKey::from_seed([1; 32]);
        let source = key.node_id();
        // Altered: one frame's body changed.
        let mut check = SealCheck::new("cam");
        check.tag(&header()).unwrap();
        let (mut tags, seal) = gop(&key, 0, 25);
        tags[7] = video(280, false, b"not the source's");
        for tag in &tags {
            check.tag(tag).unwrap();
        }
        check.tag(&video(1000, true, b"next")).unwrap();
        assert_eq!(
            check.seal(&seal, Some(&source)),
            Err(Tamper::Altered {
                gop: 0,
                timestamp: 280
            })
        );

        // Forged: the parent signs a seal of its own.
        let mallory = NodeKey::from_seed([2; 32]);
        let (mut check, _) = receiving(&key);
        let (_, own) = gop(&mallory, 0, 25);
        assert_eq!(
            check.seal(&own, Some(&source)),
            Err(Tamper::NotTheSource {
                signer: mallory.node_id(),
                source: source.clone()
            })
        );
        let (_, mut broken) = gop(&key, 0, 25);
        broken.signature[0] ^= 1;
        assert_eq!(check.seal(&broken, Some(&source)), Err(Tamper::Forged));

        // Other sequence headers than the source's.
        let (mut check, [_, b]) = receiving(&key);
        check
            .tag(&Tag {
                data: Bytes::from_static(&[0x17, 0, 0, 0, 0, 9, 9, 9]),
                ..header()
            })
            .unwrap();
        assert_eq!(check.seal(&b, Some(&source)), Err(Tamper::Headers));
    }

    #[test]
    fn a_parent_that_withholds_seals_is_caught_after_a_few_gops() {
        let key = NodeKey::from_seed([1; 32]);
        let mut check = SealCheck::new("cam");
        let mut result = Ok(());
        for g in 0..=MAX_UNSEALED as u32 + 1 {
            let (tags, _) = gop(&key, g * 1000, 25);
            for tag in &tags {
                result = result.and_then(|()| check.tag(tag));
            }
        }
        assert_eq!(result, Err(Tamper::Unsealed(MAX_UNSEALED + 1)));
    }
}
