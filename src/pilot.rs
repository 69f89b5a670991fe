//! bosh-pilot: the control plane. Wires the director poller to the catalog (with VIPs from
//! the allocator) and publishes each new catalog to the xDS server, the name-table stream and
//! the HTTP API, which all read it from one `watch` channel.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::catalog::model::{Catalog, DeploymentInput};
use crate::config::{self, PilotConfig};
use crate::vip::{VipAllocator, VipStore};
use crate::{api, catalog, director, metrics, names, xds};

const PERSIST_RETRY_MIN: Duration = Duration::from_secs(1);
const PERSIST_RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pilot's config file (YAML), as the bosh-pilot job renders it.
    #[arg(long)]
    pub config: PathBuf,
    /// Validate the config file and exit.
    #[arg(long)]
    pub check_config: bool,
}

pub async fn run(args: Args) -> Result<()> {
    let cfg: PilotConfig = config::load(&args.config)?;
    crate::vip::check_pool(cfg.virtual_ip_cidr).map_err(|e| {
        anyhow!(
            "config file {}: key `virtual_ip_cidr`: {e}",
            args.config.display()
        )
    })?;
    let secret = cfg.director.resolve_secret(&args.config)?;
    let poller = director::Poller::new(&cfg.director, secret)
        .with_context(|| format!("config file {}: key `director`", args.config.display()))?;
    if args.check_config {
        println!("{}: OK", args.config.display());
        return Ok(());
    }

    let store = VipStore::new(&cfg.vip_state_path);
    let vip_state = store.load().await?;
    let vips = VipAllocator::new(cfg.virtual_ip_cidr, cfg.vip_quarantine_seconds, vip_state)?;

    let xds_listener = bind(cfg.listen.xds, "listen.xds").await?;
    let names_listener = bind(cfg.listen.names, "listen.names").await?;
    let api_listener = bind(cfg.listen.api, "listen.api").await?;

    let (deployments_tx, deployments_rx) = watch::channel(Arc::new(Vec::new()));
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(Catalog {
        version: 0,
        tld: cfg.tld.clone(),
        services: Vec::new(),
    }));
    tracing::info!(director = %cfg.director.url, tld = %cfg.tld, vip_cidr = %cfg.virtual_ip_cidr, "bosh-pilot starting");

    let catalogs = CatalogPublisher {
        tld: cfg.tld.clone(),
        vips,
        store,
        tx: catalog_tx,
    };
    tokio::select! {
        () = poller.run(deployments_tx) => Err(anyhow!("the director poller stopped")),
        result = catalogs.run(deployments_rx) => result,
        result = xds::server::serve(xds_listener, catalog_rx.clone()) => result.context("xDS server"),
        result = names::serve(names_listener, catalog_rx.clone()) => result.context("name-table server"),
        result = api::serve(api_listener, catalog_rx) => result.context("HTTP API"),
    }
}

async fn bind(address: SocketAddr, key: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("{key}: cannot listen on {address}"))
}

/// Turns each new set of deployments into a catalog: VIPs first (persisted before they are
/// ever served, so a restart cannot hand out different ones), then the whole catalog, which
/// is published only when its content changed.
struct CatalogPublisher {
    tld: String,
    vips: VipAllocator,
    store: VipStore,
    tx: watch::Sender<Arc<Catalog>>,
}

impl CatalogPublisher {
    async fn run(
        mut self,
        mut deployments: watch::Receiver<Arc<Vec<DeploymentInput>>>,
    ) -> Result<()> {
        // Set while the last publish could not persist VIPs: try again after this long even
        // if the director reports nothing new.
        let mut retry: Option<Duration> = None;
        loop {
            let changed = match retry {
                None => deployments.changed().await,
                Some(delay) => tokio::select! {
                    changed = deployments.changed() => changed,
                    () = tokio::time::sleep(delay) => Ok(()),
                },
            };
            if changed.is_err() {
                return Err(anyhow!("the director poller went away"));
            }
            let inputs = deployments.borrow_and_update().clone();
            retry = if self.publish(&inputs).await {
                None
            } else {
                Some(retry.map_or(PERSIST_RETRY_MIN, |d| (d * 2).min(PERSIST_RETRY_MAX)))
            };
        }
    }

    /// Returns false when the catalog could not be published and must be retried.
    async fn publish(&mut self, inputs: &[DeploymentInput]) -> bool {
        let wanted: BTreeSet<String> = catalog::hostnames(inputs, &self.tld)
            .into_iter()
            .map(|(_, hostname)| hostname)
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut candidate = self.vips.clone();
        let outcome = candidate.sync(&wanted, now);
        for hostname in &outcome.exhausted {
            tracing::error!(%hostname, "no free VIP left in the pool: this service stays unreachable until one is freed");
        }
        if outcome.changed() {
            // Persist before serving: a VIP that was served but not saved could change on restart.
            if let Err(e) = self.store.save(candidate.state()).await {
                tracing::error!("keeping the last catalog: cannot persist VIP assignments: {e:#}");
                return false;
            }
            for (hostname, vip) in &outcome.allocated {
                tracing::info!(%hostname, %vip, "VIP allocated");
            }
            for (hostname, vip) in &outcome.released {
                tracing::info!(%hostname, %vip, "VIP released (quarantined before reuse)");
            }
        }
        self.vips = candidate;
        let next = catalog::build(inputs, &self.tld, self.vips.assignments());
        let current = self.tx.borrow().clone();
        if next.version == current.version {
            return true;
        }
        let diff = catalog::diff(&current, &next);
        tracing::info!(version = next.version, services = next.services.len(), %diff, "catalog updated");
        let m = metrics::global();
        m.catalog_services
            .store(next.services.len() as u64, Ordering::Relaxed);
        m.catalog_endpoints.store(
            next.services.iter().map(|s| s.endpoints.len() as u64).sum(),
            Ordering::Relaxed,
        );
        m.catalog_version.store(next.version, Ordering::Relaxed);
        self.tx.send_replace(Arc::new(next));
        true
    }
}
