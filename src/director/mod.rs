//! The BOSH director + UAA client and the poller that turns the director's state into
//! `DeploymentInput`s for the catalog and `RuleConfigs` for the rules (docs/director-api.md is
//! the contract).

mod changes;
mod client;
pub mod decode;
mod error;
mod health;
mod health_budget;
mod poller;
mod rule_configs;
mod tls;
mod uaa;

// The backoff is shared with the agent's certificate requests (identity::agent).
pub(crate) use changes::Backoff;
pub use client::{DirectorClient, RawResponse};
pub use error::DirectorError;
pub use poller::{PollTiming, Poller, PublishedRuleConfigs};
pub use rule_configs::{RuleConfig, RuleConfigs, RULES_CONFIG_TYPE};
