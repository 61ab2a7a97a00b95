//! The box's identity: an Ed25519 key pair made on first start and kept in the data
//! directory (`node-key`, the secret seed in hex, mode 0600, written atomically). Its
//! node id derives from the public key (`proto::identity`), so a box keeps its id as
//! long as it keeps its data directory, and no other box can take it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use proto::identity::NodeKey;

/// The key's file name in the data directory.
pub const KEY_FILE: &str = "node-key";

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Reads the node's key, making one first if there is none.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<NodeKey> {
    let path = key_path(data_dir);
    let text = crate::files::read_or_create(&path, "the node's key", || {
        format!("{}\n", NodeKey::generate().seed_hex())
    })?;
    NodeKey::from_seed_hex(&text).with_context(|| {
        format!(
            "the node's key {} is damaged: restore it from a backup, or delete it to \
             start as a new node with a new id",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("state");
        let key = load_or_create(&data).unwrap();
        let mode = std::fs::metadata(key_path(&data))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&data).unwrap().node_id(), key.node_id());
        std::fs::write(key_path(&data), "not a key\n").unwrap();
        let err = load_or_create(&data).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    }
}
