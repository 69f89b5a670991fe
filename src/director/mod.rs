//! The BOSH director + UAA client and the poller that turns the director's state into
//! `DeploymentInput`s for the catalog (docs/director-api.md is the contract).

mod changes;
mod client;
pub mod decode;
mod error;
mod poller;
mod tls;
mod uaa;

pub use client::{DirectorClient, RawResponse};
pub use error::DirectorError;
pub use poller::{PollTiming, Poller};
