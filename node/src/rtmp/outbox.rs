//! What a connection has to send: shared buffers, queued without copying and written
//! with one vectored write (`write_all_buf`), so a frame's chunks go from the hub to
//! the socket as they are.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    remaining: usize,
}

impl Outbox {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.remaining += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Buf for Outbox {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.queue.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end of an outbox");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self
                .queue
                .front_mut()
                .expect("remaining counts queued bytes");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.queue.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, bytes) in dst.iter_mut().zip(&self.queue) {
            *slot = IoSlice::new(bytes);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_across_buffers_keeps_the_rest_in_order() {
        let mut out = Outbox::default();
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::new());
        out.push(Bytes::from_static(b"defg"));
        out.push(Bytes::from_static(b"h"));
        assert_eq!(out.remaining(), 8);
        out.advance(4);
        assert_eq!(out.chunk(), b"efg");
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(out.chunks_vectored(&mut slices), 2);
        assert_eq!((&*slices[0], &*slices[1]), (&b"efg"[..], &b"h"[..]));
        out.advance(4);
        assert!(out.is_empty());
        assert_eq!(out.chunk(), b"");
    }
}
