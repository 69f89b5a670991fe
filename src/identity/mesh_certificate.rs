//! A joined VM's mesh certificate, renewed by its agent (docs/workloads.md, "Certificate
//! renewal"). The pilot signed it at the join for `workloads.certificate_ttl_seconds`; at half
//! of its lifetime the agent sends a new key's CSR to `POST /v1/workloads/renew` on a pilot's
//! names port, presenting the certificate in hand, and puts the answer in its place.
//!
//! The certificate and its key live in the Kubernetes secret-volume layout, which Envoy's
//! `watched_directory` is made for, so that no reader ever opens a key that does not fit the
//! certificate beside it:
//!
//! ```text
//! <dir>/..<stamp>/vm.pem, vm.key   one generation, never changed once written
//! <dir>/..data -> ..<stamp>        the current one: swapped by a rename, atomically
//! <dir>/vm.pem -> ..data/vm.pem    what the configs name (`tls.cert_path`, `tls.key_path`)
//! <dir>/vm.key -> ..data/vm.key
//! ```
//!
//! The generations before the current one are removed after the swap.
//!
//! Pure: [`Lifetime`], [`due`], [`PairFiles::of`], [`check_fits`]. I/O: [`install`] and the
//! renewal loop [`keep_renewed`].

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use super::agent::{
    check_answer, new_key_and_csr, nonce, renew_at, retry_delay, unix_now, until_unix, validity,
    FailureLog, FailureNote, PilotSigner, Validity, RETRY_MAX, RETRY_MIN,
};
use super::wire::RenewRequest;
use crate::config::{AgentConfig, Secret};
use crate::director::Backoff;

/// The symlink naming the current generation.
const DATA: &str = "..data";

/// Where the pair lives: a directory, and the names of the certificate and the key in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PairFiles {
    dir: PathBuf,
    cert: OsString,
    key: OsString,
}

impl PairFiles {
    /// The pair of `cert` and `key`: two names in one directory (Envoy watches one), neither
    /// starting with `..` (the generations' and `..data`'s).
    pub(crate) fn of(cert: &Path, key: &Path) -> Result<PairFiles, String> {
        let (Some(dir), Some(cert_name), Some(key_name)) =
            (cert.parent(), cert.file_name(), key.file_name())
        else {
            return Err(format!(
                "{} and {} must both be file paths",
                cert.display(),
                key.display()
            ));
        };
        if key.parent() != Some(dir) {
            return Err(format!(
                "the key {} must be in the certificate's directory {}: both are swapped at once",
                key.display(),
                dir.display()
            ));
        }
        if cert_name == key_name {
            return Err(format!(
                "the certificate and the key are one file, {}",
                cert.display()
            ));
        }
        for name in [cert_name, key_name] {
            if name.to_string_lossy().starts_with("..") {
                return Err(format!(
                    "{:?} starts with `..`, which names the generations in {}",
                    name,
                    dir.display()
                ));
            }
        }
        Ok(PairFiles {
            dir: dir.to_path_buf(),
            cert: cert_name.to_os_string(),
            key: key_name.to_os_string(),
        })
    }

    pub(crate) fn cert(&self) -> PathBuf {
        self.dir.join(&self.cert)
    }
}

/// A certificate's validity, UNIX seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) not_before: u64,
    pub(crate) not_after: u64,
}

impl Lifetime {
    /// The validity of the first certificate of a PEM chain.
    pub(crate) fn of_pem(pem: &[u8]) -> Result<Lifetime> {
        with_leaf(pem, |certificate| {
            let validity = certificate.validity();
            let seconds = |t: i64| u64::try_from(t).unwrap_or(0);
            Lifetime {
                not_before: seconds(validity.not_before.timestamp()),
                not_after: seconds(validity.not_after.timestamp()),
            }
        })
    }
}

/// `read` of the first certificate of a PEM chain.
fn with_leaf<T>(
    pem: &[u8],
    read: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
) -> Result<T> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem)
        .next()
        .context("no PEM certificate")?
        .map_err(|err| anyhow!("not PEM: {err}"))?;
    if block.label != "CERTIFICATE" {
        bail!(
            "the first PEM block is a {}, not a CERTIFICATE",
            block.label
        );
    }
    let (_, certificate) = x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|err| anyhow!("the certificate does not parse: {err}"))?;
    Ok(read(&certificate))
}

/// When the certificate written at `written_at` (the file's time: when this VM got it) is
/// renewed: half way through the part of its lifetime this VM holds it. The pilot backdates
/// a certificate's `notBefore` a little (for VMs whose clock is behind), which would bring
/// the renewal of a short-lived certificate close to its expiry if counted.
pub(crate) fn due(lifetime: Lifetime, written_at: u64) -> u64 {
    let held_from = written_at.max(lifetime.not_before).min(lifetime.not_after);
    renew_at(held_from, lifetime.not_after)
}

/// Checks that `key` is the key of the first certificate of `chain_pem`: a pilot's answer is
/// never installed beside a key it was not signed for.
pub(crate) fn check_fits(chain_pem: &str, key: &rcgen::KeyPair) -> Result<()> {
    let fits = with_leaf(chain_pem.as_bytes(), |certificate| {
        certificate.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    })?;
    if !fits {
        bail!("the certificate is not for the key its request was signed with");
    }
    Ok(())
}

/// Writes a new generation of the pair and makes it the current one: `..data` swapped by a
/// rename, the names in `files` made symlinks into it (once), the directory synced, and the
/// older generations removed (a failure there is logged: the new pair is in place).
pub(crate) fn install(files: &PairFiles, cert_pem: &[u8], key_pem: &[u8]) -> Result<()> {
    let dir = &files.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot make the directory", dir.display()))?;
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = format!(
        "..{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    );
    let generation = dir.join(&stamp);
    std::fs::create_dir(&generation)
        .and_then(|()| {
            std::fs::set_permissions(&generation, std::fs::Permissions::from_mode(0o755))
        })
        .with_context(|| format!("{}: cannot make the directory", generation.display()))?;
    crate::fsutil::write_atomically_with_mode(&generation.join(&files.cert), cert_pem, 0o644)?;
    crate::fsutil::write_atomically_with_mode(&generation.join(&files.key), key_pem, 0o600)?;
    replace_symlink(dir, DATA, Path::new(&stamp))?;
    for name in [&files.cert, &files.key] {
        let target = Path::new(DATA).join(name);
        if std::fs::read_link(dir.join(name)).ok().as_deref() != Some(target.as_path()) {
            replace_symlink(dir, &name.to_string_lossy(), &target)?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}: cannot sync the directory", dir.display()))?;
    if let Err(err) = remove_generations(dir, &stamp) {
        tracing::warn!(dir = %dir.display(), "the older certificates stay: {err:#}");
    }
    Ok(())
}

/// Makes `dir/name` a symlink to `target`, atomically: a new link renamed over it.
fn replace_symlink(dir: &Path, name: &str, target: &Path) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| {
            format!(
                "{}: cannot point it at {}",
                path.display(),
                target.display()
            )
        })
}

/// Removes every generation directory in `dir` but `ours` and the one `..data` names now,
/// which is another's when two writers raced (a `boshy join` again while the agent renews):
/// the last swap wins, and its generation stays.
fn remove_generations(dir: &Path, ours: &str) -> Result<()> {
    let current = std::fs::read_link(dir.join(DATA))
        .with_context(|| format!("{}: cannot read", dir.join(DATA).display()))?;
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // `..data` and the names are symlinks: only generations are directories.
        let generation = name.starts_with("..")
            && name != ours
            && Path::new(name.as_ref()) != current
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if generation {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("{}: cannot remove", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The pair the agent renews, when its config says so (`mesh_certificate: {renew: true}`).
/// Errors name the file and the key.
pub(crate) fn from_config(config: &AgentConfig, config_path: &Path) -> Result<Option<PairFiles>> {
    if !config.mesh_certificate.as_ref().is_some_and(|m| m.renew) {
        return Ok(None);
    }
    let at = |key: &str| format!("config file {}: key `{key}`", config_path.display());
    let Some(tls) = &config.tls else {
        bail!(
            "{}: renewing the mesh certificate needs `tls`, whose certificate it renews",
            at("mesh_certificate.renew")
        );
    };
    PairFiles::of(&tls.cert_path, &tls.key_path)
        .map(Some)
        .map_err(|why| anyhow!("{}: {why}", at("tls.key_path")))
}

/// Starts renewing the pair in `files` from `pilots` (their names port, with `tls`, whose
/// client certificate is that pair, read again as it changes).
pub(crate) fn start(
    files: PairFiles,
    pilots: &[String],
    tls: Option<rustls::ClientConfig>,
) -> Result<()> {
    let signer = PilotSigner::new(pilots, tls)?;
    tracing::info!(certificate = %files.cert().display(), "renewing this VM's mesh certificate at half its lifetime");
    tokio::spawn(keep_renewed(files, signer));
    Ok(())
}

/// The certificate in hand: its lifetime, and when this VM got it (the file's time).
fn held(files: &PairFiles) -> Result<(Lifetime, u64)> {
    let path = files.cert();
    let pem = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let lifetime = Lifetime::of_pem(&pem).with_context(|| format!("{}", path.display()))?;
    let written_at = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(lifetime.not_before, |d| d.as_secs());
    Ok((lifetime, written_at))
}

/// Renews the pair when it is due, forever: after a success, at half the new certificate's
/// lifetime; after a failure, with backoff (1 s doubling to 60 s, never more than an eighth
/// of what the certificate in hand has left). The file is read again before each wait, so a
/// `boshy join` again (a new certificate) is followed.
async fn keep_renewed(files: PairFiles, signer: PilotSigner) {
    let mut backoff = Backoff::default();
    let mut failures = FailureLog::default();
    loop {
        let now = unix_now();
        let in_hand = held(&files);
        let not_after = in_hand.as_ref().ok().map(|(l, _)| l.not_after);
        let attempt = match in_hand {
            Ok((lifetime, written_at)) => {
                let at = due(lifetime, written_at);
                if at > now {
                    tracing::debug!(
                        not_after = lifetime.not_after,
                        renew_in_s = at - now,
                        "the mesh certificate is renewed later"
                    );
                    tokio::time::sleep(until_unix(at)).await;
                    continue;
                }
                renew_once(&files, &signer, now).await
            }
            Err(err) => Err(err),
        };
        match attempt {
            Ok(renewed) => {
                backoff.succeeded();
                let failed = failures.succeeded();
                tracing::info!(
                    not_after = renewed.not_after,
                    renew_in_s = due(renewed, unix_now()).saturating_sub(unix_now()),
                    failed_attempts_before = failed,
                    "this VM's mesh certificate renewed"
                );
            }
            Err(err) => {
                let error = format!("{err:#}");
                let left = validity(not_after, now);
                match failures.failed(&error) {
                    FailureNote::New { previous_repeats } => tracing::warn!(
                        previous_repeats,
                        "renewing this VM's mesh certificate failed: {error}; {}",
                        expiry_note(left)
                    ),
                    FailureNote::Summary { repeats } => tracing::warn!(
                        repeats,
                        "renewing this VM's mesh certificate still fails as logged; {}",
                        expiry_note(left)
                    ),
                    FailureNote::Quiet => {}
                }
                let wait = backoff.failed(Instant::now(), RETRY_MIN, RETRY_MAX);
                tokio::time::sleep(retry_delay(wait, left)).await;
            }
        }
    }
}

/// What an operator needs to know of the certificate in hand after a failure.
fn expiry_note(left: Validity) -> String {
    match left {
        Validity::Left(seconds) => format!("the certificate in hand has {seconds} s left"),
        Validity::Expired(seconds) => format!(
            "the certificate in hand expired {seconds} s ago: the pilots refuse it, and only \
             `boshy join` again (with a new token) brings the VM back"
        ),
        Validity::Nothing => "no readable certificate in hand".into(),
    }
}

/// One renewal: a new key and CSR, signed by a pilot, checked, installed.
async fn renew_once(files: &PairFiles, signer: &PilotSigner, now: u64) -> Result<Lifetime> {
    let (key, csr) = new_key_and_csr(Vec::new())?;
    let request = RenewRequest {
        csr,
        nonce: nonce(),
        issued_at: now,
    };
    let answer = signer.renew(&request).await?;
    check_answer(&answer, unix_now())?;
    check_fits(&answer.certificate_chain, &key)?;
    let lifetime = Lifetime::of_pem(answer.certificate_chain.as_bytes())?;
    let key_pem = Secret::new(key.serialize_pem());
    let files = files.clone();
    tokio::task::spawn_blocking(move || {
        install(
            &files,
            answer.certificate_chain.as_bytes(),
            key_pem.expose().as_bytes(),
        )
    })
    .await
    .context("the task writing the certificate failed")??;
    Ok(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for a new P-256 key, valid `[not_before, not_after]`.
    fn certificate(not_before: u64, not_after: u64) -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_before = (UNIX_EPOCH + std::time::Duration::from_secs(not_before)).into();
        params.not_after = (UNIX_EPOCH + std::time::Duration::from_secs(not_after)).into();
        (params.self_signed(&key).unwrap().pem(), key)
    }

    #[test]
    fn the_pair_is_two_names_in_one_directory() {
        let files = PairFiles::of(
            Path::new("/etc/boshy/tls/vm.pem"),
            Path::new("/etc/boshy/tls/vm.key"),
        )
        .unwrap();
        assert_eq!(files.cert(), Path::new("/etc/boshy/tls/vm.pem"));
        for (cert, key, says) in [
            (
                "/etc/boshy/tls/vm.pem",
                "/etc/boshy/vm.key",
                "certificate's directory",
            ),
            ("/etc/boshy/tls/vm.pem", "/etc/boshy/tls/vm.pem", "one file"),
            (
                "/etc/boshy/tls/..data",
                "/etc/boshy/tls/vm.key",
                "starts with `..`",
            ),
            ("/", "/etc/boshy/tls/vm.key", "file paths"),
        ] {
            let why = PairFiles::of(Path::new(cert), Path::new(key)).unwrap_err();
            assert!(why.contains(says), "{cert} {key}: {why}");
        }
    }

    #[test]
    fn renewal_is_due_half_way_through_what_the_vm_holds() {
        let signed = 1_800_000_000;
        // Backdated a minute by the pilot, valid 60 s from the signing, written at once.
        let lifetime = Lifetime {
            not_before: signed - 60,
            not_after: signed + 60,
        };
        assert_eq!(due(lifetime, signed), signed + 30);
        assert_eq!(
            due(lifetime, signed - 600),
            signed,
            "a file older than the certificate"
        );
        assert_eq!(
            due(lifetime, signed + 600),
            signed + 60,
            "written after it expired: at once"
        );
        let week = Lifetime {
            not_before: signed,
            not_after: signed + 604_800,
        };
        assert_eq!(due(week, signed), signed + 302_400);
    }

    #[test]
    fn the_lifetime_and_the_key_are_read_from_the_certificate() {
        let (pem, key) = certificate(1_800_000_000, 1_800_000_600);
        assert_eq!(
            Lifetime::of_pem(pem.as_bytes()).unwrap(),
            Lifetime {
                not_before: 1_800_000_000,
                not_after: 1_800_000_600
            }
        );
        check_fits(&pem, &key).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let err = check_fits(&pem, &other).unwrap_err().to_string();
        assert!(err.contains("not for the key"), "{err}");
        assert!(Lifetime::of_pem(b"garbage").is_err());
        let err = Lifetime::of_pem(key.serialize_pem().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a CERTIFICATE"), "{err}");
    }

    #[test]
    fn a_new_generation_is_swapped_in_and_the_old_one_removed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let files = PairFiles::of(&tls.join("vm.pem"), &tls.join("vm.key")).unwrap();
        let generations = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&tls)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("..") && n != DATA)
                .collect();
            names.sort();
            names
        };
        install(&files, b"cert one", b"key one").unwrap();
        let first = generations();
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(
            std::fs::read_link(tls.join(DATA)).unwrap(),
            Path::new(&first[0])
        );
        assert_eq!(
            std::fs::read_link(tls.join("vm.pem")).unwrap(),
            Path::new("..data/vm.pem")
        );
        assert_eq!(std::fs::read(tls.join("vm.key")).unwrap(), b"key one");
        assert_eq!(
            std::fs::metadata(tls.join("vm.key")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(tls.join("vm.pem")).unwrap().mode() & 0o777,
            0o644
        );

        install(&files, b"cert two", b"key two").unwrap();
        let second = generations();
        assert_eq!(second.len(), 1, "the first generation is gone: {second:?}");
        assert_ne!(second, first);
        assert_eq!(std::fs::read(tls.join("vm.pem")).unwrap(), b"cert two");
        assert_eq!(std::fs::read(tls.join("vm.key")).unwrap(), b"key two");
        let mut names: Vec<String> = std::fs::read_dir(&tls)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [second[0].as_str(), DATA, "vm.key", "vm.pem"],
            "no temporary left"
        );
    }

    #[test]
    fn the_generation_data_names_is_kept_whoever_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = PairFiles::of(&dir.path().join("vm.pem"), &dir.path().join("vm.key")).unwrap();
        install(&files, b"cert", b"key").unwrap();
        // Another writer's generation, swapped in after ours was written.
        let theirs = dir.path().join("..theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("vm.pem"), b"their cert").unwrap();
        std::os::unix::fs::symlink("..theirs", dir.path().join("..data.tmp")).unwrap();
        std::fs::rename(dir.path().join("..data.tmp"), dir.path().join(DATA)).unwrap();
        remove_generations(dir.path(), "..ours").unwrap();
        assert!(theirs.is_dir(), "the current generation stays");
        assert_eq!(
            std::fs::read(dir.path().join("vm.pem")).unwrap(),
            b"their cert"
        );
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        assert_eq!(left, ["..theirs"], "the first generation went");
    }

    #[test]
    fn plain_files_become_the_links_into_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vm.pem"), b"old").unwrap();
        let files = PairFiles::of(&dir.path().join("vm.pem"), &dir.path().join("vm.key")).unwrap();
        install(&files, b"new cert", b"new key").unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("vm.pem"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read(dir.path().join("vm.pem")).unwrap(),
            b"new cert"
        );
    }

    fn config(extra: &str) -> AgentConfig {
        let text = format!("pilots: [\"https://10.0.0.1:15011\"]\ntable_path: /t.json\n{extra}");
        crate::config::parse(&text, Path::new("agent.yml")).unwrap()
    }

    #[test]
    fn the_config_says_whether_and_what_to_renew() {
        let path = Path::new("/etc/boshy/agent.yml");
        let tls = "tls: {ca_cert_path: /etc/boshy/ca.pem, cert_path: /etc/boshy/tls/vm.pem, key_path: /etc/boshy/tls/vm.key, server_name: p}\n";
        assert!(
            from_config(&config(tls), path).unwrap().is_none(),
            "a BOSH VM's"
        );
        let off = format!("{tls}mesh_certificate: {{renew: false}}\n");
        assert!(from_config(&config(&off), path).unwrap().is_none());
        let on = format!("{tls}mesh_certificate: {{renew: true}}\n");
        let files = from_config(&config(&on), path).unwrap().unwrap();
        assert_eq!(files.cert(), Path::new("/etc/boshy/tls/vm.pem"));
        let err = from_config(
            &config("insecure_plaintext: true\nmesh_certificate: {renew: true}\n"),
            path,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/boshy/agent.yml") && err.contains("`mesh_certificate.renew`"),
            "{err}"
        );
        let apart = on.replace("/etc/boshy/tls/vm.key", "/etc/boshy/vm.key");
        let err = from_config(&config(&apart), path).unwrap_err().to_string();
        assert!(err.contains("`tls.key_path`"), "{err}");
        let parse = crate::config::parse::<AgentConfig>(
            "pilots: []\ntable_path: /t\nmesh_certificate: {renew: true, often: true}\n",
            path,
        );
        assert!(parse.unwrap_err().to_string().contains("often"));
    }
}
