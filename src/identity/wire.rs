//! Pure: the certificate request between the virtual-ip-agent and the pilot, on the names
//! port (mutual TLS with the mesh client certificate): `POST /v1/identity/csr` with a
//! [`CsrRequest`], answered with a [`CsrAnswer`] (JSON both ways); a joined VM's renewal of
//! its mesh certificate, `POST /v1/workloads/renew` with a [`RenewRequest`], is answered the
//! same way.

use serde::{Deserialize, Serialize};

/// Where the agent sends its certificate signing request.
pub const CSR_PATH: &str = "/v1/identity/csr";

/// A VM asks for a workload certificate. The key stays on the VM: only the CSR, signed with
/// it (proof of possession), travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// The BOSH instance asking (`spec.deployment`, `spec.id`): the pilot checks that the
    /// director lists it at the address the request comes from.
    pub deployment: String,
    pub instance: String,
    /// PKCS#10, PEM, whose only subject alternative name is the instance group's SPIFFE ID.
    pub csr: String,
    /// A fresh random value (at least 16 bytes, hex) and the agent's clock (UNIX seconds):
    /// a pilot refuses a nonce it has seen and a time too far from its own.
    pub nonce: String,
    pub issued_at: u64,
}

/// Where a joined VM's agent renews its mesh certificate (docs/workloads.md), on the names
/// port, presenting that certificate: the identity is the connection's.
pub const RENEW_PATH: &str = "/v1/workloads/renew";

/// A joined VM asks for a new mesh certificate, answered with a [`CsrAnswer`]. As a
/// [`CsrRequest`] without the instance: the pilot takes it from the certificate presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10, PEM, signed with the new key; its names are ignored.
    pub csr: String,
    pub nonce: String,
    pub issued_at: u64,
}

/// The signed certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrAnswer {
    /// PEM: the workload certificate, then the CA certificates between it and the mesh CA.
    pub certificate_chain: String,
    /// PEM: every CA a peer's workload certificate may chain to (two during a CA rotation).
    pub trust_bundle: String,
    /// When the certificate expires (UNIX seconds).
    pub not_after: u64,
}
