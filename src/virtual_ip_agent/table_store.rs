//! The last name table on disk, so that a restarted agent answers at once even while the
//! control plane is down.

use std::path::Path;

use anyhow::{Context, Result};

use crate::fsutil::write_atomically;
use crate::names::table::NameTable;

/// Reads the saved table. `Ok(None)` when there is none yet; an error (naming the file) when it
/// cannot be read or is not a name table — the caller starts empty rather than crash.
pub(crate) fn load(path: &Path) -> Result<Option<NameTable>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(err).with_context(|| format!("name table {}: cannot read", path.display()))
        }
    };
    let table = serde_json::from_slice(&bytes)
        .with_context(|| format!("name table {}: not a valid name table", path.display()))?;
    Ok(Some(table))
}

/// Saves the table atomically: a reader (or a crash) sees the old file or the new one, never a
/// torn one.
pub(crate) fn save(path: &Path, table: &NameTable) -> Result<()> {
    let json = serde_json::to_vec_pretty(table).context("serializing the name table")?;
    write_atomically(path, &json)
}

/// How one table differs from the previous one, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TableChanges {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    /// Names whose VIP changed.
    pub(crate) changed: usize,
}

pub(crate) fn changes(old: &NameTable, new: &NameTable) -> TableChanges {
    let mut counts = TableChanges::default();
    for (name, vip) in &new.names {
        match old.names.get(name) {
            None => counts.added += 1,
            Some(old_vip) if old_vip != vip => counts.changed += 1,
            Some(_) => {}
        }
    }
    counts.removed = old
        .names
        .keys()
        .filter(|name| !new.names.contains_key(*name))
        .count();
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn table(version: u64, names: &[(&str, u8)]) -> NameTable {
        NameTable {
            version,
            tld: "boshy".into(),
            names: names
                .iter()
                .map(|(n, last)| (n.to_string(), Ipv4Addr::new(169, 254, 255, *last)))
                .collect(),
            origins: Default::default(),
        }
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.json");
        let saved = table(3, &[("a.b.c.boshy", 1), ("d.e.f.boshy", 2)]);
        save(&path, &saved).unwrap();
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), Some(saved));
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
    }

    #[test]
    fn missing_file_is_no_table() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("absent.json")).unwrap(), None);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.json");
        std::fs::write(&path, b"{\"version\": 1, \"names\": ").unwrap();
        let msg = format!("{:#}", load(&path).unwrap_err());
        assert!(msg.contains("table.json"), "{msg}");
    }

    #[test]
    fn write_where_no_directory_can_be_made_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        // The missing directory is created, unless a file stands where it would go.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let path = dir.path().join("file/dir/table.json");
        let msg = format!("{:#}", save(&path, &NameTable::default()).unwrap_err());
        assert!(msg.contains("file/dir/table.json"), "{msg}");
    }

    #[test]
    fn changes_count_added_removed_and_moved_names() {
        let old = table(
            1,
            &[
                ("keep.x.y.boshy", 1),
                ("move.x.y.boshy", 2),
                ("gone.x.y.boshy", 3),
            ],
        );
        let new = table(
            2,
            &[
                ("keep.x.y.boshy", 1),
                ("move.x.y.boshy", 9),
                ("new.x.y.boshy", 4),
            ],
        );
        assert_eq!(
            changes(&old, &new),
            TableChanges {
                added: 1,
                removed: 1,
                changed: 1
            }
        );
    }
}
