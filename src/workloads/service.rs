//! The pilot's registrations at run time: one task owns the store ([`WorkloadBook`]) and
//! does every write (changes arriving within [`BATCH_WINDOW`] of each other go in one),
//! every re-read (another pilot's write, learned from the director's `config/boshy-workloads`
//! events), and a sweep every [`SWEEP_INTERVAL`] that judges each registration from its
//! heartbeats, publishes the verdicts when they changed, and removes the registrations silent
//! for the grace period. The HTTP API talks to it through [`Workloads`].

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::heartbeats::{liveness_of, Heartbeats, Judged};
use super::identity::WorkloadIdentity;
use super::liveness::Liveness;
use super::refusal::JoinRefusal;
use super::state::{Applied, Change, JoinAsk, MeshFacts, Registration, WorkloadState};
use super::store::WorkloadBook;
use super::token::{JoinToken, TokenRecord};
use crate::catalog::model::Labels;
use crate::config::{Secret, ServerTls, WorkloadsConfig};
use crate::identity::ca::{check_csr_key, CheckedCsr, CsrProblem, WorkloadCa};
use crate::identity::wire::CsrAnswer;
use crate::metrics;
use crate::vip::SharedStore;

/// Changes arriving within this long of the first one are written together.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// A batch holds at most this many changes (a burst of joins is several writes, each small
/// enough for the director's request limits).
const MAX_BATCH: usize = 500;
/// How often registrations are judged from their heartbeats.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between reads of a store that fails to read.
const READ_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// What a joining VM is told of the mesh (docs/workloads.md), beside its certificate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Settings {
    pub tld: String,
    pub virtual_ip_cidr: String,
    /// The name the pilots' certificate is for: what the VM's agent and Envoy verify.
    pub server_name: String,
    pub trust_domain: Option<String>,
    pub ports: Ports,
    pub heartbeat_seconds: u64,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ports {
    pub xds: u16,
    pub names: u16,
    pub api: u16,
}

/// A change sent to the store's task, and where its outcome goes.
struct Pending {
    change: Change,
    reply: Option<oneshot::Sender<Written>>,
}

/// A change's outcome once written: refused, applied, or the store failed.
type Written = Result<Result<Applied, JoinRefusal>, String>;

/// The registrations as the API shows them, and the verdicts the catalog takes.
pub struct Workloads {
    cfg: WorkloadsConfig,
    settings: Settings,
    /// The mesh CA: a joined VM's certificate is a mesh client certificate.
    ca: Arc<WorkloadCa>,
    ca_pem: String,
    state: watch::Receiver<Option<Arc<WorkloadState>>>,
    mesh: watch::Receiver<Option<Arc<MeshFacts>>>,
    judged: watch::Receiver<Arc<HashMap<String, Judged>>>,
    changes: mpsc::UnboundedSender<Pending>,
}

/// The task that owns the store.
pub struct WorkloadsTask {
    book: WorkloadBook,
    cfg: WorkloadsConfig,
    changes: mpsc::UnboundedReceiver<Pending>,
    state: watch::Sender<Option<Arc<WorkloadState>>>,
    mesh: watch::Receiver<Option<Arc<MeshFacts>>>,
    judged: watch::Sender<Arc<HashMap<String, Judged>>>,
    liveness: watch::Sender<Arc<Liveness>>,
    heartbeats: Arc<Heartbeats>,
    /// Registrations a deregistration was sent for and not written yet.
    deregistering: BTreeSet<String>,
}

/// The channels the rest of the pilot reads.
pub(crate) struct Outputs {
    /// The store's state, `None` until it was read once.
    pub(crate) state: watch::Receiver<Option<Arc<WorkloadState>>>,
    /// Every registration's verdict, sent when one changed.
    pub(crate) liveness: watch::Receiver<Arc<Liveness>>,
}

impl Workloads {
    /// Reads the mesh CA's certificate and key (errors name the keys and files, never the
    /// key) and sets up the store's task. `mesh` is what joins are judged against, from the
    /// catalog publisher.
    pub(crate) fn new(
        cfg: &WorkloadsConfig,
        tls: &ServerTls,
        settings: Settings,
        store: SharedStore,
        heartbeats: Arc<Heartbeats>,
        mesh: watch::Receiver<Option<Arc<MeshFacts>>>,
    ) -> Result<(Arc<Workloads>, WorkloadsTask, Outputs)> {
        let ca_pem = std::fs::read_to_string(&tls.ca_cert_path).with_context(|| {
            format!(
                "key `tls.ca_cert_path`: cannot read {}",
                tls.ca_cert_path.display()
            )
        })?;
        let key = std::fs::read_to_string(&cfg.mesh_ca_private_key).with_context(|| {
            format!(
                "key `workloads.mesh_ca_private_key`: cannot read {}",
                cfg.mesh_ca_private_key.display()
            )
        })?;
        let ca = WorkloadCa::from_pem(
            &ca_pem,
            &Secret::new(key),
            None,
            Duration::from_secs(cfg.certificate_ttl_seconds),
        )
        .with_context(|| {
            format!(
                "keys `tls.ca_cert_path` ({}) and `workloads.mesh_ca_private_key` ({})",
                tls.ca_cert_path.display(),
                cfg.mesh_ca_private_key.display()
            )
        })?;
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(None);
        let (judged_tx, judged_rx) = watch::channel(Arc::default());
        let (liveness_tx, liveness_rx) = watch::channel(Arc::default());
        let workloads = Arc::new(Workloads {
            cfg: cfg.clone(),
            settings,
            ca: Arc::new(ca),
            ca_pem,
            state: state_rx.clone(),
            mesh: mesh.clone(),
            judged: judged_rx,
            changes: changes_tx,
        });
        let task = WorkloadsTask {
            book: WorkloadBook::new(store),
            cfg: cfg.clone(),
            changes: changes_rx,
            state: state_tx,
            mesh,
            judged: judged_tx,
            liveness: liveness_tx,
            heartbeats,
            deregistering: BTreeSet::new(),
        };
        let outputs = Outputs {
            state: state_rx,
            liveness: liveness_rx,
        };
        Ok((workloads, task, outputs))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn mesh(&self) -> Result<Arc<MeshFacts>, JoinRefusal> {
        self.mesh.borrow().clone().ok_or_else(|| {
            JoinRefusal::NotReady(
                "the pilot has not built its first catalog from the director yet: try again shortly"
                    .into(),
            )
        })
    }

    /// Sends `change` to the store's task and waits for it to be written.
    async fn write(&self, change: Change) -> Result<Applied, ChangeError> {
        let (reply, outcome) = oneshot::channel();
        self.changes
            .send(Pending {
                change,
                reply: Some(reply),
            })
            .map_err(|_| ChangeError::Store("the registration store's task stopped".into()))?;
        match outcome.await {
            Ok(Ok(Ok(applied))) => Ok(applied),
            Ok(Ok(Err(refusal))) => Err(ChangeError::Refused(refusal)),
            Ok(Err(store)) => Err(ChangeError::Store(store)),
            Err(_) => Err(ChangeError::Store(
                "the registration store's task stopped".into(),
            )),
        }
    }

    /// A new join token for `group`, valid `ttl_seconds` (default 3600, at most
    /// `max_token_ttl_seconds`).
    pub(crate) async fn create_token(
        &self,
        group: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<(JoinToken, TokenRecord), ChangeError> {
        let ttl = ttl_seconds.unwrap_or(3600);
        if ttl == 0 || ttl > self.cfg.max_token_ttl_seconds {
            return Err(ChangeError::Refused(JoinRefusal::BadRequest(format!(
                "ttl_seconds: {ttl} is not between 1 and {} (workloads.max_token_ttl_seconds)",
                self.cfg.max_token_ttl_seconds
            ))));
        }
        let mesh = self.mesh()?;
        if !mesh.groups.contains(group) {
            return Err(JoinRefusal::UnknownGroup(group.to_string()).into());
        }
        let token = JoinToken::generate(&mut rand::rngs::OsRng);
        let record = token.record(group, unix_now(), ttl);
        self.write(Change::CreateToken(record.clone())).await?;
        Ok((token, record))
    }

    pub(crate) async fn revoke_token(&self, id: &str) -> Result<TokenRecord, ChangeError> {
        match self.write(Change::RevokeToken(id.to_string())).await? {
            Applied::Revoked(record) => Ok(record),
            other => unreachable!("a revocation applied as {other:?}"),
        }
    }

    /// A VM joins `group` from `address` with `token`: the registration and its certificate.
    pub(crate) async fn join(
        &self,
        token: JoinToken,
        group: String,
        address: IpAddr,
        labels: Labels,
        csr_pem: &str,
    ) -> Result<Joined, ChangeError> {
        let mesh = self.mesh()?;
        // What the last read can refuse is refused without touching the store: a flood of
        // forged tokens costs the director nothing. An unknown id goes on to the write,
        // which reads the store afresh (the token may be another pilot's, just made).
        let known = self.state.borrow().clone();
        if let Some(state) = known {
            match state.check_token(&token, &group, &mesh, unix_now()) {
                Err(JoinRefusal::UnknownToken(_)) | Ok(_) => {}
                Err(refusal) => return Err(refusal.into()),
            }
        }
        if !mesh.groups.contains(&group) {
            return Err(JoinRefusal::UnknownGroup(group).into());
        }
        if let Some(instance) = mesh.bosh_addresses.get(&address) {
            return Err(JoinRefusal::BoshAddress {
                address,
                instance: instance.clone(),
            }
            .into());
        }
        // Checking and signing cost a millisecond or more of CPU each: off the async
        // workers, as the names port's certificate requests are.
        let pem = csr_pem.to_string();
        let checked = tokio::task::spawn_blocking(move || check_csr_key(&pem))
            .await
            .map_err(|_| ChangeError::Store("the CSR check failed".into()))?;
        let (csr, _asked_names) = checked.map_err(|problem| {
            let why = match problem {
                CsrProblem::Malformed(why) | CsrProblem::Forbidden(why) => why,
            };
            JoinRefusal::BadRequest(format!("csr: {why}"))
        })?;
        let ask = JoinAsk {
            token,
            group,
            address,
            labels,
            new_id: uuid::Uuid::new_v4().to_string(),
        };
        let registration = match self.write(Change::Join(ask)).await? {
            Applied::Joined {
                registration,
                replaced,
            } => {
                if let Some(replaced) = replaced {
                    tracing::info!(group = %registration.group, address = %registration.address, replaced = %replaced.id, "a VM joined again: its old registration is replaced");
                }
                registration
            }
            other => unreachable!("a join applied as {other:?}"),
        };
        let identity = WorkloadIdentity {
            config: registration.config().to_string(),
            group: registration.group_name().to_string(),
            id: registration.id.clone(),
        };
        let (ca, urn) = (self.ca.clone(), identity.urn());
        let signed = tokio::task::spawn_blocking(move || ca.sign(&csr, &urn, SystemTime::now()))
            .await
            .map_err(|_| ChangeError::Store("the signing task failed".into()))?;
        let answer = signed
            .map_err(|err| ChangeError::Store(format!("signing the VM's certificate: {err:#}")))?;
        metrics::global()
            .workload_joins
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(group = %registration.group, address = %registration.address, id = %registration.id, token = %registration.token, "a VM joined");
        Ok(Joined {
            registration,
            certificate: answer.certificate_chain,
            ca: self.ca_pem.clone(),
        })
    }

    /// Removes registration `id` at once: the VM left, or an operator removed it.
    pub(crate) async fn remove(&self, id: &str) -> Result<Registration, ChangeError> {
        match self.write(Change::Leave(id.to_string())).await? {
            Applied::Left(registration) => {
                metrics::global()
                    .workload_leaves
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(group = %registration.group, address = %registration.address, id = %registration.id, "a registration was removed");
                Ok(registration)
            }
            other => unreachable!("a leave applied as {other:?}"),
        }
    }

    /// `GET /v1/workloads`.
    pub(crate) fn listing(&self) -> Listing {
        let state = self.state.borrow().clone().unwrap_or_default();
        let judged = self.judged.borrow().clone();
        let tokens = state
            .tokens
            .iter()
            .map(|t| ListedToken {
                id: t.id.clone(),
                group: t.group.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                revoked: t.revoked,
            })
            .collect();
        let registrations = state
            .registrations
            .iter()
            .map(|r| {
                let judged = judged.get(&r.id);
                let heard = judged.and_then(|j| j.heard.as_ref());
                ListedRegistration {
                    id: r.id.clone(),
                    group: r.group.clone(),
                    deployment: r.config().to_string(),
                    instance_group: r.group_name().to_string(),
                    instance: format!("{}/{}", r.group_name(), r.id),
                    address: r.address,
                    labels: r.labels.clone(),
                    registered_at: r.registered_at,
                    last_heartbeat_ms: heard.map(|h| h.at_unix_ms),
                    probe: heard.and_then(|h| h.probe.clone()),
                    state: judged.map_or(super::liveness::State::Silent, |j| j.verdict.state),
                }
            })
            .collect();
        Listing {
            tokens,
            registrations,
        }
    }

    /// Signs a renewed certificate of the registration `urn` names at `now` (`renewal`): the
    /// join's CA and lifetime.
    pub(super) fn sign(&self, csr: &CheckedCsr, urn: &str, now: SystemTime) -> Result<CsrAnswer> {
        self.ca.sign(csr, urn, now)
    }

    /// The registration a certificate speaks for, while the store holds it.
    pub(crate) fn registration_of(&self, identity: &WorkloadIdentity) -> Option<Registration> {
        let state = self.state.borrow().clone()?;
        state
            .registration(&identity.id)
            .filter(|r| r.group == identity.group_path())
            .cloned()
    }
}

/// Why a change did not happen.
#[derive(Debug)]
pub(crate) enum ChangeError {
    Refused(JoinRefusal),
    /// The store could not be read or written (the director failing): try again.
    Store(String),
}

impl From<JoinRefusal> for ChangeError {
    fn from(refusal: JoinRefusal) -> Self {
        ChangeError::Refused(refusal)
    }
}

/// A VM joined.
pub(crate) struct Joined {
    pub(crate) registration: Registration,
    pub(crate) certificate: String,
    pub(crate) ca: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Listing {
    tokens: Vec<ListedToken>,
    registrations: Vec<ListedRegistration>,
}

#[derive(Debug, Serialize)]
struct ListedToken {
    id: String,
    group: String,
    created_at: u64,
    expires_at: u64,
    revoked: bool,
}

#[derive(Debug, Serialize)]
struct ListedRegistration {
    id: String,
    group: String,
    deployment: String,
    instance_group: String,
    instance: String,
    address: IpAddr,
    labels: Labels,
    registered_at: u64,
    /// When this pilot last took a report of its agent (UNIX milliseconds).
    last_heartbeat_ms: Option<u64>,
    probe: Option<crate::health::report::ProbeVerdict>,
    state: super::liveness::State,
}

impl WorkloadsTask {
    /// Runs until the pilot stops: reads the store (again on each of `store_events`' changes,
    /// which count another pilot's writes), writes the changes, sweeps.
    pub async fn run(mut self, mut store_events: watch::Receiver<u64>) -> Result<()> {
        self.first_read().await;
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events_followed = true;
        loop {
            tokio::select! {
                first = self.changes.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    let batch = self.collect(first).await;
                    self.write(batch).await;
                }
                changed = store_events.changed(), if events_followed => {
                    events_followed = changed.is_ok();
                    if events_followed {
                        self.reload().await;
                    }
                }
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    /// Reads the store until it works: the registrations are served only once read (a
    /// catalog without them would drop every joined VM from the Envoys).
    async fn first_read(&mut self) {
        let mut pause = SWEEP_INTERVAL;
        loop {
            match self.book.reload().await {
                Ok(_) => {
                    self.publish(true);
                    return;
                }
                Err(err) => {
                    tracing::error!(store = %self.book.store(), "cannot read the registrations (joins wait; retrying in {pause:?}): {err:#}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(READ_BACKOFF_CAP);
                }
            }
        }
    }

    async fn reload(&mut self) {
        match self.book.reload().await {
            Ok(true) => {
                tracing::debug!(store = %self.book.store(), "the registrations changed (another pilot wrote them)");
                self.publish(false);
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(store = %self.book.store(), "cannot read the registrations after another pilot's write (kept the last ones): {err:#}")
            }
        }
    }

    /// `first` and what else arrives within [`BATCH_WINDOW`].
    async fn collect(&mut self, first: Pending) -> Vec<Pending> {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, self.changes.recv()).await {
                Ok(Some(pending)) => batch.push(pending),
                _ => break,
            }
        }
        batch
    }

    async fn write(&mut self, batch: Vec<Pending>) {
        let mesh = self.mesh.borrow().clone().unwrap_or_default();
        let changes: Vec<Change> = batch.iter().map(|p| p.change.clone()).collect();
        let outcome = self.book.write(&changes, &mesh, unix_now()).await;
        for change in &changes {
            if let Change::Deregister(ids) = change {
                self.deregistering.retain(|id| !ids.contains(id));
            }
        }
        match outcome {
            Ok(outcomes) => {
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    if let Ok(Applied::Deregistered(gone)) = &outcome {
                        for registration in gone {
                            metrics::global()
                                .workload_deregistrations
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(group = %registration.group, address = %registration.address, id = %registration.id, "deregistered: no heartbeat for {} s", self.cfg.deregister_after_seconds);
                        }
                    }
                    if let Some(reply) = pending.reply {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                self.publish(false);
            }
            Err(err) => {
                let message = format!("{}: {err:#}", self.book.store());
                tracing::error!("cannot write the registrations: {message}");
                for pending in batch {
                    if let Some(reply) = pending.reply {
                        let _ = reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }

    /// Publishes the state held, and listens for its registrations' heartbeats. At the first
    /// read, the registrations found are presumed alive for one TTL: a restarted pilot has
    /// heard nothing yet, and would otherwise take every joined VM out of its Envoys until
    /// their agents reconnect.
    fn publish(&mut self, first: bool) {
        let Some(state) = self.book.current() else {
            return;
        };
        let presumed = first.then(|| Duration::from_secs(self.cfg.ttl_seconds));
        self.heartbeats.set_members(
            state.registrations.iter().map(Registration::instance_ref),
            Instant::now(),
            presumed,
        );
        metrics::global()
            .workload_registrations
            .store(state.registrations.len() as u64, Ordering::Relaxed);
        let state = Arc::new(state.clone());
        self.state.send_if_modified(|held| {
            let changed = held.as_deref() != Some(&*state);
            *held = Some(state);
            changed
        });
        self.judge();
    }

    /// Judges every registration now; publishes the verdicts when they changed.
    fn judge(&mut self) -> Vec<String> {
        let judged = self.heartbeats.judge(
            Instant::now(),
            Duration::from_secs(self.cfg.ttl_seconds),
            Duration::from_secs(self.cfg.deregister_after_seconds),
        );
        let liveness = liveness_of(&judged);
        metrics::global()
            .workload_registrations_healthy
            .store(liveness.healthy() as u64, Ordering::Relaxed);
        self.liveness.send_if_modified(|held| {
            let changed = **held != liveness;
            if changed {
                *held = Arc::new(liveness);
            }
            changed
        });
        let due: Vec<String> = judged
            .iter()
            .filter(|(id, j)| j.due && !self.deregistering.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        self.judged.send_replace(Arc::new(judged));
        due
    }

    async fn sweep(&mut self) {
        let due = self.judge();
        if due.is_empty() {
            return;
        }
        self.deregistering.extend(due.iter().cloned());
        let change = Change::Deregister(due.into_iter().collect());
        // Written at once, not through the channel: the sweep runs on the store's task.
        self.write(vec![Pending {
            change,
            reply: None,
        }])
        .await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::state::tests::{mesh, GROUP};
    use std::path::Path;

    /// A handle and its task on a file store in `dir`, signing with a CA of the test's own.
    fn setup(dir: &Path) -> (Arc<Workloads>, WorkloadsTask, Outputs) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
        let cfg: WorkloadsConfig = serde_json::from_value(serde_json::json!({
            "mesh_ca_private_key": dir.join("ca.key"),
        }))
        .unwrap();
        let tls = ServerTls {
            ca_cert_path: dir.join("ca.pem"),
            cert_path: dir.join("unused.pem"),
            key_path: dir.join("unused.key"),
        };
        let settings = Settings {
            tld: "boshy".into(),
            virtual_ip_cidr: "169.254.255.0/24".into(),
            server_name: "bosh-pilot.boshy-istio".into(),
            trust_domain: None,
            ports: Ports {
                xds: 15010,
                names: 15011,
                api: 8080,
            },
            heartbeat_seconds: 10,
            ttl_seconds: 30,
        };
        let store = crate::workloads::store::file_store(&dir.join("vips.json"));
        let (_, mesh_rx) = watch::channel(Some(Arc::new(mesh())));
        Workloads::new(&cfg, &tls, settings, store, Arc::default(), mesh_rx).unwrap()
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::default();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[tokio::test]
    async fn changes_arriving_together_are_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (workloads, mut task, _) = setup(dir.path());
        for n in 0..5 {
            let pending = Pending {
                change: Change::Leave(format!("r{n}")),
                reply: None,
            };
            workloads.changes.send(pending).unwrap();
        }
        let first = task.changes.recv().await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(task.collect(first).await.len(), 5);
        assert!(
            started.elapsed() >= BATCH_WINDOW,
            "waits the window for more"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_joins_all_land_and_each_vm_gets_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (workloads, task, outputs) = setup(dir.path());
        let (_events_tx, events) = watch::channel(0);
        tokio::spawn(task.run(events));
        let (token, _) = workloads.create_token(GROUP, Some(60)).await.unwrap();
        let joins = (1..=10u8).map(|n| {
            let workloads = workloads.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let address = IpAddr::from([10, 0, 2, n]);
                workloads
                    .join(token, GROUP.into(), address, Labels::new(), &csr())
                    .await
            })
        });
        for join in joins {
            let joined = join.await.unwrap().map_err(|e| format!("{e:?}")).unwrap();
            assert!(joined.certificate.contains("BEGIN CERTIFICATE"));
        }
        let mut state = outputs.state.clone();
        let state = state
            .wait_for(|s| s.as_ref().is_some_and(|s| s.registrations.len() == 10))
            .await
            .unwrap()
            .clone()
            .unwrap();
        let listing = serde_json::to_value(workloads.listing()).unwrap();
        assert_eq!(listing["registrations"].as_array().unwrap().len(), 10);
        assert_eq!(listing["registrations"][0]["state"], "silent");
        assert!(!listing.to_string().contains(&token.reveal()));
        // A forged token is refused from the state held, before any write.
        let mut forged = crate::workloads::state::tests::token(99);
        forged.id = token.id.clone();
        let refused = workloads
            .join(
                forged,
                GROUP.into(),
                [10, 0, 3, 1].into(),
                Labels::new(),
                &csr(),
            )
            .await;
        assert!(matches!(
            refused,
            Err(ChangeError::Refused(JoinRefusal::Forged(_)))
        ));
        // A bad CSR names itself.
        let refused = workloads
            .join(
                token.clone(),
                GROUP.into(),
                [10, 0, 3, 1].into(),
                Labels::new(),
                "nope",
            )
            .await;
        let Err(ChangeError::Refused(JoinRefusal::BadRequest(why))) = refused else {
            panic!("a bad request")
        };
        assert!(why.starts_with("csr: "), "{why}");
        assert_eq!(state.registrations.len(), 10);
    }
}
