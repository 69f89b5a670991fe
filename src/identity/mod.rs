//! Workload identities from BOSH (docs/security.md): the SPIFFE ID of every instance group,
//! the certificates that carry it, and the names Envoy asks for them by over SDS; and a
//! joined VM's mesh certificate, which its agent renews (`mesh_certificate`).

pub mod agent;
pub mod ca;
pub mod issuer;
pub(crate) mod mesh_certificate;
pub mod replay;
pub mod sds;
pub mod spiffe;
pub mod wire;
