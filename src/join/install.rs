//! `boshy join`: registers the VM with a pilot, then installs what makes it a member of the
//! mesh, recording every change in the join state (`state.rs`) as it is made. A failure after
//! the pilot's answer undoes what this run did, and the error names the step.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::files::{JoinFiles, JoinSpec};
use super::layout::{Layout, AGENT_UNIT, CAPTURE_UNIT, ENVOY_UNIT};
use super::resolver::{self, ResolverKind};
use super::state::{self, Change, Host, JoinState, Registration, ServiceManager};
use super::wire::{self, JoinAnswer, JoinRequest};
use super::{render, units, JoinArgs, RealHost};
use crate::identity::mesh_certificate::{install, PairFiles};
use crate::mesh_cli::PilotConnection;

/// `boshy join`.
pub(crate) async fn join(args: JoinArgs) -> Result<()> {
    let layout = Layout::new(&args.root);
    check_root(&args.root, args.service_manager)?;
    let files = JoinFiles {
        dir: args.files.clone(),
    };
    let mut spec = files.read()?;
    spec.labels.extend(args.labels.iter().cloned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now >= spec.expires_at {
        bail!(
            "join token {} expired (unix time {}): run `boshy workload configure` again for a \
             new one",
            spec.token_id,
            spec.expires_at
        );
    }
    let previous = JoinState::load(&layout.state())?;
    let host = RealHost {
        manager: args.service_manager,
    };
    // Everything that can be refused locally is, before the pilot registers anything.
    let resolver = detect_resolver(&layout, &host)?;
    if resolver == ResolverKind::ResolvConf && args.dns_listen.port() != 53 {
        bail!(
            "--dns-listen {}: /etc/resolv.conf cannot name a port other than 53",
            args.dns_listen
        );
    }
    let (key, csr) = crate::identity::agent::new_key_and_csr(Vec::new())?;
    let (pilot, answer) = ask_to_join(&files, &spec, &csr).await?;
    println!(
        "joined {} as {} (address {}) through {pilot}",
        spec.group, answer.instance, answer.address
    );

    let mut run = Run {
        state: JoinState {
            version: state::STATE_VERSION,
            registration: Registration {
                id: answer.id.clone(),
                deployment: answer.deployment.clone(),
                instance_group: answer.instance_group.clone(),
                instance: answer.instance.clone(),
                address: answer.address,
            },
            pilots: spec.pilots.clone(),
            server_name: answer.settings.server_name.clone(),
            service_manager: args.service_manager,
            changes: previous
                .as_ref()
                .map(|p| p.changes.clone())
                .unwrap_or_default(),
        },
        this_run: Vec::new(),
        state_path: layout.state(),
    };
    let installed = Installer {
        layout: &layout,
        files: &files,
        spec: &spec,
        answer: &answer,
        key_pem: key.serialize_pem(),
        listen: args.dns_listen,
        resolver,
        host: &host,
    }
    .install(&mut run);
    let Err(error) = installed else {
        println!(
            "done: `boshy leave{}` undoes it (state in {})",
            root_flag(&args.root),
            layout.state().display()
        );
        return Ok(());
    };
    // A first join that failed: the pilot need not keep the registration until it expires.
    if previous.is_none() && layout.certificate().exists() && layout.key().exists() {
        if let Err(err) = super::leave::tell_pilots(&layout, &run.state).await {
            eprintln!("warning: {err:#}");
        }
    }
    let (warnings, errors) = state::undo_all(
        &run.this_run,
        &host,
        &if previous.is_none() {
            vec![layout.state()]
        } else {
            vec![]
        },
    );
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    if let Some(previous) = &previous {
        previous.save(&layout.state())?;
    }
    if errors.is_empty() {
        Err(error.context("boshy join failed; what it had changed is undone"))
    } else {
        let list: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        Err(error.context(format!(
            "boshy join failed, and undoing it failed too: {}",
            list.join("; ")
        )))
    }
}

/// ` --root <root>` unless the root is `/`.
pub(crate) fn root_flag(root: &Path) -> String {
    if root == Path::new("/") {
        String::new()
    } else {
        format!(" --root {}", root.display())
    }
}

/// systemd runs the units of the machine's own tree only.
pub(crate) fn check_root(root: &Path, manager: ServiceManager) -> Result<()> {
    units::check_plain(root)?;
    if manager == ServiceManager::Systemd && root != Path::new("/") {
        bail!(
            "--root {}: with --service-manager systemd the root must be `/` (systemd runs the \
             units of this machine); use --service-manager none for another root",
            root.display()
        );
    }
    Ok(())
}

/// Which resolver the VM uses; a `resolv.conf` that some other program manages (a symlink
/// elsewhere than systemd-resolved's) is refused: our line would be overwritten.
fn detect_resolver(layout: &Layout, host: &RealHost) -> Result<ResolverKind> {
    let path = layout.resolv_conf();
    let link = std::fs::read_link(&path).ok();
    let kind = resolver::detect(link.as_deref(), host.resolved_active());
    if let (ResolverKind::ResolvConf, Some(target)) = (kind, &link) {
        bail!(
            "{} is a symlink to {}: another program manages it (resolvconf, NetworkManager) \
             and would drop the mesh's nameserver; boshy join edits a plain /etc/resolv.conf \
             or configures systemd-resolved",
            path.display(),
            target.display()
        );
    }
    Ok(kind)
}

/// POSTs the join to each pilot in turn until one answers; a refusal is final (every pilot
/// would say the same) and carries the pilot's reason.
async fn ask_to_join(
    files: &JoinFiles,
    spec: &JoinSpec,
    csr: &str,
) -> Result<(String, JoinAnswer)> {
    let request = JoinRequest {
        group: &spec.group,
        csr,
        labels: &spec.labels,
    };
    let client_of = |pilot: &str| {
        PilotConnection::new(pilot, files.ca(), &spec.settings.server_name, None, "")
            .client()?
            .with_bearer(&spec.token)
    };
    let (pilot, answer) =
        wire::post_to_first(&spec.pilots, client_of, wire::JOIN_PATH, &request, "join").await?;
    Ok((pilot.to_string(), answer))
}

/// The join state being built: `state` (kept originals, saved after every change) and this
/// run's own changes with what was there before it (its rollback).
struct Run {
    state: JoinState,
    this_run: Vec<Change>,
    state_path: PathBuf,
}

impl Run {
    fn record(&mut self, change: Change) -> Result<()> {
        // A file's rollback puts back what was there before this run; the services, the DNAT
        // rules and resolved's restart are this run's to undo only if an earlier join did not
        // make them (undoing them would break that join).
        let ours = matches!(change, Change::File { .. } | Change::ResolvConf { .. })
            || !self.state.has(&change);
        self.state.record(change.clone());
        if ours {
            self.this_run.push(change);
        }
        self.state.save(&self.state_path)
    }

    fn make_dirs(&mut self, dir: &Path) -> Result<()> {
        for change in state::make_dirs(dir)? {
            self.record(change)?;
        }
        Ok(())
    }

    /// Writes `bytes` to `path` atomically with `mode`, recording what was there.
    fn write(&mut self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        if let Some(dir) = path.parent() {
            self.make_dirs(dir)?;
        }
        let original = state::original_of(path)?;
        self.record(Change::File {
            path: path.to_path_buf(),
            original,
        })?;
        crate::fsutil::write_atomically_with_mode(path, bytes, mode)
    }
}

struct Installer<'a> {
    layout: &'a Layout,
    files: &'a JoinFiles,
    spec: &'a JoinSpec,
    answer: &'a JoinAnswer,
    key_pem: String,
    listen: std::net::SocketAddr,
    resolver: ResolverKind,
    host: &'a RealHost,
}

impl Installer<'_> {
    fn install(&self, run: &mut Run) -> Result<()> {
        let vip_cidr = crate::dnat::parse_vip_cidr(&self.answer.settings.virtual_ip_cidr)
            .map_err(|err| anyhow::anyhow!("the pilot's virtual_ip_cidr: {err}"))?;
        run.make_dirs(&self.layout.state_dir())
            .context("step 1 (the state directory)")?;
        self.install_files(run, vip_cidr)
            .context("step 2 (installing the files)")?;
        if self
            .host
            .dnat_install(vip_cidr)
            .context("step 3 (the DNAT rules)")?
        {
            run.record(Change::Dnat { vip_cidr })?;
        }
        println!("DNAT: TCP to {vip_cidr} goes to Envoy (:15001)");
        self.install_capture(run, vip_cidr)
            .context("step 3 (the inbound capture)")?;
        self.configure_resolver(run)
            .context("step 4 (the resolver)")?;
        self.start_services(run)
            .context("step 5 (starting the services)")
    }

    fn install_files(&self, run: &mut Run, vip_cidr: ipnet::Ipv4Net) -> Result<()> {
        let layout = self.layout;
        let hosts = render::pilot_hosts(&self.spec.pilots)?;
        run.write(&layout.ca(), self.answer.ca.as_bytes(), 0o644)?;
        // What the agent makes as it runs, if it is not there now, removed whole by leave:
        // its data directory, its sockets' directory, and the certificate's (it renews it).
        let paths: Vec<PathBuf> = [layout.agent_data_dir(), layout.run_dir(), layout.tls_dir()]
            .into_iter()
            .filter(|p| !p.exists())
            .collect();
        if !paths.is_empty() {
            run.record(Change::AgentData { paths })?;
        }
        // Their parents are join's to make (and leave's to remove): a root without /run (a
        // test's, a lab's) must not keep one the agent made.
        run.make_dirs(&layout.agent_data_dir())?;
        if let Some(parent) = layout.run_dir().parent() {
            run.make_dirs(parent)?;
        }
        // First: a join that fails later can still tell the pilots with it.
        self.install_certificate()?;
        let certificate_sds = render::certificate_sds(layout, &self.answer.settings.server_name)?;
        run.write(&layout.certificate_sds(), certificate_sds.as_bytes(), 0o644)?;
        let agent = render::agent_config(layout, self.answer, &hosts, self.listen);
        run.write(&layout.agent_config(), agent.as_bytes(), 0o644)?;
        let envoy = render::envoy_bootstrap(layout, self.answer, &hosts)?;
        run.write(&layout.envoy_config(), envoy.as_bytes(), 0o644)?;
        for (from, to) in [
            (self.files.boshy(), layout.boshy()),
            (self.files.envoy(), layout.envoy()),
        ] {
            let bytes =
                std::fs::read(&from).with_context(|| format!("{}: cannot read", from.display()))?;
            run.write(&to, &bytes, 0o755)?;
        }
        run.write(
            &layout.unit(AGENT_UNIT),
            units::agent_unit(layout, vip_cidr, self.captures()).as_bytes(),
            0o644,
        )?;
        if self.captures() {
            run.write(
                &layout.unit(CAPTURE_UNIT),
                units::capture_unit(layout, vip_cidr).as_bytes(),
                0o644,
            )?;
        }
        run.write(
            &layout.unit(ENVOY_UNIT),
            units::envoy_unit(layout).as_bytes(),
            0o644,
        )?;
        println!(
            "installed {} and {} (units {})",
            layout.config_dir().display(),
            layout.bin_dir().display(),
            self.units().join(", ")
        );
        Ok(())
    }

    /// Whether the VM captures its exposed ports inbound (`render::captures_inbound`).
    fn captures(&self) -> bool {
        render::captures_inbound(self.answer)
    }

    /// The units join installs, in the order they start.
    fn units(&self) -> Vec<&'static str> {
        let mut units = vec![AGENT_UNIT, ENVOY_UNIT];
        if self.captures() {
            units.push(CAPTURE_UNIT);
        }
        units
    }

    /// The inbound capture's rules, as the virtual-ip-agent job's pre-start installs them: the
    /// ports the agent last wrote (none at a first join), which the capture unit then follows.
    fn install_capture(&self, run: &mut Run, vip_cidr: ipnet::Ipv4Net) -> Result<()> {
        if !self.captures() {
            println!(
                "inbound: not captured (the pilots sign no workload certificates: mesh \
                 clients call this VM in plaintext)"
            );
            return Ok(());
        }
        if self
            .host
            .capture_install(vip_cidr, &self.layout.inbound_ports())?
        {
            run.record(Change::InboundCapture)?;
        }
        println!(
            "inbound: the ports the pilots say the group exposes go to Envoy (:{}, mutual TLS)",
            crate::xds::inbound::INBOUND_PORT
        );
        Ok(())
    }

    /// The VM's certificate and key, as its agent renews them: a new generation in the
    /// certificate's directory, swapped in (a join again replaces the pair at once).
    fn install_certificate(&self) -> Result<()> {
        let layout = self.layout;
        let files = PairFiles::of(&layout.certificate(), &layout.key())
            .map_err(|why| anyhow::anyhow!("the certificate's paths: {why}"))?;
        install(
            &files,
            self.answer.certificate.as_bytes(),
            self.key_pem.as_bytes(),
        )
    }

    fn configure_resolver(&self, run: &mut Run) -> Result<()> {
        let layout = self.layout;
        match self.resolver {
            ResolverKind::SystemdResolved => {
                let text = resolver::drop_in(self.listen, &self.answer.settings.tld);
                run.write(&layout.resolved_drop_in(), text.as_bytes(), 0o644)?;
                if self.host.manager == ServiceManager::Systemd {
                    run.record(Change::ResolvedRestart)?;
                    self.host.systemctl(&["restart", "systemd-resolved"])?;
                    println!(
                        "DNS: systemd-resolved asks {} for ~{}",
                        self.listen, self.answer.settings.tld
                    );
                } else {
                    println!(
                        "DNS: wrote {}; restart systemd-resolved to use it",
                        layout.resolved_drop_in().display()
                    );
                }
            }
            ResolverKind::ResolvConf => {
                let path = layout.resolv_conf();
                let original = state::original_of(&path)?;
                let text = match &original {
                    None => String::new(),
                    Some(o) => String::from_utf8(o.bytes.clone())
                        .with_context(|| format!("{}: not UTF-8", path.display()))?,
                };
                let (edited, warnings) = resolver::add_nameserver(&text, self.listen.ip());
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                let mode = original.as_ref().map_or(0o644, |o| o.mode);
                run.record(Change::ResolvConf {
                    path: path.clone(),
                    original,
                    written: edited.clone().into_bytes(),
                    nameserver: self.listen.ip(),
                })?;
                state::write_resolv_conf(&path, edited.as_bytes(), mode)?;
                println!("DNS: {} asks {} first", path.display(), self.listen.ip());
            }
        }
        Ok(())
    }

    fn start_services(&self, run: &mut Run) -> Result<()> {
        let units = self.units();
        if self.host.manager == ServiceManager::None {
            let files: Vec<String> = units
                .iter()
                .map(|unit| self.layout.unit(unit).display().to_string())
                .collect();
            println!(
                "services: not started (--service-manager none): run the ExecStartPre= and \
                 ExecStart= lines of {}",
                files.join(", ")
            );
            return Ok(());
        }
        self.host.systemctl(&["daemon-reload"])?;
        run.record(Change::Units {
            names: units.iter().map(|unit| unit.to_string()).collect(),
        })?;
        // A second join restarts them on the new certificate and configs.
        for verb in ["enable", "restart"] {
            self.host.systemctl(&[&[verb][..], &units].concat())?;
        }
        println!("services: {} enabled and running", units.join(", "));
        Ok(())
    }
}
