//! `POST /v1/workloads/renew` on the names port (docs/workloads.md, "Certificate renewal"): a
//! joined VM's agent, presenting the mesh certificate the pilot signed at its join, asks for a
//! new one before it expires. The identity is the TLS peer's, never the request's: the
//! registration its URN names must still be in the store (a VM that left, or was removed or
//! deregistered, renews nothing) and the connection must come from the registration's
//! address. The request's freshness is judged as a workload certificate request's
//! (`identity::replay`), its CSR's key as a join's (`identity::ca::check_csr_key`), and the
//! new certificate names the same registration for `workloads.certificate_ttl_seconds`.
//!
//! [`judge`] is the decision, pure but for the signing it is handed; [`router`] serves it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};

use super::identity::{Peer, WorkloadIdentity};
use super::service::Workloads;
use super::state::Registration;
use crate::identity::ca::{check_csr_key, CheckedCsr, CsrProblem};
use crate::identity::replay::{ReplayGuard, Stale};
use crate::identity::wire::{CsrAnswer, RenewRequest, RENEW_PATH};
use crate::metrics;
use crate::text::clip;

/// Why a renewal is refused; decides the status and the label in
/// `boshy_workload_refusals_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No certificate, or a mesh certificate that is no joined VM's.
    NotJoinedVm,
    /// The store holds no such registration (left, removed, deregistered).
    Unregistered,
    /// The connection comes from another address than the registration's.
    OtherAddress,
    BadRequest,
    BadCsr,
    Replay,
    Clock,
    /// The replay guard is full.
    Busy,
    Signing,
}

impl Reason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::NotJoinedVm => "renewal_not_joined_vm",
            Reason::Unregistered => "renewal_unregistered",
            Reason::OtherAddress => "renewal_other_address",
            Reason::BadRequest => "renewal_bad_request",
            Reason::BadCsr => "renewal_bad_csr",
            Reason::Replay => "renewal_replay",
            Reason::Clock => "renewal_clock",
            Reason::Busy => "renewal_busy",
            Reason::Signing => "renewal_signing",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Reason::NotJoinedVm | Reason::OtherAddress | Reason::Replay | Reason::Clock => {
                StatusCode::FORBIDDEN
            }
            Reason::Unregistered => StatusCode::NOT_FOUND,
            Reason::BadRequest | Reason::BadCsr => StatusCode::BAD_REQUEST,
            Reason::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Signing => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A refused renewal: its reason and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

fn refusal(reason: Reason, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

/// Decides the renewal asked by `body` on a connection from `from` presenting `identity`'s
/// certificate, `registration` being what the store holds for it, at `now`; `sign` signs the
/// checked CSR's key for a URN. The request's nonce is taken by `replay` only once the
/// registration and address checks passed: a stranger's requests fill no guard.
pub(crate) fn judge(
    identity: &WorkloadIdentity,
    registration: Option<&Registration>,
    from: IpAddr,
    body: &[u8],
    replay: &Mutex<ReplayGuard>,
    now: SystemTime,
    sign: impl FnOnce(&CheckedCsr, &str) -> anyhow::Result<CsrAnswer>,
) -> Result<CsrAnswer, Refusal> {
    let Some(registration) = registration else {
        return Err(refusal(
            Reason::Unregistered,
            format!(
                "no VM is registered as {} in {}: it left or was removed; `boshy join` again \
                 with a new token",
                identity.id,
                identity.group_path()
            ),
        ));
    };
    let from = from.to_canonical();
    if registration.address != from {
        return Err(refusal(
            Reason::OtherAddress,
            format!(
                "the registration {} is the VM at {}, and this request comes from {from}",
                registration.id, registration.address
            ),
        ));
    }
    let request: RenewRequest = serde_json::from_slice(body).map_err(|err| {
        refusal(
            Reason::BadRequest,
            format!(
                "the body is not a renewal request: {}",
                clip(&err.to_string())
            ),
        )
    })?;
    let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    replay
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
            refusal(reason, stale.to_string())
        })?;
    // The names asked for are ignored: the certificate names the registration, whatever the
    // CSR says (as at the join).
    let (csr, _asked) = check_csr_key(&request.csr).map_err(|problem| match problem {
        CsrProblem::Malformed(why) | CsrProblem::Forbidden(why) => refusal(Reason::BadCsr, why),
    })?;
    sign(&csr, &identity.urn()).map_err(|err| refusal(Reason::Signing, format!("{err:#}")))
}

/// The state of the route: the registrations, and the renewals' nonces.
struct Renewals {
    workloads: Arc<Workloads>,
    replay: Mutex<ReplayGuard>,
}

/// The route, for the names server; `None` (no `workloads` in the pilot's config) answers
/// 404 saying so.
pub(crate) fn router(workloads: Option<Arc<Workloads>>) -> Router {
    let renewals = workloads.map(|workloads| {
        Arc::new(Renewals {
            workloads,
            replay: Mutex::default(),
        })
    });
    Router::new()
        .route(RENEW_PATH, post(renew))
        .with_state(renewals)
}

async fn renew(
    State(renewals): State<Option<Arc<Renewals>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let Some(renewals) = renewals else {
        return (
            StatusCode::NOT_FOUND,
            "joining VMs is not configured on this pilot (no `workloads` in its config)\n",
        )
            .into_response();
    };
    let Some(Extension(Peer::Workload(identity))) = client else {
        return refused(
            peer,
            None,
            &refusal(
                Reason::NotJoinedVm,
                "only a joined VM renews its certificate, presenting the one it has (this \
                 connection presented none, or a BOSH VM's)",
            ),
        );
    };
    let registration = renewals.workloads.registration_of(&identity);
    let checking = renewals.clone();
    let checked = identity.clone();
    // Checking and signing cost a millisecond or more of CPU: off the async workers.
    let judged = tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        judge(
            &checked,
            registration.as_ref(),
            peer.ip(),
            &body,
            &checking.replay,
            now,
            |csr, urn| checking.workloads.sign(csr, urn, now),
        )
    })
    .await;
    match judged {
        Ok(Ok(answer)) => {
            metrics::global()
                .workload_renewals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%peer, id = %identity.id, group = %identity.group_path(), not_after = answer.not_after, "a joined VM's certificate renewed");
            Json(answer).into_response()
        }
        Ok(Err(refusal)) => refused(peer, Some(&identity), &refusal),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the signing task failed").into_response(),
    }
}

fn refused(peer: SocketAddr, identity: Option<&WorkloadIdentity>, refusal: &Refusal) -> Response {
    let label = refusal.reason.label();
    metrics::global().workload_refusal(label);
    let id = identity.map_or("", |i| i.id.as_str());
    tracing::warn!(%peer, id, reason = label, "certificate renewal refused: {}", refusal.message);
    (refusal.reason.status(), format!("{}\n", refusal.message)).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;
    use crate::identity::ca::testing::{csr_with, far_future, TestCa};
    use crate::identity::ca::WorkloadCa;

    const NOW: u64 = 1_800_000_000;
    const VM: [u8; 4] = [10, 0, 2, 7];

    fn identity() -> WorkloadIdentity {
        WorkloadIdentity {
            config: "legacy".into(),
            group: "rabbitmq".into(),
            id: "r-1".into(),
        }
    }

    fn registration() -> Registration {
        Registration {
            id: "r-1".into(),
            group: "legacy/rabbitmq".into(),
            address: VM.into(),
            labels: Default::default(),
            token: "t".into(),
            registered_at: NOW - 100,
        }
    }

    fn ca() -> WorkloadCa {
        let root = TestCa::root("mesh ca", far_future());
        WorkloadCa::from_pem(
            &root.certificate,
            &Secret::new(root.key.clone()),
            None,
            Duration::from_secs(600),
        )
        .unwrap()
    }

    fn body(nonce: u32, issued_at: u64, csr: &str) -> Vec<u8> {
        serde_json::to_vec(&RenewRequest {
            csr: csr.into(),
            nonce: format!("{nonce:032x}"),
            issued_at,
        })
        .unwrap()
    }

    fn vm_csr() -> String {
        csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, &[])
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn the_registered_vm_gets_a_certificate_naming_its_registration() {
        let (ca, replay) = (ca(), Mutex::default());
        let answer = judge(
            &identity(),
            Some(&registration()),
            VM.into(),
            &body(1, NOW, &vm_csr()),
            &replay,
            now(),
            |csr, urn| ca.sign(csr, urn, now()),
        )
        .unwrap();
        assert_eq!(answer.not_after, NOW + 600);
        let pem = x509_parser::pem::Pem::iter_from_buffer(answer.certificate_chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            WorkloadIdentity::of_certificate(&pem.contents),
            Some(identity()),
            "the same URN"
        );
        // An IPv4 peer seen as IPv6-mapped is the same address.
        let mapped = std::net::Ipv4Addr::from(VM).to_ipv6_mapped();
        let again = judge(
            &identity(),
            Some(&registration()),
            mapped.into(),
            &body(2, NOW, &vm_csr()),
            &replay,
            now(),
            |csr, urn| ca.sign(csr, urn, now()),
        );
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn every_refusal_has_its_reason_status_and_message() {
        let ca = ca();
        let replay = Mutex::new(ReplayGuard::default());
        let good = body(7, NOW, &vm_csr());
        judge(
            &identity(),
            Some(&registration()),
            VM.into(),
            &good,
            &replay,
            now(),
            |csr, urn| ca.sign(csr, urn, now()),
        )
        .unwrap();
        let rsa_1024 = include_str!("../../tests/fixtures/identity/csr-rsa-1024.pem");
        let cases = [
            (
                None,
                VM,
                body(8, NOW, &vm_csr()),
                Reason::Unregistered,
                "left or was removed",
            ),
            (
                Some(registration()),
                [10, 0, 2, 8],
                body(9, NOW, &vm_csr()),
                Reason::OtherAddress,
                "comes from 10.0.2.8",
            ),
            (
                Some(registration()),
                VM,
                b"{}".to_vec(),
                Reason::BadRequest,
                "not a renewal request",
            ),
            (
                Some(registration()),
                VM,
                br#"{"csr":"","nonce":"","issued_at":1,"deployment":"d"}"#.to_vec(),
                Reason::BadRequest,
                "unknown field",
            ),
            (
                Some(registration()),
                VM,
                good.clone(),
                Reason::Replay,
                "replayed",
            ),
            (
                Some(registration()),
                VM,
                body(10, NOW - 301, &vm_csr()),
                Reason::Clock,
                "VM's time",
            ),
            (
                Some(registration()),
                VM,
                body(11, NOW, "garbage"),
                Reason::BadCsr,
                "PEM",
            ),
            (
                Some(registration()),
                VM,
                body(12, NOW, rsa_1024),
                Reason::BadCsr,
                "1024 bits",
            ),
        ];
        for (registration, from, body, reason, says) in cases {
            let refused = judge(
                &identity(),
                registration.as_ref(),
                from.into(),
                &body,
                &replay,
                now(),
                |csr, urn| ca.sign(csr, urn, now()),
            )
            .expect_err(says);
            assert_eq!(refused.reason, reason, "{says}: {refused:?}");
            assert!(refused.message.contains(says), "{says}: {refused:?}");
        }
        let signing = judge(
            &identity(),
            Some(&registration()),
            VM.into(),
            &body(13, NOW, &vm_csr()),
            &replay,
            now(),
            |_, _| Err(anyhow::anyhow!("the CA expired")),
        )
        .unwrap_err();
        assert_eq!(signing.reason, Reason::Signing);
        let statuses: Vec<u16> = [
            Reason::NotJoinedVm,
            Reason::Unregistered,
            Reason::OtherAddress,
            Reason::BadRequest,
            Reason::Replay,
            Reason::Busy,
        ]
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
        assert_eq!(statuses, [403, 404, 403, 400, 403, 503]);
    }

    #[test]
    fn a_strangers_request_takes_no_nonce() {
        let (ca, replay) = (ca(), Mutex::new(ReplayGuard::with_capacity(1)));
        let request = body(1, NOW, &vm_csr());
        let elsewhere = judge(
            &identity(),
            Some(&registration()),
            [10, 9, 9, 9].into(),
            &request,
            &replay,
            now(),
            |csr, urn| ca.sign(csr, urn, now()),
        );
        assert_eq!(elsewhere.unwrap_err().reason, Reason::OtherAddress);
        let own = judge(
            &identity(),
            Some(&registration()),
            VM.into(),
            &request,
            &replay,
            now(),
            |csr, urn| ca.sign(csr, urn, now()),
        );
        assert!(own.is_ok(), "the same nonce is still new: {own:?}");
    }
}
