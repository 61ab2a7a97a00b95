//! The admin token: a secret the node creates on first start in its data directory,
//! readable only by the user it runs as (mode 0600). The local CLI reads it and sends
//! it as `Authorization: Bearer TOKEN`; admin calls without it get 401.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;

/// The token's file name in the data directory.
pub const TOKEN_FILE: &str = "admin-token";

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads the admin token, creating it first if there is none. The file is written
/// whole before it appears under its name (write, fsync, rename), so a crash never
/// leaves a half-written token behind.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    let path = token_path(data_dir);
    let text =
        crate::files::read_or_create(&path, "the admin token", || format!("{}\n", new_secret(32)))?;
    check(&text).with_context(|| format!("cannot read the admin token {}", path.display()))
}

/// `bytes` random bytes from the OS, in hex.
pub fn new_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the token written by [`load_or_create`].
pub fn read(path: &Path) -> std::io::Result<String> {
    check(&fs::read_to_string(path)?)
}

fn check(text: &str) -> std::io::Result<String> {
    let token = text.trim();
    if token.len() < 32 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the admin token file is damaged; delete it and restart the node to make a new one",
        ));
    }
    Ok(token.to_owned())
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("state");
        let token = load_or_create(&data).unwrap();
        assert_eq!(token.len(), 64);
        let mode = fs::metadata(token_path(&data))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&data).unwrap(), token);
        assert!(constant_time_eq(&token, &read(&token_path(&data)).unwrap()));
    }

    #[test]
    fn a_damaged_token_is_an_error_not_a_new_token() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(token_path(dir.path()), "x").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    }
}

/// The admin page's logins: a random id per login, traded for the admin token and kept
/// in memory, so that the token itself never travels in a cookie, and logging out
/// ends a session for good. A restart logs every page out.
#[derive(Default)]
pub struct Sessions(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

/// Most sessions at once; the one ending soonest makes room for a new one.
const MAX_SESSIONS: usize = 32;

impl Sessions {
    /// A new session lasting `lifetime`.
    pub fn open(&self, lifetime: std::time::Duration) -> String {
        let id = new_secret(32);
        let now = std::time::Instant::now();
        let mut sessions = crate::lock(&self.0);
        sessions.retain(|_, until| *until > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(first) = sessions
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(id, _)| id.clone())
            {
                sessions.remove(&first);
            }
        }
        sessions.insert(id.clone(), now + lifetime);
        id
    }

    pub fn is_open(&self, id: &str) -> bool {
        crate::lock(&self.0)
            .iter()
            .any(|(known, until)| constant_time_eq(known, id) && *until > std::time::Instant::now())
    }

    pub fn close(&self, id: &str) {
        crate::lock(&self.0).remove(id);
    }
}
