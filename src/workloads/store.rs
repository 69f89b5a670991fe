//! The registration store (docs/workloads.md): a director config of type `boshy-workloads`
//! named after the tld, shared by every pilot replica and surviving their restarts, or a
//! file beside the VIP state file for a lone pilot (`vip_store: file`). The VIP store's
//! mechanics (`vip::SharedStore`): every write carries the version it was made on, and a
//! lost race (412) re-reads and applies the same changes again to the winner's state.
//!
//! [`WorkloadBook`] is one replica's view: the state as last read or written. It is written
//! on token create and revoke, join, leave and deregistration, never per heartbeat, and read
//! at start, before each write, and when another replica's write event comes.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::refusal::JoinRefusal;
use super::state::{Applied, Change, MeshFacts, WorkloadState};
use crate::director::DirectorClient;
use crate::metrics;
use crate::vip::book::{retry_pause, MAX_ATTEMPTS};
use crate::vip::{DirectorStore, FileStore, Saved, SharedStore, StoredKind, Versioned};

/// The director config type of the registration store.
pub(crate) const CONFIG_TYPE: &str = "boshy-workloads";

pub(crate) static WORKLOADS: StoredKind = StoredKind {
    config_type: CONFIG_TYPE,
    noun: "registration store",
    header: "# Join tokens (the SHA-256 of their secrets, never the secrets) and the VMs \
registered into\n# WorkloadGroups, kept by bosh-pilot. Do not edit while it runs; deleting \
this config\n# deregisters every joined VM and revokes every join token.\n",
    if_deleted: "deregister every joined VM and revoke every join token",
};

/// The file of `vip_store: file`: beside the VIP state file.
pub(crate) const FILE_NAME: &str = "workloads.json";

/// The store of `vip_store: director`.
pub(crate) fn director_store(client: Arc<DirectorClient>, tld: &str) -> SharedStore {
    SharedStore::Director(DirectorStore::of_kind(client, tld, &WORKLOADS))
}

/// The store of `vip_store: file`, in the directory of the VIP state file `vip_state_path`.
pub(crate) fn file_store(vip_state_path: &Path) -> SharedStore {
    let dir = vip_state_path.parent().unwrap_or(Path::new("."));
    SharedStore::File(FileStore::of_kind(dir.join(FILE_NAME), &WORKLOADS))
}

/// The outcome of each change of a batch, in order.
pub(crate) type Outcomes = Vec<Result<Applied, JoinRefusal>>;

pub(crate) struct WorkloadBook {
    store: SharedStore,
    /// `None` until the store was read once.
    current: Option<Versioned<WorkloadState>>,
}

impl WorkloadBook {
    pub(crate) fn new(store: SharedStore) -> Self {
        WorkloadBook {
            store,
            current: None,
        }
    }

    pub(crate) fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The state as last read or written.
    pub(crate) fn current(&self) -> Option<&WorkloadState> {
        self.current.as_ref().map(|v| &v.state)
    }

    /// Reads the store; whether the state differs from the one held.
    pub(crate) async fn reload(&mut self) -> Result<bool> {
        let read = self.load().await?;
        let changed = self.current.as_ref().map(|c| &c.state) != Some(&read.state);
        self.current = Some(read);
        Ok(changed)
    }

    async fn load(&self) -> Result<Versioned<WorkloadState>> {
        metrics::global()
            .workload_store_reads
            .fetch_add(1, Ordering::Relaxed);
        self.store.load().await
    }

    /// Applies `changes` in order to a fresh read of the store and writes the result once,
    /// if anything changed (tokens past their expiry go with it). A lost race re-reads and
    /// applies them again: a join is judged against the state it is written on, so a token
    /// revoked or an address taken by another replica meanwhile is refused.
    pub(crate) async fn write(
        &mut self,
        changes: &[Change],
        mesh: &MeshFacts,
        now: u64,
    ) -> Result<Outcomes> {
        let m = metrics::global();
        for attempt in 1..=MAX_ATTEMPTS {
            let read = self.load().await?;
            let mut next = read.state.clone();
            let outcomes: Outcomes = changes.iter().map(|c| next.apply(c, mesh, now)).collect();
            if next == read.state {
                self.current = Some(read);
                return Ok(outcomes);
            }
            next.prune(now);
            match self.store.save(&read.version, &next).await? {
                Saved::Written(version) => {
                    m.workload_store_writes.fetch_add(1, Ordering::Relaxed);
                    self.current = Some(Versioned {
                        version,
                        state: next,
                    });
                    return Ok(outcomes);
                }
                Saved::Conflict => {
                    m.workload_store_conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempt, store = %self.store, "another pilot wrote the registrations first; re-reading");
                    tokio::time::sleep(retry_pause(attempt)).await;
                }
            }
        }
        bail!(
            "{}: lost the race to write the registrations {MAX_ATTEMPTS} times in a row",
            self.store
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::state::tests::{mesh, token, GROUP};
    use crate::workloads::state::JoinAsk;

    fn join(seed: u64, address: [u8; 4], id: &str) -> Change {
        Change::Join(JoinAsk {
            token: token(seed),
            group: GROUP.into(),
            address: address.into(),
            labels: Default::default(),
            new_id: id.into(),
        })
    }

    #[tokio::test]
    async fn a_batch_is_one_write_and_a_replica_sees_the_others_writes_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        let mut first = WorkloadBook::new(file_store(&path));
        let mut second = WorkloadBook::new(file_store(&path));
        assert!(first.current().is_none());
        let create = Change::CreateToken(token(1).record(GROUP, 100, 3600));
        first.write(&[create], &mesh(), 100).await.unwrap();
        let outcomes = first
            .write(
                &[
                    join(1, [10, 0, 1, 1], "a"),
                    join(1, [10, 0, 0, 5], "b"),
                    join(1, [10, 0, 1, 2], "c"),
                ],
                &mesh(),
                200,
            )
            .await
            .unwrap();
        let labels: Vec<&str> = outcomes
            .iter()
            .map(|o| o.as_ref().map_or_else(JoinRefusal::label, |_| "ok"))
            .collect();
        assert_eq!(labels, ["ok", "bosh_address", "ok"]);
        assert!(dir.path().join(FILE_NAME).exists());
        assert!(
            second.reload().await.unwrap(),
            "the other replica's write is news"
        );
        assert_eq!(second.current(), first.current());
        assert!(!second.reload().await.unwrap());
        // Changes that change nothing write nothing.
        let before = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .modified()
            .unwrap();
        let refused = second
            .write(&[join(9, [10, 0, 1, 3], "d")], &mesh(), 300)
            .await
            .unwrap();
        assert_eq!(refused[0].as_ref().unwrap_err().label(), "unknown_token");
        let after = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
    }

    #[tokio::test]
    async fn a_corrupt_store_is_an_error_naming_it_and_never_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{\"tokens\": 3}").unwrap();
        let mut book = WorkloadBook::new(file_store(&dir.path().join("vips.json")));
        let err = format!("{:#}", book.reload().await.unwrap_err());
        assert!(err.contains("not a valid registration store"), "{err}");
        assert!(err.contains(FILE_NAME), "{err}");
        assert!(book.current().is_none());
    }

    /// Against the in-process director simulator: real `POST /configs` races and 412s.
    mod against_the_simulator {
        use super::*;
        use crate::config::{DirectorConfig, Secret};
        use boshy_director_sim::{self as sim, SimOptions};

        const SECRET: &str = "workloads-store-test-secret";

        fn book(sim: &sim::SimHandle) -> WorkloadBook {
            let cfg: DirectorConfig = serde_json::from_value(serde_json::json!({
                "url": sim.director_url(),
                "client": "pilot",
                "ca_cert": sim.ca_pem(),
            }))
            .unwrap();
            let client = DirectorClient::new(&cfg, Secret::new(SECRET)).unwrap();
            WorkloadBook::new(director_store(Arc::new(client), "boshy"))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_pilots_lose_nothing_each_join_lands_once() {
            let sim = sim::start(SimOptions::new(SECRET)).await.unwrap();
            let create = Change::CreateToken(token(1).record(GROUP, 100, 3600));
            book(&sim).write(&[create], &mesh(), 100).await.unwrap();
            let mut racers = Vec::new();
            for n in 0..3u8 {
                let mut book = book(&sim);
                racers.push(tokio::spawn(async move {
                    let joins: Vec<Change> = (0..4u8)
                        .map(|m| join(1, [10, 0, n, m], &format!("{n}-{m}")))
                        .collect();
                    let outcomes = book.write(&joins, &mesh(), 200).await.unwrap();
                    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
                }));
            }
            for racer in racers {
                racer.await.unwrap();
            }
            let mut reader = book(&sim);
            reader.reload().await.unwrap();
            let state = reader.current().unwrap();
            assert_eq!(
                state.registrations.len(),
                12,
                "every replica's joins, once each"
            );
            assert_eq!(state.tokens.len(), 1);
        }
    }
}
