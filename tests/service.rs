//! The node as a systemd service: the sd_notify protocol seen from systemd's side of
//! the socket, and the exit statuses the unit relies on.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

fn messages_until(socket: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            break;
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = message.lines().any(|l| l == want);
        seen.push(message);
        if done {
            break;
        }
    }
    seen
}

#[test]
fn the_node_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    // As systemd does: WATCHDOG_PID names the service's own process, which `exec`
    // keeps.
    let mut node = Command::new("sh")
        .args(["-c", "export WATCHDOG_PID=$$; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_astral"))
        .args([
            "node",
            "--name",
            "svc",
            "--source",
            "test-pattern",
            "--size",
            "160x120",
        ])
        .args(["--api", &format!("127.0.0.1:{}", free_port())])
        .args(["--rtmp", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path())
        .env("NOTIFY_SOCKET", &path)
        // systemd's WatchdogSec=0.4: pings every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = messages_until(&socket, "READY=1", Duration::from_secs(10));
    assert!(
        ready.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "{ready:?}"
    );
    assert!(
        ready.iter().any(|m| m.contains("STATUS=serving RTMP")),
        "{ready:?}"
    );
    let started = Instant::now();
    let pings = messages_until(&socket, "never", Duration::from_millis(1100))
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        pings >= 3,
        "{pings} watchdog pings in {:?}",
        started.elapsed()
    );

    let status = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopping = messages_until(&socket, "STOPPING=1", Duration::from_secs(10));
    assert!(
        stopping
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{stopping:?}"
    );
    assert_eq!(
        node.wait().unwrap().code(),
        Some(0),
        "SIGTERM is a clean stop"
    );
}

#[test]
fn a_bad_config_exits_64_so_systemd_does_not_restart_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_astral"))
        .args(["node", "--max-forwards", "99"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_forwards"));
}

#[test]
fn the_units_are_hardened_to_an_exposure_of_two_or_less() {
    for name in ["astral-node.service", "astral-portal.service"] {
        let unit = format!("{}/systemd/{name}", env!("CARGO_MANIFEST_DIR"));
        let output = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager", &unit])
            .output()
            .expect("systemd-analyze (Debian's systemd package; ./dev installs it)");
        let text = String::from_utf8_lossy(&output.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split(&format!("exposure level for {name}: ")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure in:\n{text}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        assert!(exposure <= 2.0, "{name}: exposure {exposure}:\n{text}");
    }
}
