//! The overlay: how boxes find each other, find a parent for a stream, and keep a
//! shallow relay tree whole while boxes come, go and fail.
//!
//! Everything here is a sans-IO state machine in the manner of quinn-proto and str0m:
//! no sockets, no tasks, no clock reads, no global randomness. A [`Node`] is fed
//! [`Input`]s with the time they happened, and after each one the caller drains
//! [`Node::poll_output`] until it is empty and sleeps until [`Node::poll_timeout`].
//! Outputs are requests to send (`Call`), answers to requests received (`Respond`)
//! and orders for the media plane (`Pull`, `Kick`). The node's driver carries them
//! over HTTP and RTMP; the simulation (`sim/`) carries them over a modelled network,
//! so what the simulation measures is the code that ships.
//!
//! The protocol, in the words of `proto::overlay`:
//! - **Membership.** A node lists supernodes (static config, then the portal), pings
//!   them, and registers with the nearest that has room; if none does, it promotes
//!   itself and tells the portal. It announces its holdings (stream, path, free
//!   slots) when they change and every `announce_interval`, which renews its lease.
//! - **Search.** A supernode answers from its children and floods the query to its
//!   neighbour supernodes with a TTL; query ids are remembered, so a query is
//!   answered once per supernode. Candidates are ranked by depth, then free slots;
//!   the requester pings the best few and breaks ties by round-trip time.
//! - **Tickets.** A parent grants a forward while a slot is free within its upload
//!   budget, never to one of its own ancestors. A joiner with more slots than one of
//!   the parent's children may take that child's place and adopt it, which keeps
//!   2-slot boxes near the root (capacity-first placement).
//! - **Repair.** A node whose stream stalls asks its parent whether the stream still
//!   flows there; if the parent is itself repairing, it waits; if the parent is gone,
//!   it asks its backup (the grandparent) to take it in the dead parent's place, and
//!   searches if that fails. Every `improve_interval` a node looks for a shallower
//!   slot and moves up, make-before-break.
//! - **Leaving.** A leaving node sends its children elsewhere, gives its own slot to
//!   its strongest child, and waits until they have moved before it stops
//!   forwarding. A leaving supernode hands its children to one of them.

mod config;
mod forward;
mod holdings;
mod membership;
mod node;
mod standby;
mod supernode;
mod time;
mod watch;

#[cfg(test)]
mod tests;

pub use config::Config;
pub use node::{
    CallError, CallId, Event, HeldStream, Input, Node, Output, RequestId, Target, TicketView,
};
pub use supernode::{Registry, MAX_PATH};
pub use time::Time;
