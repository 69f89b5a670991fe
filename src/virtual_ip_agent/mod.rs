//! virtual-ip-agent: answers DNS for `*.<tld>` on every VM from the name table that bosh-pilot
//! pushes, and keeps the last table on disk so it answers at once after a restart.
//!
//! Request handling, with no sockets:
//! - [`dns`]: the pure answer logic (zone per table, reply per request).
//! - `fast_path`: the common query answered from precomputed wire bytes.
//! - `handler`: hickory's request handler around [`dns::reply`], the zone being served, and
//!   the bytes hickory's UDP server would send.
//!
//! Serving it:
//! - `transport`: the UDP and TCP sockets (our batched UDP loop, hickory's TCP server).
//!
//! And this file: the command line, the config, and following the name table (`table_store`
//! keeps it on disk).

pub mod dns;
mod fast_path;
mod handler;
mod table_store;
mod transport;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hickory_server::proto::rr::Name;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::catalog::model::InstanceRef;
use crate::config::AgentConfig;
use crate::names::table::NameTable;
use crate::names::AgentLink;
use crate::scope::admission::Admission;
use crate::scope::Gate;
use dns::{SkippedName, Zone};
use handler::ZoneCell;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's config file (YAML or JSON); see `config::AgentConfig`.
    #[arg(long)]
    pub config: PathBuf,
    /// Only validate the config file: exit 0 when it is valid, else print what is wrong.
    #[arg(long)]
    pub check_config: bool,
    /// Run as the job's BOSH drain script: mark the instance leaving (the running agent
    /// reports it to the pilots), wait until every pilot says none of its Envoys sends the
    /// instance new requests (at most `drain_timeout_seconds`), then print `0` for BOSH.
    #[arg(long, conflicts_with = "check_config")]
    pub drain: bool,
}

/// The command line of the agent's own binary, `virtual-ip-agent` (src/bin/): the release runs
/// the agent from it because a process maps the pages of its binary's text that it touches, and
/// the multi-tool `boshy` holds the control plane and Envoy's protobufs as well.
#[derive(clap::Parser, Debug)]
#[command(
    name = "virtual-ip-agent",
    version,
    about = "The per-VM DNS agent of boshy-istio: answers `*.<tld>` from the name table pushed by bosh-pilot"
)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,
}

pub async fn run(args: Args) -> Result<()> {
    let config: AgentConfig = crate::config::load(&args.config)?;
    let apex = validate(&config, &args.config)?;
    if let Some(warning) = config.check_listen(&args.config)? {
        warn!("{warning}");
    }
    if let Some(warning) = config.check_transport(&args.config)? {
        warn!("{warning}");
    }
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::client_config)
        .transpose()
        .with_context(|| format!("config file {}", args.config.display()))?;
    let identity = crate::identity::agent::from_config(&config, &args.config)?;
    let mesh_certificate = crate::identity::mesh_certificate::from_config(&config, &args.config)?;
    if args.check_config {
        println!("config file {}: OK", args.config.display());
        return Ok(());
    }
    if args.drain {
        return drain(&config, tls).await;
    }

    // With an instance, the VM's Envoy holds only the services the VM asked for
    // (docs/scope.md): a name asked for the first time is answered once the Envoy has it.
    let instance = config.instance.as_ref().map(|instance| InstanceRef {
        deployment: instance.deployment.clone(),
        instance_id: instance.id.clone(),
    });
    let gate = Arc::new(match instance {
        Some(_) => Gate::scoped(),
        None => Gate::open(),
    });
    let scope = instance
        .clone()
        .map(|instance| {
            Admission::new(
                instance,
                gate.clone(),
                &config.pilots,
                tls.clone(),
                config.table_path.with_file_name("scope.json"),
            )
            .map(Arc::new)
        })
        .transpose()?;
    // A joined VM's certificate, renewed in place: the TLS clients above read it again as it
    // changes.
    if let Some(files) = mesh_certificate {
        crate::identity::mesh_certificate::start(files, &config.pilots, tls.clone())?;
    }
    let certificates = identity
        .map(|(workload, sds_socket)| {
            crate::identity::agent::start(workload, sds_socket, &config.pilots, tls.clone())
        })
        .transpose()?;
    // The capture applies once the pilots sign a certificate: before, they have no mesh CA,
    // callers send plaintext, and capturing would send it to an Envoy with no inbound listener.
    let capture =
        config
            .inbound_capture_port
            .zip(certificates)
            .map(
                |(envoy_port, certificates)| crate::health::prober::InboundCapture {
                    envoy_port,
                    captured_file: crate::dnat::captured_ports_path(&exposed_ports_path(&config)),
                    certificates,
                },
            );
    // One copy of the table, shared by the follower's channel and the table updater.
    let saved = Arc::new(load_saved_table(&config.table_path));
    let cell = Arc::new(ZoneCell::new(build_zone(
        &apex,
        config.ttl_seconds,
        &saved,
        &gate,
    )));
    let mut server =
        transport::serve(config.listen, cell.clone(), config.fast_path, scope.clone()).await?;
    info!(
        listen = %config.listen,
        zone = %apex,
        names = saved.names.len(),
        version = saved.version,
        "virtual-ip-agent answering"
    );
    if let Some(path) = &config.bosh_dns_handlers_path {
        let handlers = bosh_dns_handlers(&apex, config.listen);
        crate::fsutil::write_atomically(path, handlers.as_bytes())
            .context("writing the bosh-dns handler")?;
        info!(path = %path.display(), "bosh-dns handler written");
    }

    let (publisher, tables) = watch::channel(saved.clone());
    if let Some(telemetry) = &config.telemetry {
        let own = config.instance.as_ref().and_then(|instance| {
            instance
                .instance_group
                .clone()
                .map(|instance_group| crate::telemetry::view::Workload {
                    deployment: instance.deployment.clone(),
                    instance_group,
                })
        });
        let settings = crate::telemetry::Settings {
            access_log_socket: telemetry.access_log_socket.clone(),
            metrics_listen: telemetry.metrics_listen,
            max_series: telemetry.max_series,
        };
        let reporting = instance
            .clone()
            .map(|instance| crate::telemetry::CallsReporting {
                instance,
                pilots: config.pilots.clone(),
                tls: tls.clone(),
            });
        crate::telemetry::start(settings, own, publisher.subscribe(), reporting).await?;
    }
    // Set by the drain (`--drain`, another process) through a file beside the table: this
    // process starting means the jobs are starting, so the file of a previous drain goes.
    let leaving_flag = leaving_flag(&config);
    match std::fs::remove_file(&leaving_flag) {
        Ok(()) => info!(path = %leaving_flag.display(), "the previous drain's mark removed"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            warn!(path = %leaving_flag.display(), "cannot remove the previous drain's mark: {err}")
        }
    }
    let (leaving_tx, leaving) = watch::channel(false);
    let probe_interval = Duration::from_millis(config.probe_interval_ms);
    tokio::spawn(follow_leaving_flag(
        leaving_flag,
        leaving_tx,
        probe_interval,
    ));
    if let Some(scope) = &scope {
        let idle = Duration::from_secs(config.scope_idle_seconds);
        tokio::spawn(scope.clone().expire(idle));
    }
    let agent = instance.map(|instance| {
        let (probes_tx, probes_rx) = watch::channel(None);
        let (reports_tx, reports_rx) = watch::channel(None);
        tokio::spawn(crate::health::prober::run(
            instance.clone(),
            probes_rx,
            leaving.clone(),
            reports_tx,
            probe_interval,
            capture.clone(),
        ));
        info!(deployment = %instance.deployment, instance = %instance.instance_id, interval = ?probe_interval, "reporting this instance's health to the pilots");
        tokio::spawn(follow_exposed_ports(
            probes_tx.subscribe(),
            exposed_ports_path(&config),
            capture,
        ));
        AgentLink {
            instance,
            probes: Arc::new(probes_tx),
            reports: reports_rx,
            scope: scope.clone(),
        }
    });
    tokio::spawn(crate::names::follow(
        config.pilots.clone(),
        tls,
        publisher,
        agent,
    ));
    tokio::spawn(follow_tables(
        tables,
        saved,
        cell,
        apex,
        config.ttl_seconds,
        config.table_path.clone(),
        gate,
    ));

    shutdown_signal().await?;
    info!("shutting down");
    server.shutdown_gracefully().await?;
    Ok(())
}

/// The file a drain creates to tell the running agent its instance is leaving.
fn leaving_flag(config: &AgentConfig) -> PathBuf {
    config.table_path.with_file_name("leaving")
}

/// The ports this instance exposes, as the pilots last said, for `boshy dnat` (run as root)
/// to capture inbound: beside the table, so a reboot re-applies the capture before any pilot
/// answers.
fn exposed_ports_path(config: &AgentConfig) -> PathBuf {
    config.table_path.with_file_name("inbound_ports.json")
}

/// Writes the exposed ports whenever the pilots' probes change them; with `capture`, once the
/// agent holds a certificate and Envoy's inbound listener takes connections, so that the
/// capture never sends a caller to a listener that is not there (a ports file left by an
/// earlier run stays applied until then).
async fn follow_exposed_ports(
    mut probes: watch::Receiver<Option<crate::health::ProbeSet>>,
    path: PathBuf,
    capture: Option<crate::health::prober::InboundCapture>,
) {
    if let Some(mut capture) = capture {
        if capture
            .certificates
            .wait_for(Option::is_some)
            .await
            .is_err()
        {
            return;
        }
        let envoy = (std::net::Ipv4Addr::LOCALHOST, capture.envoy_port);
        while tokio::net::TcpStream::connect(envoy).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut written = None;
    loop {
        let ports: Option<std::collections::BTreeSet<u16>> = probes
            .borrow_and_update()
            .as_ref()
            .map(|set| set.ports.iter().copied().collect());
        if let Some(ports) = ports.filter(|ports| written.as_ref() != Some(ports)) {
            match crate::dnat::write_ports_file(&path, &ports) {
                Ok(()) => {
                    info!(path = %path.display(), ?ports, "the exposed ports to capture inbound");
                    written = Some(ports);
                }
                Err(err) => {
                    warn!(path = %path.display(), "cannot write the exposed ports: {err:#}")
                }
            }
        }
        if probes.changed().await.is_err() {
            return;
        }
    }
}

/// Publishes whether the drain's file exists, checked every `interval`.
async fn follow_leaving_flag(path: PathBuf, leaving: watch::Sender<bool>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let exists = tokio::fs::try_exists(&path).await.unwrap_or(false);
        if leaving.send_if_modified(|current| std::mem::replace(current, exists) != exists) {
            info!(
                leaving = exists,
                "the drain's mark {}",
                if exists {
                    "appeared: reporting this instance as leaving"
                } else {
                    "is gone"
                }
            );
        }
    }
}

/// `--drain`: BOSH runs this before it stops the instance's jobs and waits for it; it prints
/// the seconds BOSH should still wait (always 0: it returns once drained, or once
/// `drain_timeout_seconds` passed, since a drain that never ends would hold the deploy).
async fn drain(config: &AgentConfig, tls: Option<rustls::ClientConfig>) -> Result<()> {
    if let Some(instance) = &config.instance {
        let flag = leaving_flag(config);
        // A drain that fails fails the deploy: whatever goes wrong is logged, and BOSH goes on.
        if let Err(err) = crate::fsutil::write_atomically(&flag, b"leaving\n") {
            warn!(path = %flag.display(), "cannot mark the instance leaving, so its Envoys are not drained first: {err:#}");
        }
        let instance = InstanceRef {
            deployment: instance.deployment.clone(),
            instance_id: instance.id.clone(),
        };
        let timeout = Duration::from_secs(config.drain_timeout_seconds);
        for (pilot, answer) in
            crate::names::wait_drained(&config.pilots, tls, &instance, timeout).await
        {
            match answer {
                Ok(answer) => info!(%pilot, "drained: {}", answer.trim()),
                Err(err) => warn!(%pilot, "not known to be drained: {err:#}"),
            }
        }
    }
    println!("0");
    Ok(())
}

/// Checks what the file format cannot: returns the zone apex. Errors name the file and the key.
pub fn validate(config: &AgentConfig, path: &Path) -> Result<Name> {
    config.check_listen(path)?;
    let at = |key: &str| format!("config file {}: key `{key}`", path.display());
    let apex =
        dns::apex_from_tld(&config.tld).map_err(|err| anyhow::anyhow!("{}: {err}", at("tld")))?;
    if config.pilots.is_empty() {
        bail!(
            "{}: empty; list the name-table URL of every bosh-pilot",
            at("pilots")
        );
    }
    for (i, pilot) in config.pilots.iter().enumerate() {
        // The follower accepts a base URL or a bare `host:port` (meaning http).
        let as_url = if pilot.contains("://") {
            pilot.clone()
        } else {
            format!("http://{pilot}")
        };
        let valid = reqwest::Url::parse(&as_url)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
        if !valid {
            bail!(
                "{}: `{pilot}` is not an http(s) URL or host:port of a bosh-pilot",
                at(&format!("pilots[{i}]"))
            );
        }
    }
    // RFC 2181 §8: TTLs are 31-bit.
    if config.ttl_seconds > i32::MAX as u32 {
        bail!(
            "{}: {} is above 2147483647",
            at("ttl_seconds"),
            config.ttl_seconds
        );
    }
    if !(1..=300).contains(&config.drain_timeout_seconds) {
        bail!(
            "{}: {} is outside 1..=300",
            at("drain_timeout_seconds"),
            config.drain_timeout_seconds
        );
    }
    if !(100..=60_000).contains(&config.probe_interval_ms) {
        bail!(
            "{}: {} is outside 100..=60000 (milliseconds)",
            at("probe_interval_ms"),
            config.probe_interval_ms
        );
    }
    if config.scope_idle_seconds < 60 {
        bail!(
            "{}: {} is below 60 (seconds)",
            at("scope_idle_seconds"),
            config.scope_idle_seconds
        );
    }
    if config.table_path.file_name().is_none() {
        bail!(
            "{}: `{}` is not a file path",
            at("table_path"),
            config.table_path.display()
        );
    }
    Ok(apex)
}

/// The bosh-dns handler (bosh-dns reads `dns/handlers.json` of every job on the VM) that
/// delegates the zone to this agent, uncached so that a changed VIP is seen within our TTL.
pub fn bosh_dns_handlers(apex: &Name, listen: SocketAddr) -> String {
    let recursor = SocketAddr::new(reachable_ip(listen.ip()), listen.port());
    let handlers = serde_json::json!([{
        "domain": apex.to_string(),
        "cache": { "enabled": false },
        "source": { "type": "dns", "recursors": [recursor.to_string()] },
    }]);
    serde_json::to_string_pretty(&handlers).expect("JSON values serialize")
}

/// An agent listening on every address is reached by bosh-dns on loopback.
fn reachable_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The table saved by the previous run; an unreadable or corrupt file is logged and ignored so
/// the agent still starts (and the next table from the control plane overwrites it).
fn load_saved_table(path: &Path) -> NameTable {
    match table_store::load(path) {
        Ok(Some(table)) => table,
        Ok(None) => {
            info!(path = %path.display(), "no saved name table yet; starting empty");
            NameTable::default()
        }
        Err(err) => {
            warn!("{err:#}; starting with an empty table until bosh-pilot sends one");
            NameTable::default()
        }
    }
}

fn build_zone(apex: &Name, ttl: u32, table: &NameTable, gate: &Gate) -> Zone {
    let (zone, skipped) = Zone::build_gated(apex, ttl, table, gate);
    for SkippedName { name, reason } in skipped {
        warn!(%name, version = table.version, "name not served: {reason}");
    }
    zone
}

/// Applies every new table: swap the zone, persist the table, log what changed.
async fn follow_tables(
    mut tables: watch::Receiver<Arc<NameTable>>,
    mut current: Arc<NameTable>,
    cell: Arc<ZoneCell>,
    apex: Name,
    ttl: u32,
    table_path: PathBuf,
    gate: Arc<Gate>,
) {
    while tables.changed().await.is_ok() {
        let table = tables.borrow_and_update().clone();
        if table == current {
            continue;
        }
        cell.replace(build_zone(&apex, ttl, &table, &gate));
        let changes = table_store::changes(&current, &table);
        info!(
            version = table.version,
            names = table.names.len(),
            added = changes.added,
            removed = changes.removed,
            changed = changes.changed,
            "name table updated"
        );
        let path = table_path.clone();
        let to_save = table.clone();
        match tokio::task::spawn_blocking(move || table_store::save(&path, &to_save)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!("{err:#}; the agent keeps answering from memory"),
            Err(err) => warn!(%err, "saving the name table did not finish"),
        }
        current = table;
    }
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Name> {
        let path = Path::new("/var/vcap/jobs/virtual-ip-agent/config/agent.yml");
        let config: AgentConfig = crate::config::parse(text, path)?;
        validate(&config, path)
    }

    const GOOD: &str = "pilots: [\"http://10.244.0.10:15011\", \"10.244.0.11:15011\"]\ntable_path: /var/vcap/store/virtual-ip-agent/table.json\n";

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        assert_eq!(parse(GOOD).unwrap().to_string(), "boshy.");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        for (text, key) in [
            (format!("{GOOD}tld: \"bad tld\"\n"), "`tld`"),
            ("pilots: []\ntable_path: /t\n".to_string(), "`pilots`"),
            (
                "pilots: [\"10.0.0.1 15011\"]\ntable_path: /t\n".to_string(),
                "`pilots[0]`",
            ),
            (
                "pilots: [\"http://a\", \"ftp://b\"]\ntable_path: /t\n".to_string(),
                "`pilots[1]`",
            ),
            (format!("{GOOD}ttl_seconds: 4294967295\n"), "`ttl_seconds`"),
            (
                format!("{GOOD}probe_interval_ms: 0\n"),
                "`probe_interval_ms`",
            ),
            (format!("{GOOD}instance: {{deployment: d}}\n"), "instance"),
            (
                format!("{GOOD}drain_timeout_seconds: 0\n"),
                "`drain_timeout_seconds`",
            ),
            (
                format!("{GOOD}drain_timeout_seconds: soon\n"),
                "drain_timeout_seconds",
            ),
            (format!("{GOOD}listen: nowhere\n"), "listen"),
            (
                format!("{GOOD}scope_idle_seconds: 59\n"),
                "`scope_idle_seconds`",
            ),
            (
                format!("{GOOD}scope_idle_seconds: -1\n"),
                "scope_idle_seconds",
            ),
            ("table_path: /t\n".to_string(), "pilots"),
        ] {
            let msg = format!("{:#}", parse(&text).unwrap_err());
            assert!(msg.contains("agent.yml"), "{msg}");
            assert!(msg.contains(key), "{key} in {msg}");
        }
    }

    #[test]
    fn bosh_dns_handler_delegates_the_zone_to_the_agent() {
        let apex = dns::apex_from_tld("boshy").unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&bosh_dns_handlers(&apex, "127.0.0.1:8053".parse().unwrap()))
                .unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "domain": "boshy.",
                "cache": {"enabled": false},
                "source": {"type": "dns", "recursors": ["127.0.0.1:8053"]},
            }])
        );
    }

    #[test]
    fn bosh_dns_handler_uses_loopback_for_a_wildcard_listen() {
        let apex = dns::apex_from_tld("boshy").unwrap();
        let v4 = bosh_dns_handlers(&apex, "0.0.0.0:53".parse().unwrap());
        assert!(v4.contains("\"127.0.0.1:53\""), "{v4}");
        let v6 = bosh_dns_handlers(&apex, "[::]:53".parse().unwrap());
        assert!(v6.contains("\"[::1]:53\""), "{v6}");
    }
}
