//! JSON bodies as the node's API and the portal read them. The first byte picks the
//! type, the rest is the body. Whatever the bytes: no panic; what parses passes or
//! fails its checks without a panic, and writes back to JSON that reads as the same
//! value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::overlay::{Request, Response, Ticket};
use proto::portal::{NodeReport, StreamUpdate, TamperReport};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses `body` as `T` and, if it parses, checks it round-trips.
fn parse<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(body).ok()?;
    let text = serde_json::to_vec(&value).expect("a parsed value serializes");
    let again: T = serde_json::from_slice(&text).expect("what it wrote reads back");
    assert_eq!(value, again, "a round trip changed the value");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            let _ = parse::<Request>(body);
        }
        1 => {
            let _ = parse::<Response>(body);
        }
        2 => {
            let _ = parse::<Ticket>(body);
        }
        3 => {
            if let Some(update) = parse::<StreamUpdate>(body) {
                let _ = update.check();
            }
        }
        4 => {
            if let Some(report) = parse::<NodeReport>(body) {
                let _ = report.check();
            }
        }
        5 => {
            let _ = parse::<proto::PullRequest>(body);
        }
        _ => {
            if let Some(report) = parse::<TamperReport>(body) {
                let _ = report.check(&report.parent);
            }
        }
    }
});
