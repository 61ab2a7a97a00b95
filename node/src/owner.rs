//! Who manages this box from the portal. A box no one owns shows a pairing code on
//! its admin page and in its log, and tells the portal over its control channel
//! (`ChannelMessage::Pairing`). An owner who gives the portal that code claims the
//! box (`ChannelMessage::Claim`); the box keeps the owner in its data directory
//! (`owner`, written whole or not at all) and from then on runs the owner's commands
//! that come down the channel (`ChannelMessage::Command`): its status, its settings
//! and its broadcast, nothing else. The box's own admin can release it
//! (`DELETE /owner`), which makes a new code.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto::portal::pairing_code_key;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::lock;

const FILE: &str = "owner";
/// Pairing codes avoid letters and digits that read alike (0/O, 1/I/L, 5/S, 2/Z, 8/B).
const ALPHABET: &[u8] = b"34679ACDEFGHJKMNPQRTUVWXY";
/// Two groups of four: 25^8, about 1.5 × 10^11 codes.
const GROUP: usize = 4;

/// Admin routes an owner may call through the portal, by method and path.
const COMMANDS: &[(&str, &str)] = &[
    ("GET", "/status"),
    ("GET", "/config"),
    ("PATCH", "/config"),
    ("PUT", "/broadcast"),
];

/// The owner as the box keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    pub owner: String,
    /// Seconds since the epoch.
    pub claimed_at: u64,
}

/// `GET /owner`, and what the channel tells the portal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owned>,
    /// While no one owns the box.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairing_code: Option<String>,
}

/// Why a claim or a command is refused, as an HTTP status and a message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

pub struct Owner {
    path: PathBuf,
    state: Mutex<OwnerState>,
    /// Changes, for the control channel.
    changed: watch::Sender<OwnerState>,
}

impl Owner {
    /// The owner kept in `data_dir`, or a fresh pairing code. An unreadable file is
    /// reported and the box taken as unowned: its admin can pair it again.
    pub fn load(data_dir: &Path) -> Owner {
        let path = data_dir.join(FILE);
        let owner = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Owned>(&bytes) {
                Ok(owned) => Some(owned),
                Err(e) => {
                    tracing::warn!(
                        "{} is not an owner record ({e}); the box shows a pairing code again",
                        path.display()
                    );
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                None
            }
        };
        let state = OwnerState {
            pairing_code: owner.is_none().then(new_code),
            owner,
        };
        Owner {
            path,
            changed: watch::Sender::new(state.clone()),
            state: Mutex::new(state),
        }
    }

    pub fn state(&self) -> OwnerState {
        lock(&self.state).clone()
    }

    pub fn watch(&self) -> watch::Receiver<OwnerState> {
        self.changed.subscribe()
    }

    /// Says where the box stands, once at start.
    pub fn log(&self, portal: Option<&str>) {
        let state = self.state();
        match (&state.owner, &state.pairing_code, portal) {
            (Some(owned), _, _) => {
                tracing::info!(owner = %owned.owner, "managed from the portal by its owner")
            }
            (None, Some(code), Some(portal)) => tracing::info!(
                "pairing code {code}: to manage this box from {portal}, give it this code there"
            ),
            _ => {}
        }
    }

    /// `owner` gave the portal `code`: the box is theirs if the code is its own and
    /// no one owns it yet.
    pub fn claim(&self, owner: &str, code: &str, now: u64) -> Result<(), Refused> {
        if owner.is_empty() || owner.len() > 64 || !owner.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(refused(400, "an owner id is 1 to 64 printable characters"));
        }
        let mut state = lock(&self.state);
        if let Some(owned) = &state.owner {
            return Err(if owned.owner == owner {
                refused(409, "this box is already yours")
            } else {
                refused(409, "this box has an owner already")
            });
        }
        let expected = state.pairing_code.as_deref().unwrap_or_default();
        if pairing_code_key(code) != pairing_code_key(expected) {
            return Err(refused(403, "that is not this box's pairing code"));
        }
        let owned = Owned {
            owner: owner.to_owned(),
            claimed_at: now,
        };
        let json = serde_json::to_vec_pretty(&owned).expect("an owner record serialises");
        crate::files::write_atomic(&self.path, &json, 0o600).map_err(|e| {
            refused(
                500,
                format!("cannot keep the owner in {}: {e}", self.path.display()),
            )
        })?;
        *state = OwnerState {
            owner: Some(owned),
            pairing_code: None,
        };
        self.changed.send_replace(state.clone());
        tracing::info!(%owner, "claimed at the portal: its owner manages this box from now on");
        Ok(())
    }

    /// The box's admin lets the owner go; a new pairing code is made.
    pub fn release(&self) -> std::io::Result<OwnerState> {
        let mut state = lock(&self.state);
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(owned) = &state.owner {
            tracing::info!(owner = %owned.owner, "released by the box's admin");
        }
        *state = OwnerState {
            owner: None,
            pairing_code: Some(new_code()),
        };
        self.changed.send_replace(state.clone());
        Ok(state.clone())
    }

    /// Whether `owner` may run `method path` here: it must own the box, and the route
    /// must be one an owner may call from afar.
    pub fn authorise(&self, owner: &str, method: &str, path: &str) -> Result<(), Refused> {
        let route = path.split('?').next().unwrap_or_default();
        match &lock(&self.state).owner {
            Some(owned) if owned.owner == owner => {}
            Some(_) => return Err(refused(403, "the command is not from this box's owner")),
            None => return Err(refused(403, "no one owns this box: claim it first")),
        }
        if !COMMANDS.contains(&(method, route)) {
            return Err(refused(
                403,
                format!("{method} {route} is not a command an owner sends through the portal"),
            ));
        }
        Ok(())
    }
}

fn new_code() -> String {
    let mut rng = rand::rngs::OsRng;
    let mut code = String::with_capacity(2 * GROUP + 1);
    for i in 0..2 * GROUP {
        if i == GROUP {
            code.push('-');
        }
        code.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_is_claimed_once_with_its_code_and_remembers_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Owner::load(dir.path());
        let code = owner.state().pairing_code.expect("a code while unowned");
        assert_eq!(code.len(), 9);
        assert!(owner
            .claim("o1", "AAAA-AAAA", 1)
            .is_err_and(|e| e.status == 403));
        assert!(owner
            .authorise("o1", "GET", "/status")
            .is_err_and(|e| e.status == 403));
        // Typed in lower case, without the dash.
        let typed = code.replace('-', "").to_lowercase();
        owner.claim("o1", &typed, 7).unwrap();
        assert!(owner.claim("o2", &code, 8).is_err_and(|e| e.status == 409));
        owner.authorise("o1", "PATCH", "/config").unwrap();
        assert!(owner.authorise("o2", "PATCH", "/config").is_err());
        assert!(owner.authorise("o1", "POST", "/leave").is_err());

        let again = Owner::load(dir.path());
        assert_eq!(
            again.state(),
            OwnerState {
                owner: Some(Owned {
                    owner: "o1".into(),
                    claimed_at: 7
                }),
                pairing_code: None
            }
        );
        let released = again.release().unwrap();
        assert!(released.owner.is_none());
        assert_ne!(released.pairing_code, Some(code));
        assert!(Owner::load(dir.path()).state().owner.is_none());
    }

    #[test]
    fn an_unreadable_record_leaves_the_box_unowned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let owner = Owner::load(dir.path());
        assert!(owner.state().owner.is_none());
        assert!(owner.state().pairing_code.is_some());
    }
}
