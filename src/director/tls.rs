//! The rustls configuration for the director and UAA: the operator's CA only (they are
//! signed by bosh-deployment's `default_ca` with IP SANs), TLS 1.2 allowed because the
//! director's nginx speaks nothing newer (docs/director-api.md §0).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::DirectorConfig;

/// Builds the client TLS config from `ca_cert_path` and/or inline `ca_cert`, or, only when
/// `insecure_skip_tls_verify` is set, one that accepts any certificate.
pub fn client_config(cfg: &DirectorConfig) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("director TLS: protocol versions")?;
    if cfg.insecure_skip_tls_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut pems = Vec::new();
    if let Some(path) = &cfg.ca_cert_path {
        let pem = std::fs::read(path).with_context(|| {
            format!(
                "key `director.ca_cert_path`: cannot read {}",
                path.display()
            )
        })?;
        pems.push(("director.ca_cert_path", pem));
    }
    if let Some(pem) = &cfg.ca_cert {
        pems.push(("director.ca_cert", pem.as_bytes().to_vec()));
    }
    if pems.is_empty() {
        bail!(
            "key `director.ca_cert_path`: missing: the director's CA is needed to verify its \
             certificate (set `director.ca_cert_path` or `director.ca_cert`)"
        );
    }
    let mut roots = RootCertStore::empty();
    for (key, pem) in pems {
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("key `{key}`: not PEM"))?;
        if certs.is_empty() {
            bail!("key `{key}`: no CERTIFICATE block in the PEM");
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("key `{key}`: not a usable CA certificate"))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The explicit opt-out: any certificate is accepted, but handshake signatures are still
/// checked so the session keys belong to whoever holds the presented certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
