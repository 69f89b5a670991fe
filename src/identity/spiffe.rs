//! Pure: the SPIFFE ID of a BOSH instance group,
//! `spiffe://<trust domain>/deployment/<deployment>/instance_group/<instance group>`.
//!
//! Every instance of a group runs the same jobs from the same manifest, so they share one
//! identity, as the pods of one Kubernetes service account do in Istio
//! (`spiffe://cluster.local/ns/<namespace>/sa/<account>`). The trust domain is a property of
//! the mesh (`identity.trust_domain`, default [`DEFAULT_TRUST_DOMAIN`]).

use std::fmt;

/// The trust domain when the operator names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "boshy";

/// The SDS secret holding a VM's workload certificate and key (Istio's name for it).
pub const WORKLOAD_SECRET: &str = "default";
/// The SDS secret holding the CAs a workload certificate is checked against (Istio's name).
pub const TRUST_BUNDLE_SECRET: &str = "ROOTCA";

/// The longest SPIFFE ID the SPIFFE specification lets a validator require support for.
const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name (a DNS name).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A checked trust domain: lower-case letters, digits, `.`, `-` and `_`, as the SPIFFE ID
/// specification allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(format!(
                "a trust domain has 1 to {MAX_TRUST_DOMAIN_LEN} characters, not {}",
                name.len()
            ));
        }
        match name
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            Some(bad) => Err(format!(
                "a trust domain has only lower-case letters, digits, `.`, `-` and `_`; \
                 {bad:?} is not allowed"
            )),
            None => Ok(TrustDomain(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        TrustDomain(DEFAULT_TRUST_DOMAIN.to_string())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TrustDomain::new(&name).map_err(serde::de::Error::custom)
    }
}

/// Whether `segment` may be one segment of a SPIFFE ID's path: letters, digits, `.`, `-` and
/// `_`, and neither `.` nor `..`. BOSH's own names (deployments, instance groups) keep to this
/// in practice; one that does not has no identity rather than an ambiguous one.
fn is_path_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The identity of the instances of `instance_group` in `deployment`, or why they have none.
pub fn workload_id(
    trust_domain: &TrustDomain,
    deployment: &str,
    instance_group: &str,
) -> Result<String, String> {
    for (what, name) in [
        ("deployment", deployment),
        ("instance group", instance_group),
    ] {
        if !is_path_segment(name) {
            return Err(format!(
                "the {what} name {:?} cannot be a SPIFFE ID path segment (letters, digits, \
                 `.`, `-` and `_` only)",
                crate::text::clip(name)
            ));
        }
    }
    let id =
        format!("spiffe://{trust_domain}/deployment/{deployment}/instance_group/{instance_group}");
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "the SPIFFE ID would be {} bytes, more than {MAX_ID_LEN}",
            id.len()
        ));
    }
    Ok(id)
}

/// The principal Istio's `AuthorizationPolicy` writes for an identity: the SPIFFE ID without
/// its `spiffe://` scheme, `<trust domain>/deployment/<d>/instance_group/<g>`.
pub fn principal(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

/// The (deployment, instance group) an identity of [`workload_id`]'s shape names, whatever
/// its trust domain; `None` for any other URI.
pub fn workload_of(id: &str) -> Option<(&str, &str)> {
    let path = id.strip_prefix("spiffe://")?;
    let mut segments = path.split('/');
    let (_trust_domain, deployment_key, deployment, group_key, group) = (
        segments.next()?,
        segments.next()?,
        segments.next()?,
        segments.next()?,
        segments.next()?,
    );
    let well_formed = deployment_key == "deployment"
        && group_key == "instance_group"
        && segments.next().is_none()
        && is_path_segment(deployment)
        && is_path_segment(group);
    well_formed.then_some((deployment, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_id_names_its_deployment_and_instance_group_back() {
        let domain = TrustDomain::new("corp.example").unwrap();
        let id = workload_id(&domain, "sample-deployment", "banana").unwrap();
        assert_eq!(workload_of(&id), Some(("sample-deployment", "banana")));
        for other in [
            "spiffe://corp.example/ns/default/sa/banana",
            "spiffe://corp.example/deployment/d/instance_group/g/extra",
            "spiffe://corp.example/deployment/../instance_group/g",
            "https://corp.example/deployment/d/instance_group/g",
            "spiffe://corp.example/deployment/d",
        ] {
            assert_eq!(workload_of(other), None, "{other}");
        }
    }

    #[test]
    fn an_instance_group_has_one_identity_under_the_trust_domain() {
        let domain = TrustDomain::new("corp.example").unwrap();
        let id = workload_id(&domain, "sample-deployment", "banana").unwrap();
        assert_eq!(
            id,
            "spiffe://corp.example/deployment/sample-deployment/instance_group/banana"
        );
        assert_eq!(
            principal(&id),
            "corp.example/deployment/sample-deployment/instance_group/banana"
        );
        assert_eq!(TrustDomain::default().as_str(), "boshy");
    }

    #[test]
    fn names_that_cannot_be_path_segments_have_no_identity() {
        let domain = TrustDomain::default();
        for (deployment, group) in [("a/b", "g"), ("d", ".."), ("d", ""), ("d", "g h")] {
            let refusal = workload_id(&domain, deployment, group).unwrap_err();
            assert!(refusal.contains("SPIFFE ID path segment"), "{refusal}");
        }
        let long = "d".repeat(3000);
        assert!(workload_id(&domain, &long, "g")
            .unwrap_err()
            .contains("bytes"));
    }

    #[test]
    fn a_trust_domain_is_lower_case_dns_like() {
        assert!(TrustDomain::new("Boshy").unwrap_err().contains("'B'"));
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("a:b").is_err());
        assert!(serde_yaml::from_str::<TrustDomain>("x/y").is_err());
        assert_eq!(
            serde_yaml::from_str::<TrustDomain>("mesh.local").unwrap(),
            TrustDomain::new("mesh.local").unwrap()
        );
    }
}
