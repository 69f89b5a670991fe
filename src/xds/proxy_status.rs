//! What the pilot knows of every connected Envoy and agent, for `GET /v1/proxies` and
//! `boshy mesh status`.

use super::resources::ResourceType;

impl ResourceType {
    /// The xDS name of the type, as operators and `istioctl` say it: `cds`, `eds`, `lds`,
    /// `rds`.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_its_own_short_name() {
        let names = ResourceType::PUSH_ORDER.map(ResourceType::short_name);
        assert_eq!(names, ["cds", "eds", "lds", "rds"]);
    }
}
