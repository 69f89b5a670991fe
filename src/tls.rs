//! Mutual TLS between the control plane and its clients (Envoy over xDS, the agent over the
//! name-table stream).
//!
//! Every party holds a certificate signed by one mesh CA (a BOSH `certificate` variable, see
//! manifests/): the pilot serves only clients presenting such a certificate, and clients
//! trust a pilot only with a certificate signed by that CA for the fixed `server_name` (pilots
//! are dialled by link IP, which no generated certificate can know in advance). TLS 1.3 only:
//! every party is ours, so nothing older needs to be spoken.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::admission::{Admission, Admitted};
use crate::config::{ClientTls, ServerTls};

/// A client that has not finished its handshake by then is dropped, so half-open
/// connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals remembered (to log each kind of refusal once per peer).
const REMEMBERED_REFUSALS: usize = 1024;
/// ALPN of gRPC (xDS).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the name-table stream, which speaks HTTP/1.1 or HTTP/2.
pub const ALPN_HTTP: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The pilot's TLS: its certificate, and only clients with a certificate from `ca_cert_path`.
/// Errors name the `tls.*` key and the file.
pub fn server_config(tls: &ServerTls, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>> {
    server_config_with(tls, alpn, true)
}

/// The HTTP API's TLS (docs/api.md): the pilot's certificate; a client certificate is
/// optional, but one that is presented must come from the mesh CA. Whether the client
/// presented one decides, after the handshake, what the request needs besides.
pub fn api_server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>> {
    server_config_with(tls, &ALPN_HTTP, false)
}

fn server_config_with(
    tls: &ServerTls,
    alpn: &[&[u8]],
    client_certificate_required: bool,
) -> Result<Arc<ServerConfig>> {
    let roots = Arc::new(read_roots(&tls.ca_cert_path, "tls.ca_cert_path")?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if !client_certificate_required {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder
        .build()
        .context("key `tls.ca_cert_path`: cannot verify clients with this CA")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            read_certs(&tls.cert_path, "tls.cert_path")?,
            read_key(&tls.key_path, "tls.key_path")?,
        )
        .context("keys `tls.cert_path` and `tls.key_path`: the key does not fit the certificate")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client's TLS: it presents its certificate and trusts a pilot only with a certificate
/// signed by `ca_cert_path` for `server_name`, whatever address it dialled. The certificate
/// and key are read again when their files change ([`ReloadingCertificate`]): a joined VM's
/// agent renews them in place, and its next handshake presents the new pair.
pub fn client_config(tls: &ClientTls) -> Result<ClientConfig> {
    let builder = pinned(
        (&tls.ca_cert_path, "tls.ca_cert_path"),
        (&tls.server_name, "tls.server_name"),
    )?;
    let certificate = ReloadingCertificate::load(tls)?;
    Ok(builder.with_client_cert_resolver(Arc::new(certificate)))
}

/// What tells a file's new content from its old without reading it: a renewal writes new
/// files (a new inode), an editor or `cp` at least a new modification time or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    modified_ns: i128,
    length: u64,
}

impl FileStamp {
    /// The stamp of the file `path` names, through symlinks.
    fn of(path: &Path) -> io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            device: meta.dev(),
            inode: meta.ino(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            length: meta.size(),
        })
    }
}

/// The client certificate of [`client_config`]: the pair in `tls.cert_path` and
/// `tls.key_path`, read again at a handshake when either file changed since it was read. A
/// new pair that does not parse, or whose key does not fit its certificate (a reader between
/// two writes of a writer that does not swap them together), is not taken: the pair held is
/// presented, and the files are read again at the next handshake.
#[derive(Debug)]
struct ReloadingCertificate {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    held: std::sync::Mutex<HeldCertificate>,
}

#[derive(Debug)]
struct HeldCertificate {
    stamps: (FileStamp, FileStamp),
    key: Arc<rustls::sign::CertifiedKey>,
    /// The stamps of a pair refused already, so that it is logged once.
    refused: Option<(FileStamp, FileStamp)>,
}

impl ReloadingCertificate {
    /// Reads the pair; errors name the keys and files, never the key's content.
    fn load(tls: &ClientTls) -> Result<ReloadingCertificate> {
        let stamps = Self::stamps(&tls.cert_path, &tls.key_path).with_context(|| {
            format!(
                "keys `tls.cert_path` ({}) and `tls.key_path` ({})",
                tls.cert_path.display(),
                tls.key_path.display()
            )
        })?;
        let key = read_pair(&tls.cert_path, &tls.key_path)?;
        Ok(ReloadingCertificate {
            cert_path: tls.cert_path.clone(),
            key_path: tls.key_path.clone(),
            held: std::sync::Mutex::new(HeldCertificate {
                stamps,
                key,
                refused: None,
            }),
        })
    }

    fn stamps(cert: &Path, key: &Path) -> io::Result<(FileStamp, FileStamp)> {
        Ok((FileStamp::of(cert)?, FileStamp::of(key)?))
    }

    /// The pair to present now.
    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut held = self.held.lock().expect("client certificate lock");
        let Ok(stamps) = Self::stamps(&self.cert_path, &self.key_path) else {
            // Gone for a moment (or for good): what is held is all there is to present.
            return held.key.clone();
        };
        if stamps == held.stamps || held.refused == Some(stamps) {
            return held.key.clone();
        }
        match read_pair(&self.cert_path, &self.key_path) {
            // Read again after the read: a pair swapped while being read is judged next time.
            Ok(key) if Self::stamps(&self.cert_path, &self.key_path).ok() == Some(stamps) => {
                tracing::info!(cert = %self.cert_path.display(), "the client certificate changed: new connections present the new one");
                held.stamps = stamps;
                held.key = key;
                held.refused = None;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!("{err:#}; new connections present the certificate held");
                held.refused = Some(stamps);
            }
        }
        held.key.clone()
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The certificate chain in `cert` and the key in `key`, checked to fit each other.
fn read_pair(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>> {
    let fits = rustls::sign::CertifiedKey::from_der(
        read_certs(cert, "tls.cert_path")?,
        read_key(key, "tls.key_path")?,
        &provider(),
    )
    .and_then(|pair| pair.keys_match().map(|()| pair));
    let pair = fits.map_err(|_| {
        anyhow::anyhow!(
            "keys `tls.cert_path` ({}) and `tls.key_path` ({}): the key does not fit the \
             certificate",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(pair))
}

/// The TLS of an operator's client of the pilot's HTTP API (`boshy mesh`): the same trust as
/// [`client_config`], presenting `client` (certificate and key files) when given, else no
/// certificate (the request then carries a UAA token). Errors name the flags.
pub fn api_client_config(
    ca_cert_path: &Path,
    server_name: &str,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig> {
    let builder = pinned((ca_cert_path, "--ca"), (server_name, "--server-name"))?;
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert, "--cert")?, read_key(key, "--key")?)
            .context("--cert and --key: the key does not fit the certificate")?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS 1.3, trusting a certificate signed by the CA in `ca_cert_path` for `server_name`;
/// each with the key (or flag) that gave it, for the errors.
fn pinned(
    (ca_cert_path, ca_key): (&Path, &str),
    (server_name, name_key): (&str, &str),
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| anyhow::anyhow!("key `{name_key}`: `{server_name}` is not a DNS name"))?;
    let roots = Arc::new(read_roots(ca_cert_path, ca_key)?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .with_context(|| format!("key `{ca_key}`: cannot verify the pilot with this CA"))?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedName { webpki, name })))
}

/// The name of the secret a joined VM's Envoy reads its mesh certificate by, from the file
/// `certificate_sds` of [`envoy_tls_certificate`].
pub(crate) const MESH_CERTIFICATE_SECRET: &str = "boshy-mesh-certificate";

/// Where Envoy takes the certificate it presents with `tls`: the key of `common_tls_context`
/// and its value. The files themselves (a BOSH VM's, which change only with a deploy that
/// restarts Envoy), or with `certificate_sds` the secret [`MESH_CERTIFICATE_SECRET`] of that
/// file-based SDS file, which Envoy reads again whenever the certificate's directory changes
/// (a joined VM's agent renews it there).
pub(crate) fn envoy_tls_certificate(
    tls: &ClientTls,
    certificate_sds: Option<&Path>,
) -> (&'static str, Value) {
    match certificate_sds {
        None => (
            "tls_certificates",
            json!([{
                "certificate_chain": {"filename": tls.cert_path},
                "private_key": {"filename": tls.key_path},
            }]),
        ),
        Some(file) => (
            "tls_certificate_sds_secret_configs",
            json!([{
                "name": MESH_CERTIFICATE_SECRET,
                "sds_config": {
                    "path_config_source": {"path": file},
                    "resource_api_version": "V3",
                },
            }]),
        ),
    }
}

/// Envoy's `transport_socket` for the xDS cluster: the same policy as [`client_config`]
/// (mesh CA, the pilot's fixed name as SNI and as the SAN to match, TLS 1.3, ALPN h2); the
/// certificate as [`envoy_tls_certificate`] says.
pub(crate) fn envoy_transport_socket(tls: &ClientTls, certificate_sds: Option<&Path>) -> Value {
    let (certificate_key, certificate) = envoy_tls_certificate(tls, certificate_sds);
    let mut socket = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": {"filename": tls.ca_cert_path},
                    "match_typed_subject_alt_names": [{
                        "san_type": "DNS",
                        "matcher": {"exact": tls.server_name},
                    }],
                },
            },
        },
    });
    socket["typed_config"]["common_tls_context"][certificate_key] = certificate;
    socket
}

/// Verifies the chain with webpki against the fixed name instead of the dialled address.
#[derive(Debug)]
struct PinnedName {
    webpki: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("key `{key}`: cannot read {}", path.display()))
}

/// The first DNS name of the certificate in `tls.cert_path`: the name clients verify the
/// pilot by (`tls_server_name`), told to VMs that join (docs/workloads.md).
pub(crate) fn server_name(tls: &ServerTls) -> Result<String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};
    let certs = read_certs(&tls.cert_path, "tls.cert_path")?;
    let (_, leaf) = X509Certificate::from_der(certs[0].as_ref()).map_err(|_| {
        anyhow::anyhow!(
            "key `tls.cert_path`: {}: the certificate does not parse",
            tls.cert_path.display()
        )
    })?;
    let name = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                san.general_names.iter().find_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_string()),
                    _ => None,
                })
            }
            _ => None,
        });
    name.ok_or_else(|| {
        anyhow::anyhow!(
            "key `tls.cert_path`: {}: the certificate names no DNS name for clients to verify",
            tls.cert_path.display()
        )
    })
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, key)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("key `{key}`: {} is not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("key `{key}`: {} holds no CERTIFICATE block", path.display());
    }
    Ok(certs)
}

fn read_roots(path: &Path, key: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, key)? {
        roots.add(cert).with_context(|| {
            format!(
                "key `{key}`: {} is not a usable CA certificate",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The key's content never appears in an error: only the file and what is wrong.
fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path, key)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "key `{key}`: {} holds no PKCS#1, PKCS#8 or SEC1 private key",
                path.display()
            )
        })
}

/// An accepted connection: TLS, admitted ([`crate::admission`]).
pub(crate) type Accepted = Admitted<TlsStream<TcpStream>>;

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeded,
/// i.e. whose client presented a certificate from the mesh CA. Handshakes run concurrently,
/// as many as [`Admission`] lets through at once (the others wait their turn, in order),
/// each with a deadline; refusals are logged, once per peer and reason. Ends when the stream
/// is dropped. `server` names the port in log lines.
pub(crate) fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    server: &'static str,
) -> ReceiverStream<io::Result<Accepted>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(accept_loop(
        listener,
        acceptor,
        Admission::default(),
        server,
        tx,
    ));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    admission: Admission,
    server: &'static str,
    tx: mpsc::Sender<io::Result<Accepted>>,
) {
    let mut handshakes = JoinSet::new();
    let mut refusals = Refusals::default();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    crate::api::close_when_unacknowledged(&tcp);
                    let acceptor = acceptor.clone();
                    let admission = admission.clone();
                    handshakes.spawn(async move {
                        let ticket = admission.admit().await;
                        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                        let outcome = match handshake.await {
                            Ok(Ok(stream)) => Ok(ticket.wrap(stream)),
                            Ok(Err(err)) => Err(err.to_string()),
                            Err(_) => Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")),
                        };
                        (peer, outcome)
                    });
                }
                Err(err) => {
                    // Out of file descriptors: wait rather than spin.
                    tracing::warn!("{server} server: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                let Ok((peer, outcome)) = done else { continue };
                match outcome {
                    Ok(stream) => {
                        refusals.forget(peer.ip());
                        if tx.send(Ok(stream)).await.is_err() {
                            return;
                        }
                    }
                    Err(reason) => {
                        if refusals.is_new(peer.ip(), &reason) {
                            tracing::warn!(%peer, "{server} server: refused a client (mutual TLS): {reason}");
                        } else {
                            tracing::debug!(%peer, "{server} server: refused a client (mutual TLS): {reason}");
                        }
                    }
                }
            }
        }
    }
}

/// The refusals already logged, per peer address and reason, so that a misconfigured client
/// retrying every second is logged once, not at every attempt. Bounded: forgets everything
/// when full. Also the names port's certificate requests' (`names::server`).
#[derive(Default)]
pub(crate) struct Refusals {
    seen: HashSet<(IpAddr, String)>,
}

impl Refusals {
    /// Records `reason` for `peer`; true the first time since the peer's last success.
    pub(crate) fn is_new(&mut self, peer: IpAddr, reason: &str) -> bool {
        let key = (peer, reason.to_string());
        if self.seen.contains(&key) {
            return false;
        }
        if self.seen.len() >= REMEMBERED_REFUSALS {
            self.seen.clear();
        }
        self.seen.insert(key);
        true
    }

    /// After a success: the peer's next refusal is news again.
    pub(crate) fn forget(&mut self, peer: IpAddr) {
        // Every accepted connection comes here: nothing to scan in the usual case.
        if !self.seen.is_empty() {
            self.seen.retain(|(address, _)| *address != peer);
        }
    }
}

/// The peer of an accepted TLS connection.
pub(crate) fn peer_addr(stream: &Accepted) -> io::Result<SocketAddr> {
    stream.get_ref().get_ref().0.peer_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_logged_once_per_peer_and_reason() {
        let mut refusals = Refusals::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(refusals.is_new(a, "no certificate"));
        assert!(!refusals.is_new(a, "no certificate"));
        assert!(refusals.is_new(b, "no certificate"));
        assert!(refusals.is_new(a, "unknown issuer"));
        assert!(
            !refusals.is_new(a, "no certificate"),
            "alternating reasons are each logged once"
        );
        refusals.forget(a);
        assert!(
            refusals.is_new(a, "unknown issuer"),
            "forgotten after a success"
        );
    }

    #[test]
    fn the_remembered_refusals_are_bounded() {
        let mut refusals = Refusals::default();
        for i in 0..=REMEMBERED_REFUSALS as u32 {
            refusals.is_new(IpAddr::from(i.to_be_bytes()), "x");
        }
        assert!(refusals.seen.len() <= REMEMBERED_REFUSALS);
    }

    #[test]
    fn file_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem").unwrap();
        let tls = ServerTls {
            ca_cert_path: dir.path().join("missing.pem"),
            cert_path: garbage.clone(),
            key_path: garbage.clone(),
        };
        let msg = format!("{:#}", server_config(&tls, &[]).unwrap_err());
        assert!(
            msg.contains("tls.ca_cert_path") && msg.contains("missing.pem"),
            "{msg}"
        );
        let msg = format!("{:#}", read_certs(&garbage, "tls.cert_path").unwrap_err());
        assert!(
            msg.contains("tls.cert_path") && msg.contains("no CERTIFICATE"),
            "{msg}"
        );
        let msg = format!("{:#}", read_key(&garbage, "tls.key_path").unwrap_err());
        assert!(
            msg.contains("tls.key_path") && msg.contains("garbage.pem"),
            "{msg}"
        );
    }

    #[test]
    fn the_client_certificate_is_read_again_when_its_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let pair = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().clone())
        };
        let (a, b) = (pair("a.example"), pair("b.example"));
        let tls = ClientTls {
            ca_cert_path: dir.path().join("unused.pem"),
            cert_path: dir.path().join("vm.pem"),
            key_path: dir.path().join("vm.key"),
            server_name: "p".into(),
        };
        let write = |path: &Path, pem: &str| {
            crate::fsutil::write_atomically_with_mode(path, pem.as_bytes(), 0o600).unwrap()
        };
        write(&tls.cert_path, &b.0);
        write(&tls.key_path, &a.1);
        let msg = format!("{:#}", ReloadingCertificate::load(&tls).unwrap_err());
        assert!(
            msg.contains("does not fit") && msg.contains("vm.pem"),
            "{msg}"
        );
        assert!(!msg.contains("PRIVATE"), "{msg}");

        write(&tls.cert_path, &a.0);
        let reloading = ReloadingCertificate::load(&tls).unwrap();
        assert_eq!(reloading.current().cert[0], a.2);
        // b's certificate beside a's key (a writer between its two writes): a's pair stays.
        write(&tls.cert_path, &b.0);
        assert_eq!(reloading.current().cert[0], a.2);
        assert_eq!(
            reloading.current().cert[0],
            a.2,
            "a pair refused stays refused"
        );
        // b's key too: b's pair from the next handshake on.
        write(&tls.key_path, &b.1);
        assert_eq!(reloading.current().cert[0], b.2);
        // Files gone: what is held is presented.
        std::fs::remove_file(&tls.cert_path).unwrap();
        assert_eq!(reloading.current().cert[0], b.2);
        use rustls::client::ResolvesClientCert;
        assert!(reloading.has_certs());
        assert!(reloading.resolve(&[], &[]).is_some());
    }

    #[test]
    fn envoy_takes_its_certificate_from_the_files_or_through_file_sds() {
        let tls = ClientTls {
            ca_cert_path: "/etc/boshy/ca.pem".into(),
            cert_path: "/etc/boshy/tls/vm.pem".into(),
            key_path: "/etc/boshy/tls/vm.key".into(),
            server_name: "bosh-pilot.boshy-istio".into(),
        };
        let files = envoy_transport_socket(&tls, None);
        let context = &files["typed_config"]["common_tls_context"];
        assert_eq!(
            context["tls_certificates"][0]["private_key"]["filename"],
            "/etc/boshy/tls/vm.key"
        );
        assert!(context.get("tls_certificate_sds_secret_configs").is_none());
        let sds = envoy_transport_socket(&tls, Some(Path::new("/etc/boshy/sds.yaml")));
        let context = &sds["typed_config"]["common_tls_context"];
        assert!(context.get("tls_certificates").is_none());
        assert_eq!(
            context["tls_certificate_sds_secret_configs"],
            json!([{
                "name": MESH_CERTIFICATE_SECRET,
                "sds_config": {
                    "path_config_source": {"path": "/etc/boshy/sds.yaml"},
                    "resource_api_version": "V3",
                },
            }])
        );
        assert_eq!(
            context["validation_context"],
            files["typed_config"]["common_tls_context"]["validation_context"]
        );
    }

    #[test]
    fn the_server_name_must_be_a_dns_name() {
        let tls = ClientTls {
            ca_cert_path: "/nonexistent".into(),
            cert_path: "/nonexistent".into(),
            key_path: "/nonexistent".into(),
            server_name: "not a name".into(),
        };
        let msg = client_config(&tls).unwrap_err().to_string();
        assert!(msg.contains("tls.server_name"), "{msg}");
    }
}
