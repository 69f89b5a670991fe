//! What `boshy join` changed on the VM, and its undo: the join state file
//! (`/var/lib/boshy/join-state.json`) lists every change with what was there before, so that
//! `boshy leave` puts back exactly that, and a join that fails midway undoes what it did so far.
//!
//! A second join keeps the first one's "before" (the ORIGINAL `resolv.conf`, the files as they
//! were before any join): changes are keyed (a path, the DNAT rules, the units) and a change
//! already recorded keeps its original. The run's own "before" is kept apart, in memory, for
//! the rollback of that run alone.
//!
//! Undo runs in phases, whatever the order the changes were made in: services stopped first,
//! then the agent's data, the DNAT rules, the resolver, the files, the directories (deepest
//! first), systemd-resolved restarted without the drop-in, and systemd reloaded last.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::resolver;

pub(crate) const STATE_VERSION: u32 = 1;

/// The join state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JoinState {
    pub(crate) version: u32,
    pub(crate) registration: Registration,
    /// The pilots' API URLs (for leave), and the name in their certificates.
    pub(crate) pilots: Vec<String>,
    pub(crate) server_name: String,
    /// Who runs the units (leave stops them the same way).
    #[serde(default)]
    pub(crate) service_manager: ServiceManager,
    pub(crate) changes: Vec<Change>,
}

/// The registration join made (from the pilot's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Registration {
    pub(crate) id: String,
    pub(crate) deployment: String,
    pub(crate) instance_group: String,
    pub(crate) instance: String,
    pub(crate) address: IpAddr,
}

/// Who runs the units: systemd, or nobody (a lab without systemd starts their commands).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ServiceManager {
    #[default]
    Systemd,
    None,
}

/// A file's bytes and mode before join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Original {
    #[serde(with = "b64")]
    pub(crate) bytes: Vec<u8>,
    pub(crate) mode: u32,
}

/// One thing join changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Change {
    /// A directory join made (it did not exist).
    Dir { path: PathBuf },
    /// A file join wrote; `original`: what was there (none: nothing).
    File {
        path: PathBuf,
        original: Option<Original>,
    },
    /// `/etc/resolv.conf` edited: the original and what join wrote, to tell whether someone
    /// changed it since.
    ResolvConf {
        path: PathBuf,
        original: Option<Original>,
        #[serde(with = "b64")]
        written: Vec<u8>,
        nameserver: IpAddr,
    },
    /// systemd-resolved restarted to read the drop-in: restarted again once it is gone.
    ResolvedRestart,
    /// The DNAT rules, installed by join (they were not there).
    Dnat { vip_cidr: Ipv4Net },
    /// The inbound capture's rules (their chain, whatever ports its unit put in it), installed
    /// by join (they were not there).
    InboundCapture,
    /// The units, enabled and started (their files are `File` changes).
    Units { names: Vec<String> },
    /// Files and directories the services make as they run (the agent's name table, its
    /// socket directory), none of which existed at join: removed once the services stopped.
    AgentData { paths: Vec<PathBuf> },
}

impl Change {
    /// Two changes with the same key are the same change made twice (a second join).
    fn key(&self) -> String {
        match self {
            Change::Dir { path } => format!("dir {}", path.display()),
            Change::File { path, .. } | Change::ResolvConf { path, .. } => {
                format!("file {}", path.display())
            }
            Change::ResolvedRestart => "resolved".into(),
            Change::Dnat { vip_cidr } => format!("dnat {vip_cidr}"),
            Change::InboundCapture => "inbound-capture".into(),
            Change::Units { .. } => "units".into(),
            Change::AgentData { .. } => "agent-data".into(),
        }
    }

    /// When it is undone: lower first.
    fn phase(&self) -> u8 {
        match self {
            Change::Units { .. } => 0,
            Change::AgentData { .. } => 1,
            Change::Dnat { .. } | Change::InboundCapture => 2,
            Change::ResolvConf { .. } => 3,
            Change::File { .. } => 4,
            Change::Dir { .. } => 5,
            Change::ResolvedRestart => 6,
        }
    }
}

impl JoinState {
    /// Records `change`; one already recorded under its key keeps its original (a second
    /// join), taking only what the new one wrote.
    pub(crate) fn record(&mut self, change: Change) {
        match self.changes.iter_mut().find(|c| c.key() == change.key()) {
            None => self.changes.push(change),
            Some(kept) => match (kept, change) {
                (
                    Change::ResolvConf { written, .. },
                    Change::ResolvConf {
                        written: now_written,
                        ..
                    },
                ) => *written = now_written,
                (Change::AgentData { paths }, Change::AgentData { paths: more }) => {
                    add_missing(paths, more)
                }
                (Change::Units { names }, Change::Units { names: more }) => {
                    add_missing(names, more)
                }
                // A file once absent stays "absent before join"; a directory join made stays
                // one join made.
                _ => {}
            },
        }
    }

    /// Whether a change with the same key is recorded.
    pub(crate) fn has(&self, change: &Change) -> bool {
        self.changes.iter().any(|c| c.key() == change.key())
    }

    pub(crate) fn load(path: &Path) -> Result<Option<JoinState>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("{}: cannot read", path.display()))
            }
        };
        let state: JoinState = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a join state file", path.display()))?;
        if state.version != STATE_VERSION {
            anyhow::bail!(
                "{}: join state version {}, this boshy reads {STATE_VERSION}",
                path.display(),
                state.version
            );
        }
        Ok(Some(state))
    }

    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("plain data serializes");
        crate::fsutil::write_atomically_with_mode(path, &json, 0o600)
    }
}

/// Adds to `kept` what `more` has that it has not (a second join that installs more units).
fn add_missing<T: PartialEq>(kept: &mut Vec<T>, more: Vec<T>) {
    for item in more {
        if !kept.contains(&item) {
            kept.push(item);
        }
    }
}

/// What undoing needs of the machine beyond files: systemd and iptables.
pub(crate) trait Host {
    /// `systemctl <args>`; nothing when no service manager.
    fn systemctl(&self, args: &[&str]) -> Result<()>;
    /// Installs the DNAT rules; true when they were not there.
    fn dnat_install(&self, vip_cidr: Ipv4Net) -> Result<bool>;
    /// Removes them; true when they were there.
    fn dnat_remove(&self, vip_cidr: Ipv4Net) -> Result<bool>;
    /// Installs the inbound capture of the ports in `ports_file`; true when it was not there.
    fn capture_install(&self, vip_cidr: Ipv4Net, ports_file: &Path) -> Result<bool>;
    /// Removes the inbound capture alone; true when it was there.
    fn capture_remove(&self) -> Result<bool>;
}

/// The file at `path` as it is now (`None`: there is none).
pub(crate) fn original_of(path: &Path) -> Result<Option<Original>> {
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("{}: cannot read", path.display())),
        Ok(meta) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            Ok(Some(Original {
                bytes,
                mode: meta.permissions().mode() & 0o7777,
            }))
        }
    }
}

/// Makes `dir` and its missing parents, returning a `Dir` change for each one made,
/// outermost first.
pub(crate) fn make_dirs(dir: &Path) -> Result<Vec<Change>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path.to_path_buf());
        at = path.parent();
    }
    missing.reverse();
    for path in &missing {
        std::fs::create_dir(path)
            .with_context(|| format!("{}: cannot make the directory", path.display()))?;
    }
    Ok(missing
        .into_iter()
        .map(|path| Change::Dir { path })
        .collect())
}

/// Undoes `changes` in phase order. Every step is tried; the errors are returned together
/// (the caller keeps the state file then, so that undoing again finishes the job), and the
/// warnings (a resolv.conf changed since join, a directory someone else put files in) are
/// printed. `before_dirs` are files removed just before the directories (the state file).
pub(crate) fn undo_all(
    changes: &[Change],
    host: &dyn Host,
    before_dirs: &[PathBuf],
) -> (Vec<String>, Vec<anyhow::Error>) {
    let mut ordered: Vec<&Change> = changes.iter().collect();
    // By phase; the directories deepest first.
    ordered.sort_by(|a, b| match (a, b) {
        (Change::Dir { path: x }, Change::Dir { path: y }) => y.cmp(x),
        _ => a.phase().cmp(&b.phase()),
    });
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    let mut removed_before_dirs = false;
    for change in ordered {
        if change.phase() >= 5 && !removed_before_dirs {
            removed_before_dirs = true;
            for path in before_dirs {
                if let Err(err) = remove_file(path) {
                    errors.push(err);
                }
            }
        }
        match undo(change, host) {
            Ok(Some(warning)) => warnings.push(warning),
            Ok(None) => {}
            Err(err) => errors.push(err),
        }
    }
    if !removed_before_dirs {
        for path in before_dirs {
            if let Err(err) = remove_file(path) {
                errors.push(err);
            }
        }
    }
    if changes.iter().any(|c| matches!(c, Change::Units { .. })) {
        // The unit files are gone: systemd forgets them.
        if let Err(err) = host.systemctl(&["daemon-reload"]) {
            errors.push(err);
        }
    }
    (warnings, errors)
}

/// Undoes one change; a warning when it could not be undone exactly.
fn undo(change: &Change, host: &dyn Host) -> Result<Option<String>> {
    match change {
        Change::Units { names } => {
            let mut args = vec!["disable", "--now"];
            args.extend(names.iter().map(String::as_str));
            host.systemctl(&args)
                .context("stopping and disabling the units")?;
            Ok(None)
        }
        Change::AgentData { paths } => {
            for path in paths {
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(path)
                } else {
                    std::fs::remove_file(path)
                };
                match gone {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(err).with_context(|| format!("removing {}", path.display()))
                    }
                    _ => {}
                }
            }
            Ok(None)
        }
        Change::Dnat { vip_cidr } => {
            host.dnat_remove(*vip_cidr)
                .with_context(|| format!("removing the DNAT rules for {vip_cidr}"))?;
            Ok(None)
        }
        Change::InboundCapture => {
            host.capture_remove()
                .context("removing the inbound capture's rules")?;
            Ok(None)
        }
        Change::ResolvConf {
            path,
            original,
            written,
            nameserver,
        } => {
            let current = original_of(path)?.map(|o| o.bytes).unwrap_or_default();
            let before = original.as_ref().map_or(&[][..], |o| o.bytes.as_slice());
            let (bytes, warning) = resolver::restore(before, written, &current, *nameserver);
            match (original, &warning) {
                // Nobody touched it and there was none: there is none again.
                (None, None) => remove_file(path)?,
                _ => {
                    let mode = original.as_ref().map_or(0o644, |o| o.mode);
                    write_resolv_conf(path, &bytes, mode)
                        .with_context(|| format!("restoring {}", path.display()))?
                }
            }
            Ok(warning)
        }
        Change::File { path, original } => {
            match original {
                None => remove_file(path)?,
                Some(original) => {
                    crate::fsutil::write_atomically_with_mode(path, &original.bytes, original.mode)
                        .with_context(|| format!("restoring {}", path.display()))?
                }
            }
            Ok(None)
        }
        Change::Dir { path } => match std::fs::remove_dir(path) {
            Ok(()) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(Some(format!(
                "{}: kept, it holds files `boshy join` did not write",
                path.display()
            ))),
            Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
        },
        Change::ResolvedRestart => {
            host.systemctl(&["restart", "systemd-resolved"])
                .context("restarting systemd-resolved without the drop-in")?;
            Ok(None)
        }
    }
}

/// Writes `/etc/resolv.conf`: atomically (a new file renamed over it) where it can be, in
/// place where it is a mount point, which cannot be renamed over (EBUSY): `ip netns exec`
/// and container runtimes bind-mount a resolv.conf of their own there.
pub(crate) fn write_resolv_conf(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let atomic = crate::fsutil::write_atomically_with_mode(path, bytes, mode);
    let busy = atomic.as_ref().err().is_some_and(|err| {
        err.chain()
            .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
            .any(|io| io.raw_os_error() == Some(libc::EBUSY))
    });
    if !busy {
        return atomic;
    }
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("{}: cannot write (a mount point)", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}: cannot write (a mount point)", path.display()))
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Bytes as base64 in the JSON: `resolv.conf` and the files join replaced, exactly.
mod b64 {
    use super::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records what would have been asked of systemd and iptables.
    #[derive(Default)]
    pub(crate) struct FakeHost {
        pub(crate) calls: RefCell<Vec<String>>,
    }

    impl Host for FakeHost {
        fn systemctl(&self, args: &[&str]) -> Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("systemctl {}", args.join(" ")));
            Ok(())
        }
        fn dnat_install(&self, vip_cidr: Ipv4Net) -> Result<bool> {
            self.calls
                .borrow_mut()
                .push(format!("dnat install {vip_cidr}"));
            Ok(true)
        }
        fn dnat_remove(&self, vip_cidr: Ipv4Net) -> Result<bool> {
            self.calls
                .borrow_mut()
                .push(format!("dnat remove {vip_cidr}"));
            Ok(true)
        }
        fn capture_install(&self, vip_cidr: Ipv4Net, ports_file: &Path) -> Result<bool> {
            self.calls.borrow_mut().push(format!(
                "capture install {vip_cidr} {}",
                ports_file.display()
            ));
            Ok(true)
        }
        fn capture_remove(&self) -> Result<bool> {
            self.calls.borrow_mut().push("capture remove".into());
            Ok(true)
        }
    }

    fn state() -> JoinState {
        JoinState {
            version: STATE_VERSION,
            registration: Registration {
                id: "r".into(),
                deployment: "legacy".into(),
                instance_group: "rabbitmq".into(),
                instance: "rabbitmq/r".into(),
                address: "10.0.0.30".parse().unwrap(),
            },
            pilots: vec!["https://10.0.0.5:8080".into()],
            server_name: "bosh-pilot.boshy-istio".into(),
            service_manager: ServiceManager::Systemd,
            changes: Vec::new(),
        }
    }

    #[test]
    fn undo_puts_back_files_removes_new_ones_and_dirs_in_order() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("kept"), b"before").unwrap();
        std::fs::set_permissions(r.join("kept"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut state = state();
        for change in make_dirs(&r.join("etc/boshy")).unwrap() {
            state.record(change);
        }
        let new_file = r.join("etc/boshy/agent.yml");
        state.record(Change::File {
            path: new_file.clone(),
            original: original_of(&new_file).unwrap(),
        });
        std::fs::write(&new_file, b"x").unwrap();
        state.record(Change::File {
            path: r.join("kept"),
            original: original_of(&r.join("kept")).unwrap(),
        });
        std::fs::write(r.join("kept"), b"after").unwrap();
        state.record(Change::Units {
            names: vec!["boshy-agent.service".into()],
        });
        state.record(Change::Dnat {
            vip_cidr: "169.254.255.0/24".parse().unwrap(),
        });
        state.record(Change::InboundCapture);
        // A second join that adds the capture's unit: stopped with the others.
        state.record(Change::Units {
            names: vec!["boshy-agent.service".into(), "boshy-capture.service".into()],
        });
        state.record(Change::ResolvedRestart);

        // The state survives a trip through its file.
        let path = r.join("state.json");
        state.save(&path).unwrap();
        let loaded = JoinState::load(&path).unwrap().unwrap();
        assert_eq!(loaded, state);

        let host = FakeHost::default();
        let (warnings, errors) = undo_all(&loaded.changes, &host, std::slice::from_ref(&path));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            *host.calls.borrow(),
            [
                "systemctl disable --now boshy-agent.service boshy-capture.service",
                "dnat remove 169.254.255.0/24",
                "capture remove",
                "systemctl restart systemd-resolved",
                "systemctl daemon-reload",
            ]
        );
        assert_eq!(std::fs::read(r.join("kept")).unwrap(), b"before");
        let mode = std::fs::metadata(r.join("kept"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(!r.join("etc").exists());
        assert!(!path.exists());
    }

    #[test]
    fn a_second_join_keeps_the_first_ones_originals() {
        let mut state = state();
        let original = Original {
            bytes: b"nameserver 10.0.0.2\n".to_vec(),
            mode: 0o644,
        };
        let resolv = |original: Option<Original>, written: &[u8]| Change::ResolvConf {
            path: "/etc/resolv.conf".into(),
            original,
            written: written.to_vec(),
            nameserver: "127.0.1.53".parse().unwrap(),
        };
        state.record(resolv(Some(original.clone()), b"first"));
        state.record(Change::File {
            path: "/etc/boshy/ca.pem".into(),
            original: None,
        });
        // The second join sees its own earlier edits as "what was there".
        let mut again = state.clone();
        again.record(resolv(
            Some(Original {
                bytes: b"first".to_vec(),
                mode: 0o644,
            }),
            b"second",
        ));
        again.record(Change::File {
            path: "/etc/boshy/ca.pem".into(),
            original: Some(Original {
                bytes: b"CA".to_vec(),
                mode: 0o644,
            }),
        });
        assert_eq!(again.changes.len(), 2);
        assert_eq!(again.changes[0], resolv(Some(original), b"second"));
        assert_eq!(
            again.changes[1],
            Change::File {
                path: "/etc/boshy/ca.pem".into(),
                original: None
            }
        );
    }

    #[test]
    fn a_directory_with_someone_elses_files_is_kept_with_a_warning() {
        let root = tempfile::tempdir().unwrap();
        let dirs = make_dirs(&root.path().join("a/b")).unwrap();
        assert_eq!(dirs.len(), 2);
        std::fs::write(root.path().join("a/theirs"), b"").unwrap();
        let (warnings, errors) = undo_all(&dirs, &FakeHost::default(), &[]);
        assert!(errors.is_empty());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(root.path().join("a/theirs").exists());
        assert!(!root.path().join("a/b").exists());
    }
}
