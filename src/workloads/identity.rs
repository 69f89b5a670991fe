//! Who a joined VM is on the wire: its certificate, a mesh client certificate the pilot
//! signed at the join, carries the URI SAN `urn:boshy:workload:<config>:<group>:<id>`. A
//! connection presenting it is that registration's, and nothing else: no operator access to
//! the API, and on the names port claims of that registration alone. Pure.

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::catalog::model::InstanceRef;
use crate::xds::bootstrap::NodeIdentity;

pub(crate) const URN_PREFIX: &str = "urn:boshy:workload:";

/// The registration a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadIdentity {
    pub config: String,
    pub group: String,
    pub id: String,
}

/// Who is at the other end of a TLS connection to the pilot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate.
    Anonymous,
    /// A certificate of the mesh CA that is no joined VM's: a BOSH VM, or an operator's tool.
    Mesh,
    /// A joined VM.
    Workload(WorkloadIdentity),
}

impl WorkloadIdentity {
    pub(crate) fn urn(&self) -> String {
        format!("{URN_PREFIX}{}:{}:{}", self.config, self.group, self.id)
    }

    /// Reads a URN. The config's name is BOSH's and may hold a `:`; the group's (a DNS
    /// label's syntax) and the id (a UUID) hold none, so the last two fields are theirs.
    pub(crate) fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(URN_PREFIX)?;
        let mut fields = rest.rsplitn(3, ':');
        let (id, group, config) = (fields.next()?, fields.next()?, fields.next()?);
        if [config, group, id].iter().any(|f| f.is_empty()) {
            return None;
        }
        Some(WorkloadIdentity {
            config: config.to_string(),
            group: group.to_string(),
            id: id.to_string(),
        })
    }

    /// `<config>/<group>`, as tokens and registrations name the group.
    pub(crate) fn group_path(&self) -> String {
        format!("{}/{}", self.config, self.group)
    }

    /// The Envoy node `boshy join` renders for this registration at `address`: the one the
    /// xDS port holds the registration's streams to.
    pub(crate) fn node(&self, address: IpAddr) -> NodeIdentity {
        NodeIdentity {
            deployment: self.config.clone(),
            instance_group: self.group.clone(),
            instance_id: self.id.clone(),
            index: None,
            az: None,
            ip: address,
            service_name: None,
        }
    }

    pub(crate) fn instance_ref(&self) -> InstanceRef {
        InstanceRef {
            deployment: self.config.clone(),
            instance_id: self.id.clone(),
        }
    }

    /// The identity a certificate (DER) carries, if it is a joined VM's.
    pub(crate) fn of_certificate(der: &[u8]) -> Option<Self> {
        let (_, certificate) = X509Certificate::from_der(der).ok()?;
        certificate.extensions().iter().find_map(|extension| {
            let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() else {
                return None;
            };
            san.general_names.iter().find_map(|name| match name {
                GeneralName::URI(uri) => Self::parse(uri),
                _ => None,
            })
        })
    }
}

impl Peer {
    /// The peer of a connection that presented `certificates` (verified by the handshake
    /// against the mesh CA): the first is its own.
    pub fn of(certificates: Option<&[CertificateDer<'_>]>) -> Peer {
        match certificates.and_then(|c| c.first()) {
            None => Peer::Anonymous,
            Some(leaf) => {
                WorkloadIdentity::of_certificate(leaf.as_ref()).map_or(Peer::Mesh, Peer::Workload)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urn_reads_back_and_anything_else_is_no_workload() {
        let identity = WorkloadIdentity {
            config: "legacy:dc1".into(),
            group: "rabbitmq".into(),
            id: "6c1f0b6e-7d1a-4b0e-9c55-0d2f3a4b5c6d".into(),
        };
        let urn = identity.urn();
        assert_eq!(
            urn,
            "urn:boshy:workload:legacy:dc1:rabbitmq:6c1f0b6e-7d1a-4b0e-9c55-0d2f3a4b5c6d"
        );
        assert_eq!(WorkloadIdentity::parse(&urn), Some(identity.clone()));
        assert_eq!(identity.group_path(), "legacy:dc1/rabbitmq");
        assert_eq!(identity.instance_ref().deployment, "legacy:dc1");
        for other in [
            "spiffe://boshy/deployment/d/instance_group/g",
            "urn:boshy:workload:",
            "urn:boshy:workload:legacy:rabbitmq",
            "urn:boshy:workload:legacy::id",
            "urn:boshy:workload::rabbitmq:id",
        ] {
            assert_eq!(WorkloadIdentity::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_certificate_with_the_urn_is_a_workload_and_others_are_mesh() {
        let make = |uri: Option<&str>| {
            let mut params = rcgen::CertificateParams::default();
            if let Some(uri) = uri {
                params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
            }
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        let vm = make(Some("urn:boshy:workload:legacy:rabbitmq:abc"));
        assert_eq!(
            Peer::of(Some(&[vm])),
            Peer::Workload(WorkloadIdentity {
                config: "legacy".into(),
                group: "rabbitmq".into(),
                id: "abc".into()
            })
        );
        let bosh = make(Some("spiffe://boshy/deployment/d/instance_group/g"));
        assert_eq!(Peer::of(Some(&[bosh])), Peer::Mesh);
        assert_eq!(Peer::of(Some(&[make(None)])), Peer::Mesh);
        assert_eq!(Peer::of(None), Peer::Anonymous);
        assert_eq!(Peer::of(Some(&[])), Peer::Anonymous);
    }
}
