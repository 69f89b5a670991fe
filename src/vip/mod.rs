//! VIP allocation: one virtual IP per service hostname, stable for as long as the service
//! exists, across restarts and across pilot replicas.
//!
//! The allocator is pure: `VipAllocator::sync` turns the set of wanted hostnames and the
//! current time into new assignments. `VipBook` keeps one replica's assignments in step with
//! the shared store (`VipStore`: a director config, or a file for a lone pilot).

mod allocator;
pub(crate) mod book;
pub(crate) mod director_store;
pub mod store;

pub use allocator::{
    check_pool, PoolError, PoolUsage, Released, SyncOutcome, VipAllocator, VipState,
};
pub use book::{BookSync, VipBook};
pub use director_store::{DirectorStore, StoredKind};
pub use store::{FileStore, Saved, SharedStore, Versioned, VipStore};
