//! The agent's requests about its VM's scope, to every pilot at once: a name asked for the
//! first time (`add`, answered once the VM's Envoy holds it), the whole scope on every new
//! name-table stream and whenever names expire (`set`). The scope is kept on disk beside the
//! name table, so a restarted agent answers at once what its Envoy already holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use tokio::sync::watch;

use super::gate::{Gate, Slot};
use super::wire::{ScopeAnswer, ScopeChange, ScopeRequest, SCOPE_PATH};
use crate::catalog::model::InstanceRef;
use crate::names::{base_url, error_chain, http_client};

/// The longest a query for a name new to the scope waits for the pilots: well within a
/// resolver's first timeout (5 s in glibc), so that a pilot that is down costs one slow
/// answer, not a failed lookup.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// A `set` is not waited on by any query: a pilot that is slow to take it is given this long.
const SET_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the scope is swept for names not asked for: often enough that `idle` is
/// honoured within a minute.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The agent's link to the pilots for its VM's scope.
#[derive(Debug)]
pub struct Admission {
    instance: InstanceRef,
    gate: Arc<Gate>,
    client: reqwest::Client,
    /// Base URLs of the pilots.
    pilots: Vec<String>,
    /// Hostnames being added, each followed by the queries that wait for it.
    joining: Mutex<HashMap<Box<str>, watch::Receiver<bool>>>,
    /// Where the scope is kept.
    saved: PathBuf,
}

impl Admission {
    /// The admission of `instance`'s scope at `pilots` (addresses as the agent's config has
    /// them), restoring the scope saved at `saved` into `gate`.
    pub fn new(
        instance: InstanceRef,
        gate: Arc<Gate>,
        pilots: &[String],
        tls: Option<rustls::ClientConfig>,
        saved: PathBuf,
    ) -> anyhow::Result<Self> {
        let secure = tls.is_some();
        let client = http_client(tls).context("the HTTP client for the scope requests")?;
        let restored = load(&saved);
        if !restored.is_empty() {
            gate.admit(restored.iter().map(String::as_str), now());
            tracing::info!(path = %saved.display(), names = restored.len(), "scope restored");
        }
        Ok(Admission {
            instance,
            gate,
            client,
            pilots: pilots.iter().map(|p| base_url(p, secure)).collect(),
            joining: Mutex::default(),
            saved,
        })
    }

    /// Returns once `slot`'s hostname is in the scope: once the VM's Envoy holds it (a pilot
    /// said so), or every pilot answered, or after [`ADMIT_TIMEOUT`]. Queries for the same
    /// hostname meanwhile wait for the same request.
    pub async fn admit(self: &Arc<Self>, slot: Arc<Slot>) {
        if slot.in_scope() {
            return;
        }
        let mut done = {
            let mut joining = self.joining.lock().unwrap_or_else(|e| e.into_inner());
            match joining.get(slot.hostname()) {
                Some(done) => done.clone(),
                None => {
                    let (tx, rx) = watch::channel(false);
                    joining.insert(Box::from(slot.hostname()), rx.clone());
                    let admission = self.clone();
                    tokio::spawn(async move {
                        admission.join(slot.hostname()).await;
                        admission
                            .joining
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(slot.hostname());
                        tx.send_replace(true);
                    });
                    rx
                }
            }
        };
        let _ = done.wait_for(|done| *done).await;
    }

    async fn join(&self, hostname: &str) {
        let started = std::time::Instant::now();
        let request = ScopeRequest::new(&self.instance, ScopeChange::Add(vec![hostname.into()]));
        let request = &request;
        let mut asks: futures::stream::FuturesUnordered<_> = self
            .pilots
            .iter()
            .map(|base| async move { (base, self.send(base, request, ADMIT_TIMEOUT).await) })
            .collect();
        let outcome = tokio::time::timeout(ADMIT_TIMEOUT, async {
            use futures::StreamExt;
            let mut streams = 0;
            while let Some((base, answer)) = asks.next().await {
                match answer {
                    Ok(answer) if answer.synced && answer.streams > 0 => return "held by Envoy",
                    Ok(answer) => streams += answer.streams,
                    Err(err) => tracing::warn!(pilot = %base, %hostname, "scope: {err:#}"),
                }
            }
            if streams > 0 {
                "not held by Envoy yet"
            } else {
                "no Envoy of this VM connected to any pilot"
            }
        })
        .await
        .unwrap_or("no answer in time");
        self.gate.admit([hostname], now());
        tracing::info!(%hostname, waited_ms = started.elapsed().as_millis() as u64, outcome, "into this VM's scope");
        self.save().await;
    }

    /// Sends the whole scope to the pilot at `base`: on every new name-table stream, so that a
    /// restarted pilot learns it again.
    pub async fn send_scope(&self, base: &str) -> anyhow::Result<()> {
        let request = ScopeRequest::new(&self.instance, ScopeChange::Set(self.gate.in_scope()));
        self.send(base, &request, SET_TIMEOUT).await.map(|_| ())
    }

    /// Sweeps the scope every `idle / 4` (at most a minute): names not asked for during `idle`
    /// leave it, and every pilot gets the scope without them.
    pub async fn expire(self: Arc<Self>, idle: Duration) {
        let interval = (idle / 4).clamp(Duration::from_secs(1), MAX_SWEEP_INTERVAL);
        loop {
            tokio::time::sleep(interval).await;
            let expired = self.gate.sweep(now(), idle.as_secs());
            if expired.is_empty() {
                continue;
            }
            tracing::info!(?expired, idle = ?idle, "out of this VM's scope: not asked for");
            let admission = &self;
            let sets = self.pilots.iter().map(|base| async move {
                if let Err(err) = admission.send_scope(base).await {
                    tracing::warn!(pilot = %base, "scope: {err:#}");
                }
            });
            futures::future::join_all(sets).await;
            self.save().await;
        }
    }

    async fn send(
        &self,
        base: &str,
        request: &ScopeRequest,
        timeout: Duration,
    ) -> anyhow::Result<ScopeAnswer> {
        let sent = self
            .client
            .post(format!("{base}{SCOPE_PATH}"))
            .json(request)
            .timeout(timeout)
            .send()
            .await
            .map_err(|err| anyhow!("sending the scope: {}", error_chain(&err)))?;
        let status = sent.status();
        if !status.is_success() {
            let reason = sent.text().await.unwrap_or_default();
            bail!(
                "the pilot refused the scope ({status}): {}",
                crate::text::clip(&reason)
            );
        }
        sent.json()
            .await
            .map_err(|err| anyhow!("reading the pilot's answer: {}", error_chain(&err)))
    }

    async fn save(&self) {
        let path = self.saved.clone();
        let hosts = self.gate.in_scope();
        let saved = tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec(&hosts).expect("strings serialize");
            crate::fsutil::write_atomically(&path, &json)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("saving the scope: {err:#}"),
            Err(err) => tracing::warn!(%err, "saving the scope did not finish"),
        }
    }
}

/// The scope saved by the previous run; an unreadable file is logged and taken as empty.
fn load(path: &std::path::Path) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            tracing::warn!(path = %path.display(), "the saved scope is not a list of names ({err}); starting empty");
            Vec::new()
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => {
            tracing::warn!(path = %path.display(), "cannot read the saved scope ({err}); starting empty");
            Vec::new()
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_scope_that_is_not_a_list_of_names_is_taken_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scope.json");
        assert!(load(&path).is_empty(), "no file yet");
        std::fs::write(&path, b"{\"not\": \"a list\"}").unwrap();
        assert!(load(&path).is_empty());
        std::fs::write(&path, [0xff, 0x00, 0x13]).unwrap();
        assert!(load(&path).is_empty());
        std::fs::write(&path, br#"["web.g.d.boshy"]"#).unwrap();
        assert_eq!(load(&path), ["web.g.d.boshy"]);
    }
}
