//! The BOSH director + UAA simulator: serves the director API and a UAA token endpoint over
//! HTTPS with its own CA, field by field as `docs/director-api.md` describes, from fixture
//! manifests; and a plain-HTTP control API (`/_sim/...`) that lets the lab and tests change
//! the estate and inject faults.
//!
//! One module per concern: `tls` (CA, TLS 1.2 server), `jwt` + `uaa` (tokens), `auth` (the
//! director's credential and scope checks), `director` (API routes), `control` (`/_sim`),
//! `state` with `deployments`, `tasks`, `events`, `configs` (the pure model), `rows` (JSON
//! shapes of instances), `ipam`, `manifest`, `fault`, `requests`, `clock`.

#![forbid(unsafe_code)]

mod auth;
mod clock;
mod configs;
mod control;
mod deployments;
mod director;
mod events;
mod fault;
mod http;
mod ipam;
mod jwt;
mod manifest;
mod requests;
mod rows;
mod state;
mod tasks;
mod tls;
mod uaa;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use ipnet::Ipv4Net;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::AuthMode;
pub use fault::{Fault, FaultMode};

use jwt::Signer;
use state::SimState;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Director API (HTTPS) address.
    #[arg(long, default_value = "127.0.0.1:25555")]
    pub listen: SocketAddr,
    /// UAA (HTTPS) address; default: the director's IP, port 8443.
    #[arg(long)]
    pub uaa_listen: Option<SocketAddr>,
    /// Control API (plain HTTP, `/_sim/...`); default: the director's IP, port 25580.
    #[arg(long)]
    pub control_listen: Option<SocketAddr>,
    /// Directory of fixture manifests: every `*.yml` is one deployment.
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Where to write `ca.pem`, the CA that signed the director and UAA certificate.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The UAA client (or, with `--auth basic`, the local user) allowed in.
    #[arg(long, default_value = "pilot")]
    pub client: String,
    /// File holding the client secret (never on the command line).
    #[arg(long)]
    pub client_secret_file: PathBuf,
    /// Network instance IPs come from, starting at .10.
    #[arg(long, default_value = "10.244.0.0/24")]
    pub instance_network: Ipv4Net,
    /// Lifetime of issued tokens.
    #[arg(long, default_value_t = 43_200)]
    pub token_ttl_seconds: u64,
    /// Scopes (UAA authorities) granted to the client, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "bosh.admin")]
    pub token_scopes: Vec<String>,
    #[arg(long, value_enum, default_value = "uaa")]
    pub auth: AuthMode,
    /// Record events (`director.events.record_events`); off means `GET /events` is `[]`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,
    /// Time a `format=full` task spends queued plus processing; with `--workers`, the time
    /// it holds a worker.
    #[arg(long, default_value_t = 200)]
    pub task_delay_ms: u64,
    /// Director workers (`director.workers`, 3 in a real director) shared by the tasks: a
    /// task waits queued for a free one. Unlimited when absent.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Everything `start` needs; `SimOptions::new` gives loopback on random ports.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub listen: SocketAddr,
    pub uaa_listen: SocketAddr,
    pub control_listen: SocketAddr,
    pub fixtures: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub client: String,
    pub client_secret: String,
    pub instance_network: Ipv4Net,
    pub token_ttl: Duration,
    pub token_scopes: Vec<String>,
    pub auth: AuthMode,
    pub events: bool,
    pub task_delay: Duration,
    /// See `Args::workers`.
    pub workers: Option<usize>,
}

impl SimOptions {
    /// Loopback, port 0 everywhere, no fixtures, client `pilot` with `client_secret`.
    pub fn new(client_secret: &str) -> SimOptions {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        SimOptions {
            listen: loopback,
            uaa_listen: loopback,
            control_listen: loopback,
            fixtures: None,
            state_dir: None,
            client: "pilot".to_string(),
            client_secret: client_secret.to_string(),
            instance_network: "10.244.0.0/24".parse().expect("a valid CIDR"),
            token_ttl: Duration::from_secs(43_200),
            token_scopes: vec!["bosh.admin".to_string()],
            auth: AuthMode::Uaa,
            events: true,
            task_delay: Duration::from_millis(200),
            workers: None,
        }
    }
}

/// What the servers share: the state behind one mutex (never held across an await), the
/// current fault, the token key and the fixed configuration.
pub(crate) struct Shared {
    state: Mutex<SimState>,
    fault: watch::Sender<Fault>,
    signer: Signer,
    client: String,
    client_secret: String,
    auth: AuthMode,
    token_ttl: Duration,
    token_scopes: Vec<String>,
    uaa_url: String,
    director_addr: SocketAddr,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves consistent data here (every operation
        // completes before it could panic), so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running simulator; dropping it stops all three servers.
pub struct SimHandle {
    director_addr: SocketAddr,
    uaa_addr: SocketAddr,
    control_addr: SocketAddr,
    ca_pem: String,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl SimHandle {
    pub fn director_url(&self) -> String {
        format!("https://{}", self.director_addr)
    }

    pub fn uaa_url(&self) -> String {
        format!("https://{}", self.uaa_addr)
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    /// PEM of the CA that signed the director and UAA certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for server in &self.servers {
            server.abort();
        }
    }
}

/// `*.yml` files of `dir` as (deployment name, manifest text), sorted by deployment name so
/// IPs come out in a predictable order.
fn read_fixtures(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut fixtures = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading fixtures dir {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading fixtures dir {}", dir.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading fixture {}", path.display()))?;
        let name = manifest::declared_name(&text)
            .with_context(|| format!("fixture {} has no top-level 'name'", path.display()))?;
        fixtures.push((name, text));
    }
    fixtures.sort();
    Ok(fixtures)
}

/// A URL host for `addr`: an unspecified IP is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), addr.port())
    } else {
        addr
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} on {addr}"))
}

/// Loads the fixtures, binds the three servers and starts serving.
pub async fn start(opts: SimOptions) -> anyhow::Result<SimHandle> {
    let mut state = SimState::new(
        opts.instance_network,
        opts.events,
        opts.task_delay,
        opts.workers,
    )?;
    if let Some(dir) = &opts.fixtures {
        for (name, manifest) in read_fixtures(dir)? {
            state.deploy(&name, Some(manifest), SystemTime::now());
        }
    }
    let director_listener = bind(opts.listen, "director API").await?;
    let uaa_listener = bind(opts.uaa_listen, "UAA").await?;
    let control_listener = bind(opts.control_listen, "control API").await?;
    let director_addr = reachable(director_listener.local_addr()?);
    let uaa_addr = reachable(uaa_listener.local_addr()?);
    let control_addr = reachable(control_listener.local_addr()?);

    let pki = tls::generate(&[director_addr.ip(), uaa_addr.ip()])?;
    if let Some(dir) = &opts.state_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, &pki.ca_pem)
            .with_context(|| format!("writing {}", ca_path.display()))?;
    }

    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        fault: watch::Sender::new(Fault::default()),
        signer: Signer::uaa(),
        client: opts.client,
        client_secret: opts.client_secret,
        auth: opts.auth,
        token_ttl: opts.token_ttl,
        token_scopes: opts.token_scopes,
        uaa_url: format!("https://{uaa_addr}"),
        director_addr,
    });
    let (shutdown, _) = watch::channel(false);
    let servers = vec![
        tokio::spawn(tls::serve(
            director_listener,
            pki.server_config.clone(),
            director::router(shared.clone()),
            shutdown.subscribe(),
        )),
        tokio::spawn(tls::serve(
            uaa_listener,
            pki.server_config,
            uaa::router(shared.clone()),
            shutdown.subscribe(),
        )),
        tokio::spawn(control::serve(
            control_listener,
            shared,
            shutdown.subscribe(),
        )),
    ];
    Ok(SimHandle {
        director_addr,
        uaa_addr,
        control_addr,
        ca_pem: pki.ca_pem,
        shutdown,
        servers,
    })
}

/// `boshy-director-sim`: starts the simulator and serves until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let client_secret = std::fs::read_to_string(&args.client_secret_file)
        .with_context(|| {
            format!(
                "reading --client-secret-file {}",
                args.client_secret_file.display()
            )
        })?
        .trim_end_matches(['\r', '\n'])
        .to_string();
    let same_ip = |port: u16| SocketAddr::new(args.listen.ip(), port);
    let handle = start(SimOptions {
        listen: args.listen,
        uaa_listen: args.uaa_listen.unwrap_or_else(|| same_ip(8443)),
        control_listen: args.control_listen.unwrap_or_else(|| same_ip(25580)),
        fixtures: args.fixtures,
        state_dir: args.state_dir,
        client: args.client,
        client_secret,
        instance_network: args.instance_network,
        token_ttl: Duration::from_secs(args.token_ttl_seconds),
        token_scopes: args.token_scopes,
        auth: args.auth,
        events: args.events,
        task_delay: Duration::from_millis(args.task_delay_ms),
        workers: args.workers,
    })
    .await?;
    tracing::info!(
        director = %handle.director_url(),
        uaa = %handle.uaa_url(),
        control = %handle.control_url(),
        "director simulator up"
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    drop(handle);
    Ok(())
}
