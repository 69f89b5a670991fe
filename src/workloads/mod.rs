//! VMs outside BOSH joining the mesh as members of WorkloadGroups (docs/workloads.md).
//!
//! An operator asks a pilot for a join token scoped to one group (`POST /v1/workloads/tokens`);
//! a VM presents it to join (`POST /v1/workloads/join`): the pilot registers the address the
//! connection comes from and signs a mesh client certificate naming the registration
//! (`urn:boshy:workload:<config>:<group>:<id>`). From then on the VM is instance
//! `<group>/<id>` of "deployment" `<config>`: an endpoint of its group's service, whose agent
//! reports on the names port like a BOSH VM's, every `heartbeat_seconds`. Tokens and
//! registrations are kept in a director config of type `boshy-workloads` shared by every
//! pilot (written on token create and revoke, join, leave and deregistration, never per
//! heartbeat); heartbeats stay in each pilot's memory.
//!
//! - [`token`]: pure: the token's format, its record in the store and its check.
//! - [`refusal`]: pure: why a join or a change is refused, its status and metric label.
//! - [`state`]: pure: the store's content and every change of it.
//! - [`store`]: the store's I/O (the VIP store's mechanics) and one replica's view of it.
//! - [`identity`]: pure: the VM certificate's URN, and who a TLS peer is.
//! - [`liveness`]: pure: a registration's verdict from its heartbeats, and the verdicts
//!   applied to the catalog's WorkloadGroup endpoints.
//! - [`heartbeats`]: what this pilot heard from each registered VM's agent.
//! - [`members`]: pure: the registrations as endpoints and as instances claims are
//!   checked against.
//! - [`service`]: the task owning the store (batched writes, re-reads, the sweep), and the
//!   handle the API calls.
//! - [`api`]: the HTTP endpoints.
//! - [`renewal`]: a joined VM's certificate renewed, on the names port.
//! - [`xds_gate`]: the xDS port's hold on joined VMs' streams (registered, from their
//!   address, as their own node; ended when the registration goes).

pub(crate) mod api;
pub mod heartbeats;
pub mod identity;
pub(crate) mod liveness;
pub(crate) mod members;
pub(crate) mod refusal;
pub(crate) mod renewal;
pub mod service;
pub(crate) mod state;
pub(crate) mod store;
pub(crate) mod token;
pub(crate) mod xds_gate;

pub use heartbeats::Heartbeats;
pub use identity::{Peer, WorkloadIdentity};
pub use service::{Ports, Settings, Workloads, WorkloadsTask};
