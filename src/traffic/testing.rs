//! Traffic models built by hand, for tests (the product's unit tests and the integration
//! tests): compiled for `cfg(test)` and the `testing` feature only, as `catalog::testing`.

use super::{Destination, WeightedDestination};

/// `weight` of the traffic to `port` of `host` (of `subset`, if any).
pub fn to(host: &str, port: u16, subset: Option<&str>, weight: u32) -> WeightedDestination {
    WeightedDestination {
        destination: Destination {
            host: host.to_string(),
            port,
            subset: subset.map(str::to_string),
        },
        weight,
    }
}
