//! Astral's wire types, shared by every crate and every box.
//!
//! Two kinds of things cross the wire between boxes: media, as FLV tags carried over
//! RTMP or HTTP-FLV, and control, as JSON over the ReST API. This crate holds the types
//! of both and nothing else: no IO, no async, no policy. A type lives here when more than
//! one crate, or more than one box, must agree on its shape.

pub mod api;
pub mod flv;
pub mod identity;
pub mod overlay;
pub mod portal;
pub mod seal;

pub use api::{ApiError, Continuity, PullRequest, Stall, StreamInfo, StreamRole};
pub use flv::{StreamMeta, Tag, TagKind};
