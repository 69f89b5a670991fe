//! The agent's side of workload identities (docs/security.md, "On the VM: key, certificate,
//! SDS"): an ECDSA P-256 key made in memory, a certificate request for the instance group's
//! SPIFFE ID, signed by a pilot, renewed at half its lifetime.
//!
//! The key never leaves the process except to the VM's Envoy over SDS (`identity::sds`): it
//! is not written to disk, logged, or sent to the pilots (only the CSR signed with it is).
//! Every renewal makes a new key, as Istio's agent does: a key then protects one short-lived
//! certificate only, so one that leaked (a core dump, a memory read) is worth nothing once
//! that certificate expires, and a P-256 key costs microseconds to make.
//!
//! Pure: the CSR ([`new_request`]), when to renew ([`renew_at`]), how long the certificate in
//! hand has left ([`validity`]), which failures to log ([`FailureLog`]). The request loop,
//! [`keep_certified`], only moves between them; [`PilotSigner`] sends the request to the
//! pilots.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rand::Rng;
use tokio::sync::watch;

use super::spiffe::workload_id;
use super::wire::{CsrAnswer, CsrRequest, RenewRequest, CSR_PATH, RENEW_PATH};
use crate::catalog::model::InstanceRef;
use crate::config::{AgentConfig, Secret};
use crate::director::Backoff;
use crate::names::{base_url, error_chain, http_client};

/// The first retry of a failed request waits this long, each next one twice as long...
pub(super) const RETRY_MIN: Duration = Duration::from_secs(1);
/// ... up to this.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long one pilot may take to sign.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Repeats of the same failure are logged as one summary every this many attempts (about ten
/// minutes once the retries wait a minute).
const SUMMARY_EVERY: u32 = 10;
/// Bytes of randomness in a request's nonce (the wire wants at least 16).
const NONCE_BYTES: usize = 16;

/// The certificate the VM's Envoy presents and the CAs it checks peers against: what SDS
/// serves. `Debug` never shows the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadCertificate {
    /// The SPIFFE ID the certificate carries.
    pub spiffe_id: String,
    /// PEM: the workload certificate, then its intermediates.
    pub certificate_chain: String,
    /// PEM: every CA a peer's certificate may chain to.
    pub trust_bundle: String,
    /// UNIX seconds.
    pub not_after: u64,
    /// When the agent received it (UNIX seconds): the start of its lifetime as far as
    /// renewal goes.
    pub received_at: u64,
    private_key: Secret,
}

impl WorkloadCertificate {
    /// The PEM of the certificate's key, for SDS alone.
    pub(crate) fn private_key_pem(&self) -> &str {
        self.private_key.expose()
    }

    /// The SDS version of the secrets: changes with the certificate or the bundle, the same
    /// after an agent restart that got the same ones (never, in practice: a new key each time).
    pub(crate) fn version(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(&self.certificate_chain)
            .chain_update(&self.trust_bundle)
            .finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    #[cfg(test)]
    pub(crate) fn for_tests(chain: &str, bundle: &str, key: &str) -> Self {
        WorkloadCertificate {
            spiffe_id: "spiffe://boshy/deployment/d/instance_group/g".into(),
            certificate_chain: chain.into(),
            trust_bundle: bundle.into(),
            not_after: 2,
            received_at: 1,
            private_key: Secret::new(key),
        }
    }
}

/// The channel every SDS stream follows: `None` until the first certificate and after the
/// one in hand expired unrenewed.
pub type Certificates = watch::Receiver<Option<Arc<WorkloadCertificate>>>;

/// A certificate request about to be sent, and the key it was signed with.
pub(crate) struct PendingRequest {
    key: rcgen::KeyPair,
    pub(crate) csr_pem: String,
}

/// Makes a new P-256 key and a CSR signed with it whose only subject alternative name is
/// `spiffe_id` (no subject: SPIFFE puts the identity in the URI SAN alone).
pub(crate) fn new_request(spiffe_id: &str) -> anyhow::Result<PendingRequest> {
    let uri = rcgen::Ia5String::try_from(spiffe_id)
        .map_err(|err| anyhow!("the SPIFFE ID {spiffe_id:?} cannot be a URI SAN: {err}"))?;
    let (key, csr_pem) = new_key_and_csr(vec![rcgen::SanType::URI(uri)])?;
    Ok(PendingRequest { key, csr_pem })
}

/// A new P-256 key and a PEM CSR signed with it, with an empty subject and these subject
/// alternative names: what every certificate request of a VM looks like (a workload
/// certificate's, and a joining VM's, whose identity the pilot decides alone).
pub(crate) fn new_key_and_csr(
    subject_alt_names: Vec<rcgen::SanType>,
) -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("making the workload key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = subject_alt_names;
    let csr = params
        .serialize_request(&key)
        .context("signing the certificate request")?;
    let csr_pem = csr.pem().context("encoding the certificate request")?;
    Ok((key, csr_pem))
}

/// A fresh nonce: [`NONCE_BYTES`] random bytes, hex.
pub(super) fn nonce() -> String {
    let bytes: [u8; NONCE_BYTES] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// When a certificate received at `received_at` and expiring at `not_after` is renewed: half
/// way through its lifetime (Istio's default), so that a pilot outage of up to half a
/// lifetime goes unnoticed.
pub(crate) fn renew_at(received_at: u64, not_after: u64) -> u64 {
    received_at + not_after.saturating_sub(received_at) / 2
}

/// How long the certificate in hand has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validity {
    /// None received yet.
    Nothing,
    /// Seconds left.
    Left(u64),
    /// Expired this many seconds ago.
    Expired(u64),
}

pub(crate) fn validity(not_after: Option<u64>, now: u64) -> Validity {
    match not_after {
        None => Validity::Nothing,
        Some(end) if end > now => Validity::Left(end - now),
        Some(end) => Validity::Expired(now - end),
    }
}

impl std::fmt::Display for Validity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validity::Nothing => f.write_str("no certificate yet (Envoy's mutual TLS waits)"),
            Validity::Left(s) => write!(f, "the current certificate has {s} s left"),
            Validity::Expired(s) => write!(
                f,
                "the current certificate expired {s} s ago (mutual TLS fails)"
            ),
        }
    }
}

/// Checks a pilot's answer before it is served: PEM where PEM is due, an expiry ahead.
pub(crate) fn check_answer(answer: &CsrAnswer, now: u64) -> anyhow::Result<()> {
    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----";
    if !answer.certificate_chain.contains(PEM_CERT) {
        bail!("the answer's certificate_chain holds no PEM certificate");
    }
    if !answer.trust_bundle.contains(PEM_CERT) {
        bail!("the answer's trust_bundle holds no PEM certificate");
    }
    if answer.not_after <= now {
        bail!(
            "the answer's not_after ({}) is not in the future (now {now})",
            answer.not_after
        );
    }
    Ok(())
}

/// What to log of one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureNote {
    /// A failure unlike the previous attempt's: log it, with how often the previous one
    /// repeated (0 when there was none).
    New { previous_repeats: u32 },
    /// The same failure again, [`SUMMARY_EVERY`] more times: log a summary.
    Summary { repeats: u32 },
    /// The same failure again: nothing to log.
    Quiet,
}

/// Remembers the failure being reported, so that each distinct one is logged once and its
/// repeats as a summary now and then.
#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    error: Option<String>,
    /// Attempts that failed so since it was logged.
    repeats: u32,
    /// Attempts that failed since the last success.
    failed: u32,
}

impl FailureLog {
    pub(crate) fn failed(&mut self, error: &str) -> FailureNote {
        self.failed += 1;
        if self.error.as_deref() != Some(error) {
            let previous_repeats = std::mem::take(&mut self.repeats);
            self.error = Some(error.to_string());
            return FailureNote::New { previous_repeats };
        }
        self.repeats += 1;
        if self.repeats.is_multiple_of(SUMMARY_EVERY) {
            FailureNote::Summary {
                repeats: self.repeats,
            }
        } else {
            FailureNote::Quiet
        }
    }

    /// Forgets the failures; returns how many attempts failed before this success.
    pub(crate) fn succeeded(&mut self) -> u32 {
        std::mem::take(self).failed
    }
}

/// Signs a workload's certificate request: the pilots ([`PilotSigner`]), or a test CA.
pub trait Signer: Send + Sync {
    fn sign(&self, request: &CsrRequest) -> impl Future<Output = anyhow::Result<CsrAnswer>> + Send;
}

/// Who asks: the BOSH instance, and the identity of its instance group.
#[derive(Debug, Clone)]
pub struct Workload {
    pub instance: InstanceRef,
    pub spiffe_id: String,
}

/// Keeps `certificates` holding a valid certificate for `workload`: asks `signer` at once,
/// again at half of each certificate's lifetime, and after a failure with backoff (1 s
/// doubling to 60 s). With the signer unreachable, the certificate in hand is kept until it
/// expires, then withdrawn. Runs until dropped.
pub async fn keep_certified(
    workload: Workload,
    signer: impl Signer,
    certificates: watch::Sender<Option<Arc<WorkloadCertificate>>>,
) {
    let mut backoff = Backoff::default();
    let mut failures = FailureLog::default();
    loop {
        let now = unix_now();
        match request(&workload, &signer, now).await {
            Ok(certificate) => {
                backoff.succeeded();
                let failed = failures.succeeded();
                let next = renew_at(certificate.received_at, certificate.not_after);
                tracing::info!(
                    spiffe_id = %workload.spiffe_id,
                    version = %certificate.version(),
                    not_after = certificate.not_after,
                    renew_in_s = next.saturating_sub(now),
                    failed_attempts_before = failed,
                    "workload certificate signed"
                );
                certificates.send_replace(Some(Arc::new(certificate)));
                // Even a certificate of a second or two is not asked for in a busy loop.
                tokio::time::sleep(until_unix(next).max(RETRY_MIN)).await;
            }
            Err(err) => {
                let error = format!("{err:#}");
                let current = certificates.borrow().as_ref().map(|c| c.not_after);
                let left = validity(current, now);
                note_failure(failures.failed(&error), &error, left);
                if let Validity::Expired(_) = left {
                    if certificates.send_replace(None).is_some() {
                        tracing::error!(
                            spiffe_id = %workload.spiffe_id,
                            "the workload certificate expired unrenewed: SDS withdraws it, \
                             and new Envoy streams wait for the next one"
                        );
                    }
                }
                let backoff = backoff.failed(Instant::now(), RETRY_MIN, RETRY_MAX);
                tokio::time::sleep(retry_delay(backoff, left)).await;
            }
        }
    }
}

/// One request: a new key and CSR, signed by `signer`, checked.
async fn request(
    workload: &Workload,
    signer: &impl Signer,
    now: u64,
) -> anyhow::Result<WorkloadCertificate> {
    let pending = new_request(&workload.spiffe_id)?;
    let request = CsrRequest {
        deployment: workload.instance.deployment.clone(),
        instance: workload.instance.instance_id.clone(),
        csr: pending.csr_pem,
        nonce: nonce(),
        issued_at: now,
    };
    let answer = signer.sign(&request).await?;
    let received_at = unix_now();
    check_answer(&answer, received_at)?;
    Ok(WorkloadCertificate {
        spiffe_id: workload.spiffe_id.clone(),
        certificate_chain: answer.certificate_chain,
        trust_bundle: answer.trust_bundle,
        not_after: answer.not_after,
        received_at,
        private_key: Secret::new(pending.key.serialize_pem()),
    })
}

fn note_failure(note: FailureNote, error: &str, left: Validity) {
    let expired = matches!(left, Validity::Expired(_));
    match note {
        FailureNote::New { previous_repeats } if expired => tracing::error!(
            previous_repeats,
            "workload certificate request failed: {error}; {left}"
        ),
        FailureNote::New { previous_repeats } => tracing::warn!(
            previous_repeats,
            "workload certificate request failed: {error}; {left}"
        ),
        FailureNote::Summary { repeats } if expired => tracing::error!(
            repeats,
            "workload certificate requests still fail as logged; {left}"
        ),
        FailureNote::Summary { repeats } => tracing::warn!(
            repeats,
            "workload certificate requests still fail as logged; {left}"
        ),
        FailureNote::Quiet => {}
    }
}

/// How long to wait before the next attempt after a failure: the backoff, but never more
/// than an eighth of what the current certificate has left, so that a pilot back after an
/// outage is asked again well before the certificate in hand expires (with short-lived
/// certificates the backoff alone would sleep past the expiry).
pub(super) fn retry_delay(backoff: Duration, left: Validity) -> Duration {
    match left {
        Validity::Left(seconds) => backoff.min(Duration::from_secs(seconds / 8).max(RETRY_MIN)),
        Validity::Nothing | Validity::Expired(_) => backoff,
    }
}

/// How long until the UNIX second `at` (zero when it is past).
pub(super) fn until_unix(at: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(at))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The workload the agent's config asks a certificate for, and its SDS socket; `None` when
/// the config has no `identity`. Errors name the file and the key.
pub(crate) fn from_config(
    config: &AgentConfig,
    config_path: &Path,
) -> anyhow::Result<Option<(Workload, PathBuf)>> {
    let Some(identity) = &config.identity else {
        return Ok(None);
    };
    let at = |key: &str| format!("config file {}: key `{key}`", config_path.display());
    let Some(instance) = &config.instance else {
        bail!(
            "{}: a workload identity needs the instance it belongs to",
            at("instance")
        );
    };
    let Some(group) = &instance.instance_group else {
        bail!(
            "{}: a workload identity needs the instance group (spec.name)",
            at("instance.instance_group")
        );
    };
    let spiffe_id = workload_id(&identity.trust_domain, &instance.deployment, group)
        .map_err(|err| anyhow!("{}: {err}", at("instance")))?;
    if identity.sds_socket.file_name().is_none() {
        bail!(
            "{}: `{}` is not a file path",
            at("identity.sds_socket"),
            identity.sds_socket.display()
        );
    }
    let workload = Workload {
        instance: InstanceRef {
            deployment: instance.deployment.clone(),
            instance_id: instance.id.clone(),
        },
        spiffe_id,
    };
    Ok(Some((workload, identity.sds_socket.clone())))
}

/// Starts the workload identity of the agent: binds the SDS socket at `socket` (an error
/// here stops the agent), then keeps a certificate signed by the pilots and serves it.
/// Returns the certificate as served: none until the pilots sign one.
pub(crate) fn start(
    workload: Workload,
    socket: PathBuf,
    pilots: &[String],
    tls: Option<rustls::ClientConfig>,
) -> anyhow::Result<Certificates> {
    let signer = PilotSigner::new(pilots, tls)?;
    let listener = super::sds::bind(&socket)?;
    let (certificates, served) = watch::channel(None);
    tracing::info!(spiffe_id = %workload.spiffe_id, socket = %socket.display(), "workload identity: asking the pilots for a certificate");
    tokio::spawn(keep_certified(workload, signer, certificates));
    let held = served.clone();
    tokio::spawn(async move {
        if let Err(err) = super::sds::serve(listener, socket, served).await {
            tracing::error!("{err:#}: Envoy gets no new certificate");
        }
    });
    Ok(held)
}

/// The pilots, on their names port with the agent's mutual-TLS client: tried in turn until
/// one signs.
#[derive(Debug, Clone)]
pub struct PilotSigner {
    client: reqwest::Client,
    /// Base URLs.
    pilots: Vec<String>,
}

impl PilotSigner {
    /// `pilots` as the agent's config has them; `tls` as for the name-table stream.
    pub fn new(pilots: &[String], tls: Option<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let secure = tls.is_some();
        let client = http_client(tls).context("the HTTP client for certificate requests")?;
        Ok(PilotSigner {
            client,
            pilots: pilots.iter().map(|p| base_url(p, secure)).collect(),
        })
    }

    /// POSTs `request` to `path` of the pilot at `base`: the certificate it answers.
    async fn ask(
        &self,
        base: &str,
        path: &str,
        request: &impl serde::Serialize,
    ) -> anyhow::Result<CsrAnswer> {
        let sent = self
            .client
            .post(format!("{base}{path}"))
            .json(request)
            .timeout(SIGN_TIMEOUT)
            .send()
            .await
            .map_err(|err| anyhow!(error_chain(&err)))?;
        let status = sent.status();
        if !status.is_success() {
            let reason = sent.text().await.unwrap_or_default();
            bail!("refused ({status}): {}", crate::text::clip(&reason));
        }
        sent.json()
            .await
            .map_err(|err| anyhow!("reading the answer: {}", error_chain(&err)))
    }

    /// POSTs `request` to `path` of each pilot in turn until one signs.
    async fn first_signed(
        &self,
        path: &str,
        request: &impl serde::Serialize,
    ) -> anyhow::Result<CsrAnswer> {
        let mut refusals = Vec::new();
        for base in &self.pilots {
            match self.ask(base, path, request).await {
                Ok(answer) => return Ok(answer),
                Err(err) => refusals.push(format!("{base}: {err:#}")),
            }
        }
        if refusals.is_empty() {
            bail!("no pilot to ask");
        }
        bail!("no pilot signed: {}", refusals.join("; "))
    }

    /// A joined VM's renewal of its mesh certificate (`identity::mesh_certificate`).
    pub(crate) async fn renew(&self, request: &RenewRequest) -> anyhow::Result<CsrAnswer> {
        self.first_signed(RENEW_PATH, request).await
    }
}

impl Signer for PilotSigner {
    async fn sign(&self, request: &CsrRequest) -> anyhow::Result<CsrAnswer> {
        self.first_signed(CSR_PATH, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://boshy/deployment/sample/instance_group/banana";

    #[test]
    fn the_csr_names_the_spiffe_id_alone_and_is_signed_by_a_fresh_p256_key() {
        let first = new_request(ID).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&first.csr_pem).unwrap();
        let uri = rcgen::Ia5String::try_from(ID).unwrap();
        assert_eq!(
            parsed.params.subject_alt_names,
            [rcgen::SanType::URI(uri)],
            "one SAN, the URI"
        );
        assert_eq!(parsed.params.distinguished_name.iter().count(), 0);
        use rcgen::PublicKeyData;
        assert_eq!(
            parsed.public_key.algorithm(),
            &rcgen::PKCS_ECDSA_P256_SHA256
        );
        assert_eq!(
            parsed.public_key.der_bytes(),
            first.key.public_key_raw(),
            "the CSR carries the key it was made with"
        );
        let second = new_request(ID).unwrap();
        assert_ne!(second.key.public_key_raw(), first.key.public_key_raw());
        assert!(!first.csr_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_spiffe_id_that_is_no_uri_is_refused_by_name() {
        let err = new_request("spiffe://boshy/é").err().unwrap().to_string();
        assert!(err.contains("spiffe://boshy/é"), "{err}");
    }

    fn config(extra: &str) -> AgentConfig {
        let text = format!("pilots: [\"10.0.0.1:15011\"]\ntable_path: /t.json\n{extra}");
        crate::config::parse(&text, Path::new("agent.yml")).unwrap()
    }

    #[test]
    fn the_config_names_the_workload_or_what_is_missing() {
        let path = Path::new("/jobs/agent.yml");
        assert!(from_config(&config(""), path).unwrap().is_none());
        let (workload, socket) = from_config(
            &config(
                "instance: {deployment: sample, id: i-1, instance_group: banana}\n\
                 identity: {trust_domain: corp.example, sds_socket: /run/sds.sock}\n",
            ),
            path,
        )
        .unwrap()
        .expect("identity on");
        assert_eq!(
            workload.spiffe_id,
            "spiffe://corp.example/deployment/sample/instance_group/banana"
        );
        assert_eq!(workload.instance.instance_id, "i-1");
        assert_eq!(socket, Path::new("/run/sds.sock"));
        let default_domain = from_config(
            &config(
                "instance: {deployment: sample, id: i-1, instance_group: banana}\n\
                 identity: {sds_socket: /run/sds.sock}\n",
            ),
            path,
        )
        .unwrap()
        .unwrap();
        assert!(default_domain.0.spiffe_id.starts_with("spiffe://boshy/"));
        for (extra, key) in [
            ("identity: {sds_socket: /s}\n", "key `instance`"),
            (
                "instance: {deployment: d, id: i}\nidentity: {sds_socket: /s}\n",
                "key `instance.instance_group`",
            ),
            (
                "instance: {deployment: d, id: i, instance_group: \"a b\"}\nidentity: {sds_socket: /s}\n",
                "key `instance`",
            ),
            (
                "instance: {deployment: d, id: i, instance_group: g}\nidentity: {sds_socket: /}\n",
                "key `identity.sds_socket`",
            ),
        ] {
            let err = from_config(&config(extra), path).err().unwrap().to_string();
            assert!(err.contains("/jobs/agent.yml") && err.contains(key), "{extra}: {err}");
        }
        let parse = crate::config::parse::<AgentConfig>(
            "pilots: []\ntable_path: /t\nidentity: {trust_domain: Bad, sds_socket: /s}\n",
            path,
        );
        assert!(parse
            .unwrap_err()
            .to_string()
            .contains("identity.trust_domain"));
    }

    #[test]
    fn renewal_comes_at_half_the_lifetime() {
        assert_eq!(renew_at(1_000, 1_000 + 3_600), 1_000 + 1_800);
        assert_eq!(renew_at(1_000, 1_001), 1_000);
        assert_eq!(renew_at(1_000, 900), 1_000, "already expired: at once");
    }

    #[test]
    fn retries_double_from_a_second_to_a_minute() {
        let mut backoff = Backoff::default();
        let start = Instant::now();
        let delays: Vec<u64> = (0..9)
            .map(|_| backoff.failed(start, RETRY_MIN, RETRY_MAX).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        backoff.succeeded();
        assert_eq!(backoff.failed(start, RETRY_MIN, RETRY_MAX), RETRY_MIN);
    }

    #[test]
    fn the_time_left_is_counted_from_the_expiry() {
        assert_eq!(validity(None, 50), Validity::Nothing);
        assert_eq!(validity(Some(100), 40), Validity::Left(60));
        assert_eq!(validity(Some(100), 100), Validity::Expired(0));
        assert_eq!(validity(Some(100), 130), Validity::Expired(30));
        assert!(Validity::Left(60).to_string().contains("60 s left"));
        assert!(Validity::Expired(30)
            .to_string()
            .contains("expired 30 s ago"));
    }

    #[test]
    fn each_distinct_failure_is_logged_once_then_summarised() {
        let mut log = FailureLog::default();
        assert_eq!(
            log.failed("refused"),
            FailureNote::New {
                previous_repeats: 0
            }
        );
        let notes: Vec<FailureNote> = (0..SUMMARY_EVERY).map(|_| log.failed("refused")).collect();
        assert!(notes[..notes.len() - 1]
            .iter()
            .all(|n| *n == FailureNote::Quiet));
        assert_eq!(
            notes.last(),
            Some(&FailureNote::Summary {
                repeats: SUMMARY_EVERY
            })
        );
        log.failed("refused");
        assert_eq!(
            log.failed("timed out"),
            FailureNote::New {
                previous_repeats: SUMMARY_EVERY + 1
            }
        );
        assert_eq!(log.succeeded(), SUMMARY_EVERY + 3);
        assert_eq!(
            log.failed("timed out"),
            FailureNote::New {
                previous_repeats: 0
            },
            "a success forgets the error"
        );
    }

    fn answer(not_after: u64) -> CsrAnswer {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        CsrAnswer {
            certificate_chain: pem.into(),
            trust_bundle: pem.into(),
            not_after,
        }
    }

    #[test]
    fn an_answer_without_certificates_or_already_expired_is_refused() {
        assert!(check_answer(&answer(200), 100).is_ok());
        let err = check_answer(&answer(100), 100).unwrap_err().to_string();
        assert!(err.contains("not_after"), "{err}");
        let mut bad = answer(200);
        bad.trust_bundle = "garbage".into();
        let err = check_answer(&bad, 100).unwrap_err().to_string();
        assert!(err.contains("trust_bundle"), "{err}");
        bad.certificate_chain = String::new();
        let err = check_answer(&bad, 100).unwrap_err().to_string();
        assert!(err.contains("certificate_chain"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let pending = new_request(ID).unwrap();
        let key = pending.key.serialize_pem();
        let certificate = WorkloadCertificate {
            spiffe_id: ID.into(),
            certificate_chain: "chain".into(),
            trust_bundle: "bundle".into(),
            not_after: 2,
            received_at: 1,
            private_key: Secret::new(key.clone()),
        };
        let shown = format!("{certificate:?}");
        assert!(
            !shown.contains(&key) && !shown.contains("PRIVATE"),
            "{shown}"
        );
        assert_eq!(certificate.private_key_pem(), key);
    }

    #[test]
    fn the_version_follows_the_certificate_and_the_bundle() {
        let base = WorkloadCertificate {
            spiffe_id: ID.into(),
            certificate_chain: "chain".into(),
            trust_bundle: "bundle".into(),
            not_after: 2,
            received_at: 1,
            private_key: Secret::new("k"),
        };
        let renewed = WorkloadCertificate {
            certificate_chain: "chain2".into(),
            ..base.clone()
        };
        let rotated_ca = WorkloadCertificate {
            trust_bundle: "bundle2".into(),
            ..base.clone()
        };
        assert_eq!(base.version(), base.clone().version());
        assert_ne!(base.version(), renewed.version());
        assert_ne!(base.version(), rotated_ca.version());
        assert_eq!(base.version().len(), 16);
    }

    #[test]
    fn retries_come_well_before_the_certificate_in_hand_expires() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            retry_delay(minute, Validity::Left(36)),
            Duration::from_secs(4)
        );
        assert_eq!(retry_delay(minute, Validity::Left(3)), RETRY_MIN);
        assert_eq!(retry_delay(minute, Validity::Left(43_200)), minute);
        assert_eq!(retry_delay(minute, Validity::Nothing), minute);
        assert_eq!(retry_delay(minute, Validity::Expired(5)), minute);
    }
}
