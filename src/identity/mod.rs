//! Workload identities from BOSH (docs/security.md): the SPIFFE ID of every instance group,
//! the certificates that carry it, and the names Envoy asks for them by over SDS.

pub mod agent;
pub mod ca;
pub mod issuer;
pub mod replay;
pub mod sds;
pub mod spiffe;
pub mod wire;
