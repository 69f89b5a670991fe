//! The SDS server the VM's Envoy takes its workload certificate from: gRPC on a Unix socket
//! that only the agent's user can open (mode 0600, in a directory shared with the bosh-envoy
//! job alone), serving [`WORKLOAD_SECRET`] (the certificate chain and its key) and
//! [`TRUST_BUNDLE_SECRET`] (the CAs peers are checked against) from the certificates
//! `identity::agent` keeps.
//!
//! `StreamSecrets` is state of the world: each response carries every secret the stream asked
//! for, at the version of the certificate in hand; a renewal pushes the new version on every
//! open stream; ACKs and NACKs are logged. Until the first certificate nothing is answered, so
//! Envoy keeps the listeners that need it warming. `FetchSecrets` answers once; delta SDS is
//! not served (Envoy's SDS client speaks state of the world unless told otherwise).
//!
//! The decisions of one stream are [`SdsStream`]'s (pure); the rest moves messages.

use std::path::{Path, PathBuf};

use anyhow::Context;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::util::pack_any;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::agent::{Certificates, WorkloadCertificate};
use super::spiffe::{TRUST_BUNDLE_SECRET, WORKLOAD_SECRET};

/// The type URL of an SDS resource.
pub(crate) const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Responses queued per stream before the stream's task waits for Envoy to read.
const RESPONSE_QUEUE: usize = 4;
/// Longest NACK reason logged.
const MAX_LOGGED_ERROR: usize = 500;

/// Binds the SDS socket at `path`, for this user alone (`fsutil::bind_private_socket`).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    crate::fsutil::bind_private_socket(path, "the SDS socket")
}

/// Serves SDS on `listener` (from [`bind`], whose path is `socket` for the log) from
/// `certificates` until the listener fails.
pub async fn serve(
    listener: UnixListener,
    socket: PathBuf,
    certificates: Certificates,
) -> anyhow::Result<()> {
    tracing::info!(socket = %socket.display(), "SDS server listening");
    tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::new(Sds { certificates }))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .with_context(|| format!("the SDS server on {}", socket.display()))
}

struct Sds {
    certificates: Certificates,
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta SDS is not served; use state of the world (api_type GRPC)",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        tokio::spawn(run_stream(
            request.into_inner(),
            self.certificates.clone(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        let current = self.certificates.borrow().clone();
        let Some(certificate) = current else {
            return Err(Status::unavailable("no workload certificate yet"));
        };
        let mut stream = SdsStream::default();
        stream.on_request(&request);
        stream
            .respond(&certificate)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(unknown_names(&request.resource_names)))
    }
}

/// The names among `names` this server has no secret for.
fn unserved(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|name| !is_served(name))
        .collect()
}

fn is_served(name: &str) -> bool {
    name == WORKLOAD_SECRET || name == TRUST_BUNDLE_SECRET
}

fn unknown_names(names: &[String]) -> String {
    format!(
        "no secret named {names:?}: only `{WORKLOAD_SECRET}` and `{TRUST_BUNDLE_SECRET}` are served"
    )
}

/// One `StreamSecrets` stream: Envoy's requests in, responses out at every request that
/// needs one and at every new certificate.
async fn run_stream(
    mut requests: Streaming<DiscoveryRequest>,
    mut certificates: Certificates,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut stream = SdsStream::default();
    let mut node = String::new();
    loop {
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%node, "SDS stream ended: {status}");
                        break;
                    }
                };
                if let Some(id) = request.node.as_ref().map(|n| n.id.as_str()) {
                    if node.is_empty() {
                        node = id.to_string();
                    }
                }
                log_request(&node, &request, stream.on_request(&request));
            }
            changed = certificates.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let current = certificates.borrow_and_update().clone();
        if let Some(response) = current.and_then(|certificate| stream.respond(&certificate)) {
            tracing::info!(%node, version = %response.version_info, secrets = ?stream.names, "SDS push");
            if responses.send(Ok(response)).await.is_err() {
                break;
            }
        }
    }
}

fn log_request(node: &str, request: &DiscoveryRequest, kind: RequestKind) {
    let version = &request.version_info;
    match kind {
        RequestKind::Subscribe => {
            tracing::info!(%node, names = ?request.resource_names, "SDS subscription");
            let unserved = unserved(&request.resource_names);
            if !unserved.is_empty() {
                tracing::warn!(%node, ?unserved, "Envoy asks for secrets this agent does not serve (only `{WORKLOAD_SECRET}` and `{TRUST_BUNDLE_SECRET}`): they never come");
            }
        }
        RequestKind::Ack => tracing::debug!(%node, %version, "SDS ACK"),
        RequestKind::Nack => {
            let reason = request
                .error_detail
                .as_ref()
                .map(|e| crate::text::clip_to(&e.message, MAX_LOGGED_ERROR))
                .unwrap_or_default();
            tracing::warn!(%node, %version, nonce = %request.response_nonce, "Envoy refused the secrets (NACK): {reason}")
        }
        RequestKind::StaleNonce => {
            tracing::debug!(%node, nonce = %request.response_nonce, "SDS request for an older response: ignored")
        }
    }
}

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// The first of the stream, or one naming other secrets.
    Subscribe,
    /// The last response applied.
    Ack,
    /// The last response refused (`error_detail`).
    Nack,
    /// About a response older than the last one: the protocol says to ignore it.
    StaleNonce,
}

/// Pure: one state-of-the-world SDS stream: the secrets it asked for, and what it was last
/// sent.
#[derive(Debug, Default)]
pub(crate) struct SdsStream {
    names: Vec<String>,
    /// Version and names of the last response, and its nonce.
    sent: Option<(String, Vec<String>)>,
    nonce: String,
    responses: u64,
}

impl SdsStream {
    pub(crate) fn on_request(&mut self, request: &DiscoveryRequest) -> RequestKind {
        if !request.response_nonce.is_empty() && request.response_nonce != self.nonce {
            return RequestKind::StaleNonce;
        }
        let mut names = request.resource_names.clone();
        names.sort();
        names.dedup();
        let resubscribed = names != self.names;
        self.names = names;
        if request.response_nonce.is_empty() || resubscribed {
            RequestKind::Subscribe
        } else if request.error_detail.is_some() {
            RequestKind::Nack
        } else {
            RequestKind::Ack
        }
    }

    /// The response the stream is owed with `certificate` in hand, if any: when it asked for
    /// secrets this agent serves and was not yet sent this version of them (a NACKed version
    /// is not sent again).
    pub(crate) fn respond(
        &mut self,
        certificate: &WorkloadCertificate,
    ) -> Option<DiscoveryResponse> {
        let version = certificate.version();
        let served: Vec<String> = self
            .names
            .iter()
            .filter(|name| is_served(name))
            .cloned()
            .collect();
        if served.is_empty() {
            return None;
        }
        let state = (version, served);
        if self.sent.as_ref() == Some(&state) {
            return None;
        }
        let resources = state
            .1
            .iter()
            .map(|name| pack_any(secret_named(name, certificate)))
            .collect();
        self.responses += 1;
        self.nonce = self.responses.to_string();
        let response = DiscoveryResponse {
            version_info: state.0.clone(),
            resources,
            type_url: SECRET_TYPE_URL.to_string(),
            nonce: self.nonce.clone(),
            ..Default::default()
        };
        self.sent = Some(state);
        Some(response)
    }
}

/// The secret `name` ([`WORKLOAD_SECRET`] or [`TRUST_BUNDLE_SECRET`]) from `certificate`.
fn secret_named(name: &str, certificate: &WorkloadCertificate) -> Secret {
    let inline = |text: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    };
    let secret = if name == WORKLOAD_SECRET {
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&certificate.certificate_chain)),
            private_key: Some(inline(certificate.private_key_pem())),
            ..Default::default()
        })
    } else {
        secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline(&certificate.trust_bundle)),
            ..Default::default()
        })
    };
    Secret {
        name: name.to_string(),
        r#type: Some(secret),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use prost::Message;

    fn certificate(chain: &str) -> WorkloadCertificate {
        WorkloadCertificate::for_tests(chain, "bundle", "KEY")
    }

    fn request(names: &[&str], nonce: &str, nack: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            type_url: SECRET_TYPE_URL.into(),
            error_detail: nack.then(|| RpcStatus {
                message: "bad key".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn decoded(response: &DiscoveryResponse) -> Vec<Secret> {
        response
            .resources
            .iter()
            .map(|any| {
                assert_eq!(any.type_url, SECRET_TYPE_URL);
                Secret::decode(any.value.as_slice()).unwrap()
            })
            .collect()
    }

    #[test]
    fn nothing_is_answered_before_a_subscription_to_served_names() {
        let mut stream = SdsStream::default();
        assert_eq!(stream.respond(&certificate("c1")), None);
        stream.on_request(&request(&["other"], "", false));
        assert_eq!(stream.respond(&certificate("c1")), None);
        let names = ["other", WORKLOAD_SECRET, "x"].map(String::from);
        assert_eq!(unserved(&names), ["other", "x"]);
    }

    #[test]
    fn both_secrets_carry_the_certificate_the_key_and_the_bundle() {
        let mut stream = SdsStream::default();
        let kind = stream.on_request(&request(&[WORKLOAD_SECRET, TRUST_BUNDLE_SECRET], "", false));
        assert_eq!(kind, RequestKind::Subscribe);
        let response = stream.respond(&certificate("c1")).expect("a response");
        let secrets = decoded(&response);
        let inline = |source: &Option<DataSource>| match source.as_ref().unwrap().specifier.as_ref()
        {
            Some(data_source::Specifier::InlineString(text)) => text.clone(),
            other => panic!("{other:?}"),
        };
        let [bundle, workload] = &secrets[..] else {
            panic!("{secrets:?}")
        };
        assert_eq!(workload.name, WORKLOAD_SECRET);
        let Some(secret::Type::TlsCertificate(tls)) = &workload.r#type else {
            panic!("{workload:?}")
        };
        assert_eq!(inline(&tls.certificate_chain), "c1");
        assert_eq!(inline(&tls.private_key), "KEY");
        assert_eq!(bundle.name, TRUST_BUNDLE_SECRET);
        let Some(secret::Type::ValidationContext(validation)) = &bundle.r#type else {
            panic!("{bundle:?}")
        };
        assert_eq!(inline(&validation.trusted_ca), "bundle");
        assert_eq!(response.version_info, certificate("c1").version());
    }

    #[test]
    fn an_ack_needs_nothing_a_renewal_pushes_and_a_nack_is_not_resent() {
        let mut stream = SdsStream::default();
        stream.on_request(&request(&[WORKLOAD_SECRET], "", false));
        let first = stream.respond(&certificate("c1")).unwrap();
        let ack = request(&[WORKLOAD_SECRET], &first.nonce, false);
        assert_eq!(stream.on_request(&ack), RequestKind::Ack);
        assert_eq!(stream.respond(&certificate("c1")), None);

        let renewed = stream
            .respond(&certificate("c2"))
            .expect("the renewal is pushed");
        assert_ne!(renewed.version_info, first.version_info);
        assert_ne!(renewed.nonce, first.nonce);
        assert_eq!(
            stream.on_request(&ack),
            RequestKind::StaleNonce,
            "an ACK of the first response comes too late"
        );
        let nack = request(&[WORKLOAD_SECRET], &renewed.nonce, true);
        assert_eq!(stream.on_request(&nack), RequestKind::Nack);
        assert_eq!(stream.respond(&certificate("c2")), None);

        let both = request(
            &[WORKLOAD_SECRET, TRUST_BUNDLE_SECRET],
            &renewed.nonce,
            false,
        );
        assert_eq!(stream.on_request(&both), RequestKind::Subscribe);
        let widened = stream
            .respond(&certificate("c2"))
            .expect("new names answered");
        assert_eq!(decoded(&widened).len(), 2);
    }
}
