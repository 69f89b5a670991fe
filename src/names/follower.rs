//! The agent side of the name-table stream: one connection per pilot, all at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::table::NameTable;
use super::wire::{parse_line, Line, LineBuffer, CONTENT_TYPE, IDLE_TIMEOUT, WATCH_PATH};
use crate::catalog::model::InstanceRef;
use crate::health::report::{DRAINED_PATH, REPORT_PATH};
use crate::health::{AgentReport, ProbeSet};
use crate::scope::admission::Admission;

/// How long a pilot may take to take a health report before the follower gives up on it (and
/// on the stream, which it then opens again).
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a follower does for its agent's health reports: it names the instance on every
/// stream, publishes the probes the pilots send back, and sends every pilot the agent's
/// current report, again on every new stream.
#[derive(Debug, Clone)]
pub struct AgentLink {
    pub instance: InstanceRef,
    /// The probes from the pilots (the latest from any of them: they read the same director).
    pub probes: Arc<watch::Sender<Option<ProbeSet>>>,
    /// The agent's report; `None` until it has probed once.
    pub reports: watch::Receiver<Option<AgentReport>>,
    /// The VM's scope (docs/scope.md), sent whole to each pilot on every new stream.
    pub scope: Option<Arc<Admission>>,
}

/// Follows every pilot in `pilots` (base URLs such as `https://10.244.0.10:15011`; a bare
/// `host:port` means https with `tls`, else http) and publishes each valid table that differs
/// from the one last published. Runs until dropped; a pilot that is down, fails the TLS
/// handshake or sends garbage is retried with backoff while the others keep the table current.
///
/// With `tls` (mutual TLS, see [`crate::tls::client_config`]) a pilot is followed only if its
/// certificate is from the mesh CA; `None` is plaintext (the config's explicit opt-out).
///
/// With several pilots the table last received wins: replicas read the same director, so they
/// disagree only between their polls, and each pilot sends a table only when it changes.
///
/// With `agent`, every stream names the agent's instance and carries its health reports.
pub async fn follow(
    pilots: Vec<String>,
    tls: Option<rustls::ClientConfig>,
    tx: watch::Sender<Arc<NameTable>>,
    agent: Option<AgentLink>,
) {
    follow_with(pilots, tls, tx, agent, FollowTiming::default()).await
}

/// How patient a follower is; shortened by the tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FollowTiming {
    /// A stream silent for this long is dead.
    pub idle_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for FollowTiming {
    fn default() -> Self {
        FollowTiming {
            idle_timeout: IDLE_TIMEOUT,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

pub(crate) async fn follow_with(
    pilots: Vec<String>,
    tls: Option<rustls::ClientConfig>,
    tx: watch::Sender<Arc<NameTable>>,
    agent: Option<AgentLink>,
    timing: FollowTiming,
) {
    if pilots.is_empty() {
        tracing::error!("no pilot addresses configured: the name table will never change");
        return std::future::pending().await;
    }
    let secure = tls.is_some();
    let client = match http_client(tls) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("cannot build the HTTP client for the name-table stream: {err}");
            return std::future::pending().await;
        }
    };
    let tx = Arc::new(tx);
    let mut followers = JoinSet::new();
    for pilot in pilots {
        let stream = PilotStream {
            client: client.clone(),
            base: base_url(&pilot, secure),
            pilot,
            tx: tx.clone(),
            agent: agent.clone(),
            idle_timeout: timing.idle_timeout,
        };
        followers.spawn(follow_pilot(stream, timing));
    }
    // Each follower loops forever; dropping this future aborts them all.
    while followers.join_next().await.is_some() {}
}

async fn follow_pilot(mut stream: PilotStream, timing: FollowTiming) {
    let mut backoff = Backoff::new(timing.backoff_min, timing.backoff_max);
    loop {
        let err = stream.read(&mut backoff).await.unwrap_err();
        let delay = backoff.next_delay();
        tracing::warn!(
            pilot = %stream.pilot,
            "name-table stream from {}: {err:#}; reconnecting in {delay:?}",
            stream.base
        );
        tokio::time::sleep(delay).await;
    }
}

/// The client of every request to the pilots; with `tls`, mutual TLS.
pub(crate) fn http_client(tls: Option<rustls::ClientConfig>) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Duration::from_secs(30));
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build()
}

/// Asks every pilot at once to answer when none of its Envoys sends `instance` new requests
/// any more (`GET /v1/names/drained`), waiting at most `timeout` for each; what each said.
pub async fn wait_drained(
    pilots: &[String],
    tls: Option<rustls::ClientConfig>,
    instance: &InstanceRef,
    timeout: Duration,
) -> Vec<(String, anyhow::Result<String>)> {
    let secure = tls.is_some();
    let client = match http_client(tls) {
        Ok(client) => client,
        Err(err) => {
            let err = error_chain(&err);
            return pilots
                .iter()
                .map(|p| {
                    (
                        p.clone(),
                        Err(anyhow!("cannot build the HTTP client: {err}")),
                    )
                })
                .collect();
        }
    };
    let asks = pilots.iter().map(|pilot| {
        let request = client
            .get(format!("{}{DRAINED_PATH}", base_url(pilot, secure)))
            .query(&[
                ("deployment", instance.deployment.as_str()),
                ("instance", instance.instance_id.as_str()),
                ("timeout_seconds", &timeout.as_secs().max(1).to_string()),
            ])
            // The pilot answers within the timeout; a little more for the answer to arrive.
            .timeout(timeout + Duration::from_secs(5));
        async move {
            let answer = async {
                let response = request
                    .send()
                    .await
                    .map_err(|err| anyhow!(error_chain(&err)))?;
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if !status.is_success() {
                    bail!("{status}: {}", crate::text::clip(&text));
                }
                Ok(text)
            };
            (pilot.clone(), answer.await)
        }
    });
    futures::future::join_all(asks).await
}

/// Whether the agent's report changed; pending while there is none to send.
async fn report_changed(
    reports: Option<&mut watch::Receiver<Option<AgentReport>>>,
    reporting: bool,
) -> bool {
    match reports {
        Some(reports) if reporting => reports.changed().await.is_ok(),
        _ => std::future::pending().await,
    }
}

/// One pilot followed.
struct PilotStream {
    client: reqwest::Client,
    /// As configured, for the log.
    pilot: String,
    /// `scheme://host:port`, without a trailing slash.
    base: String,
    tx: Arc<watch::Sender<Arc<NameTable>>>,
    agent: Option<AgentLink>,
    idle_timeout: Duration,
}

impl PilotStream {
    /// Reads one connection until it fails; never returns `Ok`. A valid line resets
    /// `backoff`.
    async fn read(&mut self, backoff: &mut Backoff) -> anyhow::Result<std::convert::Infallible> {
        let idle_timeout = self.idle_timeout;
        let url = format!("{}{WATCH_PATH}", self.base);
        let mut request = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(agent) = &self.agent {
            request = request.query(&[
                ("deployment", agent.instance.deployment.as_str()),
                ("instance", agent.instance.instance_id.as_str()),
            ]);
        }
        let mut response = tokio::time::timeout(idle_timeout, request.send())
            .await
            .map_err(|_| anyhow!("no response within {idle_timeout:?}"))?
            .map_err(|err| anyhow!(error_chain(&err)))
            .context("cannot connect")?;
        if !response.status().is_success() {
            bail!("the pilot answered {}", response.status());
        }
        // Reports go to this pilot once it has verified the claim (it sent probes), then at
        // every change.
        let mut reporting = false;
        let mut reports = self.agent.as_ref().map(|a| a.reports.clone());
        // The last report this pilot took on this stream: the same one again (a WorkloadGroup
        // member's heartbeat) is not logged again.
        let mut sent = None;
        // The scope goes to this pilot once per stream, after its first table: a pilot that
        // restarted knows no scope until then, and its ADS streams of this VM wait for it.
        let mut scope_sent = false;
        let mut lines = LineBuffer::default();
        loop {
            let chunk = tokio::select! {
                chunk = tokio::time::timeout(idle_timeout, response.chunk()) => chunk,
                true = report_changed(reports.as_mut(), reporting) => {
                    self.send_report(reports.as_mut(), &mut sent).await?;
                    continue;
                }
            };
            let chunk = match chunk {
                Err(_) => bail!("no data (not even a heartbeat) for {idle_timeout:?}"),
                Ok(Err(err)) => bail!("reading the stream: {}", error_chain(&err)),
                Ok(Ok(None)) => bail!("the pilot closed the stream"),
                Ok(Ok(Some(chunk))) => chunk,
            };
            for line in lines.push(&chunk)? {
                match parse_line(&line)? {
                    Line::Table(table) => {
                        publish(&self.tx, table, &url);
                        if !scope_sent {
                            scope_sent = true;
                            self.send_scope().await;
                        }
                    }
                    Line::Probes(probes) => {
                        if let Some(agent) = &self.agent {
                            agent.probes.send_replace(Some(probes));
                            reporting = true;
                            self.send_report(reports.as_mut(), &mut sent).await?;
                        }
                    }
                    Line::Nothing => {}
                }
                backoff.reset();
            }
        }
    }

    /// Sends the VM's whole scope, if the agent keeps one. A pilot that does not take it is
    /// logged: its Envoys of this VM get the whole mesh after a while instead.
    async fn send_scope(&self) {
        let Some(scope) = self.agent.as_ref().and_then(|a| a.scope.as_ref()) else {
            return;
        };
        match scope.send_scope(&self.base).await {
            Ok(()) => tracing::debug!(pilot = %self.pilot, "scope sent"),
            Err(err) => tracing::warn!(pilot = %self.pilot, "scope: {err:#}"),
        }
    }

    /// Sends the agent's current report, if it has one yet. A pilot that does not take it
    /// fails the stream, which is opened again: the new stream sends the report again.
    /// Logged when it differs from `sent`, the last one this stream sent, which it becomes.
    async fn send_report(
        &self,
        reports: Option<&mut watch::Receiver<Option<AgentReport>>>,
        sent: &mut Option<AgentReport>,
    ) -> anyhow::Result<()> {
        let Some(report) = reports.and_then(|r| r.borrow_and_update().clone()) else {
            return Ok(());
        };
        let url = format!("{}{REPORT_PATH}", self.base);
        let request = self.client.post(&url).json(&report).send();
        let response = tokio::time::timeout(REPORT_TIMEOUT, request)
            .await
            .map_err(|_| anyhow!("the health report was not taken within {REPORT_TIMEOUT:?}"))?
            .map_err(|err| anyhow!("sending the health report: {}", error_chain(&err)))?;
        if !response.status().is_success() {
            let status = response.status();
            let reason = response.text().await.unwrap_or_default();
            bail!(
                "the pilot refused the health report ({status}): {}",
                crate::text::clip(&reason)
            );
        }
        let probe = report.probe.as_ref().map(|p| p.passing);
        if sent.as_ref() == Some(&report) {
            tracing::debug!(pilot = %self.pilot, "health reported again (heartbeat)");
        } else {
            tracing::info!(pilot = %self.pilot, failing_ports = ?report.failing_ports, leaving = report.leaving, ?probe, "health reported");
            *sent = Some(report);
        }
        Ok(())
    }
}

fn publish(tx: &watch::Sender<Arc<NameTable>>, table: NameTable, url: &str) {
    let (version, names) = (table.version, table.names.len());
    let changed = tx.send_if_modified(|current| {
        let differs = **current != table;
        if differs {
            *current = Arc::new(table);
        }
        differs
    });
    if changed {
        tracing::info!("name table version {version:016x} with {names} names from {url}");
    }
}

/// The base URL of one configured pilot address; a bare `host:port` gets https when the
/// stream is `secure`.
pub(crate) fn base_url(pilot: &str, secure: bool) -> String {
    let base = pilot.trim().trim_end_matches('/');
    if base.contains("://") {
        base.to_string()
    } else {
        let scheme = if secure { "https" } else { "http" };
        format!("{scheme}://{base}")
    }
}

/// reqwest's Display names only the outermost error ("error sending request"); the cause
/// (connection refused, reset, ...) is what an operator needs.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Exponential backoff with jitter, so that a fleet of agents does not reconnect in step
/// when a pilot comes back.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    /// A delay in [current/2, current], then doubles `current` up to `max`.
    fn next_delay(&mut self) -> Duration {
        let delay = self
            .current
            .mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        self.current = (self.current * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_base_urls_and_bare_addresses() {
        assert_eq!(
            base_url("http://10.0.0.1:15011/", false),
            "http://10.0.0.1:15011"
        );
        assert_eq!(base_url("10.0.0.1:15011", false), "http://10.0.0.1:15011");
        assert_eq!(base_url("10.0.0.1:15011", true), "https://10.0.0.1:15011");
        assert_eq!(base_url("https://pilot:15011", true), "https://pilot:15011");
    }

    #[test]
    fn backoff_grows_to_its_max_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay()).collect();
        for (delay, ceiling) in delays.iter().zip([100, 200, 400, 400]) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(*delay <= ceiling && *delay >= ceiling / 2, "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
