//! The simulator's own CA and the director/UAA certificate, and an HTTPS server restricted to
//! TLS 1.2 like the director's nginx (`ssl_protocols TLSv1.2`).
//!
//! The keys are ECDSA P-256 (rcgen's ring backend cannot generate RSA), so the cipher suites are
//! ECDHE-ECDSA-AES-GCM where the real director uses ECDHE-RSA-AES-GCM; clients see the same
//! protocol version and the same trust model: a private CA and an IP SAN.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The CA PEM clients must trust, and the server configuration for a certificate it signed.
pub struct Pki {
    pub ca_pem: String,
    pub server_config: Arc<ServerConfig>,
}

/// A CA and a leaf for `ips`, like bosh-deployment's `default_ca` + `director_ssl` (common name
/// and SANs are the director's IP address). An unspecified IP (0.0.0.0) is served as loopback.
pub fn generate(ips: &[IpAddr]) -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate().context("generating the simulator CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "boshy-director-sim CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params
        .self_signed(&ca_key)
        .context("self-signing the simulator CA")?;

    let mut names: Vec<IpAddr> = Vec::new();
    for ip in ips {
        let ip = if ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            *ip
        };
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    let leaf_key = KeyPair::generate().context("generating the director certificate key")?;
    let mut leaf_params = CertificateParams::new(Vec::<String>::new())?;
    let common_name = names
        .first()
        .map(ToString::to_string)
        .unwrap_or_else(|| "director".to_string());
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    leaf_params.subject_alt_names = names.into_iter().map(SanType::IpAddress).collect();
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .context("signing the director certificate")?;

    let chain = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server_config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .context("restricting the server to TLS 1.2")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("loading the director certificate")?;
    // nginx in front of the director speaks HTTP/1.1 only.
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem: ca.pem(),
        server_config: Arc::new(server_config),
    })
}

/// Serves `router` over TLS until `shutdown` flips to true; open connections end with it.
pub async fn serve(
    listener: TcpListener,
    server_config: Arc<ServerConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(server_config);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let mut connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
            };
            let builder = Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                result = connection => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                }
                _ = connection_shutdown.wait_for(|stop| *stop) => {}
            }
        });
    }
}
