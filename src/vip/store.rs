//! Persists `VipState` in a local JSON file.
//!
//! A stand-in for the durable store of DESIGN.md (a director config shared by every pilot
//! replica): it keeps VIPs stable across restarts of one pilot. The interface is what the
//! director-config store will offer too: `load` once at start, `save` after every change.

use crate::fsutil::write_atomically;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::allocator::VipState;

#[derive(Debug, Clone)]
pub struct VipStore {
    path: PathBuf,
}

impl VipStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VipStore { path: path.into() }
    }

    /// The saved state; empty when the file does not exist yet (first start). A file that
    /// cannot be read or parsed is an error, never a silent reset: a reset would give every
    /// service a new VIP under clients that cached the old ones.
    pub async fn load(&self) -> Result<VipState> {
        let path = self.path.clone();
        run_blocking(move || load_file(&path)).await
    }

    /// Replaces the saved state atomically: a crash leaves the old file or the new one,
    /// never a torn one.
    pub async fn save(&self, state: &VipState) -> Result<()> {
        let path = self.path.clone();
        let json = serde_json::to_vec_pretty(state).expect("VIP state always serializes");
        run_blocking(move || {
            write_atomically(&path, &json).with_context(|| "VIP state file".to_string())
        })
        .await
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("VIP state file task failed")?
}

fn load_file(path: &Path) -> Result<VipState> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                "VIP state file {} does not exist yet: starting empty",
                path.display()
            );
            return Ok(VipState::default());
        }
        Err(err) => {
            return Err(err)
                .with_context(|| format!("VIP state file {}: cannot read", path.display()))
        }
    };
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "VIP state file {}: not a valid VIP state; repair it, or delete it to give every \
             service a new VIP",
            path.display()
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
        let store = VipStore::new(dir.path().join("vips.json"));
        assert_eq!(store.load().await.unwrap(), VipState::default());
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
        VipStore::new(&path).save(first.state()).await.unwrap();

        let loaded = VipStore::new(&path).load().await.unwrap();
        let mut restarted = VipAllocator::new(pool, 60, loaded).unwrap();
        assert_eq!(restarted.state(), first.state());
        let outcome = restarted.sync(&wanted, 2);
        assert!(outcome
            .allocated
            .iter()
            .all(|(_, vip)| vip.octets()[3] == 4));
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
            let err = VipStore::new(&path).load().await.unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("not a valid VIP state"), "{msg}");
        }
    }

    #[tokio::test]
    async fn an_unwritable_location_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("vips.json");
        let err = VipStore::new(&path)
            .save(&VipState::default())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(&path.display().to_string()),
            "{err:#}"
        );
    }
}
