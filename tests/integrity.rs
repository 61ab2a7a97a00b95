//! A parent that alters the video it forwards is caught by the source's seals, left and
//! kept away from. A source with two slots feeds box m and a box f that forwards
//! nothing; box r, which forwards nothing either, can only play from m, whose RTMP port it reaches through a man in the middle (m
//! advertises the middle's address) that flips a byte in each inter frame after a
//! while. r must hang up on m, say why, and play again from the source once f leaves
//! and frees a slot there; m itself, and its stream, are unaffected.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const STREAM: &str = "live";

fn place(node: &NodeProc) -> Value {
    node.status()["overlay"]["streams"][0].clone()
}

#[test]
fn a_parent_that_alters_video_is_caught_by_the_seals_and_left() {
    let portal = PortalProc::start();
    let url = portal.url();
    let args = |slots: &str| {
        vec![
            "--portal".to_owned(),
            url.clone(),
            "--max-forwards".into(),
            slots.into(),
        ]
    };
    let start = |name: &str, octet: u8, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProc::start_at(name, [127, 0, 0, octet], "", &args)
    };
    let watch = |node: &NodeProc| {
        let (code, body) = node.http("POST", &format!("/streams/{STREAM}/watch"), None);
        assert_eq!(code, 202, "{}: {body}", node.name);
    };
    let flowing = |node: &NodeProc| {
        eventually(Duration::from_secs(20), || {
            (place(node)["flowing"] == true).then_some(())
        })
    };
    let mut source_args = args("2");
    source_args.extend(test_pattern(STREAM));
    let source = start("source", 50, &source_args);
    eventually(Duration::from_secs(10), || {
        (portal.get("/api/streams")[0]["id"] == STREAM).then_some(())
    });

    // m's video is reached through the middle: m advertises 127.0.0.52, where its API
    // listens (a box calls others from the address it names), and the middle listens
    // on the RTMP port, relaying to m's RTMP server at 127.0.0.51.
    let mut m_args = args("1");
    m_args.extend(["--advertise".into(), "127.0.0.52".into()]);
    let m_args: Vec<&str> = m_args.iter().map(String::as_str).collect();
    let middle = SocketAddr::from(([127, 0, 0, 52], free_port()));
    let m_rtmp = SocketAddr::from(([127, 0, 0, 51], middle.port()));
    let flipped = Arc::new(AtomicU64::new(0));
    relay(middle, m_rtmp, Some(Arc::clone(&flipped)));
    let m_api = SocketAddr::from(([127, 0, 0, 52], free_port()));
    let m = NodeProc::start_on("m", m_api, m_rtmp, "", &m_args);
    watch(&m);
    flowing(&m);
    let mut f = start("f", 53, &args("0"));
    watch(&f);
    flowing(&f);

    // Neither f nor r forwards: r cannot take f's place at the source (a box with
    // more slots would), so m is its one choice.
    let r = start("r", 54, &args("0"));
    watch(&r);
    flowing(&r);
    assert_eq!(place(&r)["parent"], m.id(), "r can only play from m");

    // The middle starts flipping bytes 3 s into each connection: r notices at the
    // seal of the first GOP it got whole, hangs up on m and keeps away from it.
    eventually(Duration::from_secs(20), || {
        (r.metric("tampered_total", STREAM) >= 1.0).then_some(())
    });
    assert!(flipped.load(Ordering::Relaxed) > 0);
    let log = r.log();
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("did not seal"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.contains("the source did not seal") && log.contains("keeping away from it"),
        "r says why:\n{log}"
    );
    eventually(Duration::from_secs(5), || {
        (place(&r)["parent"] != m.id()).then_some(())
    });

    // f leaves, which frees a slot at the source: r plays from there, not from m.
    f.terminate();
    f.wait_exit(Duration::from_secs(10));
    eventually(Duration::from_secs(30), || {
        let p = place(&r);
        (p["flowing"] == true && p["parent"] == source.id()).then_some(())
    });
    let frames = |node: &NodeProc| node.stream_info(STREAM)["continuity"]["frames"].as_u64();
    let before = frames(&r);
    std::thread::sleep(Duration::from_secs(2));
    assert!(frames(&r) > before, "r plays again");

    // r told the portal; the portal names who reported whom, and takes no action of
    // its own on one box's word.
    let reports = eventually(Duration::from_secs(5), || {
        let reports = portal.get("/api/reports");
        (reports.as_array()?.len() == 1).then_some(reports)
    });
    let report = &reports[0];
    assert_eq!(report["reporter"], r.id());
    assert_eq!(report["parent"], m.id());
    assert_eq!(report["stream"], STREAM);
    assert!(
        report["what"].as_str().unwrap().contains("did not seal"),
        "{report}"
    );

    // m was never at fault with its own parent, and plays on.
    assert_eq!(m.metric("tampered_total", STREAM), 0.0);
    assert!(m.metric("gops_verified_total", STREAM) > 0.0);
    assert_eq!(place(&m)["flowing"], true);
}

/// Forwards connections from `listen` to `target`; with `flip`, the bytes coming back
/// are read as RTMP chunks and, from 3 s into a connection, the last byte of the first
/// chunk of each AVC inter frame is flipped (counted in `flip`).
fn relay(listen: SocketAddr, target: SocketAddr, flip: Option<Arc<AtomicU64>>) {
    let listener = TcpListener::bind(listen).expect("the middle's address");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || copy(client2, server2, None));
            let flip = flip.clone();
            std::thread::spawn(move || copy(server, client, flip));
        }
    });
}

fn copy(mut from: TcpStream, mut to: TcpStream, flip: Option<Arc<AtomicU64>>) {
    let mut chunks = flip.map(|count| Chunks {
        started: Instant::now(),
        count,
        buf: Vec::new(),
        skip: 1 + 1536 + 1536,
        chunk_size: 128,
        streams: Default::default(),
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let out = match chunks.as_mut() {
            Some(chunks) => chunks.feed(&buf[..n]),
            None => buf[..n].to_vec(),
        };
        if to.write_all(&out).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// The server-to-client half of an RTMP connection, chunk by chunk.
struct Chunks {
    started: Instant,
    count: Arc<AtomicU64>,
    /// Bytes not yet a whole chunk.
    buf: Vec<u8>,
    /// Handshake bytes still to pass (S0, S1, S2).
    skip: usize,
    chunk_size: usize,
    /// Per chunk stream: the message's length and type, and what is left of it.
    streams: std::collections::HashMap<u32, (usize, u8, usize)>,
}

impl Chunks {
    /// Takes bytes from the server; returns those ready to go on, whole chunks only.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bytes = bytes;
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            out.extend_from_slice(&bytes[..n]);
            self.skip -= n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
        while let Some(len) = self.chunk() {
            out.extend(self.buf.drain(..len));
        }
        out
    }

    /// The length of the whole chunk at the start of `buf`, flipping a byte of it if
    /// it is due; `None` until it is all there.
    fn chunk(&mut self) -> Option<usize> {
        let b = &self.buf;
        let first = *b.first()?;
        let fmt = first >> 6;
        let (csid, mut at) = match first & 0x3f {
            0 => (64 + u32::from(*b.get(1)?), 2),
            1 => (64 + u32::from(*b.get(1)?) + 256 * u32::from(*b.get(2)?), 3),
            id => (u32::from(id), 1),
        };
        let header = [11, 7, 3, 0][usize::from(fmt)];
        if b.len() < at + header {
            return None;
        }
        let state = self.streams.entry(csid).or_insert((0, 0, 0));
        let mut extended = false;
        if fmt <= 2 {
            extended = b[at..at + 3] == [0xff, 0xff, 0xff];
        }
        if fmt <= 1 {
            let len =
                usize::from(b[at + 3]) << 16 | usize::from(b[at + 4]) << 8 | usize::from(b[at + 5]);
            *state = (len, b[at + 6], 0);
        }
        at += header + if extended { 4 } else { 0 };
        let (len, kind, left) = *state;
        let starts = left == 0;
        let left = if starts { len } else { left };
        let take = left.min(self.chunk_size);
        if self.buf.len() < at + take {
            return None;
        }
        self.streams.insert(csid, (len, kind, left - take));
        let payload = at..at + take;
        if kind == 1 && starts && take >= 4 {
            let p = &self.buf[payload.clone()];
            self.chunk_size = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize & 0x7fff_ffff;
        }
        let inter = kind == 9 && starts && take > 16 && self.buf[at] == 0x27;
        if inter && self.started.elapsed() > Duration::from_secs(3) {
            self.buf[payload.end - 1] ^= 0x55;
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Some(payload.end)
    }
}
