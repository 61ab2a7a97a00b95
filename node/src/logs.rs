//! The log's latest lines, for the admin page (`GET /logs`).
//!
//! The library installs no subscriber: the binary gives its formatting layer
//! [`Recent::writer`] as one more place to write to, and every line it writes is kept
//! here, the oldest dropped past [`KEPT`].

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Lines kept.
pub const KEPT: usize = 200;
/// Longest line kept, in bytes; the rest is cut.
const MAX_LINE: usize = 2048;

#[derive(Default)]
pub struct Recent {
    lines: Mutex<VecDeque<String>>,
}

/// The process's log lines.
pub fn recent() -> &'static Recent {
    static RECENT: OnceLock<Recent> = OnceLock::new();
    RECENT.get_or_init(Recent::default)
}

impl Recent {
    /// A writer for `tracing_subscriber`'s `with_writer`, which makes one per event:
    /// what it is given is kept when it is dropped.
    pub fn writer(&'static self) -> Writer {
        Writer {
            recent: self,
            text: Vec::new(),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        crate::lock(&self.lines).iter().cloned().collect()
    }

    fn push(&self, text: &str) {
        let mut lines = crate::lock(&self.lines);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut end = line.len().min(MAX_LINE);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            if lines.len() == KEPT {
                lines.pop_front();
            }
            lines.push_back(line[..end].to_owned());
        }
    }
}

pub struct Writer {
    recent: &'static Recent,
    text: Vec<u8>,
}

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.recent.push(&String::from_utf8_lossy(&self.text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keeps_the_latest_lines_whole() {
        let recent: &'static Recent = Box::leak(Box::default());
        for i in 0..KEPT + 5 {
            writeln!(recent.writer(), "line {i}").unwrap();
        }
        let lines = recent.lines();
        assert_eq!(lines.len(), KEPT);
        assert_eq!(lines[0], "line 5");
        assert_eq!(lines[KEPT - 1], format!("line {}", KEPT + 4));
        writeln!(recent.writer(), "{}", "é".repeat(MAX_LINE)).unwrap();
        assert_eq!(recent.lines().last().unwrap().len(), MAX_LINE);
    }
}
