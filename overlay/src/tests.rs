//! The engine against requests as a peer would send them, on a virtual clock.

use proptest::prelude::*;
use proto::overlay::{
    NodeCard, NodeId, Peer, Refusal, RefusalKind, Request, Response, StreamId, Ticket,
};

use crate::{CallError, Config, Input, Node, Output, RequestId, Target, Time};

fn card(name: &str, i: u8, upload_kbps: u32) -> NodeCard {
    NodeCard {
        peer: Peer::new(
            NodeId::new(name).unwrap(),
            ([10, 0, 0, i], 8000).into(),
            ([10, 0, 0, i], 1935).into(),
        ),
        max_forwards: 2,
        upload_kbps,
        reachable: true,
        ipv6: false,
    }
}

fn stream() -> StreamId {
    StreamId::new("cam").unwrap()
}

struct Harness {
    node: Node,
    now: Time,
    next: u64,
    outputs: Vec<Output>,
}

impl Harness {
    /// A node that could reach no portal, so it is its own supernode.
    fn alone(cfg: Config, me: NodeCard, seed: u64) -> Harness {
        let mut h = Harness {
            node: Node::new(cfg, me, seed, Time::ZERO),
            now: Time::ZERO,
            next: 0,
            outputs: Vec::new(),
        };
        h.input(Input::Start {
            supernodes: Vec::new(),
        });
        let call = h
            .call_to(|to, _| matches!(to, Target::Portal))
            .expect("asks the portal");
        h.input(Input::Reply {
            call,
            result: Err(CallError::Unreachable("no portal".into())),
        });
        h
    }

    /// A source of `cam`, its own supernode.
    fn source(cfg: Config) -> Harness {
        let mut h = Harness::alone(cfg, card("src", 1, 10_000), 7);
        assert!(h.node.is_supernode());
        h.input(Input::Publish {
            stream: stream(),
            kbps: 2500,
        });
        h
    }

    fn input(&mut self, input: Input) {
        self.now = self.now + std::time::Duration::from_millis(1);
        self.node.handle_input(self.now, input);
        while let Some(o) = self.node.poll_output() {
            self.outputs.push(o);
        }
    }

    fn request(&mut self, request: Request) -> Result<Response, proto::overlay::Refusal> {
        let id = self.send(request);
        self.answer(id).expect("answered at once")
    }

    /// Sends a request as the node it speaks for would (a supernode's orders as this
    /// node's supernode, anything else as a passer-by).
    fn send(&mut self, request: Request) -> RequestId {
        let from = match (&request, request.speaks_for()) {
            (_, Some(node)) => node.clone(),
            (Request::Adopt { .. } | Request::Rehome { .. }, None) => {
                self.node.supernode_id().cloned().expect("a supernode")
            }
            _ => NodeId::new("passer-by").unwrap(),
        };
        self.send_as(from, request)
    }

    fn send_as(&mut self, from: NodeId, request: Request) -> RequestId {
        self.next += 1;
        let id = RequestId(self.next);
        self.input(Input::Request { id, from, request });
        id
    }

    fn answer(&self, id: RequestId) -> Option<Result<Response, proto::overlay::Refusal>> {
        self.outputs.iter().find_map(|o| match o {
            Output::Respond { id: i, result } if *i == id => Some(result.clone()),
            _ => None,
        })
    }

    fn ticket(
        &mut self,
        child: &NodeCard,
        path: Option<Vec<NodeId>>,
    ) -> Result<Ticket, RefusalKind> {
        let request = Request::Ticket {
            stream: stream(),
            child: child.clone(),
            path,
            replaces: None,
            standby: false,
        };
        match self.request(request) {
            Ok(Response::Ticket { ticket }) => Ok(*ticket),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(r) => Err(r.kind),
        }
    }

    fn children(&self) -> usize {
        self.node.held()[0].children.len()
    }
}

#[test]
fn a_box_speaks_only_for_itself_and_takes_orders_from_its_supernode() {
    let mut src = Harness::source(Config::default());
    let thief = NodeId::new("thief").unwrap();
    let request = Request::Ticket {
        stream: stream(),
        child: card("a", 2, 6000),
        path: None,
        replaces: None,
        standby: false,
    };
    let id = src.send_as(thief.clone(), request);
    let refusal = src.answer(id).unwrap().unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Forbidden);
    assert_eq!(refusal.error, "thief cannot speak for a");
    assert_eq!(src.children(), 0);
    // The source is its own supernode: no one else can send it elsewhere.
    let rehome = Request::Rehome {
        supernode: card("evil", 2, 6000).peer,
    };
    let id = src.send_as(thief, rehome);
    assert_eq!(
        src.answer(id).unwrap().unwrap_err().error,
        "thief is not this node's supernode"
    );
    assert!(src.node.is_supernode());
}

#[test]
fn slots_follow_the_upload_budget() {
    let cfg = Config::default();
    assert_eq!(cfg.slots(2, 1500, 2500), 0);
    assert_eq!(cfg.slots(2, 4000, 2500), 1);
    assert_eq!(cfg.slots(2, 7000, 2500), 2);
    assert_eq!(cfg.slots(1, 100_000, 2500), 1);
}

#[test]
fn lowering_capacity_sends_the_newest_child_away_and_takes_no_new_one() {
    let mut h = Harness::source(Config::default());
    let kids: Vec<NodeCard> = (0..2)
        .map(|i| card(&format!("k{i}"), 10 + i, 4000))
        .collect();
    let mut tickets = Vec::new();
    for kid in &kids {
        tickets.push(h.ticket(kid, None).expect("a free slot"));
    }
    assert_eq!(h.node.held()[0].slots, 2);
    h.input(Input::Capacity {
        max_forwards: 1,
        upload_kbps: 10_000,
        reachable: true,
    });
    assert_eq!(h.node.held()[0].slots, 1);
    assert_eq!(h.children(), 1, "a node never forwards beyond its slots");
    let gone = &tickets[1];
    assert!(h.outputs.contains(&Output::Kick {
        stream: stream(),
        ticket: gone.id
    }));
    let told = h.outputs.iter().any(|o| {
        matches!(o, Output::Call { request: Request::EndTicket { ticket, handover: None, .. }, .. } if *ticket == gone.id)
    });
    assert!(told, "the child is told to search: {:?}", h.outputs);
    let late = card("late", 30, 4000);
    assert_eq!(h.ticket(&late, None).unwrap_err(), RefusalKind::Full);
    h.input(Input::Capacity {
        max_forwards: 4,
        upload_kbps: 10_000,
        reachable: true,
    });
    h.ticket(&late, None)
        .expect("room again, within the upload budget");
    assert_eq!(h.children(), 2);
}

#[test]
fn viewers_that_are_not_boxes_take_slots_as_children_do() {
    let mut h = Harness::source(Config::default());
    h.ticket(&card("k0", 10, 4000), None).expect("a free slot");
    assert_eq!(h.node.free(&stream()), 1);
    h.input(Input::Viewers {
        stream: stream(),
        count: 1,
    });
    assert_eq!(h.node.free(&stream()), 0);
    assert_eq!(h.node.held()[0].viewers, 1);
    // A weak box finds no room; the viewer is not displaced as a child would be.
    assert_eq!(
        h.ticket(&card("k1", 11, 1000), None).unwrap_err(),
        RefusalKind::Full
    );
    h.input(Input::Viewers {
        stream: stream(),
        count: 0,
    });
    h.ticket(&card("k1", 11, 1000), None)
        .expect("the viewer's slot is free again");
}

#[test]
fn a_supernode_takes_children_up_to_its_cap() {
    let mut h = Harness::source(Config {
        max_children: 3,
        ..Config::default()
    });
    for i in 0..3 {
        let c = card(&format!("n{i}"), 10 + i, 4000);
        assert!(matches!(
            h.request(Request::Register { node: c }),
            Ok(Response::Registered { .. })
        ));
    }
    let err = h
        .request(Request::Register {
            node: card("n9", 20, 4000),
        })
        .unwrap_err();
    assert_eq!((err.kind, err.status()), (RefusalKind::Full, 409));
    assert_eq!(h.node.registered(), Some(3));
}

#[test]
fn searches_are_bounded_and_answered_once() {
    let mut h = Harness::source(Config::default());
    let search = |query, ttl| Request::Search {
        query,
        stream: stream(),
        ttl,
        requester: NodeId::new("n1").unwrap(),
        requester_slots: 1,
        requester_reachable: true,
        requester_ipv6: false,
    };
    assert_eq!(
        h.request(search(1, 200)).unwrap_err().kind,
        RefusalKind::Invalid
    );
    let Ok(Response::Candidates { candidates }) = h.request(search(2, 2)) else {
        panic!()
    };
    assert_eq!(candidates.len(), 1, "the source itself has free slots");
    assert_eq!(candidates[0].holding.depth(), 0);
    let Ok(Response::Candidates { candidates }) = h.request(search(2, 2)) else {
        panic!()
    };
    assert!(
        candidates.is_empty(),
        "a replayed query id is answered empty"
    );
}

/// A box that cannot be connected to (behind a router that maps nothing) forwards
/// only to boxes that can, which it dials; two such boxes are never put together.
#[test]
fn boxes_that_cannot_be_reached_are_paired_only_with_boxes_that_can() {
    let mut h = Harness::source(Config::default());
    let walled = |name: &str, i: u8| NodeCard {
        reachable: false,
        ..card(name, i, 8000)
    };
    // The source cannot be reached: it forwards to a box that can.
    h.input(Input::Capacity {
        max_forwards: 2,
        upload_kbps: 10_000,
        reachable: false,
    });
    let open = card("open", 10, 8000);
    let t = h.ticket(&open, None).expect("a box that can be reached");
    assert_eq!(
        h.ticket(&walled("shut", 11), None),
        Err(RefusalKind::Unavailable),
        "two boxes that cannot be reached cannot connect"
    );
    // The child asks to be dialled; only with its ticket's token.
    let dial = |token: &str| Request::Dial {
        stream: stream(),
        token: token.into(),
        nonce: "n0".into(),
    };
    assert_eq!(
        h.request(dial("wrong")).unwrap_err().kind,
        RefusalKind::NotFound
    );
    assert_eq!(h.request(dial(&t.token)), Ok(Response::Done));
    assert!(h.outputs.contains(&Output::Dial {
        stream: stream(),
        ticket: t.id,
        child: open.peer.clone(),
        nonce: "n0".into(),
    }));

    // Its holding says so, and a search offers it only to boxes that can be reached.
    let search = |query, requester_reachable| Request::Search {
        query,
        stream: stream(),
        ttl: 0,
        requester: NodeId::new("n1").unwrap(),
        requester_slots: 1,
        requester_reachable,
        requester_ipv6: false,
    };
    let Ok(Response::Candidates { candidates }) = h.request(search(1, true)) else {
        panic!()
    };
    assert_eq!(candidates.len(), 1);
    assert!(!candidates[0].holding.reachable);
    let Ok(Response::Candidates { candidates }) = h.request(search(2, false)) else {
        panic!()
    };
    assert!(candidates.is_empty(), "{candidates:?}");
}

/// Boxes that have IPv6 connect to one reached there, whether or not either can be
/// reached over IPv4; a box without IPv6 still cannot.
#[test]
fn boxes_with_ipv6_connect_to_one_reached_there() {
    let mut source = card("src", 1, 10_000);
    source.reachable = false;
    source.ipv6 = true;
    source.peer.rtmp_v6 = Some("[2001:db8::1]:1935".parse().unwrap());
    let mut h = Harness::alone(Config::default(), source, 7);
    h.input(Input::Publish {
        stream: stream(),
        kbps: 2500,
    });
    let walled = |name: &str, i: u8, ipv6| NodeCard {
        reachable: false,
        ipv6,
        ..card(name, i, 8000)
    };
    assert_eq!(
        h.ticket(&walled("v4", 10, false), None),
        Err(RefusalKind::Unavailable),
        "without IPv6, two boxes that cannot be reached cannot connect"
    );
    h.ticket(&walled("v6", 11, true), None)
        .expect("a box with IPv6 connects to the source over IPv6");

    let search = |query, requester_ipv6| Request::Search {
        query,
        stream: stream(),
        ttl: 0,
        requester: NodeId::new("n1").unwrap(),
        requester_slots: 1,
        requester_reachable: false,
        requester_ipv6,
    };
    let Ok(Response::Candidates { candidates }) = h.request(search(1, true)) else {
        panic!()
    };
    assert_eq!(candidates.len(), 1);
    assert_eq!(
        candidates[0].peer.rtmp_for(true),
        "[2001:db8::1]:1935".parse().unwrap()
    );
    let Ok(Response::Candidates { candidates }) = h.request(search(2, false)) else {
        panic!()
    };
    assert!(candidates.is_empty(), "{candidates:?}");
}

#[test]
fn tickets_respect_slots_and_refuse_loops() {
    let mut h = Harness::source(Config::default());
    let a = card("a", 10, 4000);
    let b = card("b", 11, 4000);
    let t = h.ticket(&a, None).unwrap();
    assert_eq!(t.path, vec![NodeId::new("src").unwrap()]);
    assert_eq!(
        h.ticket(&a, None).unwrap().id,
        t.id,
        "asking twice gives the same ticket"
    );
    h.ticket(&b, None).unwrap();
    assert_eq!(h.ticket(&card("c", 12, 4000), None), Err(RefusalKind::Full));
    assert_eq!(h.children(), 2);
    // Nobody may forward to its own ancestor: here, the source to itself.
    let err = h.request(Request::Ticket {
        stream: stream(),
        child: h.node.card().clone(),
        path: None,
        replaces: None,
        standby: false,
    });
    assert_eq!(err.unwrap_err().kind, RefusalKind::Invalid);
    let err = h.request(Request::Ticket {
        stream: StreamId::new("other").unwrap(),
        child: a,
        path: None,
        replaces: None,
        standby: false,
    });
    assert_eq!(err.unwrap_err().kind, RefusalKind::NotFound);
}

#[test]
fn a_stronger_joiner_takes_a_weak_childs_place_and_adopts_it() {
    let mut h = Harness::source(Config::default());
    h.ticket(&card("weak1", 10, 4000), None).unwrap();
    h.ticket(&card("weak2", 11, 4000), None).unwrap();
    let strong = h.ticket(&card("strong", 12, 7000), None).unwrap();
    let adopted = strong.adopt.expect("adopts the displaced child");
    assert!(adopted.as_str().starts_with("weak"));
    // The displaced child is told where to go once the adopter plays from us (before,
    // the adopter may not hold the stream), and keeps the stream until it moves.
    let told = |h: &Harness| {
        h.outputs.iter().any(|o| {
            matches!(o, Output::Call { request: Request::EndTicket { handover: Some(p), .. }, .. } if p.id.as_str() == "strong")
        })
    };
    assert!(!told(&h));
    let displaced = h.node.held()[0]
        .children
        .iter()
        .filter(|c| c.moving)
        .count();
    assert_eq!(displaced, 1, "the displaced child counts as moving already");
    h.input(Input::PlayerConnected {
        stream: stream(),
        ticket: strong.id,
    });
    assert!(told(&h));
    // A mover (it has a path: a repairing subtree, a move up) displaces the other
    // weak child too; then only strong children are left, and a third is refused.
    let path = Some(vec![NodeId::new("x").unwrap()]);
    let strong2 = h.ticket(&card("strong2", 13, 7000), path.clone()).unwrap();
    let second = strong2.adopt.expect("adopts the other weak child");
    assert!(second.as_str().starts_with("weak") && second != adopted);
    assert_eq!(
        h.ticket(&card("strong3", 14, 7000), path),
        Err(RefusalKind::Full)
    );
}

#[test]
fn a_claim_on_a_connected_childs_slot_is_checked_with_that_child() {
    let mut h = Harness::source(Config::default());
    let a = card("a", 10, 4000);
    let t = h.ticket(&a, None).unwrap();
    h.ticket(&card("b", 11, 4000), None).unwrap();
    h.input(Input::PlayerConnected {
        stream: stream(),
        ticket: t.id,
    });
    let orphan = card("orphan", 12, 4000);
    let claim = Request::Ticket {
        stream: stream(),
        child: orphan.clone(),
        path: Some(vec![NodeId::new("src").unwrap(), NodeId::new("a").unwrap()]),
        replaces: Some(NodeId::new("a").unwrap()),
        standby: false,
    };
    // a's player looks connected: the source asks a before it answers the claim.
    let ask = |h: &mut Harness, a_answers: Result<Response, CallError>| {
        let id = h.send(claim.clone());
        assert_eq!(h.answer(id), None, "held until a is asked");
        let call = h
            .outputs
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::Call {
                    call,
                    to: Target::Node(p),
                    request: Request::Ping { .. },
                } if p.id.as_str() == "a" => Some(*call),
                _ => None,
            })
            .expect("a is pinged");
        h.input(Input::Reply {
            call,
            result: a_answers,
        });
        h.answer(id).expect("answered once a answered")
    };
    // A live a keeps its slot: a claim alone never pushes out a live child.
    let alive = ask(
        &mut h,
        Ok(Response::Pong {
            flowing: Some(true),
        }),
    );
    assert_eq!(alive.unwrap_err().kind, RefusalKind::Full);
    assert_eq!(h.children(), 2);
    // A silent a (a box that lost power keeps its socket open) loses it.
    let silent = ask(
        &mut h,
        Err(CallError::Unreachable("no answer in time".into())),
    );
    assert!(matches!(silent, Ok(Response::Ticket { .. })), "{silent:?}");
    assert!(h.outputs.contains(&Output::Kick {
        stream: stream(),
        ticket: t.id
    }));
    let children: Vec<String> = h.node.held()[0]
        .children
        .iter()
        .map(|c| c.child.to_string())
        .collect();
    assert_eq!(children.len(), 2);
    assert!(children.contains(&"orphan".to_string()) && !children.contains(&"a".to_string()));
}

/// The source with children `a` and `b`, `a`'s player gone.
fn source_whose_child_a_is_gone() -> (Harness, Ticket) {
    let mut h = Harness::source(Config::default());
    let t = h.ticket(&card("a", 10, 4000), None).unwrap();
    h.ticket(&card("b", 11, 4000), None).unwrap();
    h.input(Input::PlayerConnected {
        stream: stream(),
        ticket: t.id,
    });
    h.input(Input::PlayerGone {
        stream: stream(),
        ticket: t.id,
    });
    (h, t)
}

/// A child of `a` claims `a`'s slot at the source.
fn claim_of_as_slot(child: &NodeCard) -> Request {
    Request::Ticket {
        stream: stream(),
        child: child.clone(),
        path: Some(vec![NodeId::new("src").unwrap(), NodeId::new("a").unwrap()]),
        replaces: Some(NodeId::new("a").unwrap()),
        standby: false,
    }
}

#[test]
fn a_gone_childs_slot_goes_to_its_child_at_once() {
    let (mut h, t) = source_whose_child_a_is_gone();
    let claim = h.request(claim_of_as_slot(&card("orphan", 12, 4000)));
    assert!(matches!(claim, Ok(Response::Ticket { .. })));
    assert!(h.outputs.contains(&Output::Kick {
        stream: stream(),
        ticket: t.id
    }));
}

/// Two children of a failed box claim its slot: the second is told which of them
/// took it, rather than only that the slot is gone.
#[test]
fn a_late_claim_on_a_dead_childs_slot_names_the_child_that_took_it() {
    let (mut h, _) = source_whose_child_a_is_gone();
    let (first, second) = (card("first", 12, 4000), card("second", 13, 4000));
    let claim = claim_of_as_slot;
    assert!(matches!(
        h.request(claim(&first)),
        Ok(Response::Ticket { .. })
    ));
    let late = h.request(claim(&second)).unwrap_err();
    assert_eq!(late.kind, RefusalKind::Full);
    assert_eq!(late.instead.as_deref(), Some(&first.peer));
    // Without a claim on that slot there is nothing to name.
    let plain = h.request(Request::Ticket {
        stream: stream(),
        child: card("other", 14, 4000),
        path: None,
        replaces: None,
        standby: false,
    });
    assert_eq!(plain.unwrap_err().instead, None);
}

#[test]
fn ending_a_ticket_needs_its_token() {
    let mut h = Harness::source(Config::default());
    let t = h.ticket(&card("a", 10, 4000), None).unwrap();
    let end = |token: &str| Request::EndTicket {
        ticket: t.id,
        token: token.into(),
        handover: None,
    };
    assert_eq!(
        h.request(end("guess")).unwrap_err().kind,
        RefusalKind::Forbidden
    );
    assert_eq!(h.children(), 1);
    assert_eq!(h.request(end(&t.token)), Ok(Response::Done));
    assert_eq!(h.children(), 0);
}

#[test]
fn unused_tickets_expire() {
    let mut h = Harness::source(Config::default());
    h.ticket(&card("a", 10, 4000), None).unwrap();
    let later = h.now + Config::default().ticket_idle;
    h.node.handle_timeout(later);
    assert_eq!(h.children(), 0);
}

#[test]
fn a_viewer_takes_a_standbys_slot() {
    let mut h = Harness::source(Config::default());
    h.ticket(&card("k1", 21, 4000), None).expect("a free slot");
    let sb = card("sb", 20, 1000);
    let granted = h.standby(&sb);
    assert!(matches!(granted, Ok(Response::Ticket { .. })));
    assert_eq!(h.node.free(&stream()), 0);
    let now = h.now;
    assert!(h.node.room_for_viewer(now, &stream()));
    while let Some(o) = h.node.poll_output() {
        h.outputs.push(o);
    }
    assert_eq!(h.node.free(&stream()), 1, "the standby's slot is free");
    assert!(h.outputs.iter().any(|o| matches!(
        o,
        Output::Call { to: Target::Node(peer), request: Request::EndTicket { .. }, .. }
            if peer.id == sb.peer.id
    )));
    h.input(Input::Viewers {
        stream: stream(),
        count: 1,
    });
    let now = h.now;
    assert!(!h.node.room_for_viewer(now, &stream()), "no slot left");
}

#[test]
fn an_unused_standby_is_kept_while_its_box_keeps_it() {
    let mut h = Harness::source(Config::default());
    let sb = card("sb", 20, 1000);
    let granted = h.standby(&sb);
    assert!(matches!(granted, Ok(Response::Ticket { .. })));
    // An idle standby never plays: past the idle time its box is asked, not dropped.
    h.wait(Config::default().ticket_idle);
    assert_eq!(h.children(), 1);
    let check = |h: &Harness| {
        h.call_to(|to, r| {
            matches!(to, Target::Node(p) if p.id == sb.peer.id) && matches!(r, Request::Path { .. })
        })
    };
    let asked = check(&h).expect("the box is asked whether it keeps its standby");
    h.input(Input::Reply {
        call: asked,
        result: Ok(Response::Done),
    });
    assert_eq!(h.children(), 1, "it keeps it");
    h.wait(Config::default().ticket_idle);
    let asked_again = check(&h).expect("asked again");
    assert_ne!(asked, asked_again);
    h.input(Input::Reply {
        call: asked_again,
        result: Err(CallError::Unreachable("gone".into())),
    });
    assert_eq!(h.children(), 0, "a box that no longer keeps it loses it");
}

proptest! {
    /// Whatever children ask, connect, vanish or end, the source never holds more
    /// settled tickets than its slots (displaced children, still moving, aside).
    #[test]
    fn tickets_never_exceed_slots(ops in proptest::collection::vec((0u8..8, 0u8..4), 1..60)) {
        let mut h = Harness::source(Config::default());
        let mut tickets: Vec<Option<Ticket>> = vec![None; 8];
        for (who, op) in ops {
            let c = card(&format!("c{who}"), 10 + who, if who % 2 == 0 { 7000 } else { 4000 });
            match op {
                0 => tickets[who as usize] = h.ticket(&c, None).ok(),
                1 => if let Some(t) = &tickets[who as usize] {
                    h.input(Input::PlayerConnected { stream: stream(), ticket: t.id });
                },
                2 => if let Some(t) = &tickets[who as usize] {
                    h.input(Input::PlayerGone { stream: stream(), ticket: t.id });
                },
                _ => if let Some(t) = tickets[who as usize].take() {
                    let _ = h.request(Request::EndTicket { ticket: t.id, token: t.token, handover: None });
                },
            }
            let held = &h.node.held()[0];
            let settled = held.children.iter().filter(|c| !c.moving).count();
            prop_assert!(settled <= held.slots as usize, "{settled} settled tickets, {} slots", held.slots);
        }
    }
}

/// A watcher of `cam` whose parent is `p` and whose backup is `g` (the source), with
/// hot standbys on.
fn watcher_under(p: &NodeCard, g: &NodeCard) -> Harness {
    let cfg = Config {
        standby: true,
        ..Config::default()
    };
    attached_under(cfg, p, g)
}

/// Box c, watching with `cfg`, attached under `p`, a child of the source `g`.
fn attached_under(cfg: Config, p: &NodeCard, g: &NodeCard) -> Harness {
    let mut h = Harness::alone(cfg, card("c", 3, 4000), 9);
    h.input(Input::Watch {
        stream: stream(),
        kbps: 2500,
        source: Some(g.peer.clone()),
    });
    let ask = h
        .call_to(|_, r| matches!(r, Request::Ticket { .. }))
        .expect("asks the source for a ticket");
    h.input(Input::Reply {
        call: ask,
        result: Ok(Response::Ticket {
            ticket: Box::new(Ticket {
                id: proto::overlay::TicketId(1),
                token: "t1".into(),
                stream: stream(),
                parent: p.peer.clone(),
                path: vec![g.peer.id.clone(), p.peer.id.clone()],
                backup: Some(g.peer.clone()),
                adopt: None,
            }),
        }),
    });
    h.input(Input::Flowing { stream: stream() });
    h
}

/// A ticket from `parent`, a child of the source: the answer to a claim at the backup.
fn granted_by(parent: &NodeCard) -> Result<Response, CallError> {
    Ok(Response::Ticket {
        ticket: Box::new(Ticket {
            id: proto::overlay::TicketId(7),
            token: "t7".into(),
            stream: stream(),
            parent: parent.peer.clone(),
            path: vec![parent.peer.id.clone()],
            backup: None,
            adopt: None,
        }),
    })
}

impl Harness {
    /// The latest call that `pick` matches.
    fn call_to(&self, pick: impl Fn(&Target, &Request) -> bool) -> Option<crate::CallId> {
        self.outputs.iter().rev().find_map(|o| match o {
            Output::Call { call, to, request } if pick(to, request) => Some(*call),
            _ => None,
        })
    }

    /// A standby ticket for `who`, a child of `p` under us.
    fn standby(&mut self, who: &NodeCard) -> Result<Response, proto::overlay::Refusal> {
        self.request(Request::Ticket {
            stream: stream(),
            child: who.clone(),
            path: Some(vec![NodeId::new("src").unwrap(), NodeId::new("p").unwrap()]),
            replaces: None,
            standby: true,
        })
    }

    /// Time passes with no input.
    fn wait(&mut self, d: std::time::Duration) {
        self.now = self.now + d;
        self.node.handle_timeout(self.now);
        while let Some(o) = self.node.poll_output() {
            self.outputs.push(o);
        }
    }

    fn tick(&mut self) {
        self.wait(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_hot_standby_takes_over_from_a_failed_parent_without_a_search() {
    let g = card("src", 1, 10_000);
    let p = card("p", 2, 4000);
    let mut h = watcher_under(&p, &g);
    h.tick();
    let ask = h
        .call_to(|to, r| {
            matches!(to, Target::Node(peer) if peer.id == g.peer.id)
                && matches!(r, Request::Ticket { standby: true, .. })
        })
        .expect("a settled node asks its backup for a standby");
    h.input(Input::Reply {
        call: ask,
        result: Ok(Response::Ticket {
            ticket: Box::new(Ticket {
                id: proto::overlay::TicketId(2),
                token: "t2".into(),
                stream: stream(),
                parent: g.peer.clone(),
                path: vec![g.peer.id.clone()],
                backup: None,
                adopt: None,
            }),
        }),
    });
    assert!(
        h.outputs
            .iter()
            .any(|o| matches!(o, Output::Standby { parent, .. } if parent.id == g.peer.id)),
        "the media plane plays the standby"
    );
    h.input(Input::StandbyFlowing { stream: stream() });
    assert_eq!(h.node.held()[0].standby.as_ref(), Some(&g.peer.id));

    let before = h.outputs.len();
    h.input(Input::Stalled { stream: stream() });
    let after = &h.outputs[before..];
    assert!(after.iter().any(|o| matches!(o, Output::Promote { .. })));
    assert!(
        !after.iter().any(|o| matches!(
            o,
            Output::Call {
                request: Request::Search { .. } | Request::Ping { .. },
                ..
            } | Output::StopPull { .. }
        )),
        "no search, no probe, no gap: {after:?}"
    );
    let held = &h.node.held()[0];
    assert_eq!(held.parent.as_ref(), Some(&g.peer.id));
    assert_eq!(held.path, vec![g.peer.id.clone()]);
    assert!(held.flowing);
    assert!(
        after.iter().any(|o| matches!(
            o,
            Output::Call { to: Target::Node(peer), request: Request::EndTicket { .. }, .. }
                if peer.id == p.peer.id
        )),
        "the failed parent's ticket is ended"
    );
    assert!(
        after.iter().any(|o| matches!(
            o,
            Output::Call { to: Target::Node(peer), request: Request::Ticket { standby: false, .. }, .. }
                if peer.id == g.peer.id
        )),
        "the standby's parent hears that it is a child's now"
    );
}

/// A parent silent for half the stall timeout is asked whether it is alive, and its
/// slot is claimed at the backup at the same moment (the backup asks it too). A live
/// parent keeps the box; a dead one's slot is the box's as soon as the backup says
/// so, with no second claim or ping at the stall.
#[test]
fn a_silent_parent_is_asked_early_and_its_slot_claimed_at_once() {
    let (p, g) = (card("p", 20, 4000), card("g", 21, 8000));
    let mut h = watcher_under(&p, &g);
    let to = |who: NodeId, request: fn(&Request) -> bool| {
        move |t: &Target, r: &Request| matches!(t, Target::Node(n) if n.id == who) && request(r)
    };
    let ping = to(p.peer.id.clone(), |r| matches!(r, Request::Ping { .. }));
    let claim = to(g.peer.id.clone(), |r| {
        matches!(
            r,
            Request::Ticket {
                replaces: Some(_),
                ..
            }
        )
    });
    let calls = |h: &Harness, from: usize, pick: &dyn Fn(&Target, &Request) -> bool| {
        h.outputs[from..]
            .iter()
            .filter(|o| matches!(o, Output::Call { to, request, .. } if pick(to, request)))
            .count()
    };

    // A moment's silence from a parent that answers: nothing changes.
    h.input(Input::Silent { stream: stream() });
    let early = h.call_to(&ping).expect("the silent parent is asked");
    let claimed = h.call_to(&claim).expect("its slot is claimed at once");
    h.input(Input::Reply {
        call: early,
        result: Ok(Response::Pong {
            flowing: Some(true),
        }),
    });
    h.input(Input::Reply {
        call: claimed,
        result: Err(CallError::Refused(Refusal::new(
            RefusalKind::Full,
            "the parent whose slot is claimed is alive",
        ))),
    });
    assert_eq!(h.node.held()[0].parent.as_ref(), Some(&p.peer.id));
    assert!(h.node.held()[0].flowing);

    // Silence from a parent that does not answer: at the stall nothing is sent again,
    // and the backup's grant makes it the parent.
    let before = h.outputs.len();
    h.input(Input::Silent { stream: stream() });
    let early = h.call_to(&ping).expect("asked again");
    let claimed = h.call_to(&claim).expect("claimed again");
    h.input(Input::Reply {
        call: early,
        result: Err(CallError::Unreachable("no answer in time".into())),
    });
    h.input(Input::Stalled { stream: stream() });
    assert_eq!(
        (calls(&h, before, &ping), calls(&h, before, &claim)),
        (1, 1)
    );
    h.input(Input::Reply {
        call: claimed,
        result: granted_by(&g),
    });
    assert_eq!(h.node.held()[0].parent.as_ref(), Some(&g.peer.id));
    assert!(
        h.outputs[before..]
            .iter()
            .any(|o| matches!(o, Output::Pull { parent, .. } if parent.id == g.peer.id)),
        "plays from the backup"
    );
    assert!(!h.outputs[before..].iter().any(|o| matches!(
        o,
        Output::Call {
            request: Request::Search { .. },
            ..
        }
    )));
}

/// A box whose own parent has gone silent tells its children so when they ask at
/// their stall, even before its own stall: they wait for its repair, not search.
#[test]
fn a_silent_box_tells_its_children_it_has_no_stream() {
    let mut h = watcher_under(&card("p", 20, 4000), &card("g", 21, 8000));
    let ping = |h: &mut Harness| {
        h.request(Request::Ping {
            stream: Some(stream()),
        })
    };
    let pong = |flowing| {
        Ok(Response::Pong {
            flowing: Some(flowing),
        })
    };
    assert_eq!(ping(&mut h), pong(true));
    h.input(Input::Silent { stream: stream() });
    assert_eq!(ping(&mut h), pong(false));
    h.input(Input::Flowing { stream: stream() });
    assert_eq!(ping(&mut h), pong(true));
}

/// The backup may find the silent parent dead before the box sees the stall: the
/// box moves then.
#[test]
fn a_claim_granted_before_the_stall_moves_the_box_at_once() {
    let (p, g) = (card("p", 20, 4000), card("g", 21, 8000));
    let mut h = watcher_under(&p, &g);
    h.input(Input::Silent { stream: stream() });
    let claimed = h
        .call_to(|t, r| {
            matches!(t, Target::Node(n) if n.id == g.peer.id)
                && matches!(
                    r,
                    Request::Ticket {
                        replaces: Some(_),
                        ..
                    }
                )
        })
        .expect("claims the silent parent's slot");
    h.input(Input::Reply {
        call: claimed,
        result: granted_by(&g),
    });
    assert_eq!(h.node.held()[0].parent.as_ref(), Some(&g.peer.id));
    assert!(h
        .outputs
        .iter()
        .any(|o| matches!(o, Output::Pull { parent, .. } if parent.id == g.peer.id)));
    assert!(
        h.outputs.iter().any(|o| matches!(
            o,
            Output::Call { to: Target::Node(n), request: Request::EndTicket { .. }, .. }
                if n.id == p.peer.id
        )),
        "the dead parent's ticket is ended"
    );
}

/// The claim on a dead parent's slot lost to a sibling: the box asks that sibling
/// next, without a search.
#[test]
fn a_box_that_lost_the_claim_asks_the_sibling_that_won_it() {
    // The backup's answer comes after the stall, or before it.
    for stall_first in [true, false] {
        lost_claim_asks_the_sibling(stall_first);
    }
}

fn lost_claim_asks_the_sibling(stall_first: bool) {
    let (p, g, sibling) = (
        card("p", 20, 4000),
        card("g", 21, 8000),
        card("sib", 22, 8000),
    );
    let mut h = watcher_under(&p, &g);
    h.input(Input::Silent { stream: stream() });
    if stall_first {
        let ping = h
            .call_to(|_, r| matches!(r, Request::Ping { .. }))
            .expect("asks the silent parent");
        h.input(Input::Reply {
            call: ping,
            result: Err(CallError::Unreachable("no answer in time".into())),
        });
        h.input(Input::Stalled { stream: stream() });
    }
    let claim = h
        .call_to(|_, r| {
            matches!(
                r,
                Request::Ticket {
                    replaces: Some(_),
                    ..
                }
            )
        })
        .expect("claims the dead parent's slot");
    let before = h.outputs.len();
    h.input(Input::Reply {
        call: claim,
        result: Err(CallError::Refused(
            Refusal::new(RefusalKind::Full, "no free slot").ask_instead(sibling.peer.clone()),
        )),
    });
    let after = &h.outputs[before..];
    assert!(
        after.iter().any(|o| matches!(
            o,
            Output::Call { to: Target::Node(peer), request: Request::Ticket { replaces: None, .. }, .. }
                if peer.id == sibling.peer.id
        )),
        "asks the sibling: {after:?}"
    );
    assert!(
        !after.iter().any(|o| matches!(
            o,
            Output::Call {
                request: Request::Search { .. },
                ..
            }
        )),
        "no search before the sibling answers"
    );
}

/// Candidates are ranked by depth, then free slots, then round-trip time: once the
/// best-ranked has answered, a candidate that is still silent (a dead box the
/// supernode has not forgotten yet) cannot win, and is not waited for.
#[test]
fn a_search_does_not_wait_for_candidates_that_cannot_win() {
    let mut h = Harness::alone(Config::default(), card("sn", 1, 10_000), 3);
    let holding = |depth: usize, free: u8| proto::overlay::Holding {
        stream: stream(),
        path: (0..depth)
            .map(|i| NodeId::new(format!("up{i}")).unwrap())
            .collect(),
        slots: 2,
        free,
        weakest_child: None,
        reachable: true,
    };
    let (shallow, deep, silent) = (
        card("shallow", 10, 8000),
        card("deep", 11, 8000),
        card("silent", 12, 8000),
    );
    for (c, depth) in [(&shallow, 1), (&deep, 3), (&silent, 3)] {
        h.request(Request::Register { node: c.clone() }).unwrap();
        h.request(Request::Announce {
            node: c.peer.id.clone(),
            holdings: vec![holding(depth, 1)],
        })
        .unwrap();
    }
    h.input(Input::Watch {
        stream: stream(),
        kbps: 2500,
        source: None,
    });
    let ping_of = |h: &Harness, who: &NodeCard| {
        h.call_to(|t, r| {
            matches!(t, Target::Node(n) if n.id == who.peer.id) && matches!(r, Request::Ping { .. })
        })
        .unwrap_or_else(|| panic!("{} is pinged", who.peer.id))
    };
    let pong = || {
        Ok(Response::Pong {
            flowing: Some(true),
        })
    };
    let asked = |h: &Harness, who: &NodeCard| {
        h.call_to(|t, r| {
            matches!(t, Target::Node(n) if n.id == who.peer.id)
                && matches!(r, Request::Ticket { .. })
        })
        .is_some()
    };
    // The deeper answers first: the shallow one may still win, so it is waited for.
    let (to_shallow, to_deep) = (ping_of(&h, &shallow), ping_of(&h, &deep));
    ping_of(&h, &silent);
    h.input(Input::Reply {
        call: to_deep,
        result: pong(),
    });
    assert!(!asked(&h, &deep) && !asked(&h, &shallow));
    // The shallow one answers: the silent one (as deep as `deep`) cannot win.
    h.input(Input::Reply {
        call: to_shallow,
        result: pong(),
    });
    assert!(
        asked(&h, &shallow),
        "asks the best at once: {:?}",
        h.outputs
    );
}

#[test]
fn a_standby_is_granted_only_from_a_free_slot_and_yields_it_to_a_box() {
    let mut h = Harness::source(Config::default());
    let sb = card("sb", 20, 1000);
    assert!(matches!(h.standby(&sb), Ok(Response::Ticket { .. })));
    assert!(h.node.held()[0].children.iter().any(|c| c.standby));
    // A joiner takes the last free slot; the next one takes the standby's.
    h.ticket(&card("k1", 21, 4000), None).expect("a free slot");
    let before = h.outputs.len();
    h.ticket(&card("k2", 22, 1000), None)
        .expect("the standby's slot");
    assert!(h.outputs[before..].iter().any(|o| matches!(
        o,
        Output::Call { to: Target::Node(peer), request: Request::EndTicket { .. }, .. }
            if peer.id == sb.peer.id
    )));
    assert!(h.node.held()[0].children.iter().all(|c| !c.standby));
    // No free slot: no standby, and no displacement for one.
    assert!(matches!(
        h.standby(&card("sb2", 23, 100_000)),
        Err(r) if r.kind == RefusalKind::Full
    ));
    assert_eq!(h.children(), 2);
}

#[test]
fn a_supernode_reports_a_change_of_viewers_within_seconds() {
    let mut h = Harness::source(Config::default());
    let kid = card("k", 30, 4000);
    h.request(Request::Register { node: kid.clone() })
        .expect("registered");
    h.request(Request::Announce {
        node: kid.peer.id.clone(),
        holdings: vec![proto::overlay::Holding {
            stream: stream(),
            path: vec![NodeId::new("src").unwrap()].into(),
            slots: 1,
            free: 1,
            weakest_child: None,
            reachable: true,
        }],
    })
    .expect("announced");
    let before = h.outputs.len();
    for _ in 0..600 {
        h.tick();
    }
    let reported = h.outputs[before..].iter().find_map(|o| match o {
        Output::Call {
            to: Target::Portal,
            request: Request::PromoteSupernode { viewers, .. },
            ..
        } => Some(viewers.clone()),
        _ => None,
    });
    // One box watches; the source itself is not counted.
    assert_eq!(reported, Some([(stream(), 1)].into_iter().collect()));
}

/// A parent caught sending what the source did not seal is left at once (its slot is
/// not claimed: it is alive) and kept away from, with every place below it.
#[test]
fn a_parent_that_tampers_is_left_and_avoided_with_its_subtree() {
    let (g, p, q, r) = (
        card("g", 1, 8000),
        card("p", 2, 8000),
        card("q", 4, 8000),
        card("r", 5, 8000),
    );
    let holding = |path: &[&NodeCard]| proto::overlay::Holding {
        stream: stream(),
        path: path.iter().map(|c| c.peer.id.clone()).collect(),
        slots: 2,
        free: 1,
        weakest_child: None,
        reachable: true,
    };
    let mut h = attached_under(Config::default(), &p, &g);
    for (c, path) in [(&p, vec![&g]), (&q, vec![&g, &p]), (&r, vec![&g])] {
        h.request(Request::Register { node: c.clone() }).unwrap();
        h.request(Request::Announce {
            node: c.peer.id.clone(),
            holdings: vec![holding(&path)],
        })
        .unwrap();
    }
    h.outputs.clear();

    h.input(Input::Tampered { stream: stream() });
    assert!(h
        .outputs
        .iter()
        .any(|o| matches!(o, Output::StopPull { .. })));
    assert!(
        h.call_to(|t, r| matches!(t, Target::Node(n) if n.id == p.peer.id)
            && matches!(r, Request::EndTicket { .. }))
            .is_some(),
        "the ticket is given back: {:?}",
        h.outputs
    );
    let pinged = |who: &NodeCard| {
        h.call_to(|t, r| {
            matches!(t, Target::Node(n) if n.id == who.peer.id) && matches!(r, Request::Ping { .. })
        })
        .is_some()
    };
    assert!(pinged(&r), "a place away from it is tried: {:?}", h.outputs);
    assert!(!pinged(&p) && !pinged(&q), "not it, nor below it");
}
