//! The agent side of the name-table stream: one connection per pilot, all at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::table::NameTable;
use super::wire::{parse_line, LineBuffer, CONTENT_TYPE, IDLE_TIMEOUT, WATCH_PATH};

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
pub async fn follow(
    pilots: Vec<String>,
    tls: Option<rustls::ClientConfig>,
    tx: watch::Sender<Arc<NameTable>>,
) {
    follow_with(pilots, tls, tx, FollowTiming::default()).await
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
    timing: FollowTiming,
) {
    if pilots.is_empty() {
        tracing::error!("no pilot addresses configured: the name table will never change");
        return std::future::pending().await;
    }
    let secure = tls.is_some();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Duration::from_secs(30));
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("cannot build the HTTP client for the name-table stream: {err}");
            return std::future::pending().await;
        }
    };
    let tx = Arc::new(tx);
    let mut followers = JoinSet::new();
    for pilot in pilots {
        let url = watch_url(&pilot, secure);
        followers.spawn(follow_pilot(client.clone(), pilot, url, tx.clone(), timing));
    }
    // Each follower loops forever; dropping this future aborts them all.
    while followers.join_next().await.is_some() {}
}

async fn follow_pilot(
    client: reqwest::Client,
    pilot: String,
    url: String,
    tx: Arc<watch::Sender<Arc<NameTable>>>,
    timing: FollowTiming,
) {
    let mut backoff = Backoff::new(timing.backoff_min, timing.backoff_max);
    loop {
        let err = read_stream(&client, &url, &tx, timing.idle_timeout, &mut backoff)
            .await
            .unwrap_err();
        let delay = backoff.next_delay();
        tracing::warn!(
            pilot = %pilot,
            "name-table stream from {url}: {err:#}; reconnecting in {delay:?}"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Reads one connection until it fails; never returns `Ok`. A valid line resets `backoff`.
async fn read_stream(
    client: &reqwest::Client,
    url: &str,
    tx: &watch::Sender<Arc<NameTable>>,
    idle_timeout: Duration,
    backoff: &mut Backoff,
) -> anyhow::Result<std::convert::Infallible> {
    let request = client
        .get(url)
        .header(reqwest::header::ACCEPT, CONTENT_TYPE)
        .send();
    let mut response = tokio::time::timeout(idle_timeout, request)
        .await
        .map_err(|_| anyhow!("no response within {idle_timeout:?}"))?
        .map_err(|err| anyhow!(error_chain(&err)))
        .context("cannot connect")?;
    if !response.status().is_success() {
        bail!("the pilot answered {}", response.status());
    }
    let mut lines = LineBuffer::default();
    loop {
        let chunk = match tokio::time::timeout(idle_timeout, response.chunk()).await {
            Err(_) => bail!("no data (not even a heartbeat) for {idle_timeout:?}"),
            Ok(Err(err)) => bail!("reading the stream: {}", error_chain(&err)),
            Ok(Ok(None)) => bail!("the pilot closed the stream"),
            Ok(Ok(Some(chunk))) => chunk,
        };
        for line in lines.push(&chunk)? {
            if let Some(table) = parse_line(&line)? {
                publish(tx, table, url);
            }
            backoff.reset();
        }
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

/// The watch URL for one configured pilot address; a bare `host:port` gets https when the
/// stream is `secure`.
fn watch_url(pilot: &str, secure: bool) -> String {
    let base = pilot.trim().trim_end_matches('/');
    if base.contains("://") {
        format!("{base}{WATCH_PATH}")
    } else {
        let scheme = if secure { "https" } else { "http" };
        format!("{scheme}://{base}{WATCH_PATH}")
    }
}

/// reqwest's Display names only the outermost error ("error sending request"); the cause
/// (connection refused, reset, ...) is what an operator needs.
fn error_chain(err: &dyn std::error::Error) -> String {
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
    fn watch_url_accepts_base_urls_and_bare_addresses() {
        assert_eq!(
            watch_url("http://10.0.0.1:15011/", false),
            "http://10.0.0.1:15011/v1/names/watch"
        );
        assert_eq!(
            watch_url("10.0.0.1:15011", false),
            "http://10.0.0.1:15011/v1/names/watch"
        );
        assert_eq!(
            watch_url("10.0.0.1:15011", true),
            "https://10.0.0.1:15011/v1/names/watch"
        );
        assert_eq!(
            watch_url("https://pilot:15011", true),
            "https://pilot:15011/v1/names/watch"
        );
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
