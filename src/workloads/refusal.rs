//! Why a join (or another change of the registrations) is refused: each refusal says what
//! was wrong, and decides its HTTP status and its label in `boshy_workload_refusals_total`.

use std::fmt;
use std::net::IpAddr;

use crate::text::clip;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JoinRefusal {
    /// The token is not `boshy-join.<id>.<secret>`, or no token was sent.
    Malformed(String),
    /// No token has this id, even after a fresh read of the store.
    UnknownToken(String),
    /// The secret does not match the token's.
    Forged(String),
    Expired {
        id: String,
        at: u64,
    },
    Revoked(String),
    /// The token is for another group than the join asks for.
    OtherGroup {
        token: String,
        asked: String,
    },
    /// No accepted WorkloadGroup has this name (`<config>/<name>`).
    UnknownGroup(String),
    /// The address is a BOSH instance's (`deployment/group/id`).
    BoshAddress {
        address: IpAddr,
        instance: String,
    },
    /// The address is registered into another group.
    TakenAddress {
        address: IpAddr,
        group: String,
    },
    /// The request itself is wrong (body, labels, CSR).
    BadRequest(String),
    /// No registration or token has this id.
    NotFound(String),
    /// The pilot cannot decide yet (no catalog from the director yet).
    NotReady(String),
}

impl JoinRefusal {
    pub(crate) fn status(&self) -> u16 {
        match self {
            JoinRefusal::Malformed(_)
            | JoinRefusal::UnknownToken(_)
            | JoinRefusal::Forged(_)
            | JoinRefusal::Expired { .. }
            | JoinRefusal::Revoked(_) => 401,
            JoinRefusal::OtherGroup { .. } => 403,
            JoinRefusal::UnknownGroup(_) | JoinRefusal::NotFound(_) => 404,
            JoinRefusal::BoshAddress { .. } | JoinRefusal::TakenAddress { .. } => 409,
            JoinRefusal::BadRequest(_) => 400,
            JoinRefusal::NotReady(_) => 503,
        }
    }

    /// The label of `boshy_workload_refusals_total{reason}`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            JoinRefusal::Malformed(_) => "malformed_token",
            JoinRefusal::UnknownToken(_) => "unknown_token",
            JoinRefusal::Forged(_) => "forged_token",
            JoinRefusal::Expired { .. } => "expired_token",
            JoinRefusal::Revoked(_) => "revoked_token",
            JoinRefusal::OtherGroup { .. } => "other_group",
            JoinRefusal::UnknownGroup(_) => "unknown_group",
            JoinRefusal::BoshAddress { .. } => "bosh_address",
            JoinRefusal::TakenAddress { .. } => "taken_address",
            JoinRefusal::BadRequest(_) => "bad_request",
            JoinRefusal::NotFound(_) => "not_found",
            JoinRefusal::NotReady(_) => "not_ready",
        }
    }

    /// Every label (the test below keeps it complete; docs/metrics.md lists them).
    #[cfg(test)]
    pub(crate) const LABELS: [&'static str; 12] = [
        "malformed_token",
        "unknown_token",
        "forged_token",
        "expired_token",
        "revoked_token",
        "other_group",
        "unknown_group",
        "bosh_address",
        "taken_address",
        "bad_request",
        "not_found",
        "not_ready",
    ];
}

impl fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinRefusal::Malformed(why) => write!(f, "not a join token: {why}"),
            JoinRefusal::UnknownToken(id) => {
                write!(f, "no join token has the id {}", clip(id))
            }
            JoinRefusal::Forged(id) => write!(
                f,
                "the secret of join token {id} does not match: the token is forged or mistyped"
            ),
            JoinRefusal::Expired { id, at } => {
                write!(f, "join token {id} expired at {at} (UNIX seconds)")
            }
            JoinRefusal::Revoked(id) => write!(f, "join token {id} was revoked"),
            JoinRefusal::OtherGroup { token, asked } => write!(
                f,
                "the join token is for the WorkloadGroup {token}, not {}",
                clip(asked)
            ),
            JoinRefusal::UnknownGroup(group) => write!(
                f,
                "no accepted WorkloadGroup is named {} (<config>/<name>; see GET /v1/rules)",
                clip(group)
            ),
            JoinRefusal::BoshAddress { address, instance } => write!(
                f,
                "the address {address} is the BOSH instance {instance}'s: a BOSH VM is in the \
                 mesh already"
            ),
            JoinRefusal::TakenAddress { address, group } => write!(
                f,
                "the address {address} is registered into the WorkloadGroup {group}: leave it \
                 first"
            ),
            JoinRefusal::BadRequest(why) => write!(f, "{why}"),
            JoinRefusal::NotFound(what) => write!(f, "{what}"),
            JoinRefusal::NotReady(why) => write!(f, "{why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_listed_once() {
        let all = [
            JoinRefusal::Malformed(String::new()),
            JoinRefusal::UnknownToken(String::new()),
            JoinRefusal::Forged(String::new()),
            JoinRefusal::Expired {
                id: String::new(),
                at: 0,
            },
            JoinRefusal::Revoked(String::new()),
            JoinRefusal::OtherGroup {
                token: String::new(),
                asked: String::new(),
            },
            JoinRefusal::UnknownGroup(String::new()),
            JoinRefusal::BoshAddress {
                address: [10, 0, 0, 1].into(),
                instance: String::new(),
            },
            JoinRefusal::TakenAddress {
                address: [10, 0, 0, 1].into(),
                group: String::new(),
            },
            JoinRefusal::BadRequest(String::new()),
            JoinRefusal::NotFound(String::new()),
            JoinRefusal::NotReady(String::new()),
        ];
        let labels: Vec<&str> = all.iter().map(JoinRefusal::label).collect();
        assert_eq!(labels, JoinRefusal::LABELS);
    }
}
