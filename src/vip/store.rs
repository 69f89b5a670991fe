//! Where `VipState` is kept: a director config shared by every pilot replica (the default,
//! see `director_store`), or a local JSON file (one pilot alone: tests and tools).
//!
//! Both offer the same two operations: `load` the state with its version, and `save` a new
//! state only if the stored one is still that version. The file has a single writer, so its
//! saves always succeed; the director answers a lost race with a conflict.

use crate::fsutil::write_atomically;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::allocator::VipState;
use super::director_store::{DirectorStore, StoredKind, VIPS};

/// The stored state and the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T = VipState> {
    /// Opaque; for the director the config id (`"0"` when none exists yet).
    pub version: String,
    pub state: T,
}

/// What a `save` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Stored; this is the new version.
    Written(String),
    /// Someone else stored a newer version first: nothing was written.
    Conflict,
}

/// Shared state of the pilots: a director config, or a file. The VIPs' is a `VipStore`; the
/// joined VMs' registrations are kept the same way (`workloads::store`).
#[derive(Debug)]
pub enum SharedStore {
    Director(DirectorStore),
    File(FileStore),
}

/// Where the VIP assignments are kept.
pub type VipStore = SharedStore;

impl SharedStore {
    pub async fn load<T: DeserializeOwned + Default + Send + 'static>(
        &self,
    ) -> Result<Versioned<T>> {
        match self {
            SharedStore::Director(store) => Ok(store.load().await?),
            SharedStore::File(store) => Ok(Versioned {
                version: FILE_VERSION.into(),
                state: store.load().await?,
            }),
        }
    }

    /// Stores `state` if the stored version is still `expected`.
    pub async fn save<T: Serialize>(&self, expected: &str, state: &T) -> Result<Saved> {
        match self {
            SharedStore::Director(store) => Ok(store.save(expected, state).await?),
            SharedStore::File(store) => {
                store.save(state).await?;
                Ok(Saved::Written(FILE_VERSION.into()))
            }
        }
    }
}

impl std::fmt::Display for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SharedStore::Director(store) => write!(f, "{store}"),
            SharedStore::File(store) => {
                write!(f, "{} file {}", store.kind.noun, store.path.display())
            }
        }
    }
}

/// The file has one writer, so its version never matters.
const FILE_VERSION: &str = "file";

#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    kind: &'static StoredKind,
}

impl FileStore {
    /// The VIP state file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::of_kind(path, &VIPS)
    }

    /// The file of another `kind` of shared state.
    pub(crate) fn of_kind(path: impl Into<PathBuf>, kind: &'static StoredKind) -> Self {
        FileStore {
            path: path.into(),
            kind,
        }
    }

    /// The saved state; empty when the file does not exist yet (first start). A file that
    /// cannot be read or parsed is an error, never a silent reset: a reset would give every
    /// service a new VIP under clients that cached the old ones.
    pub async fn load<T: DeserializeOwned + Default + Send + 'static>(&self) -> Result<T> {
        let (path, kind) = (self.path.clone(), self.kind);
        run_blocking(kind, move || load_file(kind, &path)).await
    }

    /// Replaces the saved state atomically: a crash leaves the old file or the new one,
    /// never a torn one.
    pub async fn save<T: Serialize>(&self, state: &T) -> Result<()> {
        let (path, kind) = (self.path.clone(), self.kind);
        let json = serde_json::to_vec_pretty(state).expect("stored states always serialize");
        run_blocking(kind, move || {
            write_atomically(&path, &json).with_context(|| format!("{} file", kind.noun))
        })
        .await
    }
}

async fn run_blocking<T: Send + 'static>(
    kind: &StoredKind,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .with_context(|| format!("{} file task failed", kind.noun))?
}

fn load_file<T: DeserializeOwned + Default>(kind: &StoredKind, path: &Path) -> Result<T> {
    let noun = kind.noun;
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                "{noun} file {} does not exist yet: starting empty",
                path.display()
            );
            return Ok(T::default());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("{noun} file {}: cannot read", path.display()))
        }
    };
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{noun} file {}: not a valid {noun}; repair it, or delete it to {}",
            path.display(),
            kind.if_deleted
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::VipAllocator;
    use std::collections::BTreeSet;

    #[tokio::test]
    async fn a_missing_file_is_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("vips.json"));
        assert_eq!(store.load::<VipState>().await.unwrap(), VipState::default());
    }

    #[tokio::test]
    async fn saved_vips_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        let pool = "169.254.255.0/24".parse().unwrap();
        let wanted: BTreeSet<String> = ["x", "y", "z"].map(String::from).into();

        let mut first = VipAllocator::new(pool, 60, VipState::default()).unwrap();
        first.sync(&wanted, 0);
        first.sync(&["y", "z"].map(String::from).into(), 1);
        FileStore::new(&path).save(first.state()).await.unwrap();

        let loaded: VipState = FileStore::new(&path).load().await.unwrap();
        let mut restarted = VipAllocator::new(pool, 60, loaded).unwrap();
        assert_eq!(restarted.state(), first.state());
        // x comes back and gets its old VIP: the release was saved with its hostname.
        let outcome = restarted.sync(&wanted, 2);
        assert_eq!(
            outcome.allocated,
            vec![("x".into(), "169.254.255.1".parse().unwrap())]
        );
        assert_eq!(restarted.assignments()["y"], first.assignments()["y"]);
        assert!(!dir.path().join("vips.json.tmp").exists());
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        for corrupt in [
            "{\"assignments\": {",
            "[]",
            "{\"assignments\":{\"a\":\"not-an-ip\"},\"released\":{}}",
        ] {
            std::fs::write(&path, corrupt).unwrap();
            let err = FileStore::new(&path).load::<VipState>().await.unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("not a valid VIP state"), "{msg}");
        }
    }

    #[tokio::test]
    async fn an_unwritable_location_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be made under a regular file.
        std::fs::write(dir.path().join("a-file"), "").unwrap();
        let path = dir.path().join("a-file").join("vips.json");
        let err = FileStore::new(&path)
            .save(&VipState::default())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(&path.display().to_string()),
            "{err:#}"
        );
    }
}
