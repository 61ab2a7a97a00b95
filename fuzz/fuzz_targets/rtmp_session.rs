//! The node's RTMP server fed what a client sends after a real handshake: chunks of
//! any size and kind, commands (connect, publish with or without the key, play of
//! any stream with any query: tickets, proofs, `after`), media, seals. The connection
//! comes from loopback, where plays need no ticket (one given is checked all the
//! same). Whatever comes, the server must neither panic nor hang: the connection ends
//! once the input has.
//!
//! The corpus starts from real sessions: ffmpeg publishing with the key, ffprobe
//! playing, as a client sent them after its handshake.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use node::{Config, Node, NodeArgs};
use proto::identity::NodeKey;
use proto::overlay::{NodeId, Peer};
use rml_rtmp::handshake::PeerType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A node that takes `cam` with the key `fuzzkey1`, in a data directory of its own.
fn node() -> Arc<Node> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"));
    let args = NodeArgs {
        data_dir: Some(dir.path().to_owned()),
        ..NodeArgs::default()
    };
    let config = Config::from_toml("[streams.cam]\nkey = \"fuzzkey1\"\n", &args).expect("a config");
    let me = Peer::new(
        NodeId::new("fuzzed").unwrap(),
        ([127, 0, 0, 1], 8000).into(),
        ([127, 0, 0, 1], 1935).into(),
    );
    Node::new(config, me, NodeKey::from_seed([1; 32]), "t".repeat(32))
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let serving = tokio::spawn(node::rtmp::server::serve_stream(server, peer, node()));
        let (mut reader, mut writer) = tokio::io::split(client);
        let mut buf = vec![0u8; 1 << 16];
        let shook = node::rtmp::handshake(PeerType::Client, &mut reader, &mut writer, &mut buf)
            .await
            .is_ok();
        let send = async {
            if shook {
                let _ = writer.write_all(data).await;
            }
            let _ = writer.shutdown().await;
        };
        // Whatever it answers is read, so that it never waits to write.
        let drain = async { while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {} };
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(send, drain) })
            .await
            .expect("the connection ends once the input has");
        // An error is the session refusing the input, as it should; a panic is a bug.
        let _ = serving.await.expect("the connection's task does not panic");
    });
});
