//! The overlay engine fed what peers may send it. The input is lines; each line is one
//! event for a node that is a supernode and the source of a stream, and watches
//! another:
//! - `R{json}` a request from a peer (`POST /tickets`, `/search`, …);
//! - `A{json}` the answer to the oldest call the node made, `U` that call failing;
//! - `T{ms}` time passing;
//! - `F`, `S`, `L`, `P`, `G` the media plane: the watched stream flows, stalls, goes
//!   silent, a child's player connects, goes.
//!
//! Whatever the lines: no panic, and the node never asks to be woken at a time that
//! has passed (it would spin).

#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use overlay::{CallError, CallId, Config, Input, Node, Output, RequestId, Time};
use proto::overlay::{NodeCard, NodeId, Peer, Request, StreamId, TicketId};

fn card() -> NodeCard {
    NodeCard {
        peer: Peer::new(
            NodeId::new("fuzzed").unwrap(),
            ([10, 0, 0, 1], 8000).into(),
            ([10, 0, 0, 1], 1935).into(),
        ),
        max_forwards: 2,
        upload_kbps: 8000,
        reachable: true,
        ipv6: false,
    }
}

struct Harness {
    node: Node,
    now: Time,
    calls: VecDeque<CallId>,
    tickets: Vec<TicketId>,
    next_request: u64,
}

impl Harness {
    fn input(&mut self, input: Input) {
        self.node.handle_input(self.now, input);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Call { call, .. } => self.calls.push_back(call),
                Output::Respond {
                    result: Ok(proto::overlay::Response::Ticket { ticket }),
                    ..
                } => self.tickets.push(ticket.id),
                _ => {}
            }
        }
    }

    fn wait(&mut self, d: Duration) {
        let until = self.now + d;
        // Every wake-up the node asks for up to `until`, as its driver would.
        while let Some(at) = self.node.poll_timeout().filter(|&at| at <= until) {
            self.now = at.max(self.now);
            self.node.handle_timeout(self.now);
            self.drain();
            assert!(
                self.node.poll_timeout().is_none_or(|next| next > self.now),
                "the node asks to be woken at {:?} again after handling it",
                self.now
            );
        }
        self.now = until;
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mine = StreamId::new("own").unwrap();
    let watched = StreamId::new("cam").unwrap();
    let mut h = Harness {
        node: Node::new(Config::default(), card(), 1, Time::ZERO),
        now: Time::ZERO,
        calls: VecDeque::new(),
        tickets: Vec::new(),
        next_request: 0,
    };
    h.input(Input::Start {
        supernodes: Vec::new(),
    });
    h.input(Input::Publish {
        stream: mine,
        kbps: 2000,
    });
    h.input(Input::Watch {
        stream: watched.clone(),
        kbps: 2000,
        source: None,
    });
    for line in text.lines().take(200) {
        let mut chars = line.chars();
        let op = chars.next().unwrap_or(' ');
        let rest = chars.as_str();
        match op {
            'R' => {
                if let Ok(request) = serde_json::from_str::<Request>(rest) {
                    h.next_request += 1;
                    let id = RequestId(h.next_request);
                    // Signed by the node it speaks for, or by the supernode (orders
                    // only it may give), or by some peer: the engine's own checks of
                    // the sender are in its unit tests.
                    let from = match request.speaks_for() {
                        Some(node) => node.clone(),
                        None => h
                            .node
                            .supernode_id()
                            .cloned()
                            .unwrap_or_else(|| NodeId::new("peer").unwrap()),
                    };
                    h.input(Input::Request { id, from, request });
                }
            }
            'A' | 'U' => {
                let Some(call) = h.calls.pop_front() else {
                    continue;
                };
                let result = match serde_json::from_str(rest) {
                    Ok(response) if op == 'A' => Ok(response),
                    _ => Err(CallError::Unreachable("fuzzed".into())),
                };
                h.input(Input::Reply { call, result });
            }
            'T' => {
                let ms = rest.parse::<u64>().unwrap_or(1000).min(600_000);
                h.wait(Duration::from_millis(ms));
            }
            'F' => h.input(Input::Flowing {
                stream: watched.clone(),
            }),
            'S' => h.input(Input::Stalled {
                stream: watched.clone(),
            }),
            'L' => h.input(Input::Silent {
                stream: watched.clone(),
            }),
            'P' | 'G' => {
                let Some(&ticket) = h.tickets.last() else {
                    continue;
                };
                let stream = StreamId::new("own").unwrap();
                h.input(if op == 'P' {
                    Input::PlayerConnected { stream, ticket }
                } else {
                    Input::PlayerGone { stream, ticket }
                });
            }
            _ => {}
        }
    }
    h.wait(Duration::from_secs(120));
});
