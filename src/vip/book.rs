//! One pilot replica's view of the shared VIP assignments, kept in step with the store.
//!
//! Every `sync` reads the store (one small request), runs the allocator on what it read and
//! writes the result only if it differs, with the version it read as the precondition. A
//! lost race re-reads and recomputes on the winner's state, so every replica converges on
//! one `VipState`: no VIP is handed out twice and no service gets two. The same read, done at
//! every poll tick, is how a replica adopts assignments other replicas made.
//!
//! Replicas see the director a little apart in time, so one may not know yet of a service
//! another just gave a VIP to. Releasing it would make the two fight. A replica therefore
//! releases only hostnames it has itself seen go away (or, at its first sync after a start,
//! any hostname it does not see: it has no older view). And a hostname that does come back
//! gets its old VIP again (see `VipAllocator::sync`), so even a release that was premature
//! changes no VIP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use ipnet::Ipv4Net;
use rand::Rng as _;

use super::allocator::{PoolUsage, SyncOutcome, VipAllocator};
use super::store::{Saved, VipStore};

/// Writes tried before a sync gives up (each lost race means another replica made progress).
pub(crate) const MAX_ATTEMPTS: u32 = 6;
/// A lost race waits `attempt × [RETRY_JITTER_MIN, RETRY_JITTER_MAX)` before re-reading, so
/// that racing replicas spread out instead of colliding again.
const RETRY_JITTER_MIN: Duration = Duration::from_millis(50);
const RETRY_JITTER_MAX: Duration = Duration::from_millis(250);

/// What one sync changed in this replica's view.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BookSync {
    /// What this replica allocated and released (and wrote).
    pub outcome: SyncOutcome,
    /// Whether the assignments differ from the ones held before (by this replica's own
    /// changes or by adopting other replicas').
    pub assignments_changed: bool,
    /// Assignments read from the store that the allocator could not keep (see
    /// `VipAllocator::load_warnings`), one line each, for the caller to log. They stay in the
    /// store until a write replaces them, so the same lines may come back at every sync.
    pub load_warnings: Vec<String>,
    /// How full the pool is after the sync.
    pub pool: PoolUsage,
}

pub struct VipBook {
    store: VipStore,
    pool: Ipv4Net,
    quarantine_seconds: u64,
    /// The store's state as last read or written; `None` until the first successful sync.
    current: Option<VipAllocator>,
    /// The wanted hostnames of the last successful sync.
    known: Option<BTreeSet<String>>,
}

impl VipBook {
    pub fn new(store: VipStore, pool: Ipv4Net, quarantine_seconds: u64) -> Result<VipBook> {
        super::check_pool(pool)?;
        Ok(VipBook {
            store,
            pool,
            quarantine_seconds,
            current: None,
            known: None,
        })
    }

    pub fn store(&self) -> &VipStore {
        &self.store
    }

    /// hostname → VIP; `None` until the store was read once (a pilot must not publish a
    /// catalog without VIPs: it would tell every proxy there are no services).
    pub fn assignments(&self) -> Option<&BTreeMap<String, Ipv4Addr>> {
        self.current.as_ref().map(VipAllocator::assignments)
    }

    /// Brings the shared assignments in line with `wanted` (this replica's view of the
    /// director). On error nothing changes here: the last assignments stay.
    pub async fn sync(&mut self, wanted: &BTreeSet<String>, now_unix: u64) -> Result<BookSync> {
        for attempt in 1..=MAX_ATTEMPTS {
            let stored = self.store.load().await?;
            let mut next = VipAllocator::new(self.pool, self.quarantine_seconds, stored.state)
                .map_err(|e| anyhow!("{}: {e}", self.store))?;
            let read = next.state().clone();
            let keep = keep_hostnames(wanted, next.assignments(), self.known.as_ref());
            let outcome = next.sync(&keep, now_unix);
            if next.state() != &read {
                match self.store.save(&stored.version, next.state()).await? {
                    Saved::Written(_) => {}
                    Saved::Conflict => {
                        tracing::debug!(attempt, store = %self.store, "another pilot wrote the VIP assignments first; re-reading");
                        tokio::time::sleep(retry_pause(attempt)).await;
                        continue;
                    }
                }
            }
            let assignments_changed = self.assignments() != Some(next.assignments());
            let load_warnings = next.load_warnings().to_vec();
            let pool = next.usage(now_unix);
            self.current = Some(next);
            self.known = Some(wanted.clone());
            return Ok(BookSync {
                outcome,
                assignments_changed,
                load_warnings,
                pool,
            });
        }
        bail!(
            "{}: lost the race to write VIP assignments {MAX_ATTEMPTS} times in a row",
            self.store
        )
    }
}

/// The pause before re-reading a store after the `attempt`th lost race.
pub(crate) fn retry_pause(attempt: u32) -> Duration {
    let jitter = rand::thread_rng().gen_range(RETRY_JITTER_MIN..RETRY_JITTER_MAX);
    jitter * attempt
}

/// The hostnames whose VIPs stay assigned: the wanted ones, plus assigned ones this replica
/// cannot vouch are gone because it never saw them (`known` is its previous view; `None`,
/// right after a start, vouches for everything).
fn keep_hostnames(
    wanted: &BTreeSet<String>,
    assigned: &BTreeMap<String, Ipv4Addr>,
    known: Option<&BTreeSet<String>>,
) -> BTreeSet<String> {
    let unseen = assigned
        .keys()
        .filter(|hostname| known.is_some_and(|known| !known.contains(*hostname)));
    wanted.iter().chain(unseen).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::store::FileStore;

    fn set(hostnames: &[&str]) -> BTreeSet<String> {
        hostnames.iter().map(|h| h.to_string()).collect()
    }

    fn assigned(hostnames: &[&str]) -> BTreeMap<String, Ipv4Addr> {
        hostnames
            .iter()
            .zip(1..)
            .map(|(h, n)| (h.to_string(), Ipv4Addr::new(169, 254, 255, n)))
            .collect()
    }

    #[test]
    fn only_hostnames_seen_going_away_are_released() {
        let assigned = assigned(&["a", "b", "new-elsewhere"]);
        // After a start every assigned hostname not wanted goes.
        assert_eq!(keep_hostnames(&set(&["a"]), &assigned, None), set(&["a"]));
        // Later, one this replica never saw (another replica's news) stays; b, seen before
        // and gone now, goes.
        assert_eq!(
            keep_hostnames(&set(&["a"]), &assigned, Some(&set(&["a", "b"]))),
            set(&["a", "new-elsewhere"])
        );
        // Wanted ones always stay, assigned or not.
        assert_eq!(
            keep_hostnames(
                &set(&["a", "c"]),
                &assigned,
                Some(&set(&["a", "b", "new-elsewhere"]))
            ),
            set(&["a", "c"])
        );
    }

    fn book(path: &std::path::Path) -> VipBook {
        let store = VipStore::File(FileStore::new(path));
        VipBook::new(store, "169.254.255.0/24".parse().unwrap(), 3600).unwrap()
    }

    #[tokio::test]
    async fn replicas_sharing_a_store_agree_and_adopt_each_others_assignments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        let mut first = book(&path);
        let mut second = book(&path);
        assert_eq!(first.assignments(), None, "nothing before the first read");

        let synced = first.sync(&set(&["a", "b"]), 0).await.unwrap();
        assert_eq!(synced.outcome.allocated.len(), 2);
        assert!(synced.assignments_changed);
        let synced = second.sync(&set(&["a", "b"]), 0).await.unwrap();
        assert_eq!(
            synced.outcome,
            SyncOutcome::default(),
            "adopted, nothing written"
        );
        assert_eq!(second.assignments(), first.assignments());

        // The first replica sees c appear; the second lags and adopts c's VIP rather than
        // freeing it, then catches up with nothing to write.
        first.sync(&set(&["a", "b", "c"]), 1).await.unwrap();
        let synced = second.sync(&set(&["a", "b"]), 1).await.unwrap();
        assert!(synced.outcome.released.is_empty() && synced.assignments_changed);
        assert_eq!(second.assignments(), first.assignments());
        let synced = second.sync(&set(&["a", "b", "c"]), 2).await.unwrap();
        let pool = PoolUsage {
            size: 254,
            used: 3,
            quarantined: 0,
        };
        assert_eq!(
            synced,
            BookSync {
                pool,
                ..BookSync::default()
            }
        );

        // The first replica sees b go and releases it. The second still sees b (it lags):
        // b gets its old VIP back, so its clients see no change.
        let b_vip = first.assignments().unwrap()["b"];
        let synced = first.sync(&set(&["a", "c"]), 3).await.unwrap();
        assert_eq!(synced.outcome.released, vec![("b".into(), b_vip)]);
        let synced = second.sync(&set(&["a", "b", "c"]), 4).await.unwrap();
        assert_eq!(synced.outcome.allocated, vec![("b".into(), b_vip)]);
        assert!(!synced.assignments_changed);
        // The first replica does not release b again (it is the other's news now); the
        // second releases it once it too sees b go, and the first adopts that.
        let synced = first.sync(&set(&["a", "c"]), 5).await.unwrap();
        assert!(synced.outcome.released.is_empty() && synced.assignments_changed);
        let synced = second.sync(&set(&["a", "c"]), 6).await.unwrap();
        assert_eq!(synced.outcome.released.len(), 1);
        let synced = first.sync(&set(&["a", "c"]), 7).await.unwrap();
        assert!(synced.assignments_changed);
        assert_eq!(first.assignments(), second.assignments());
        assert_eq!(first.assignments().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn stored_assignments_the_allocator_drops_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        std::fs::write(
            &path,
            r#"{"assignments":{"a":"169.254.9.9"},"released":{}}"#,
        )
        .unwrap();
        let synced = book(&path).sync(&set(&["a"]), 0).await.unwrap();
        assert_eq!(
            synced.load_warnings,
            ["VIP 169.254.9.9 of a is not usable in the pool 169.254.255.0/24; a gets a new VIP"]
        );
        assert_eq!(
            synced.outcome.allocated,
            vec![("a".into(), Ipv4Addr::new(169, 254, 255, 1))]
        );
    }

    #[tokio::test]
    async fn a_store_failure_keeps_the_last_assignments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        let mut vips = book(&path);
        vips.sync(&set(&["a"]), 0).await.unwrap();
        let before = vips.assignments().cloned();
        std::fs::write(&path, "{ not json").unwrap();
        let err = vips.sync(&set(&["a", "b"]), 1).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("not a valid VIP state"),
            "{err:#}"
        );
        assert_eq!(vips.assignments().cloned(), before);
    }
}
