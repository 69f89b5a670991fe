//! Each Envoy holds only what its VM uses (docs/scope.md).
//!
//! The virtual-ip-agent answers every DNS name of the mesh, so it knows which services its VM
//! asks for. A name asked for the first time goes into the VM's scope at every pilot, and the
//! agent answers the query once the VM's Envoy has acknowledged that service's listener,
//! cluster, load assignment and routes: the connection that follows the answer lands on a
//! listener that is there. Names not asked for during `idle` leave the scope.
//!
//! - [`wire`]: pure: the request an agent sends and the pilot's answer.
//! - [`registry`]: the pilot's record of every instance's scope (a `watch` channel each, which
//!   the instance's ADS streams follow) and of the director's instance addresses, against
//!   which an agent's claim is checked.
//! - [`filter`]: pure: which resources of a snapshot a scope admits.
//! - [`gate`]: the agent's record of what is in scope, shared with the DNS zone it answers from.
//! - [`admission`]: the agent's requests to the pilots: a name into the scope, the whole scope
//!   again on every new stream and when names expire, and the scope kept on disk.

pub mod admission;
pub mod filter;
pub mod gate;
pub mod registry;
pub mod wire;

pub use gate::{Gate, Slot};
pub use registry::{InstanceScope, ListedInstances, ScopeRegistry};
pub use wire::{ScopeAnswer, ScopeChange, ScopeRequest};
