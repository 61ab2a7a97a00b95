//! Who a box is: an Ed25519 key pair, and the node id derived from its public key.
//!
//! Every request a box sends to another box or to the portal carries an
//! `Astral-Signature` header: the sender's public key, the time it was signed and a
//! signature over the method, the path, that time and the body. The receiver derives
//! the sender's node id from the key, so no one can speak for a node without its
//! secret key, and no registry is needed to check a signature. A signature is good
//! for [`SIGNATURE_WINDOW_MS`] either side of the receiver's clock, and a receiver
//! takes each one once ([`SeenSignatures`]): a request copied off the wire and sent
//! again is refused.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::overlay::NodeId;

/// The request header that carries a signature.
pub const SIGNATURE_HEADER: &str = "astral-signature";

/// How far a signature's time may be from the receiver's clock. Boxes keep time with
/// NTP; a Raspberry Pi without a network has no clock at all until it syncs.
pub const SIGNATURE_WINDOW_MS: u64 = 60_000;

/// Hex digits of a node id: the first 16 bytes of the SHA-256 of its public key.
pub const NODE_ID_LEN: usize = 32;

/// What is signed: a domain, so that no other message signed by the key can be taken
/// for a request, then the request's parts, each on its own line, then the body.
fn request_message(method: &str, path: &str, unix_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("astral request 1\n{method}\n{path}\n{unix_ms}\n").into_bytes();
    message.extend_from_slice(body);
    message
}

/// What a node signs to answer a signed request: the request's signature, the
/// status, the time and the body.
fn response_message(request_signature: &str, status: u16, unix_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut message =
        format!("astral response 1\n{request_signature}\n{status}\n{unix_ms}\n").into_bytes();
    message.extend_from_slice(body);
    message
}

/// What a child signs to play its parent's stream with a ticket: the stream and the
/// ticket's token, so that a proof is good for that ticket only, and the time.
fn play_message(stream: &str, token: &str, unix_ms: u64) -> Vec<u8> {
    format!("astral play 1\n{stream}\n{token}\n{unix_ms}").into_bytes()
}

/// A box's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The node id this key speaks for.
    pub fn node_id(&self) -> NodeId {
        let digest = Sha256::digest(self.0.as_bytes());
        NodeId::new(hex::encode(&digest[..NODE_ID_LEN / 2])).expect("hex is a valid id")
    }

    /// Whether `id` is this key's node id.
    pub fn is_of(&self, id: &NodeId) -> bool {
        self.node_id() == *id
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, SignatureError> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| SignatureError::Malformed("key"))
    }

    pub fn from_hex(text: &str) -> Result<PublicKey, SignatureError> {
        let bytes: [u8; 32] = decode_hex(text).ok_or(SignatureError::Malformed("key"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| SignatureError::Malformed("key"))
    }

    /// Checks a signature of `message` by this key.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
        self.0
            .verify(message, &Signature::from_bytes(signature))
            .map_err(|_| SignatureError::Forged)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PublicKey::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// A box's key pair. Its secret half never leaves the box's data directory.
#[derive(Clone)]
pub struct NodeKey(SigningKey);

impl NodeKey {
    /// A new key pair from the operating system's random source.
    pub fn generate() -> NodeKey {
        NodeKey(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key pair of a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey(SigningKey::from_bytes(&seed))
    }

    /// The secret seed in hex, as the key file holds it.
    pub fn seed_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn from_seed_hex(text: &str) -> Option<NodeKey> {
        decode_hex(text.trim()).map(NodeKey::from_seed)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn node_id(&self) -> NodeId {
        self.public().node_id()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The query parameters that prove a ticketed play comes from this box:
    /// `node=KEY&t=TIME&sig=SIGNATURE`, added to `?ticket=TOKEN`.
    pub fn prove_play(&self, stream: &str, token: &str, unix_ms: u64) -> String {
        let signature = self.sign(&play_message(stream, token, unix_ms));
        format!(
            "node={}&t={unix_ms}&sig={}",
            self.public().to_hex(),
            hex::encode(signature)
        )
    }

    /// The `Astral-Signature` header's value for the answer to a signed request.
    pub fn sign_response(
        &self,
        request_signature: &str,
        status: u16,
        body: &[u8],
        unix_ms: u64,
    ) -> String {
        let signature = self.sign(&response_message(request_signature, status, unix_ms, body));
        format!(
            "{}.{unix_ms}.{}",
            self.public().to_hex(),
            hex::encode(signature)
        )
    }

    /// The `Astral-Signature` header's value for a request: `KEY.TIME.SIGNATURE`.
    pub fn sign_request(&self, method: &str, path: &str, body: &[u8], unix_ms: u64) -> String {
        let signature = self.sign(&request_message(method, path, unix_ms, body));
        format!(
            "{}.{unix_ms}.{}",
            self.public().to_hex(),
            hex::encode(signature)
        )
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

/// A request whose signature holds: who signed it, and the signature itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    pub node: NodeId,
    pub key: PublicKey,
    pub unix_ms: u64,
    pub signature: [u8; 64],
}

impl SignedBy {
    /// The signature in hex, as the answer to the request is signed for it.
    pub fn signature_hex(&self) -> String {
        hex::encode(self.signature)
    }
}

/// Checks a request's `Astral-Signature` header against the request and the
/// receiver's clock.
pub fn verify_request(
    header: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
    now_unix_ms: u64,
) -> Result<SignedBy, SignatureError> {
    let (key, time, signature) = header_parts(header)?;
    verify(key, time, signature, now_unix_ms, |unix_ms| {
        request_message(method, path, unix_ms, body)
    })
}

/// Checks the `Astral-Signature` of an answer to the request signed with
/// `request_signature`: the answering node signed its status and body for that very
/// request, so an answer cannot be altered on the way, nor an old one passed off.
pub fn verify_response(
    header: Option<&str>,
    request_signature: &str,
    status: u16,
    body: &[u8],
    now_unix_ms: u64,
) -> Result<SignedBy, SignatureError> {
    let (key, time, signature) = header_parts(header)?;
    verify(key, time, signature, now_unix_ms, |unix_ms| {
        response_message(request_signature, status, unix_ms, body)
    })
}

/// `KEY.TIME.SIGNATURE`.
fn header_parts(header: Option<&str>) -> Result<(&str, &str, &str), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut parts = header.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(key), Some(time), Some(signature), None) => Ok((key, time, signature)),
        _ => Err(SignatureError::Malformed("header")),
    }
}

/// Checks the proof of a ticketed play (`node`, `t` and `sig` of its query, as
/// [`NodeKey::prove_play`] made them) against the stream, the ticket's token and the
/// receiver's clock.
pub fn verify_play(
    stream: &str,
    token: &str,
    key: Option<&str>,
    time: Option<&str>,
    signature: Option<&str>,
    now_unix_ms: u64,
) -> Result<SignedBy, SignatureError> {
    let (Some(key), Some(time), Some(signature)) = (key, time, signature) else {
        return Err(SignatureError::Missing);
    };
    verify(key, time, signature, now_unix_ms, |unix_ms| {
        play_message(stream, token, unix_ms)
    })
}

/// Checks a key, a time and a signature (in hex, as sent) of the `message` made with
/// that time.
fn verify(
    key: &str,
    time: &str,
    signature: &str,
    now_unix_ms: u64,
    message: impl FnOnce(u64) -> Vec<u8>,
) -> Result<SignedBy, SignatureError> {
    let key = PublicKey::from_hex(key)?;
    let unix_ms: u64 = time
        .parse()
        .map_err(|_| SignatureError::Malformed("time"))?;
    let signature: [u8; 64] =
        decode_hex(signature).ok_or(SignatureError::Malformed("signature"))?;
    check_time(unix_ms, now_unix_ms)?;
    key.verify(&message(unix_ms), &signature)?;
    Ok(SignedBy {
        node: key.node_id(),
        key,
        unix_ms,
        signature,
    })
}

fn check_time(unix_ms: u64, now_unix_ms: u64) -> Result<(), SignatureError> {
    if unix_ms.abs_diff(now_unix_ms) > SIGNATURE_WINDOW_MS {
        return Err(SignatureError::Stale {
            seconds: (i128::from(unix_ms) - i128::from(now_unix_ms)) / 1000,
        });
    }
    Ok(())
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request is not signed: boxes sign every request with their node key (an Astral-Signature header, or node, t and sig beside a ticket)")]
    Missing,
    #[error("the request's signature {0} is malformed")]
    Malformed(&'static str),
    #[error("the request's signature does not match the request and its key")]
    Forged,
    #[error("the request was signed {} s {} this box's clock; check that both keep time with NTP", .seconds.abs(), if *.seconds > 0 { "ahead of" } else { "behind" })]
    Stale { seconds: i128 },
    #[error("the request was received before: a signed request is taken once")]
    Replayed,
    #[error("the request speaks for {claimed} but is signed by {signer}")]
    NotYours { claimed: NodeId, signer: NodeId },
    #[error("the ticket was granted to {holder}, not to {signer}, who signed the play")]
    NotHolder { holder: NodeId, signer: NodeId },
    #[error("this box is busy: it remembers {} recent signatures, to take each once, and takes no more until older ones expire; try again in a few seconds", SeenSignatures::MAX)]
    Busy,
}

/// Signatures taken in the last window, so that each is taken once. A signature
/// older than the window is refused as stale anyway, so it is forgotten then.
#[derive(Debug, Default)]
pub struct SeenSignatures {
    seen: HashMap<[u8; 64], u64>,
    /// When the oldest entries may next be swept.
    sweep_at: u64,
}

impl SeenSignatures {
    /// At most this many signatures are remembered; past it, new requests are refused
    /// until old ones leave the window (a flood of validly signed requests).
    pub const MAX: usize = 100_000;

    /// Takes a verified request's signature, refusing one seen before.
    pub fn take(&mut self, signed: &SignedBy, now_unix_ms: u64) -> Result<(), SignatureError> {
        if now_unix_ms >= self.sweep_at || self.seen.len() >= Self::MAX {
            self.seen
                .retain(|_, t| t.saturating_add(SIGNATURE_WINDOW_MS) >= now_unix_ms);
            self.sweep_at = now_unix_ms + 1_000;
        }
        if self.seen.contains_key(&signed.signature) {
            return Err(SignatureError::Replayed);
        }
        if self.seen.len() >= Self::MAX {
            return Err(SignatureError::Busy);
        }
        self.seen.insert(signed.signature, signed.unix_ms);
        Ok(())
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    #[test]
    fn the_node_id_is_the_keys_and_a_signature_names_it() {
        let key = NodeKey::from_seed([7; 32]);
        let id = key.node_id();
        assert_eq!(id.as_str().len(), NODE_ID_LEN);
        assert!(key.public().is_of(&id));
        assert!(!NodeKey::from_seed([8; 32]).public().is_of(&id));
        let header = key.sign_request("POST", "/tickets", b"{}", NOW);
        let signed = verify_request(Some(&header), "POST", "/tickets", b"{}", NOW + 5).unwrap();
        assert_eq!(signed.node, id);
        let again = NodeKey::from_seed_hex(&key.seed_hex()).unwrap();
        assert_eq!(again.node_id(), id);
    }

    #[test]
    fn a_changed_request_or_a_stale_one_is_refused() {
        let key = NodeKey::from_seed([7; 32]);
        let header = key.sign_request("POST", "/tickets", b"{\"a\":1}", NOW);
        let verify =
            |method, path, body: &[u8], now| verify_request(Some(&header), method, path, body, now);
        assert_eq!(
            verify("POST", "/tickets", b"{\"a\":2}", NOW),
            Err(SignatureError::Forged)
        );
        assert_eq!(
            verify("PUT", "/tickets", b"{\"a\":1}", NOW),
            Err(SignatureError::Forged)
        );
        assert_eq!(
            verify("POST", "/search", b"{\"a\":1}", NOW),
            Err(SignatureError::Forged)
        );
        let late = NOW + SIGNATURE_WINDOW_MS + 1_000;
        assert_eq!(
            verify("POST", "/tickets", b"{\"a\":1}", late),
            Err(SignatureError::Stale { seconds: -61 })
        );
        assert!(SignatureError::Stale { seconds: -61 }
            .to_string()
            .contains("61 s behind"));
        assert_eq!(
            verify_request(None, "POST", "/tickets", b"", NOW),
            Err(SignatureError::Missing)
        );
        // Another key's signature of the same request under this key.
        let other = NodeKey::from_seed([9; 32]).sign_request("POST", "/tickets", b"{\"a\":1}", NOW);
        let spliced = format!(
            "{}.{}",
            key.public().to_hex(),
            other.split_once('.').unwrap().1
        );
        assert_eq!(
            verify_request(Some(&spliced), "POST", "/tickets", b"{\"a\":1}", NOW),
            Err(SignatureError::Forged)
        );
        for bad in ["", "a.b.c", "x.1.y.z", &header.replace('.', ":")] {
            assert!(matches!(
                verify_request(Some(bad), "POST", "/tickets", b"{\"a\":1}", NOW),
                Err(SignatureError::Malformed(_))
            ));
        }
    }

    #[test]
    fn a_play_proof_holds_for_its_stream_and_token_only() {
        let key = NodeKey::from_seed([7; 32]);
        let query = key.prove_play("cam", "t0k3n", NOW);
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        };
        let verify = |stream, token| {
            verify_play(stream, token, param("node"), param("t"), param("sig"), NOW)
        };
        assert_eq!(verify("cam", "t0k3n").unwrap().node, key.node_id());
        assert_eq!(verify("cam", "other"), Err(SignatureError::Forged));
        assert_eq!(verify("dog", "t0k3n"), Err(SignatureError::Forged));
        assert_eq!(
            verify_play("cam", "t0k3n", None, None, None, NOW),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn an_answer_is_signed_for_its_request() {
        let (child, parent) = (NodeKey::from_seed([7; 32]), NodeKey::from_seed([8; 32]));
        let request = child.sign_request("POST", "/tickets", b"{}", NOW);
        let answer = parent.sign_response(&request, 200, b"{\"ticket\":1}", NOW + 3);
        let verify = |request: &str, status, body: &[u8]| {
            verify_response(Some(&answer), request, status, body, NOW + 5)
        };
        assert_eq!(
            verify(&request, 200, b"{\"ticket\":1}").unwrap().node,
            parent.node_id()
        );
        assert_eq!(
            verify(&request, 200, b"{\"ticket\":2}"),
            Err(SignatureError::Forged)
        );
        assert_eq!(
            verify(&request, 409, b"{\"ticket\":1}"),
            Err(SignatureError::Forged)
        );
        let other = child.sign_request("POST", "/tickets", b"{}", NOW + 1);
        assert_eq!(
            verify(&other, 200, b"{\"ticket\":1}"),
            Err(SignatureError::Forged)
        );
    }

    #[test]
    fn each_signature_is_taken_once_within_its_window() {
        let key = NodeKey::from_seed([7; 32]);
        let header = key.sign_request("POST", "/search", b"", NOW);
        let signed = verify_request(Some(&header), "POST", "/search", b"", NOW).unwrap();
        let mut seen = SeenSignatures::default();
        assert_eq!(seen.take(&signed, NOW), Ok(()));
        assert_eq!(seen.take(&signed, NOW + 10), Err(SignatureError::Replayed));
        // Forgotten only once the signature itself is refused as stale.
        let later = NOW + SIGNATURE_WINDOW_MS + 2_000;
        let fresh = key.sign_request("POST", "/search", b"", later);
        let fresh = verify_request(Some(&fresh), "POST", "/search", b"", later).unwrap();
        assert_eq!(seen.take(&fresh, later), Ok(()));
        assert_eq!(seen.seen.len(), 1);
    }

    #[test]
    fn a_full_memory_of_signatures_says_the_box_is_busy() {
        let key = NodeKey::from_seed([7; 32]);
        let header = key.sign_request("POST", "/search", b"", NOW);
        let mut signed = verify_request(Some(&header), "POST", "/search", b"", NOW).unwrap();
        let mut seen = SeenSignatures::default();
        for i in 0..SeenSignatures::MAX as u64 {
            signed.signature[..8].copy_from_slice(&i.to_le_bytes());
            seen.take(&signed, NOW).unwrap();
        }
        signed.signature[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(seen.take(&signed, NOW + 1), Err(SignatureError::Busy));
        signed.signature[..8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(seen.take(&signed, NOW + 1), Err(SignatureError::Replayed));
    }
}
