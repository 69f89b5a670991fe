//! File writes that survive a crash: the control plane's VIP state and the agent's name table
//! must never be found torn.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `path` atomically (temporary file, fsync, rename, fsync of the directory),
/// creating its directory if needed. A crash leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_inner(path, bytes, None)
}

/// [`write_atomically`] with the file's mode set on the temporary file before any byte is
/// written to it: a key written with 0600 is never readable by others, not even for an
/// instant, and the mode does not depend on the umask.
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomically_inner(path, bytes, Some(mode))
}

fn write_atomically_inner(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut file = std::fs::File::create(&tmp)?;
        if let Some(mode) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        // Best effort: do not leave a stray temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("{}: cannot write", path.display()))
}

/// Binds a Unix socket at `path` (making its directory, mode 0700, if there is none): a
/// socket left by a previous run is replaced, and the new one is readable and writable by this
/// user alone before it appears under its name (bound under a temporary name, its mode set,
/// then renamed over `path`).
pub fn bind_private_socket(path: &Path, what: &str) -> Result<tokio::net::UnixListener> {
    let at = || format!("{what} {}", path.display());
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", at()))?;
    let mut temporary_name = file_name.to_os_string();
    temporary_name.push(format!(".tmp.{}", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // bpm makes the directory (a volume shared with Envoy); elsewhere (the lab, a test)
        // the agent makes it, for its user alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(at)?;
    }
    remove_stale(&temporary).with_context(at)?;
    let listener = tokio::net::UnixListener::bind(&temporary).with_context(at)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(at)?;
    Ok(listener)
}

fn remove_stale(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_the_directory_and_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_mode_is_set_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomically_with_mode(&path, b"secret", 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write_atomically_with_mode(&path, b"tool", 0o755).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn names_the_file_when_it_cannot_write() {
        let err = write_atomically(Path::new("/proc/boshy/state.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("/proc/boshy/state.json"), "{err}");
    }
}
