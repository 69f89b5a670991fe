//! The workload CA (docs/security.md, "Certificate authority"): loaded once at start from the
//! files `identity.ca` names, then pure, the clock passed in: [`check_csr`] decides whether a
//! certificate signing request may have the identity it asks for, and [`WorkloadCa::sign`]
//! issues the short-lived certificate.
//!
//! What is signed is decided here, not by the request: only the public key of the CSR is
//! taken (after its signature proves the requester holds the private key); the certificate
//! carries one URI SAN (the SPIFFE ID), serverAuth and clientAuth, digitalSignature and
//! keyEncipherment, an empty subject, and lives `certificate_ttl_seconds` at most, never past
//! the CA's own expiry. The CA's key never leaves this module: no `Debug`, no error quotes it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, RemoteKeyPair, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::wire::CsrAnswer;
use crate::config::{IdentityConfig, Secret};
use crate::text::clip;

/// A certificate is valid from this long before it was signed, so that a VM whose clock is
/// a little behind the pilot's takes it at once.
const BACKDATE: Duration = Duration::from_secs(60);
/// The smallest RSA key a workload may have.
const MIN_RSA_BITS: usize = 2048;
/// The subjectAltName extension: written by hand, because with an empty subject it must be
/// critical (RFC 5280 §4.2.1.6), which rcgen does not do.
const OID_SUBJECT_ALT_NAME: [u64; 4] = [2, 5, 29, 17];

/// The CA that signs workload certificates, with what every answer carries besides.
pub struct WorkloadCa {
    key: KeyPair,
    /// The CA certificate as rcgen needs it to name the issuer (subject, key identifier).
    issuer: rcgen::Certificate,
    /// PEM: the signing CA certificate and what is above it in `identity.ca.certificate`, but
    /// a self-signed root, which a peer must already trust.
    chain: String,
    trust_bundle: String,
    /// The CA certificate's own expiry (UNIX seconds): no certificate outlives it.
    ca_not_after: u64,
    ttl: Duration,
}

impl fmt::Debug for WorkloadCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCa")
            .field("ca_not_after", &self.ca_not_after)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why a CSR is refused: malformed (a bad request), or asking for what the requester may not
/// have (forbidden).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrProblem {
    Malformed(String),
    Forbidden(String),
}

/// A CSR that passed [`check_csr`]: its public key, all that is signed of it.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// Names the key type: the subjectPublicKeyInfo's algorithm (and curve) come from it.
    key_type: &'static SignatureAlgorithm,
    /// The subjectPublicKey bits.
    public_key: Vec<u8>,
}

impl PublicKeyData for CheckedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        self.key_type
    }
}

/// Checks a PEM CSR: it parses, its signature verifies with its own key (proof of
/// possession), the key is ECDSA P-256 or P-384 or RSA of 2048 bits or more, its only
/// subject alternative name is the URI `expected_id`, and it does not ask to be a CA.
pub fn check_csr(pem: &str, expected_id: &str) -> Result<CheckedCsr, CsrProblem> {
    let (checked, names) = check_csr_key(pem)?;
    match names.as_slice() {
        [uri] if *uri == format!("URI:{expected_id}") => Ok(checked),
        _ => Err(CsrProblem::Forbidden(format!(
            "the CSR must name exactly one subject alternative name, the URI {expected_id} \
             (the identity of the instance group the director lists at this address), not [{}]",
            clip(&names.join(", "))
        ))),
    }
}

/// Checks a PEM CSR as [`check_csr`] does but for its names, which it returns as a refusal
/// quotes them: for a certificate whose identity the pilot decides alone (a VM joining a
/// WorkloadGroup learns its registration's id from the answer), only the key is taken.
pub fn check_csr_key(pem: &str) -> Result<(CheckedCsr, Vec<String>), CsrProblem> {
    let malformed = |why: &str| CsrProblem::Malformed(format!("the CSR {why}"));
    let der = rustls_pemfile::csr(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| malformed("is not a PEM CERTIFICATE REQUEST"))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|_| malformed("is not a PKCS#10 certification request"))?;
    if !rest.is_empty() {
        return Err(malformed("has bytes after its end"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key_type =
        key_type(spki).map_err(|why| CsrProblem::Malformed(format!("the CSR's key {why}")))?;
    // After the key type: a key too small is named as such, not as a signature the verifier
    // refuses.
    csr.verify_signature().map_err(|_| {
        malformed("signature does not verify with its own key (no proof of possession)")
    })?;

    let mut names = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                names.extend(san.general_names.iter().map(general_name))
            }
            ParsedExtension::BasicConstraints(constraints) if constraints.ca => {
                return Err(CsrProblem::Forbidden(
                    "the CSR asks to be a CA: a workload certificate signs nothing".into(),
                ))
            }
            ParsedExtension::ParseError { .. } => {
                return Err(malformed("has an extension that does not parse"))
            }
            // Key usages and the like are the pilot's to decide, whatever is asked.
            _ => {}
        }
    }
    let checked = CheckedCsr {
        key_type,
        public_key: spki.subject_public_key.data.to_vec(),
    };
    Ok((checked, names))
}

/// A subject alternative name as it is quoted in a refusal.
fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(uri) => format!("URI:{uri}"),
        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
        GeneralName::RFC822Name(mail) => format!("email:{mail}"),
        GeneralName::IPAddress(ip) => format!("IP:{ip:02x?}"),
        other => format!("{other:?}"),
    }
}

/// The accepted key types, named by the algorithm rcgen writes their public key with.
fn key_type(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<&'static SignatureAlgorithm, String> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(curve) if curve == OID_EC_P256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
            Some(curve) if curve == OID_NIST_EC_P384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
            Some(curve) => Err(format!(
                "is on curve {curve}: only P-256 and P-384 are accepted"
            )),
            None => Err("is an EC key without a named curve".into()),
        };
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err("is not a valid RSA public key".into()),
        };
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "is RSA of {bits} bits: at least {MIN_RSA_BITS} are needed"
            ));
        }
        return Ok(&rcgen::PKCS_RSA_SHA256);
    }
    Err(format!(
        "has algorithm {algorithm}: only ECDSA (P-256, P-384) and RSA are accepted"
    ))
}

impl WorkloadCa {
    /// Reads the files `identity.ca` names. Errors name the key and the file, never a key's
    /// content.
    pub fn load(config: &IdentityConfig) -> Result<Self> {
        let read = |path: &std::path::Path, key: &str| {
            std::fs::read_to_string(path)
                .with_context(|| format!("key `{key}`: cannot read {}", path.display()))
        };
        let ca = &config.ca;
        let certificate = read(&ca.certificate, "identity.ca.certificate")?;
        let private_key = Secret::new(read(&ca.private_key, "identity.ca.private_key")?);
        let trust_bundle = ca
            .trust_bundle
            .as_ref()
            .map(|path| read(path, "identity.ca.trust_bundle"))
            .transpose()?;
        WorkloadCa::from_pem(
            &certificate,
            &private_key,
            trust_bundle.as_deref(),
            Duration::from_secs(config.certificate_ttl_seconds),
        )
        .with_context(|| {
            format!(
                "keys `identity.ca.certificate` ({}) and `identity.ca.private_key` ({})",
                ca.certificate.display(),
                ca.private_key.display()
            )
        })
    }

    /// The CA from PEM text: `certificate` holds the signing CA certificate first, then any
    /// CA above it; `trust_bundle` (default: every certificate of `certificate`) is what
    /// Envoys are told to trust.
    pub fn from_pem(
        certificate: &str,
        private_key: &Secret,
        trust_bundle: Option<&str>,
        ttl: Duration,
    ) -> Result<Self> {
        let certificates = pem_certificates(certificate)
            .context("identity.ca.certificate holds no PEM CERTIFICATE")?;
        let (_, signing) = X509Certificate::from_der(certificates[0].as_ref())
            .map_err(|_| anyhow::anyhow!("the first certificate does not parse"))?;
        if !signing.is_ca() {
            bail!("the first certificate is not a CA (its basic constraints say cA false or are missing)");
        }
        let key = signing_key(private_key)?;
        if key.public_key_raw() != signing.public_key().subject_public_key.data.as_ref() {
            bail!("the private key is not the key of the first certificate");
        }
        let ca_not_after = u64::try_from(signing.validity().not_after.timestamp())
            .context("the CA certificate expired before 1970")?;
        let issuer = CertificateParams::from_ca_cert_der(&certificates[0])
            .context("the CA certificate cannot be used to sign")?
            .self_signed(&key)
            .context("the private key cannot sign")?;
        let mut chain = String::new();
        for der in &certificates {
            let (_, parsed) = X509Certificate::from_der(der.as_ref())
                .map_err(|_| anyhow::anyhow!("a certificate does not parse"))?;
            // A peer trusts the root already; sending it would only cost bytes.
            if parsed.subject() != parsed.issuer() {
                chain.push_str(&pem_of(der));
            }
        }
        let trust_bundle = match trust_bundle {
            Some(bundle) => {
                let bundle = pem_certificates(bundle)
                    .context("identity.ca.trust_bundle holds no PEM CERTIFICATE")?;
                bundle.iter().map(pem_of).collect()
            }
            None => certificates.iter().map(pem_of).collect(),
        };
        Ok(WorkloadCa {
            key,
            issuer,
            chain,
            trust_bundle,
            ca_not_after,
            ttl,
        })
    }

    /// Signs `csr` for `id` at `now`: the certificate, the chain above it and the trust
    /// bundle. Fails only when the CA itself cannot sign (expired, or a signing error).
    pub fn sign(&self, csr: &CheckedCsr, id: &str, now: SystemTime) -> Result<CsrAnswer> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs();
        let not_after = now
            .saturating_add(self.ttl.as_secs())
            .min(self.ca_not_after);
        if not_after <= now {
            bail!(
                "the workload CA expired at {} (UNIX seconds)",
                self.ca_not_after
            );
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let mut san = CustomExtension::from_oid_content(&OID_SUBJECT_ALT_NAME, uri_san(id));
        san.set_criticality(true);
        params.custom_extensions = vec![san];
        params.not_before = (UNIX_EPOCH + Duration::from_secs(now) - BACKDATE).into();
        params.not_after = (UNIX_EPOCH + Duration::from_secs(not_after)).into();
        // Positive, and never zero: 127 random bits.
        let mut serial: [u8; 16] = rand::random();
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let leaf = params
            .signed_by(csr, &self.issuer, &self.key)
            .context("signing the workload certificate")?;
        Ok(CsrAnswer {
            certificate_chain: format!("{}{}", leaf.pem(), self.chain),
            trust_bundle: self.trust_bundle.clone(),
            not_after,
        })
    }
}

/// `GeneralNames ::= SEQUENCE { uniformResourceIdentifier [6] IA5String }`, DER.
fn uri_san(uri: &str) -> Vec<u8> {
    der(0x30, &der(0x86, uri.as_bytes()))
}

/// One DER tag-length-value.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn pem_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = rustls_pemfile::certs(&mut text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("not PEM")?;
    if certificates.is_empty() {
        bail!("no CERTIFICATE block");
    }
    Ok(certificates)
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", der.as_ref())
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The CA's key: PKCS#8 (ECDSA or RSA), or PKCS#1 RSA as CredHub writes it.
fn signing_key(pem: &Secret) -> Result<KeyPair> {
    let unreadable = || anyhow::anyhow!("the private key is not a PEM PKCS#8 or PKCS#1 key");
    match rustls_pemfile::private_key(&mut pem.expose().as_bytes()) {
        Ok(Some(PrivateKeyDer::Pkcs8(der))) => {
            KeyPair::try_from(der.secret_pkcs8_der()).map_err(|_| {
                anyhow::anyhow!("the PKCS#8 private key is not ECDSA P-256, P-384 or RSA")
            })
        }
        Ok(Some(PrivateKeyDer::Pkcs1(der))) => {
            let rsa = ring::signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map_err(|_| anyhow::anyhow!("the PKCS#1 RSA private key is not valid"))?;
            KeyPair::from_remote(Box::new(Pkcs1Rsa(rsa))).map_err(|_| unreadable())
        }
        Ok(Some(PrivateKeyDer::Sec1(_))) => bail!(
            "the private key is a SEC1 EC key: convert it to PKCS#8 \
             (openssl pkcs8 -topk8 -nocrypt)"
        ),
        _ => Err(unreadable()),
    }
}

/// A PKCS#1 RSA key signing with SHA-256, which rcgen (on ring) reads only as PKCS#8.
struct Pkcs1Rsa(ring::signature::RsaKeyPair);

impl RemoteKeyPair for Pkcs1Rsa {
    fn public_key(&self) -> &[u8] {
        self.0.public().as_ref()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut signature = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        Ok(signature)
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::time::{Duration, SystemTime};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
        SignatureAlgorithm,
    };

    /// A CA certificate and its key, PEM, as rcgen makes them (ECDSA P-256).
    pub(crate) struct TestCa {
        pub(crate) certificate: String,
        pub(crate) key: String,
        params: CertificateParams,
        key_pair: KeyPair,
    }

    fn ca_params(name: &str, not_after: SystemTime) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = not_after.into();
        params
    }

    impl TestCa {
        /// A self-signed root valid until `not_after`.
        pub(crate) fn root(name: &str, not_after: SystemTime) -> TestCa {
            let key_pair = KeyPair::generate().unwrap();
            let params = ca_params(name, not_after);
            let certificate = params.clone().self_signed(&key_pair).unwrap().pem();
            TestCa {
                certificate,
                key: key_pair.serialize_pem(),
                params,
                key_pair,
            }
        }

        /// An intermediate CA under this one, as the manifests declare the workload CA.
        pub(crate) fn intermediate(&self, name: &str) -> TestCa {
            let issuer = self.params.clone().self_signed(&self.key_pair).unwrap();
            let key_pair = KeyPair::generate().unwrap();
            let params = ca_params(name, far_future());
            let certificate = params
                .clone()
                .signed_by(&key_pair, &issuer, &self.key_pair)
                .unwrap()
                .pem();
            TestCa {
                certificate,
                key: key_pair.serialize_pem(),
                params,
                key_pair,
            }
        }
    }

    pub(crate) fn far_future() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000)
    }

    /// A CSR with a fresh key of `algorithm` for `names` (`URI:...` or `DNS:...`).
    pub(crate) fn csr_with(algorithm: &'static SignatureAlgorithm, names: &[&str]) -> String {
        let key = KeyPair::generate_for(algorithm).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.split_once(':') {
                Some(("URI", uri)) => SanType::URI(uri.try_into().unwrap()),
                Some(("DNS", dns)) => SanType::DnsName(dns.try_into().unwrap()),
                _ => panic!("URI: or DNS:, not {name}"),
            })
            .collect();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    /// A P-256 CSR for the one URI `id`.
    pub(crate) fn csr(id: &str) -> String {
        csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, &[&format!("URI:{id}")])
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{csr, csr_with, far_future, TestCa};
    use super::*;
    use x509_parser::extensions::{ExtendedKeyUsage, KeyUsage};
    use x509_parser::pem::Pem;

    const ID: &str = "spiffe://boshy/deployment/d/instance_group/g";
    const DAY: Duration = Duration::from_secs(86400);
    const RSA_CA: &str = include_str!("../../tests/fixtures/identity/ca-rsa.pem");
    const RSA_CA_KEY: &str = include_str!("../../tests/fixtures/identity/ca-rsa.key");
    const RSA_1024_CSR: &str = include_str!("../../tests/fixtures/identity/csr-rsa-1024.pem");
    const RSA_2048_CSR: &str = include_str!("../../tests/fixtures/identity/csr-rsa-2048.pem");

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn unix(time: SystemTime) -> i64 {
        time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn workload_ca(ca: &TestCa, chain_above: &str) -> WorkloadCa {
        let certificate = format!("{}{chain_above}", ca.certificate);
        WorkloadCa::from_pem(&certificate, &Secret::new(ca.key.clone()), None, DAY).unwrap()
    }

    fn pems(text: &str) -> Vec<Pem> {
        Pem::iter_from_buffer(text.as_bytes())
            .map(|pem| pem.unwrap())
            .collect()
    }

    #[test]
    fn a_good_csr_is_signed_for_its_identity_alone() {
        let root = TestCa::root("mesh ca", far_future());
        let intermediate = root.intermediate("workload ca");
        let ca = workload_ca(&intermediate, &root.certificate);
        for algorithm in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let request = csr_with(algorithm, &[&format!("URI:{ID}")]);
            let checked = check_csr(&request, ID).unwrap();
            let answer = ca.sign(&checked, ID, now()).unwrap();

            let chain = pems(&answer.certificate_chain);
            assert_eq!(
                chain.len(),
                2,
                "the leaf and the intermediate, not the root"
            );
            assert_eq!(
                chain[1].contents,
                pems(&intermediate.certificate)[0].contents
            );
            assert_eq!(
                pems(&answer.trust_bundle).len(),
                2,
                "by default, every certificate of the CA file"
            );
            let leaf = chain[0].parse_x509().unwrap();
            let (_, issuer) = X509Certificate::from_der(&chain[1].contents).unwrap();
            leaf.verify_signature(Some(issuer.public_key())).unwrap();
            assert_eq!(leaf.issuer(), issuer.subject());
            assert_eq!(leaf.subject().iter().count(), 0, "an empty subject");
            let san = leaf.subject_alternative_name().unwrap().unwrap();
            assert!(san.critical, "critical, the subject being empty");
            assert_eq!(san.value.general_names, [GeneralName::URI(ID)]);
            let key_usage: &KeyUsage = leaf.key_usage().unwrap().unwrap().value;
            assert!(key_usage.digital_signature() && key_usage.key_encipherment());
            assert!(!key_usage.key_cert_sign());
            let eku: &ExtendedKeyUsage = leaf.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth && !eku.any);
            assert!(!leaf.is_ca());
            assert_eq!(leaf.validity().not_before.timestamp(), unix(now()) - 60);
            assert_eq!(leaf.validity().not_after.timestamp(), unix(now() + DAY));
            assert_eq!(answer.not_after, unix(now() + DAY) as u64);
            assert!(leaf.serial.bits() > 64, "a random serial");
            let requested_der = rustls_pemfile::csr(&mut request.as_bytes())
                .unwrap()
                .unwrap();
            let (_, requested) = X509CertificationRequest::from_der(&requested_der).unwrap();
            assert_eq!(
                leaf.public_key().raw,
                requested.certification_request_info.subject_pki.raw,
                "the requester's key"
            );
        }
        let one = ca
            .sign(&check_csr(&csr(ID), ID).unwrap(), ID, now())
            .unwrap();
        let two = ca
            .sign(&check_csr(&csr(ID), ID).unwrap(), ID, now())
            .unwrap();
        let serial = |answer: &CsrAnswer| {
            pems(&answer.certificate_chain)[0]
                .parse_x509()
                .unwrap()
                .serial
                .clone()
        };
        assert_ne!(serial(&one), serial(&two));
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let expires = now() + Duration::from_secs(3600);
        let root = TestCa::root("short-lived", expires);
        let ca = workload_ca(&root, "");
        let answer = ca
            .sign(&check_csr(&csr(ID), ID).unwrap(), ID, now())
            .unwrap();
        assert_eq!(
            answer.not_after,
            unix(expires) as u64,
            "capped at the CA's expiry"
        );
        assert!(
            answer
                .certificate_chain
                .matches("BEGIN CERTIFICATE")
                .count()
                == 1,
            "a root is never sent"
        );
        let late = ca.sign(&check_csr(&csr(ID), ID).unwrap(), ID, expires);
        assert!(format!("{:#}", late.unwrap_err()).contains("expired"));
    }

    #[test]
    fn every_bad_csr_is_refused_naming_what_is_wrong() {
        let malformed = |pem: &str, needle: &str| match check_csr(pem, ID) {
            Err(CsrProblem::Malformed(why)) => assert!(why.contains(needle), "{needle}: {why}"),
            other => panic!("{needle}: {other:?}"),
        };
        let forbidden = |pem: &str, needle: &str| match check_csr(pem, ID) {
            Err(CsrProblem::Forbidden(why)) => assert!(why.contains(needle), "{needle}: {why}"),
            other => panic!("{needle}: {other:?}"),
        };
        malformed("hello", "PEM CERTIFICATE REQUEST");
        let root = TestCa::root("ca", far_future());
        malformed(&root.certificate, "PEM CERTIFICATE REQUEST");
        malformed(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "PKCS#10",
        );
        // A signature that is not the key's: no proof of possession.
        let good = csr(ID);
        let mut der = rustls_pemfile::csr(&mut good.as_bytes())
            .unwrap()
            .unwrap()
            .as_ref()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = pem_block("CERTIFICATE REQUEST", &der);
        malformed(&tampered, "proof of possession");
        malformed(
            &csr_with(&rcgen::PKCS_ED25519, &[&format!("URI:{ID}")]),
            "only ECDSA (P-256, P-384) and RSA",
        );
        malformed(RSA_1024_CSR, "RSA of 1024 bits");
        assert!(check_csr(RSA_2048_CSR, ID).is_ok(), "RSA of 2048 bits");

        forbidden(
            &csr("spiffe://boshy/deployment/d/instance_group/other"),
            "instance_group/other",
        );
        forbidden(
            &csr("spiffe://evil/deployment/d/instance_group/g"),
            "exactly one",
        );
        forbidden(
            &csr_with(
                &rcgen::PKCS_ECDSA_P256_SHA256,
                &[&format!("URI:{ID}"), "DNS:x.boshy"],
            ),
            "DNS:x.boshy",
        );
        forbidden(&csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, &[]), "not []");
        // basicConstraints cA TRUE requested.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(ID.try_into().unwrap())];
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            &[2, 5, 29, 19],
            vec![0x30, 0x03, 0x01, 0x01, 0xff],
        )];
        let ca_request = params.serialize_request(&key).unwrap().pem().unwrap();
        forbidden(&ca_request, "asks to be a CA");
    }

    #[test]
    fn a_pkcs1_rsa_ca_as_credhub_writes_it_signs() {
        assert!(RSA_CA_KEY.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let ca = WorkloadCa::from_pem(RSA_CA, &Secret::new(RSA_CA_KEY), None, DAY).unwrap();
        let answer = ca
            .sign(&check_csr(&csr(ID), ID).unwrap(), ID, now())
            .unwrap();
        let chain = pems(&answer.certificate_chain);
        assert_eq!(chain.len(), 1, "the self-signed CA is not sent");
        let leaf = chain[0].parse_x509().unwrap();
        let root_pem = pems(RSA_CA);
        let (_, root) = X509Certificate::from_der(&root_pem[0].contents).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
        assert_eq!(
            leaf.issuer().as_raw(),
            root.subject().as_raw(),
            "the issuer, byte for byte"
        );
        assert_eq!(
            pems(&answer.trust_bundle)[0].contents,
            pems(RSA_CA)[0].contents
        );
    }

    #[test]
    fn an_explicit_trust_bundle_is_what_envoys_are_told_to_trust() {
        let old = TestCa::root("old", far_future());
        let new = TestCa::root("new", far_future());
        let bundle = format!("{}{}", old.certificate, new.certificate);
        let ca = WorkloadCa::from_pem(
            &new.certificate,
            &Secret::new(new.key.clone()),
            Some(&bundle),
            DAY,
        )
        .unwrap();
        let answer = ca
            .sign(&check_csr(&csr(ID), ID).unwrap(), ID, now())
            .unwrap();
        assert_eq!(pems(&answer.trust_bundle).len(), 2);
        let refused = WorkloadCa::from_pem(
            &new.certificate,
            &Secret::new(new.key.clone()),
            Some("x"),
            DAY,
        );
        assert!(format!("{:#}", refused.unwrap_err()).contains("identity.ca.trust_bundle"));
    }

    #[test]
    fn ca_files_are_checked_and_the_key_is_never_quoted() {
        let ca = TestCa::root("ca", far_future());
        let other = TestCa::root("other", far_future());
        let error = |certificate: &str, key: &str| {
            let refused = WorkloadCa::from_pem(certificate, &Secret::new(key), None, DAY);
            let message = format!("{:#}", refused.unwrap_err());
            assert!(!message.contains(key.trim()) || key.is_empty(), "{message}");
            message
        };
        assert!(error(&ca.certificate, &other.key).contains("not the key of the first certificate"));
        assert!(error("", &ca.key).contains("no PEM CERTIFICATE"));
        assert!(error(&ca.certificate, "garbage").contains("not a PEM PKCS#8 or PKCS#1 key"));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIm4\n-----END EC PRIVATE KEY-----\n";
        assert!(error(&ca.certificate, sec1).contains("SEC1"));
        let leaf = WorkloadCa::from_pem(&ca.certificate, &Secret::new(ca.key.clone()), None, DAY)
            .unwrap()
            .sign(&check_csr(&csr(ID), ID).unwrap(), ID, now())
            .unwrap();
        let leaf_pem = pem_block("CERTIFICATE", &pems(&leaf.certificate_chain)[0].contents);
        assert!(error(&leaf_pem, &ca.key).contains("not a CA"));

        let loaded =
            WorkloadCa::from_pem(&ca.certificate, &Secret::new(ca.key.clone()), None, DAY).unwrap();
        let debug = format!("{loaded:?}");
        assert!(
            !debug.contains("PRIVATE") && !debug.contains(ca.key.lines().nth(1).unwrap()),
            "{debug}"
        );
    }

    #[test]
    fn a_long_uri_gets_a_long_form_der_length() {
        assert_eq!(der(0x86, &[7; 3]), [0x86, 3, 7, 7, 7]);
        assert_eq!(&der(0x86, &[0; 200])[..3], [0x86, 0x81, 200]);
        assert_eq!(&der(0x86, &[0; 300])[..4], [0x86, 0x82, 0x01, 0x2c]);
        let long = format!(
            "spiffe://boshy/deployment/{}/instance_group/g",
            "d".repeat(300)
        );
        let ca = TestCa::root("ca", far_future());
        let answer = workload_ca(&ca, "")
            .sign(&check_csr(&csr(&long), &long).unwrap(), &long, now())
            .unwrap();
        let chain = pems(&answer.certificate_chain);
        let leaf = chain[0].parse_x509().unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, [GeneralName::URI(&long)]);
    }
}
