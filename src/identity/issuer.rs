//! The pilot's answer to one certificate request (`POST /v1/identity/csr` on the names port),
//! the clock passed in: the body parses; the director lists the instance it names at the
//! address it comes from (`scope::ScopeRegistry`, as for scope changes); its nonce is new and
//! its time close to the pilot's (`replay`); its CSR asks for exactly the SPIFFE ID of that
//! instance's group (`ca::check_csr`); then the workload CA signs. Every refusal has a
//! [`Reason`], which decides its HTTP status and its `/metrics` label.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::ca::{check_csr, CsrProblem, WorkloadCa};
use super::replay::{ReplayGuard, Stale};
use super::spiffe::{workload_id, TrustDomain};
use super::wire::{CsrAnswer, CsrRequest};
use crate::catalog::model::InstanceRef;
use crate::scope::ScopeRegistry;
use crate::text::clip;

/// Why a certificate request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The body is not a `CsrRequest` (or its nonce is not hex).
    BadRequest,
    /// The CSR does not parse, its signature does not verify, or its key is refused.
    BadCsr,
    /// The CSR asks for another identity than the instance's, or to be a CA.
    Identity,
    /// The director lists no such instance, or lists it at another address.
    NotListed,
    Replay,
    Clock,
    /// The replay guard is full: too many requests within its window.
    Busy,
    /// The CA could not sign (expired, or a signing error).
    Signing,
}

impl Reason {
    /// The label of `boshy_identity_refusals_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::BadCsr => "bad_csr",
            Reason::Identity => "identity",
            Reason::NotListed => "not_listed",
            Reason::Replay => "replay",
            Reason::Clock => "clock",
            Reason::Busy => "busy",
            Reason::Signing => "signing",
        }
    }

    pub(crate) fn status(self) -> u16 {
        match self {
            Reason::BadRequest | Reason::BadCsr => 400,
            Reason::Identity | Reason::NotListed | Reason::Replay | Reason::Clock => 403,
            Reason::Busy => 503,
            Reason::Signing => 500,
        }
    }
}

/// A refused request: the reason, and a message saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// A certificate issued: the answer, and the identity it carries (for the log).
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) answer: CsrAnswer,
    pub(crate) id: String,
}

/// What answers certificate requests: the CA, the trust domain and the nonces seen.
#[derive(Debug)]
pub struct Issuer {
    ca: WorkloadCa,
    trust_domain: TrustDomain,
    replay: Mutex<ReplayGuard>,
}

impl Issuer {
    pub fn new(ca: WorkloadCa, trust_domain: TrustDomain) -> Self {
        Issuer {
            ca,
            trust_domain,
            replay: Mutex::default(),
        }
    }

    /// Answers `body`, a request from `peer`, at `now`, checking the instance it names
    /// against the director's list in `listed`.
    pub(crate) fn issue(
        &self,
        body: &[u8],
        peer: IpAddr,
        listed: &ScopeRegistry,
        now: SystemTime,
    ) -> Result<Issued, Refusal> {
        let request: CsrRequest = serde_json::from_slice(body).map_err(|err| {
            Refusal::new(
                Reason::BadRequest,
                format!(
                    "the body is not a certificate request: {}",
                    clip(&err.to_string())
                ),
            )
        })?;
        let instance = InstanceRef {
            deployment: request.deployment,
            instance_id: request.instance,
        };
        let group = listed.instance_group(&instance, peer).map_err(|refused| {
            Refusal::new(
                Reason::NotListed,
                format!(
                    "instance {}/{}: {refused}",
                    clip(&instance.deployment),
                    clip(&instance.instance_id)
                ),
            )
        })?;
        let id = workload_id(&self.trust_domain, &instance.deployment, &group).map_err(|why| {
            Refusal::new(Reason::Identity, format!("no workload identity: {why}"))
        })?;
        let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.replay
            .lock()
            .expect("replay guard lock")
            .admit(&request.nonce, request.issued_at, seconds)
            .map_err(|stale| {
                let reason = match stale {
                    Stale::BadNonce => Reason::BadRequest,
                    Stale::Clock { .. } => Reason::Clock,
                    Stale::Replayed => Reason::Replay,
                    Stale::Full => Reason::Busy,
                };
                Refusal::new(reason, stale.to_string())
            })?;
        let csr = check_csr(&request.csr, &id).map_err(|problem| match problem {
            CsrProblem::Malformed(why) => Refusal::new(Reason::BadCsr, why),
            CsrProblem::Forbidden(why) => Refusal::new(Reason::Identity, why),
        })?;
        let answer = self
            .ca
            .sign(&csr, &id, now)
            .map_err(|err| Refusal::new(Reason::Signing, format!("{err:#}")))?;
        Ok(Issued { answer, id })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;
    use crate::identity::ca::testing::{csr, far_future, TestCa};
    use crate::scope::registry::testing::listed;

    const ID: &str = "spiffe://boshy/deployment/d/instance_group/g";
    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn issuer() -> Issuer {
        let root = TestCa::root("workload ca", far_future());
        let ca = WorkloadCa::from_pem(
            &root.certificate,
            &Secret::new(root.key.clone()),
            None,
            Duration::from_secs(3600),
        )
        .unwrap();
        Issuer::new(ca, TrustDomain::default())
    }

    fn registry() -> ScopeRegistry {
        let registry = ScopeRegistry::default();
        registry.set_listed(listed("a-1", &["10.0.0.5"]));
        registry
    }

    fn body(instance: &str, csr: &str, nonce: u32, issued_at: u64) -> Vec<u8> {
        serde_json::to_vec(&CsrRequest {
            deployment: "d".into(),
            instance: instance.into(),
            csr: csr.into(),
            nonce: format!("{nonce:032x}"),
            issued_at,
        })
        .unwrap()
    }

    const LISTED: [u8; 4] = [10, 0, 0, 5];

    fn refused(issuer: &Issuer, body: &[u8], peer: [u8; 4]) -> Refusal {
        issuer
            .issue(body, IpAddr::from(peer), &registry(), now())
            .expect_err("refused")
    }

    #[test]
    fn the_listed_instance_gets_its_group_identity() {
        let issuer = issuer();
        let issued = issuer
            .issue(
                &body("a-1", &csr(ID), 1, NOW),
                IpAddr::from(LISTED),
                &registry(),
                now(),
            )
            .unwrap();
        assert_eq!(issued.id, ID);
        assert_eq!(issued.answer.not_after, NOW + 3600);
        assert!(issued
            .answer
            .certificate_chain
            .contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn every_refusal_has_its_reason_status_and_message() {
        let issuer = issuer();
        let cases: [(Vec<u8>, [u8; 4], Reason, &str); 8] = [
            (b"not json".to_vec(), LISTED, Reason::BadRequest, "not a certificate request"),
            (
                br#"{"deployment":"d","instance":"a-1","csr":"","nonce":"00","issued_at":1,"x":1}"#.to_vec(),
                LISTED,
                Reason::BadRequest,
                "unknown field",
            ),
            (body("a-9", &csr(ID), 2, NOW), LISTED, Reason::NotListed, "d/a-9: the director lists no such instance"),
            (body("a-1", &csr(ID), 3, NOW), [10, 0, 0, 6], Reason::NotListed, "another address"),
            (body("a-1", &csr(ID), 4, NOW - 301), LISTED, Reason::Clock, "VM's time"),
            (
                body("a-1", &csr("spiffe://boshy/deployment/d/instance_group/h"), 5, NOW),
                LISTED,
                Reason::Identity,
                "instance_group/h",
            ),
            (body("a-1", "garbage", 6, NOW), LISTED, Reason::BadCsr, "PEM CERTIFICATE REQUEST"),
            (
                serde_json::to_vec(&serde_json::json!({"deployment":"d","instance":"a-1","csr":csr(ID),"nonce":"xyz","issued_at":NOW})).unwrap(),
                LISTED,
                Reason::BadRequest,
                "hex digits",
            ),
        ];
        for (body, peer, reason, needle) in cases {
            let refusal = refused(&issuer, &body, peer);
            assert_eq!(refusal.reason, reason, "{needle}: {refusal:?}");
            assert!(refusal.message.contains(needle), "{needle}: {refusal:?}");
        }
        assert_eq!(Reason::BadCsr.status(), 400);
        assert_eq!(Reason::Identity.status(), 403);
        assert_eq!(Reason::NotListed.status(), 403);
        assert_eq!(Reason::Replay.status(), 403);
        assert_eq!(Reason::Clock.status(), 403);
        assert_eq!(Reason::Busy.status(), 503);
    }

    #[test]
    fn a_replayed_request_is_refused_even_from_its_own_instance() {
        let issuer = issuer();
        let request = body("a-1", &csr(ID), 7, NOW);
        issuer
            .issue(&request, IpAddr::from(LISTED), &registry(), now())
            .unwrap();
        let again = refused(&issuer, &request, LISTED);
        assert_eq!(again.reason, Reason::Replay, "{again:?}");
        assert_eq!(again.reason.label(), "replay");
    }
}
