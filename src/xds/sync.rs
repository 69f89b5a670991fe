//! Which snapshot each connected Envoy has taken: the board a drain waits on.
//!
//! Every snapshot gets a sequence number when it is published. A stream is synced to the
//! latest snapshot it has seen once every response it sent has been answered (ACK or NACK:
//! either way Envoy has stopped using what it had before for those resources). A drain
//! waits until every stream on this pilot is synced to a snapshot at least as new as the
//! one without its instance: from then on no Envoy connected here sends it new requests.
//!
//! A stream of a VM with a scope (docs/scope.md) also has the scope generation whose resources
//! its Envoy holds on the board: an agent's first query for a name waits on that.
//!
//! The board also times convergence: from a snapshot's inputs changing to every stream open
//! here being synced to it or a later one (`boshy_xds_convergence_seconds`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::proxy_status::ProxyStatus;
use super::stream_config::StreamConfig;
use crate::catalog::model::InstanceRef;
use crate::scope::ScopeAnswer;

/// Why no single stream answers to a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    NotFound,
    /// The instances it could be, each `deployment/group/index (id)`.
    Ambiguous(Vec<String>),
}

/// The synced snapshot of every open stream, by stream.
#[derive(Debug)]
pub struct SyncBoard {
    streams: Mutex<SyncedStreams>,
    /// The instance of each stream of a VM with a scope, and the scope generation its Envoy
    /// holds (0 before any).
    scopes: Mutex<HashMap<u64, (InstanceRef, u64)>>,
    next_stream: AtomicU64,
    /// Bumped at every change, to wake the waiters.
    changed: watch::Sender<u64>,
    convergence: Mutex<Convergence>,
    /// What each stream's Envoy was sent and answered (`GET /v1/proxies`), each behind a lock
    /// of its own so that streams updating theirs never wait on one another, and the stream's
    /// state, to read what it would send now (`GET /v1/proxies/<instance>/config`).
    statuses: Mutex<HashMap<u64, Listed>>,
}

/// One stream as `/v1/proxies` reads it.
#[derive(Clone)]
struct Listed {
    status: Arc<Mutex<ProxyStatus>>,
    config: Arc<dyn StreamConfig>,
}

impl std::fmt::Debug for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listed")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Default for SyncBoard {
    fn default() -> Self {
        SyncBoard {
            streams: Mutex::default(),
            scopes: Mutex::default(),
            convergence: Mutex::default(),
            statuses: Mutex::default(),
            next_stream: AtomicU64::new(0),
            changed: watch::Sender::new(0),
        }
    }
}

impl SyncBoard {
    /// A new stream, synced to `seq` (what it would be sent first is the latest snapshot),
    /// its status so far `status`, its state `config`.
    pub(crate) fn join(
        self: &Arc<Self>,
        seq: u64,
        status: ProxyStatus,
        config: Arc<dyn StreamConfig>,
    ) -> StreamSync {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.streams.lock().expect("sync board lock").set(id, seq);
        let status = Arc::new(Mutex::new(status));
        let listed = Listed {
            status: status.clone(),
            config,
        };
        self.statuses
            .lock()
            .expect("sync board lock")
            .insert(id, listed);
        self.changed.send_modify(|n| *n += 1);
        StreamSync {
            board: self.clone(),
            id,
            seq,
            unanswered: BTreeSet::new(),
            status,
        }
    }

    /// A stream of an Envoy that has not said who it is, for the tests of what waits on the
    /// board.
    #[cfg(test)]
    pub(crate) fn join_anonymous(self: &Arc<Self>, seq: u64) -> StreamSync {
        let status = ProxyStatus::connected("sotw", None, std::time::SystemTime::now());
        let state: Arc<Mutex<super::sotw::SotwStreamState>> = Arc::default();
        self.join(seq, status, state)
    }

    /// The status of every open stream, with how far each is behind snapshot `current`,
    /// oldest stream first.
    pub fn proxies(&self, current: Option<u64>) -> Vec<ProxyStatus> {
        self.listed(current)
            .into_iter()
            .map(|(status, _)| status)
            .collect()
    }

    /// The stream of the Envoy `wanted` names (`ProxyStatus::is_named`): its status against
    /// snapshot `current` and its state. Several streams of one instance (a reconnected
    /// Envoy whose old stream has not ended yet) are that instance's newest stream.
    pub(crate) fn find(
        &self,
        wanted: &str,
        current: Option<u64>,
    ) -> Result<(ProxyStatus, Arc<dyn StreamConfig>), Lookup> {
        let named: Vec<(ProxyStatus, Arc<dyn StreamConfig>)> = self
            .listed(current)
            .into_iter()
            .filter(|(status, _)| status.is_named(wanted))
            .collect();
        let instances: BTreeSet<String> = named.iter().map(|(s, _)| s.qualified_name()).collect();
        match instances.len() {
            0 => Err(Lookup::NotFound),
            1 => Ok(named.into_iter().next_back().expect("one at least")),
            _ => Err(Lookup::Ambiguous(instances.into_iter().collect())),
        }
    }

    /// Every open stream's status against snapshot `current`, and its state, oldest first.
    fn listed(&self, current: Option<u64>) -> Vec<(ProxyStatus, Arc<dyn StreamConfig>)> {
        let mut listed: Vec<(u64, Listed)> = {
            let statuses = self.statuses.lock().expect("sync board lock");
            statuses.iter().map(|(id, l)| (*id, l.clone())).collect()
        };
        listed.sort_by_key(|(id, _)| *id);
        let synced: HashMap<u64, u64> = self.streams.lock().expect("sync board lock").by_id.clone();
        listed
            .into_iter()
            .map(|(id, listed)| {
                let seq = synced.get(&id).copied().unwrap_or_default();
                let status = listed
                    .status
                    .lock()
                    .expect("proxy status lock")
                    .at(seq, current);
                (status, listed.config)
            })
            .collect()
    }

    /// Streams synced to a snapshot older than `seq`.
    pub fn lagging(&self, seq: u64) -> usize {
        self.streams.lock().expect("sync board lock").lagging(seq)
    }

    /// Waits until no stream lags behind `seq`, at most `timeout`; the number still lagging
    /// then.
    pub async fn wait_synced(&self, seq: u64, timeout: Duration) -> Result<(), usize> {
        let mut changed = self.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                changed.borrow_and_update();
                if self.lagging(seq) == 0 {
                    return;
                }
                if changed.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        })
        .await;
        waited.map_err(|_| self.lagging(seq))
    }

    /// Waits until every stream of `instance` here holds scope `generation`, at most
    /// `timeout`: how many streams it has, and whether they all hold it (`false` without any).
    pub async fn wait_scope(
        &self,
        instance: &InstanceRef,
        generation: u64,
        timeout: Duration,
    ) -> ScopeAnswer {
        let mut changed = self.changed.subscribe();
        let check = || {
            let scopes = self.scopes.lock().expect("sync board lock");
            let of_instance = scopes.values().filter(|(i, _)| i == instance);
            let streams = of_instance.clone().count();
            let synced = streams > 0 && { of_instance }.all(|(_, held)| *held >= generation);
            ScopeAnswer { streams, synced }
        };
        let waited = tokio::time::timeout(timeout, async {
            loop {
                changed.borrow_and_update();
                let answer = check();
                if answer.synced || answer.streams == 0 {
                    return answer;
                }
                if changed.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| check())
    }

    fn set_scope(&self, id: u64, instance: &InstanceRef, held: u64) {
        let mut scopes = self.scopes.lock().expect("sync board lock");
        let entry = scopes.entry(id).or_insert_with(|| (instance.clone(), 0));
        if entry.1 != held {
            entry.1 = held;
            drop(scopes);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn set_scope_if_absent(&self, id: u64, instance: &InstanceRef) {
        let mut scopes = self.scopes.lock().expect("sync board lock");
        if let std::collections::hash_map::Entry::Vacant(entry) = scopes.entry(id) {
            entry.insert((instance.clone(), 0));
            drop(scopes);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn set(&self, id: u64, seq: u64) {
        let mut streams = self.streams.lock().expect("sync board lock");
        let previous = streams.set(id, seq);
        if previous != Some(seq) {
            self.converge(&streams);
            drop(streams);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn leave(&self, id: u64) {
        let mut streams = self.streams.lock().expect("sync board lock");
        streams.remove(id);
        self.converge(&streams);
        drop(streams);
        self.scopes.lock().expect("sync board lock").remove(&id);
        self.statuses.lock().expect("sync board lock").remove(&id);
        self.changed.send_modify(|n| *n += 1);
    }

    /// A stream saw snapshot `seq`, whose inputs changed at `inputs_changed`: its convergence
    /// is timed from then.
    fn published(&self, seq: u64, inputs_changed: Instant) {
        self.convergence
            .lock()
            .expect("sync board lock")
            .published(seq, inputs_changed);
    }

    /// Observes the convergence of the snapshots every stream in `streams` is synced to.
    fn converge(&self, streams: &SyncedStreams) {
        let synced_by_all = streams.synced_by_all();
        let converged = self
            .convergence
            .lock()
            .expect("sync board lock")
            .synced_by_all(synced_by_all, Instant::now());
        for elapsed in converged {
            crate::metrics::global().xds_converged(elapsed);
        }
    }
}

/// The snapshot each stream is synced to, and how many streams are synced to each: the
/// oldest one and the lagging streams are found without walking thousands of streams at every
/// answer.
#[derive(Debug, Default)]
struct SyncedStreams {
    by_id: HashMap<u64, u64>,
    /// seq → streams synced to it (never 0).
    at_seq: BTreeMap<u64, usize>,
}

impl SyncedStreams {
    /// Stream `id` is synced to `seq`; what it was synced to before.
    fn set(&mut self, id: u64, seq: u64) -> Option<u64> {
        let previous = self.by_id.insert(id, seq);
        if previous != Some(seq) {
            if let Some(previous) = previous {
                self.forget(previous);
            }
            *self.at_seq.entry(seq).or_default() += 1;
        }
        previous
    }

    fn remove(&mut self, id: u64) {
        if let Some(seq) = self.by_id.remove(&id) {
            self.forget(seq);
        }
    }

    fn forget(&mut self, seq: u64) {
        if let std::collections::btree_map::Entry::Occupied(mut count) = self.at_seq.entry(seq) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }

    /// Streams synced to a snapshot older than `seq`.
    fn lagging(&self, seq: u64) -> usize {
        self.at_seq.range(..seq).map(|(_, count)| count).sum()
    }

    /// The snapshot every stream is synced to (or a later one); `None` without streams.
    fn synced_by_all(&self) -> Option<u64> {
        self.at_seq.keys().next().copied()
    }
}

/// Snapshots published and not yet synced by every stream, oldest first. Pure: the caller
/// passes the time and observes what converged.
#[derive(Debug, Default)]
struct Convergence {
    /// seq → when its inputs changed.
    pending: BTreeMap<u64, Instant>,
    /// The newest snapshot that converged (or was given up): a stream seeing it late does not
    /// start it again.
    done_through: u64,
}

/// Snapshots timed at once; a stream that never answers would otherwise keep them all.
const MAX_PENDING_SNAPSHOTS: usize = 64;

impl Convergence {
    fn published(&mut self, seq: u64, inputs_changed: Instant) {
        if seq <= self.done_through {
            return;
        }
        self.pending.entry(seq).or_insert(inputs_changed);
        while self.pending.len() > MAX_PENDING_SNAPSHOTS {
            if let Some((oldest, _)) = self.pending.pop_first() {
                self.done_through = self.done_through.max(oldest);
            }
        }
    }

    /// Every stream is synced to `synced_by_all` or later (`None`: no stream is left, so no
    /// one will answer what is pending: it is dropped unobserved). The time each snapshot
    /// took to converge, for those that now have.
    fn synced_by_all(&mut self, synced_by_all: Option<u64>, now: Instant) -> Vec<Duration> {
        let Some(synced) = synced_by_all else {
            if let Some((&newest, _)) = self.pending.last_key_value() {
                self.done_through = newest;
            }
            self.pending.clear();
            return Vec::new();
        };
        let still_pending = self.pending.split_off(&synced.saturating_add(1));
        let converged = std::mem::replace(&mut self.pending, still_pending);
        if let Some((&newest, _)) = converged.last_key_value() {
            self.done_through = self.done_through.max(newest);
        }
        converged
            .into_values()
            .map(|inputs_changed| now.saturating_duration_since(inputs_changed))
            .collect()
    }
}

/// One stream's place on the board: what it has sent and not yet heard back about.
#[derive(Debug)]
pub(crate) struct StreamSync {
    board: Arc<SyncBoard>,
    id: u64,
    /// The latest snapshot this stream has seen.
    seq: u64,
    /// Nonces of responses sent and not yet answered.
    unanswered: BTreeSet<String>,
    status: Arc<Mutex<ProxyStatus>>,
}

impl StreamSync {
    /// What its Envoy was sent and answered, to update.
    pub(crate) fn status(&self) -> MutexGuard<'_, ProxyStatus> {
        self.status.lock().expect("proxy status lock")
    }

    /// The stream saw snapshot `seq`, whose inputs changed at `inputs_changed`.
    pub(crate) fn saw_snapshot(&mut self, seq: u64, inputs_changed: Instant) {
        self.seq = seq;
        self.board.published(seq, inputs_changed);
    }

    pub(crate) fn sent(&mut self, nonce: &str) {
        self.unanswered.insert(nonce.to_string());
    }

    /// A request naming `nonce` answers that response, whatever else it asks.
    pub(crate) fn answered(&mut self, nonce: &str) {
        self.unanswered.remove(nonce);
    }

    /// After each round (a request, or a snapshot, and what was sent for it): synced when
    /// nothing is left unanswered.
    pub(crate) fn publish(&self) {
        if self.unanswered.is_empty() {
            self.board.set(self.id, self.seq);
        }
    }

    /// After each round, for a stream of `instance`'s VM with a scope: the generation its
    /// Envoy holds, if it holds the current one (what it held before stays otherwise).
    pub(crate) fn publish_scope(&self, instance: &InstanceRef, held: Option<u64>) {
        match held {
            Some(generation) => self.board.set_scope(self.id, instance, generation),
            None => self.board.set_scope_if_absent(self.id, instance),
        }
    }
}

impl Drop for StreamSync {
    fn drop(&mut self) {
        self.board.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_is_synced_once_every_response_it_sent_is_answered() {
        let board = Arc::new(SyncBoard::default());
        let mut first = board.join_anonymous(1);
        let mut second = board.join_anonymous(1);
        assert_eq!(board.lagging(2), 2);

        first.saw_snapshot(2, Instant::now());
        first.sent("a");
        first.publish();
        second.saw_snapshot(2, Instant::now()); // nothing to send it
        second.publish();
        assert_eq!(board.lagging(2), 1, "first has not answered");
        first.answered("b");
        first.publish();
        assert_eq!(board.lagging(2), 1, "not the nonce it was sent");

        let waiting = {
            let board = board.clone();
            tokio::spawn(async move { board.wait_synced(2, Duration::from_secs(10)).await })
        };
        first.answered("a");
        first.publish();
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(
            board.wait_synced(3, Duration::from_millis(50)).await,
            Err(2)
        );
        drop(first);
        drop(second);
        assert_eq!(
            board.wait_synced(3, Duration::from_millis(50)).await,
            Ok(())
        );
    }

    #[test]
    fn a_snapshot_converges_when_every_stream_is_synced_to_it_or_a_later_one() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let none: Vec<Duration> = Vec::new();
        let mut convergence = Convergence::default();
        convergence.published(2, at(0));
        convergence.published(3, at(100));
        convergence.published(3, at(150)); // a second stream seeing it: still from 100
        assert_eq!(convergence.synced_by_all(Some(1), at(200)), none);
        assert_eq!(
            convergence.synced_by_all(Some(2), at(300)),
            [Duration::from_millis(300)]
        );
        assert_eq!(
            convergence.synced_by_all(Some(4), at(400)),
            [Duration::from_millis(300)],
            "synced past it"
        );
        convergence.published(3, at(500));
        assert_eq!(
            convergence.synced_by_all(Some(4), at(600)),
            none,
            "a stream seeing a converged snapshot late starts nothing"
        );
        convergence.published(5, at(700));
        assert_eq!(
            convergence.synced_by_all(None, at(800)),
            none,
            "no stream left"
        );
        assert_eq!(convergence.synced_by_all(Some(5), at(900)), none);
    }

    #[test]
    fn synced_streams_are_counted_by_snapshot() {
        let mut streams = SyncedStreams::default();
        assert_eq!(streams.synced_by_all(), None);
        assert_eq!(streams.set(1, 3), None);
        assert_eq!(streams.set(2, 5), None);
        assert_eq!(streams.set(3, 5), None);
        assert_eq!((streams.synced_by_all(), streams.lagging(5)), (Some(3), 1));
        assert_eq!(streams.set(1, 6), Some(3));
        assert_eq!(streams.set(1, 6), Some(6), "unchanged");
        assert_eq!((streams.synced_by_all(), streams.lagging(6)), (Some(5), 2));
        streams.remove(2);
        streams.remove(3);
        streams.remove(9);
        assert_eq!((streams.synced_by_all(), streams.lagging(7)), (Some(6), 1));
        assert_eq!(streams.at_seq, BTreeMap::from([(6, 1)]));
    }

    #[test]
    fn pending_snapshots_are_bounded() {
        let now = Instant::now();
        let mut convergence = Convergence::default();
        for seq in 1..=(MAX_PENDING_SNAPSHOTS as u64 + 10) {
            convergence.published(seq, now);
        }
        assert_eq!(
            convergence.synced_by_all(Some(u64::MAX - 1), now).len(),
            MAX_PENDING_SNAPSHOTS
        );
    }

    #[test]
    fn the_proxies_show_how_far_each_stream_is_behind() {
        let board = Arc::new(SyncBoard::default());
        let mut first = board.join_anonymous(1);
        let second = board.join_anonymous(1);
        first.saw_snapshot(2, Instant::now());
        first.sent("a");
        first.status().node = "first".into();
        first.publish();
        let behind = |board: &SyncBoard| {
            let proxies = board.proxies(Some(2));
            proxies
                .iter()
                .map(|p| (p.node.clone(), p.synced_snapshot, p.snapshots_behind))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            behind(&board),
            [("first".to_string(), 1, 1), (String::new(), 1, 1)]
        );
        first.answered("a");
        first.publish();
        assert_eq!(behind(&board)[0], ("first".to_string(), 2, 0));
        drop(second);
        assert_eq!(behind(&board).len(), 1, "a closed stream is gone");
    }

    #[tokio::test]
    async fn a_scope_is_held_once_every_stream_of_the_instance_holds_its_generation() {
        use crate::health::testing::instance;
        let board = Arc::new(SyncBoard::default());
        let wait = |generation| {
            let board = board.clone();
            tokio::spawn(async move {
                board
                    .wait_scope(&instance("a"), generation, Duration::from_secs(10))
                    .await
            })
        };
        assert_eq!(
            wait(1).await.unwrap(),
            ScopeAnswer {
                streams: 0,
                synced: false
            },
            "no stream of it here: at once"
        );
        let first = board.join_anonymous(1);
        let second = board.join_anonymous(1);
        let other = board.join_anonymous(1);
        first.publish_scope(&instance("a"), None);
        second.publish_scope(&instance("a"), Some(3));
        other.publish_scope(&instance("b"), Some(9));
        let waiting = wait(3);
        first.publish_scope(&instance("a"), Some(2));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        first.publish_scope(&instance("a"), Some(3));
        assert_eq!(
            waiting.await.unwrap(),
            ScopeAnswer {
                streams: 2,
                synced: true
            }
        );
        second.publish_scope(&instance("a"), None);
        assert_eq!(
            board
                .wait_scope(&instance("a"), 4, Duration::from_millis(20))
                .await,
            ScopeAnswer {
                streams: 2,
                synced: false
            },
            "what a stream held stays until it holds more; the timeout answers what is"
        );
        drop(first);
        drop(second);
        assert_eq!(wait(4).await.unwrap().streams, 0);
    }
}
