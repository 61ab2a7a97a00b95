//! Files in the data directory, written so that a crash or a power cut leaves either
//! the old contents or the new, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Writes `contents` to a temporary file beside `path`, syncs it, renames it over
/// `path` and syncs the directory. `mode` is the file's permission bits.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let temp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)?;
    // The mode applies only to a file created now: make sure of it.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    File::open(dir)?.sync_all()
}

/// The contents of a secret file in the data directory (mode 0600), made by `make` and
/// written atomically if there is none. `what` names it in errors and in the log.
pub fn read_or_create(
    path: &Path,
    what: &str,
    make: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => return Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the data directory {} (choose one with --data-dir)",
            dir.display()
        )
    })?;
    let text = make();
    write_atomic(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {what} {}", path.display()))?;
    tracing::info!(path = %path.display(), "created {what}");
    Ok(text)
}
