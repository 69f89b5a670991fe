//! VIP allocation: one virtual IP per service hostname, stable for as long as the service
//! exists, across restarts (the state is persisted by `store`).
//!
//! The allocator is pure: `VipAllocator::sync` turns the set of wanted hostnames and the
//! current time into new assignments; the caller persists `VipAllocator::state` when
//! `SyncOutcome::changed` says so.

mod allocator;
pub mod store;

pub use allocator::{check_pool, PoolError, SyncOutcome, VipAllocator, VipState};
pub use store::VipStore;
