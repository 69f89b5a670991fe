//! Traffic rules in Istio's own YAML (`networking.istio.io`: VirtualService, DestinationRule,
//! ServiceEntry, Sidecar; `security.istio.io`: PeerAuthentication, AuthorizationPolicy), kept
//! as BOSH director configs of type `boshy-istio`; pure: no I/O, no
//! logging, every problem returned as a [`Finding`]. The operator's guide, with the exact
//! list of supported and refused fields, is docs/rules.md.
//!
//! Two steps, so that a config is parsed once per change of its content and the whole set is
//! validated again whenever the mesh changes:
//!
//! 1. [`parse_config`] (`parse.rs`): one config's content → its resources, each read into the
//!    types of `model.rs` (serde, unknown fields denied, values of `values.rs`) and checked
//!    alone (`checks.rs`); a resource that fails is left out with findings naming the config,
//!    the resource and the field.
//! 2. [`validate`] (`validate.rs`): every parsed config together, against a [`MeshView`]
//!    (`mesh.rs`) when there is one → the [`RuleSet`] of accepted resources and a
//!    [`ConfigVerdict`] per config.
//!
//! `bosh_cli.rs` reads a file as `bosh update-config` would (its first YAML document), for
//! `boshy rules check`.

mod bosh_cli;
mod checks;
mod compile;
mod compile_security;
mod entries;
mod finding;
pub(crate) mod mesh;
pub mod model;
mod parse;
mod security_checks;
#[cfg(test)]
mod test_support;
pub(crate) mod validate;
mod values;

pub use bosh_cli::{first_document, FirstDocument};
pub use compile::{compile, Compiled};
pub use entries::{entry_hosts, entry_services, entry_services_with};
pub use finding::{Finding, ResourceRef};
pub use mesh::{MeshHost, MeshInstance, MeshPort, MeshView};
pub use model::{Kind, Labels, Spec};
pub use parse::{parse_config, ParsedConfig, Resource, API_VERSIONS};
pub use validate::{validate, ConfigVerdict, Rule, RuleSet, Validated};
