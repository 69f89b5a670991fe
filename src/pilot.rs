//! bosh-pilot: the control plane. Wires the director poller to the catalog (with VIPs from
//! the allocator) and publishes each new catalog to the xDS server, the name-table stream and
//! the HTTP API, which all read it from one `watch` channel. The rule configs the poller reads
//! come on a `watch` channel of their own; `rule_status` judges them against the catalog and
//! the API shows the verdicts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::catalog::model::{Catalog, DeploymentInput};
use crate::config::{self, PilotConfig, VipStoreKind};
use crate::director::PublishedRuleConfigs;
use crate::health::{self, AgentHealth, AgentRegistry, XdsView};
use crate::rule_status::ParsedConfigs;
use crate::rules::{self, MeshView, RuleSet};
use crate::scope::{ListedInstances, ScopeRegistry};
use crate::traffic::TrafficRules;
use crate::vip::{DirectorStore, FileStore, VipBook, VipStore};
use crate::workloads::liveness::Liveness;
use crate::workloads::members::Members;
use crate::workloads::state::MeshFacts;
use crate::{api, catalog, director, metrics, names, rule_status, xds};

/// Longest pause between two reads of a failing VIP store.
const STORE_BACKOFF_CAP: Duration = Duration::from_secs(30);

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
    let plaintext_warning = cfg.check_transport(&args.config)?;
    cfg.check_identity(&args.config)?;
    cfg.check_workloads(&args.config)?;
    let telemetry = cfg.telemetry.resolve(&args.config)?;
    // The workload CA is read once, here: a bad file stops the pilot (and `--check-config`).
    let identity = cfg
        .identity
        .as_ref()
        .map(|identity| -> Result<_> {
            let ca = crate::identity::ca::WorkloadCa::load(identity)?;
            Ok(crate::identity::issuer::Issuer::new(
                ca,
                identity.trust_domain.clone(),
            ))
        })
        .transpose()
        .with_context(|| format!("config file {}", args.config.display()))?;
    let open_api_warning = cfg.check_api(&args.config)?;
    // The API over HTTPS unless explicitly open (docs/api.md).
    let api_tls = match (&cfg.tls, cfg.api.insecure_open) {
        (Some(tls), false) => Some(
            crate::tls::api_server_config(tls)
                .with_context(|| format!("config file {}", args.config.display()))?,
        ),
        _ => None,
    };
    let tls = cfg
        .tls
        .as_ref()
        .map(|tls| -> Result<_> {
            Ok((
                crate::tls::server_config(tls, &[crate::tls::ALPN_H2])?,
                crate::tls::server_config(tls, &crate::tls::ALPN_HTTP)?,
            ))
        })
        .transpose()
        .with_context(|| format!("config file {}", args.config.display()))?;
    // VMs joining WorkloadGroups (docs/workloads.md): the mesh CA's key is read here, so a
    // bad file stops the pilot (and `--check-config`).
    let heartbeats = Arc::new(crate::workloads::Heartbeats::default());
    let (mesh_facts_tx, mesh_facts_rx) = watch::channel(None);
    let workloads = cfg
        .workloads
        .as_ref()
        .map(|w| -> Result<_> {
            let tls = cfg.tls.as_ref().expect("check_workloads wants tls");
            let settings = crate::workloads::Settings {
                tld: cfg.tld.clone(),
                virtual_ip_cidr: cfg.virtual_ip_cidr.to_string(),
                server_name: crate::tls::server_name(tls)?,
                trust_domain: cfg.identity.as_ref().map(|i| i.trust_domain.to_string()),
                ports: crate::workloads::Ports {
                    xds: cfg.listen.xds.port(),
                    names: cfg.listen.names.port(),
                    api: cfg.listen.api.port(),
                },
                heartbeat_seconds: w.heartbeat_seconds,
                ttl_seconds: w.ttl_seconds,
            };
            let store = match (cfg.vip_store, &cfg.vip_state_path) {
                (VipStoreKind::File, Some(path)) => crate::workloads::store::file_store(path),
                _ => crate::workloads::store::director_store(poller.client(), &cfg.tld),
            };
            crate::workloads::Workloads::new(
                w,
                tls,
                settings,
                store,
                heartbeats.clone(),
                mesh_facts_rx,
            )
        })
        .transpose()
        .with_context(|| format!("config file {}", args.config.display()))?;
    if args.check_config {
        println!("{}: OK", args.config.display());
        return Ok(());
    }
    let (workloads, workloads_task, workloads_out) = match workloads {
        Some((handle, task, outputs)) => (Some(handle), Some(task), Some(outputs)),
        None => (None, None, None),
    };

    let store = match cfg.vip_store {
        VipStoreKind::Director => VipStore::Director(DirectorStore::new(poller.client(), &cfg.tld)),
        VipStoreKind::File => {
            let path = cfg.vip_state_path.as_ref().ok_or_else(|| {
                anyhow!(
                    "config file {}: key `vip_state_path`: required with `vip_store: file`",
                    args.config.display()
                )
            })?;
            VipStore::File(FileStore::new(path))
        }
    };
    let vips = VipBook::new(store, cfg.virtual_ip_cidr, cfg.vip_quarantine_seconds)?;
    // The store is read on every change of the wanted services (a replica that allocates
    // second meets the first one's write as a 412, re-reads and adopts it), and besides at
    // every full resync, as a safety net against edits made behind the pilots' backs: a
    // topology check in steady state stays at /events + /deployments.
    let vip_refresh = Duration::from_secs(cfg.director.full_resync_seconds.max(1));

    let xds_listener = bind(cfg.listen.xds, "listen.xds").await?;
    let names_listener = bind(cfg.listen.names, "listen.names").await?;
    let api_listener = bind(cfg.listen.api, "listen.api").await?;

    let (deployments_tx, deployments_rx) = watch::channel(Arc::new(Vec::new()));
    // The latest rule configs, judged against the catalog for the API (and, to follow, for
    // compiling the accepted rules into Envoy's routes).
    let rule_configs = poller.rule_configs();
    let (rule_status_tx, rule_status_rx) = watch::channel(None);
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(Catalog {
        version: 0,
        tld: cfg.tld.clone(),
        services: Vec::new(),
    }));
    tracing::info!(director = %cfg.director.url, tld = %cfg.tld, vip_cidr = %cfg.virtual_ip_cidr, vip_store = %vips.store(), "bosh-pilot starting");
    if let Some(warning) = plaintext_warning {
        tracing::warn!("{warning}");
    }
    if let Some(warning) = open_api_warning {
        tracing::warn!("{warning}");
    }
    let api_access = api::Access {
        tokens: Some(Arc::new(crate::api_auth::UaaKeys::of_director(
            poller.client(),
        ))),
        workloads: workloads.clone(),
    };
    // The traffic model compiled from the accepted rules (`rule_status::follow`); until the
    // first one, xDS serves the mesh without rules.
    let (traffic_tx, traffic_rx) = watch::channel(Arc::new(TrafficRules::default()));
    let xds_sources = xds::cache::Sources {
        catalog: catalog_rx.clone(),
        traffic: traffic_rx,
        // Workload identities: with a workload CA, Envoys are configured for mutual TLS.
        identity: cfg
            .identity
            .as_ref()
            .map(|identity| identity.trust_domain.clone()),
        telemetry,
    };
    let (xds_tls, names_tls) = tls.unzip();
    let names_catalog = catalog_rx.clone();
    // The agents connected to this pilot and the health they report (docs/health.md); their
    // drains wait for this pilot's Envoys to take the snapshots.
    let snapshots = xds::cache::follow(xds_sources);
    let board = Arc::new(xds::sync::SyncBoard::default());
    // What each VM's agent put in its scope: its Envoy gets only that (docs/scope.md).
    let scopes = Arc::new(ScopeRegistry::default());
    let agents = AgentRegistry::with_xds(XdsView {
        snapshots: snapshots.clone(),
        board: board.clone(),
        scopes: scopes.clone(),
    });
    // The reports of registered VMs' agents are their heartbeats.
    let agents = Arc::new(match &workloads {
        Some(_) => agents.with_heartbeats(heartbeats.clone()),
        None => agents,
    });
    let workload_store_events = poller.workload_store_events();
    // Deployments whose every instance an agent reports on cost the director no health task.
    let poller = poller.with_agent_reports(agents.covered());
    let api_proxies = api::Proxies {
        board: board.clone(),
        snapshots: snapshots.clone(),
        name_streams: agents.name_streams().clone(),
        traffic: agents.traffic().clone(),
    };
    let api_catalog = catalog_rx.clone();
    let api_rule_configs = rule_configs.clone();
    let api_server = async move {
        match api_tls {
            Some(tls) => {
                api::serve_tls(
                    api_listener,
                    api_catalog,
                    api_rule_configs,
                    rule_status_rx,
                    api_proxies,
                    tls,
                    api_access,
                )
                .await
            }
            None => {
                api::serve(
                    api_listener,
                    api_catalog,
                    api_rule_configs,
                    rule_status_rx,
                    api_proxies,
                )
                .await
            }
        }
    };
    let names_agents = agents.clone();
    let names_workloads = workloads.clone();
    let agent_settings = names::AgentSettings {
        workload_heartbeat_seconds: cfg
            .workloads
            .as_ref()
            .map_or(names::DEFAULT_WORKLOAD_HEARTBEAT_SECONDS, |w| {
                u32::try_from(w.heartbeat_seconds).unwrap_or(u32::MAX)
            }),
    };
    let names_server = async move {
        match names_tls {
            Some(tls) => {
                names::serve_tls_with(
                    names_listener,
                    names_catalog,
                    names_agents,
                    tls,
                    identity,
                    agent_settings,
                    names_workloads,
                )
                .await
            }
            None => {
                names::serve_with(
                    names_listener,
                    names_catalog,
                    names_agents,
                    identity,
                    agent_settings,
                )
                .await
            }
        }
    };

    // A joined VM streams xDS only while registered, from its address (docs/workloads.md).
    let xds_gate = workloads_out.as_ref().map(|out| {
        crate::workloads::xds_gate::XdsGate::new(out.state.clone())
            as Arc<dyn xds::server::StreamGate>
    });
    let catalogs = CatalogPublisher {
        tld: cfg.tld.clone(),
        vips,
        tx: catalog_tx,
        rule_configs: rule_configs.clone(),
        parsed: ParsedConfigs::default(),
        store_failure: None,
        store_failures: 0,
        naming_warnings: Reported::default(),
        exhausted: Reported::default(),
        vip_warnings: Reported::default(),
        unaddressed: Reported::default(),
        built_from: None,
        entries: None,
        health: agents.health(),
        agents,
        built: None,
        scopes: scopes.clone(),
        listed_from: None,
        health_applied_at: tokio::time::Instant::now(),
        registrations: workloads_out.map(|out| Registrations {
            state: out.state,
            liveness: out.liveness,
        }),
        members: Arc::default(),
        mesh_facts: mesh_facts_tx,
    };
    let workloads_task = async move {
        match workloads_task {
            Some(task) => task.run(workload_store_events).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = poller.run(deployments_tx) => Err(anyhow!("the director poller stopped")),
        result = catalogs.run(deployments_rx, vip_refresh) => result,
        result = xds::server::serve_gated(xds_listener, snapshots, board, Some(scopes), xds_tls, xds_gate) => result.context("xDS server"),
        result = names_server => result.context("name-table server"),
        result = rule_status::follow(rule_configs.clone(), catalog_rx.clone(), rule_status_tx, traffic_tx) => result.context("rule validation"),
        result = api_server => result.context("HTTP API"),
        result = workloads_task => result.context("registration store"),
    }
}

async fn bind(address: SocketAddr, key: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("{key}: cannot listen on {address}"))
}

/// Turns each new set of deployments into a catalog: VIPs first (committed to the shared
/// store before they are ever served, so a restart or another replica cannot hand out
/// different ones), then the whole catalog, which is published only when its content changed.
struct CatalogPublisher {
    tld: String,
    vips: VipBook,
    tx: watch::Sender<Arc<Catalog>>,
    /// The rule configs: their ServiceEntries and WorkloadGroups define services of the catalog.
    rule_configs: watch::Receiver<PublishedRuleConfigs>,
    parsed: ParsedConfigs,
    /// The kind of the VIP store's current failure, logged once when it starts.
    store_failure: Option<String>,
    /// Failed syncs in a row.
    store_failures: u32,
    /// Services `catalog::hostnames` leaves without a hostname.
    naming_warnings: Reported,
    /// Hostnames left without a VIP.
    exhausted: Reported,
    /// What the VIP allocator found wrong in the stored state or had to do against its rules.
    vip_warnings: Reported,
    /// Instances the last catalog built could not make endpoints of.
    unaddressed: Reported,
    /// The inputs of the last catalog built, to skip rebuilding an unchanged one.
    built_from: Option<(
        Arc<Vec<DeploymentInput>>,
        PublishedRuleConfigs,
        Arc<Members>,
    )>,
    /// The ServiceEntries and WorkloadGroups last accepted, and what they were judged from.
    entries: Option<JudgedEntries>,
    /// The connected agents: instances the director no longer lists are forgotten.
    agents: Arc<AgentRegistry>,
    /// The health the agents report, applied to every catalog published.
    health: watch::Receiver<Arc<AgentHealth>>,
    /// The last catalog built, before the agents' health was applied: applied again alone
    /// when only the health changed.
    built: Option<Catalog>,
    /// The VMs' scopes, told which instances the director lists where.
    scopes: Arc<ScopeRegistry>,
    /// The deployments and registrations the scopes were last told about.
    listed_from: Option<(Arc<Vec<DeploymentInput>>, Arc<Members>)>,
    /// When a change of the health alone was last applied.
    health_applied_at: tokio::time::Instant,
    /// The VMs registered into WorkloadGroups and their liveness; `None` without `workloads`.
    registrations: Option<Registrations>,
    /// The registrations as of the last catalog built: endpoints of their groups' services.
    members: Arc<Members>,
    /// What joins are judged against: the accepted groups and the BOSH instances' addresses.
    mesh_facts: watch::Sender<Option<Arc<MeshFacts>>>,
}

/// The registration store's state and the registrations' liveness (`workloads::service`).
struct Registrations {
    state: watch::Receiver<Option<Arc<crate::workloads::state::WorkloadState>>>,
    liveness: watch::Receiver<Arc<Liveness>>,
}

/// The next change of `registrations`' state (`true`) or liveness (`false`); never without.
async fn registrations_changed(registrations: &mut Option<Registrations>) -> Option<bool> {
    let Some(r) = registrations else {
        return std::future::pending().await;
    };
    tokio::select! {
        changed = r.state.changed() => changed.ok().map(|()| true),
        changed = r.liveness.changed() => changed.ok().map(|()| false),
    }
}

/// How often at most a change of the agents' health alone is applied to the catalog. A
/// failing port reaches the Envoys at most this much later; thousands of reports in a burst
/// cost a few passes over the catalog, not one each. The agents' health is read by reference
/// (the `Arc` cloned out of the channel) so that the registry, patching it in place, never
/// waits for a pass.
const HEALTH_COALESCE: Duration = Duration::from_millis(100);

/// The accepted ServiceEntries and WorkloadGroups (a rule set of nothing else) of one set of
/// deployments and rule configs.
struct JudgedEntries {
    inputs: Arc<Vec<DeploymentInput>>,
    configs: PublishedRuleConfigs,
    rules: RuleSet,
}

/// How long the first catalog waits for the rule configs once the deployments are in: their
/// ServiceEntries and WorkloadGroups hold VIPs, which a catalog built without them would
/// release. A director that cannot list configs gets a mesh without them rather than none.
const FIRST_RULE_CONFIGS_WAIT: Duration = Duration::from_secs(10);

impl CatalogPublisher {
    async fn run(
        mut self,
        mut deployments: watch::Receiver<Arc<Vec<DeploymentInput>>>,
        vip_refresh: Duration,
    ) -> Result<()> {
        // Nothing is synced before the poller's first complete look: the placeholder's empty
        // set of services would release every VIP.
        if deployments.changed().await.is_err() {
            return Err(anyhow!("the director poller went away"));
        }
        let mut configs = self.rule_configs.clone();
        let first_configs = configs.wait_for(Option::is_some);
        if tokio::time::timeout(FIRST_RULE_CONFIGS_WAIT, first_configs)
            .await
            .is_err()
        {
            tracing::warn!("the rule configs could not be read yet: the catalog is built without their ServiceEntries until they are");
        }
        // Nor without the registrations: a catalog built without them would take every joined
        // VM out of the Envoys (after a pilot restart, say) until they were read.
        if let Some(registrations) = &mut self.registrations {
            let read = registrations.state.wait_for(Option::is_some);
            if tokio::time::timeout(FIRST_RULE_CONFIGS_WAIT, read)
                .await
                .is_err()
            {
                tracing::warn!("the registrations could not be read yet: the catalog is built without the joined VMs until they are");
            }
            self.take_members();
        }
        let mut configs_followed = true;
        let mut sync_vips = true;
        loop {
            let inputs = deployments.borrow_and_update().clone();
            let rule_configs = configs.borrow_and_update().clone();
            self.publish(inputs, rule_configs, sync_vips).await;
            sync_vips = true;
            tokio::select! {
                changed = deployments.changed() => if changed.is_err() {
                    return Err(anyhow!("the director poller went away"));
                },
                changed = configs.changed(), if configs_followed => configs_followed = changed.is_ok(),
                () = tokio::time::sleep(refresh_pause(vip_refresh, self.store_failures)) => {}
                Ok(()) = self.health.changed() => {
                    // Reports come in bursts (every agent at once after a restart): the
                    // health is applied at most every HEALTH_COALESCE, the latest of it.
                    tokio::time::sleep_until(self.health_applied_at + HEALTH_COALESCE).await;
                    self.health_applied_at = tokio::time::Instant::now();
                    let health = self.health.borrow_and_update().clone();
                    if let Some(built) = &self.built {
                        let published = self.tx.borrow().clone();
                        if let Some(next) = health::apply_if_changed(built, &health, &published) {
                            self.send(next);
                        }
                    }
                    continue;
                }
                Some(state) = registrations_changed(&mut self.registrations) => {
                    if state {
                        // Who is registered changed: no hostname did, so no VIP is synced.
                        self.take_members();
                        sync_vips = false;
                    } else {
                        self.apply_liveness();
                        continue;
                    }
                }
            }
        }
    }

    /// Takes the registrations' current state as the members of their groups.
    fn take_members(&mut self) {
        let Some(registrations) = &mut self.registrations else {
            return;
        };
        let state = registrations.state.borrow_and_update().clone();
        let members = state.map(|s| Members::of(&s)).unwrap_or_default();
        if *self.members != members {
            self.members = Arc::new(members);
        }
    }

    fn liveness(&mut self) -> Arc<Liveness> {
        self.registrations
            .as_mut()
            .map(|r| r.liveness.borrow_and_update().clone())
            .unwrap_or_default()
    }

    /// A registration's liveness changed: only the health of the groups' endpoints is
    /// applied again, as the agents' health is.
    fn apply_liveness(&mut self) {
        let liveness = self.liveness();
        let Some(built) = &self.built else { return };
        if let Some(next) = crate::workloads::liveness::apply(built, &liveness) {
            let health = self.health.borrow().clone();
            let applied = health::apply(&next, &health);
            self.built = Some(next);
            self.send(applied);
        }
    }

    /// Syncs the VIPs and publishes the catalog when it changed. When the VIP store fails,
    /// the last assignments stay (VIPs never change on an error): services that already had
    /// a VIP keep it and follow the director; new ones wait for the store.
    async fn publish(
        &mut self,
        inputs: Arc<Vec<DeploymentInput>>,
        configs: PublishedRuleConfigs,
        sync_vips: bool,
    ) {
        let members = self.members.clone();
        if !self
            .listed_from
            .as_ref()
            .is_some_and(|(listed, m)| Arc::ptr_eq(listed, &inputs) && Arc::ptr_eq(m, &members))
        {
            let listed = ListedInstances::of(&inputs).with_members(members.listed());
            self.scopes.set_listed(listed);
            self.listed_from = Some((inputs.clone(), members.clone()));
        }
        let hostnames = catalog::hostnames(&inputs, &self.tld);
        for warning in self.naming_warnings.fresh(hostnames.warnings) {
            tracing::warn!("{warning}");
        }
        let mut wanted: BTreeSet<String> = hostnames
            .services
            .into_iter()
            .map(|(_, hostname)| hostname)
            .collect();
        let tld = self.tld.clone();
        let job_services = |vips: &BTreeMap<String, Ipv4Addr>| catalog::build(&inputs, &tld, vips);
        // Which ServiceEntries and WorkloadGroups are accepted depends on the jobs' services
        // only (their labels and ports, not their VIPs): judged against the catalog of the jobs
        // alone, once per change of the deployments or the configs, not at every refresh of
        // the VIP store.
        let judged = self.entries.as_ref().filter(|judged| {
            Arc::ptr_eq(&judged.inputs, &inputs) && same_configs(&judged.configs, &configs)
        });
        let entries = match (judged, &configs) {
            (Some(judged), _) => judged.rules.clone(),
            (None, Some(rule_configs)) if !rule_configs.configs.is_empty() => {
                let placeholders = wanted
                    .iter()
                    .map(|h| (h.clone(), Ipv4Addr::UNSPECIFIED))
                    .collect();
                let jobs = job_services(&placeholders).catalog;
                let parsed = self.parsed.update(rule_configs);
                let validated = rules::validate(&parsed, Some(&MeshView::from_catalog(&jobs)));
                RuleSet {
                    service_entries: validated.rules.service_entries,
                    workload_groups: validated.rules.workload_groups,
                    ..RuleSet::default()
                }
            }
            (None, _) => RuleSet::default(),
        };
        if judged.is_none() {
            self.mesh_facts
                .send_replace(Some(Arc::new(mesh_facts(&inputs, &entries))));
        }
        self.entries = Some(JudgedEntries {
            inputs: inputs.clone(),
            configs: configs.clone(),
            rules: entries.clone(),
        });
        wanted.extend(rules::entry_hosts(&entries));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let synced = match sync_vips {
            true => Some(self.vips.sync(&wanted, now).await),
            false => None,
        };
        let vips_changed = match synced {
            None => false,
            Some(Ok(synced)) => {
                self.store_recovered();
                for (hostname, vip) in &synced.outcome.allocated {
                    tracing::info!(%hostname, %vip, "VIP allocated");
                }
                for (hostname, vip) in &synced.outcome.released {
                    tracing::info!(%hostname, %vip, "VIP released (quarantined before reuse)");
                }
                let m = metrics::global();
                m.vip_pool_size.store(synced.pool.size, Ordering::Relaxed);
                m.vip_pool_used.store(synced.pool.used, Ordering::Relaxed);
                m.vip_pool_quarantined
                    .store(synced.pool.quarantined, Ordering::Relaxed);
                if !synced.outcome.exhausted.is_empty() {
                    m.vip_pool_exhausted.fetch_add(1, Ordering::Relaxed);
                }
                for hostname in self.exhausted.fresh(synced.outcome.exhausted) {
                    tracing::error!(%hostname, "no free VIP left in the pool: this service stays unreachable until one is freed");
                }
                let warnings = synced
                    .load_warnings
                    .into_iter()
                    .chain(synced.outcome.warnings);
                for warning in self.vip_warnings.fresh(warnings) {
                    tracing::warn!(store = %self.vips.store(), "{warning}");
                }
                synced.assignments_changed
            }
            Some(Err(err)) => {
                self.store_failed(&err);
                false
            }
        };
        let unchanged_inputs = self.built_from.as_ref().is_some_and(|(built, rules, m)| {
            Arc::ptr_eq(built, &inputs) && same_configs(rules, &configs) && Arc::ptr_eq(m, &members)
        });
        if unchanged_inputs && !vips_changed {
            return;
        }
        let Some(assignments) = self.vips.assignments() else {
            return; // the store was never read: no catalog rather than one without services
        };
        let built = job_services(assignments);
        for line in self.unaddressed.fresh(built.unaddressed) {
            tracing::debug!("{line}");
        }
        let services = rules::entry_services_with(
            &entries,
            &built.catalog,
            |host| assignments.get(host).copied(),
            &members,
        );
        let next = catalog::with_entries(built.catalog, services);
        // The registrations' liveness first, then the agents' health (which leaves the
        // WorkloadGroups' endpoints alone): `built` keeps the first, as the agents' health is
        // applied again alone.
        let liveness = self.liveness();
        let next = crate::workloads::liveness::apply(&next, &liveness).unwrap_or(next);
        self.built_from = Some((inputs, configs, members));
        let listed: BTreeSet<(&str, &str)> = next
            .services
            .iter()
            .flat_map(|s| {
                s.endpoints
                    .iter()
                    .map(|e| (s.key.deployment.as_str(), e.instance.as_str()))
            })
            .collect();
        self.agents
            .retain_listed(|i| listed.contains(&(i.deployment.as_str(), i.instance_id.as_str())));
        let health = self.health.borrow_and_update().clone();
        let applied = health::apply(&next, &health);
        self.built = Some(next);
        self.send(applied);
    }

    /// Publishes `next` when it differs from the current catalog.
    fn send(&mut self, next: Catalog) {
        let current = self.tx.borrow().clone();
        if next.version == current.version {
            return;
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
    }

    fn store_failed(&mut self, err: &anyhow::Error) {
        let kind = err.downcast_ref::<director::DirectorError>().map_or_else(
            || "vip_store".to_string(),
            |e| format!("vip_store_{}", e.kind()),
        );
        metrics::global().director_poll_error(&kind);
        self.store_failures = self.store_failures.saturating_add(1);
        if self.store_failure.as_ref() != Some(&kind) {
            tracing::error!(store = %self.vips.store(), "keeping the last VIP assignments (no VIP changes until the store works again; new services wait): {err:#}");
            self.store_failure = Some(kind);
        }
    }

    fn store_recovered(&mut self) {
        self.store_failures = 0;
        if self.store_failure.take().is_some() {
            tracing::info!(store = %self.vips.store(), "the VIP store works again");
        }
    }
}

/// What a join is judged against (`workloads::state::MeshFacts`): the accepted WorkloadGroups
/// of `entries`, and every address the director lists an instance at.
fn mesh_facts(inputs: &[DeploymentInput], entries: &RuleSet) -> MeshFacts {
    let groups = entries
        .workload_groups
        .iter()
        .map(|rule| format!("{}/{}", rule.config, rule.name))
        .collect();
    let mut bosh_addresses = std::collections::HashMap::new();
    for deployment in inputs {
        for instance in deployment.instances.iter() {
            let name = format!(
                "{}/{}/{}",
                deployment.name, instance.instance_group, instance.id
            );
            for ip in &instance.ips {
                if let Some(address) = ip.split('/').next().and_then(|a| a.parse().ok()) {
                    bosh_addresses.insert(address, name.clone());
                }
            }
        }
    }
    MeshFacts {
        groups,
        bosh_addresses,
    }
}

/// Whether two sets of rule configs are the same versions (the director's ids).
fn same_configs(a: &PublishedRuleConfigs, b: &PublishedRuleConfigs) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            Arc::ptr_eq(a, b)
                || a.configs
                    .iter()
                    .map(|c| &c.id)
                    .eq(b.configs.iter().map(|c| &c.id))
        }
        (None, None) => true,
        _ => false,
    }
}

/// What a check that runs at every publish reported last time, so that each line is logged
/// once when it appears, not at every publish for as long as it holds.
#[derive(Default)]
pub(crate) struct Reported(BTreeSet<String>);

impl Reported {
    /// The lines of `current` that were not reported last time; `current` replaces those.
    pub(crate) fn fresh(&mut self, current: impl IntoIterator<Item = String>) -> Vec<String> {
        let current: BTreeSet<String> = current.into_iter().collect();
        let fresh = current.difference(&self.0).cloned().collect();
        self.0 = current;
        fresh
    }
}

/// The pause before the VIP store is read again: `vip_refresh`, doubled after each failure
/// in a row up to `STORE_BACKOFF_CAP`, so that a struggling director is not pressed harder.
fn refresh_pause(vip_refresh: Duration, failures: u32) -> Duration {
    let doubled = vip_refresh.saturating_mul(1 << failures.min(16));
    doubled.min(STORE_BACKOFF_CAP.max(vip_refresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_store_is_read_less_and_less_often() {
        let second = Duration::from_secs(1);
        let pauses: Vec<u64> = (0..7).map(|n| refresh_pause(second, n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(refresh_pause(second, u32::MAX), STORE_BACKOFF_CAP);
        let slow = Duration::from_secs(60);
        assert_eq!(
            refresh_pause(slow, 3),
            slow,
            "never faster than the refresh interval"
        );
    }

    #[test]
    fn a_line_is_reported_when_it_appears_and_again_only_after_it_went_away() {
        let lines = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut reported = Reported::default();
        assert_eq!(reported.fresh(lines(&["a", "b"])), lines(&["a", "b"]));
        assert_eq!(reported.fresh(lines(&["b", "a", "c"])), lines(&["c"]));
        assert!(reported.fresh(lines(&["c"])).is_empty());
        assert_eq!(reported.fresh(lines(&["a", "c"])), lines(&["a"]));
    }
}
