//! TLS clients of the pilot's ports for tests that need one the product has no use for.

use std::path::Path;
use std::sync::Arc;

/// A client that trusts only the CA in `ca_pem` and presents no certificate: what a caller
/// with no mesh certificate looks like (refused by the ports that want one, or let in with a
/// UAA token by the API).
pub fn without_certificate(ca_pem: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).unwrap_or_else(|err| panic!("{}: {err}", ca_pem.display()));
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
