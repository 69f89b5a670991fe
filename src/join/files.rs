//! The join files: what `boshy workload configure` writes on the operator's machine and
//! `boshy join --files <dir>` reads on the VM.
//!
//! ```text
//! <dir>/join.yml     0600: group, join token (a secret), the pilots' API URLs, the settings
//! <dir>/ca.pem       the mesh CA: the pilots' certificates are checked against it
//! <dir>/bin/boshy    this binary (the VM runs the same version as the operator's CLI)
//! <dir>/bin/envoy    Envoy
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::wire::Settings;
use crate::config::Secret;

pub(crate) const JOIN_FILE: &str = "join.yml";
pub(crate) const CA_FILE: &str = "ca.pem";

/// The directory of join files.
#[derive(Debug, Clone)]
pub(crate) struct JoinFiles {
    pub(crate) dir: PathBuf,
}

impl JoinFiles {
    pub(crate) fn join_yml(&self) -> PathBuf {
        self.dir.join(JOIN_FILE)
    }
    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }
    pub(crate) fn boshy(&self) -> PathBuf {
        self.dir.join("bin/boshy")
    }
    pub(crate) fn envoy(&self) -> PathBuf {
        self.dir.join("bin/envoy")
    }

    /// Reads `join.yml` and checks that every other file is there, so that `join` fails
    /// before it asks a pilot anything.
    pub(crate) fn read(&self) -> Result<JoinSpec> {
        let spec: JoinSpec = crate::config::load(&self.join_yml())?;
        for needed in [self.ca(), self.boshy(), self.envoy()] {
            if !needed.is_file() {
                bail!(
                    "{}: missing; `boshy workload configure --out {}` writes it",
                    needed.display(),
                    self.dir.display()
                );
            }
        }
        if spec.pilots.is_empty() {
            bail!(
                "{}: key `pilots`: no pilot to join",
                self.join_yml().display()
            );
        }
        for (i, pilot) in spec.pilots.iter().enumerate() {
            https_only(pilot).map_err(|err| {
                anyhow::anyhow!("{}: key `pilots[{i}]`: {err}", self.join_yml().display())
            })?;
        }
        Ok(spec)
    }
}

/// The join token is a bearer secret: it never travels in plaintext, so every pilot URL is
/// `https://`.
pub(crate) fn https_only(pilot: &str) -> Result<()> {
    if !pilot.to_ascii_lowercase().starts_with("https://") {
        bail!("`{pilot}` is not an https:// URL: the join token must not travel in plaintext");
    }
    Ok(())
}

/// `join.yml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinSpec {
    /// `<config>/<WorkloadGroup name>`.
    pub(crate) group: String,
    pub(crate) token_id: String,
    /// `boshy-join.<id>.<secret>`: never printed, logged or put on a command line.
    pub(crate) token: Secret,
    /// Unix seconds; after it, the pilot refuses the token.
    pub(crate) expires_at: u64,
    /// The pilots' HTTP API URLs, tried in order.
    pub(crate) pilots: Vec<String>,
    pub(crate) settings: Settings,
    /// VM labels sent with the join (label syntax of the catalog; `bosh.io/` is refused).
    #[serde(default)]
    pub(crate) labels: std::collections::BTreeMap<String, String>,
}

/// What `configure` writes into `join.yml` (the token borrowed: [`Secret`] never serializes).
#[derive(Serialize)]
pub(crate) struct JoinSpecOut<'a> {
    pub(crate) group: &'a str,
    pub(crate) token_id: &'a str,
    pub(crate) token: &'a str,
    pub(crate) expires_at: u64,
    pub(crate) pilots: &'a [String],
    pub(crate) settings: &'a Settings,
}

/// Writes `join.yml` (0600, the token is a secret) and `ca.pem`; copies the binaries into
/// `bin/` (0755). The directory is made 0700.
pub(crate) fn write(
    files: &JoinFiles,
    spec: &JoinSpecOut<'_>,
    ca_pem: &[u8],
    boshy: &Path,
    envoy: &Path,
) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&files.dir)
        .with_context(|| format!("{}: cannot make the directory", files.dir.display()))?;
    let yaml = serde_yaml::to_string(spec).context("join.yml")?;
    crate::fsutil::write_atomically_with_mode(&files.join_yml(), yaml.as_bytes(), 0o600)?;
    crate::fsutil::write_atomically_with_mode(&files.ca(), ca_pem, 0o644)?;
    copy_executable(boshy, &files.boshy())?;
    copy_executable(envoy, &files.envoy())
}

/// Copies an executable, atomically, mode 0755.
pub(crate) fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("{}: cannot read", from.display()))?;
    crate::fsutil::write_atomically_with_mode(to, &bytes, 0o755)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn settings() -> Settings {
        serde_json::from_str(
            r#"{"tld":"boshy","virtual_ip_cidr":"169.254.255.0/24",
                "server_name":"bosh-pilot.boshy-istio","trust_domain":null,
                "ports":{"xds":15010,"names":15011,"api":8080},
                "heartbeat_seconds":10,"ttl_seconds":30}"#,
        )
        .unwrap()
    }

    #[test]
    fn what_configure_writes_join_reads_and_the_token_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("some-binary");
        std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
        let files = JoinFiles {
            dir: dir.path().join("files"),
        };
        let settings = settings();
        let pilots = vec!["https://10.0.0.1:8080".to_string()];
        write(
            &files,
            &JoinSpecOut {
                group: "legacy/rabbitmq",
                token_id: "3f2a9c1e5b7d4a60",
                token: "boshy-join.3f2a9c1e5b7d4a60.c2VjcmV0",
                expires_at: 1_764_803_600,
                pilots: &pilots,
                settings: &settings,
            },
            b"CA",
            &bin,
            &bin,
        )
        .unwrap();
        let spec = files.read().unwrap();
        assert_eq!(spec.group, "legacy/rabbitmq");
        assert_eq!(spec.token.expose(), "boshy-join.3f2a9c1e5b7d4a60.c2VjcmV0");
        assert_eq!(spec.settings, settings);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.join_yml()), 0o600);
        assert_eq!(mode(&files.dir), 0o700);
        assert_eq!(mode(&files.envoy()), 0o755);
        assert!(!format!("{spec:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn plaintext_pilots_are_refused() {
        assert!(https_only("https://10.0.0.5:8080").is_ok());
        let err = https_only("http://10.0.0.5:8080").unwrap_err().to_string();
        assert!(err.contains("plaintext"), "{err}");
    }

    #[test]
    fn a_missing_file_is_named_before_anything_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let files = JoinFiles {
            dir: dir.path().to_path_buf(),
        };
        let err = files.read().unwrap_err().to_string();
        assert!(err.contains("join.yml"), "{err}");
    }
}
