//! The registration store's content (docs/workloads.md): the join tokens and the VMs
//! registered into WorkloadGroups, as the director config `boshy-workloads` holds them, and
//! every change made to it. Pure: the clock and what the mesh says (its accepted groups, the
//! BOSH instances' addresses) are passed in, so that a change is applied the same way on
//! whatever state a replica read last, and again on a fresher one after a lost race.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::refusal::JoinRefusal;
use super::token::{JoinToken, TokenRecord};
use crate::catalog::model::{InstanceRef, Labels};

/// How long a token is kept past its expiry: a VM joining with it meanwhile is told that it
/// expired (or was revoked), not that no token has its id.
pub(crate) const EXPIRED_TOKEN_RETENTION_SECONDS: u64 = 24 * 3600;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkloadState {
    #[serde(default)]
    pub(crate) tokens: Vec<TokenRecord>,
    #[serde(default)]
    pub(crate) registrations: Vec<Registration>,
}

/// One VM registered into a WorkloadGroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    /// A UUID v4 the pilot made at the join: the VM's instance id.
    pub(crate) id: String,
    /// `<config>/<WorkloadGroup name>`.
    pub(crate) group: String,
    /// The address the join came from: the VM's endpoint.
    pub(crate) address: IpAddr,
    /// The VM's own labels (its endpoint also has the group's).
    #[serde(default)]
    pub(crate) labels: Labels,
    /// The id of the token it joined with.
    pub(crate) token: String,
    pub(crate) registered_at: u64,
}

impl Registration {
    /// The director config holding its WorkloadGroup: its "deployment".
    pub(crate) fn config(&self) -> &str {
        self.group.split_once('/').map_or("", |(config, _)| config)
    }

    /// Its WorkloadGroup's name: its "instance group".
    pub(crate) fn group_name(&self) -> &str {
        self.group.split_once('/').map_or("", |(_, name)| name)
    }

    /// The instance it is to the rest of the pilot (agents' claims, health, scope).
    pub(crate) fn instance_ref(&self) -> InstanceRef {
        InstanceRef {
            deployment: self.config().to_string(),
            instance_id: self.id.clone(),
        }
    }
}

/// What the mesh says a join must agree with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MeshFacts {
    /// The accepted WorkloadGroups, `<config>/<name>`.
    pub(crate) groups: BTreeSet<String>,
    /// Every address the director lists an instance at, with that instance
    /// (`<deployment>/<group>/<id>`).
    pub(crate) bosh_addresses: HashMap<IpAddr, String>,
}

/// A VM asking to join, with the id it gets if it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinAsk {
    pub(crate) token: JoinToken,
    pub(crate) group: String,
    pub(crate) address: IpAddr,
    pub(crate) labels: Labels,
    pub(crate) new_id: String,
}

/// One change of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    CreateToken(TokenRecord),
    RevokeToken(String),
    Join(JoinAsk),
    /// A registration removed at once (the VM left, or an operator removed it).
    Leave(String),
    /// Registrations no pilot heard from for the grace period; those still there go.
    Deregister(BTreeSet<String>),
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    Token(TokenRecord),
    Revoked(TokenRecord),
    /// The registration, and the one it replaced (the same VM joining again).
    Joined {
        registration: Registration,
        replaced: Option<Registration>,
    },
    Left(Registration),
    Deregistered(Vec<Registration>),
}

impl WorkloadState {
    /// Whether `token` may join `group` at `now`: a token this state knows, authentic and
    /// usable, for an accepted group (told only to whoever holds a valid token), its own.
    pub(crate) fn check_token(
        &self,
        token: &JoinToken,
        group: &str,
        mesh: &MeshFacts,
        now: u64,
    ) -> Result<&TokenRecord, JoinRefusal> {
        let record = self
            .tokens
            .iter()
            .find(|t| t.id == token.id)
            .ok_or_else(|| JoinRefusal::UnknownToken(token.id.clone()))?;
        record.authenticates(token, now)?;
        if !mesh.groups.contains(group) {
            return Err(JoinRefusal::UnknownGroup(group.to_string()));
        }
        record.is_for(group)?;
        Ok(record)
    }

    /// Applies `change` at `now`; on a refusal nothing changed.
    pub(crate) fn apply(
        &mut self,
        change: &Change,
        mesh: &MeshFacts,
        now: u64,
    ) -> Result<Applied, JoinRefusal> {
        match change {
            Change::CreateToken(record) => {
                self.tokens.retain(|t| t.id != record.id);
                self.tokens.push(record.clone());
                Ok(Applied::Token(record.clone()))
            }
            Change::RevokeToken(id) => {
                let token = self
                    .tokens
                    .iter_mut()
                    .find(|t| &t.id == id)
                    .ok_or_else(|| {
                        JoinRefusal::NotFound(format!("no join token has the id {id}"))
                    })?;
                token.revoked = true;
                Ok(Applied::Revoked(token.clone()))
            }
            Change::Join(ask) => self.join(ask, mesh, now),
            Change::Leave(id) => {
                let at = self
                    .registrations
                    .iter()
                    .position(|r| &r.id == id)
                    .ok_or_else(|| JoinRefusal::NotFound(format!("no VM is registered as {id}")))?;
                Ok(Applied::Left(self.registrations.remove(at)))
            }
            Change::Deregister(ids) => {
                let (gone, kept) = std::mem::take(&mut self.registrations)
                    .into_iter()
                    .partition(|r| ids.contains(&r.id));
                self.registrations = kept;
                Ok(Applied::Deregistered(gone))
            }
        }
    }

    /// A join: the token, then the group, then the address; the same address in the same
    /// group is the same VM joining again (after a crash, or a reinstall), whose old
    /// registration it replaces.
    fn join(&mut self, ask: &JoinAsk, mesh: &MeshFacts, now: u64) -> Result<Applied, JoinRefusal> {
        self.check_token(&ask.token, &ask.group, mesh, now)?;
        if let Some(instance) = mesh.bosh_addresses.get(&ask.address) {
            return Err(JoinRefusal::BoshAddress {
                address: ask.address,
                instance: instance.clone(),
            });
        }
        let held = self
            .registrations
            .iter()
            .position(|r| r.address == ask.address);
        if let Some(at) = held {
            if self.registrations[at].group != ask.group {
                return Err(JoinRefusal::TakenAddress {
                    address: ask.address,
                    group: self.registrations[at].group.clone(),
                });
            }
        }
        let replaced = held.map(|at| self.registrations.remove(at));
        let registration = Registration {
            id: ask.new_id.clone(),
            group: ask.group.clone(),
            address: ask.address,
            labels: ask.labels.clone(),
            token: ask.token.id.clone(),
            registered_at: now,
        };
        self.registrations.push(registration.clone());
        Ok(Applied::Joined {
            registration,
            replaced,
        })
    }

    /// Forgets the tokens that expired more than [`EXPIRED_TOKEN_RETENTION_SECONDS`] ago
    /// (revoked ones too). Done with each write, never a write of its own.
    pub(crate) fn prune(&mut self, now: u64) {
        let forgotten_before = now.saturating_sub(EXPIRED_TOKEN_RETENTION_SECONDS);
        self.tokens.retain(|t| !t.expired(forgotten_before));
    }

    pub(crate) fn registration(&self, id: &str) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.id == id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;

    pub(crate) const GROUP: &str = "legacy/rabbitmq";

    pub(crate) fn token(seed: u64) -> JoinToken {
        JoinToken::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    pub(crate) fn mesh() -> MeshFacts {
        MeshFacts {
            groups: [GROUP, "legacy/postgres"].map(String::from).into(),
            bosh_addresses: [(
                IpAddr::from([10, 0, 0, 5]),
                "sample/apricot/0f3c".to_string(),
            )]
            .into(),
        }
    }

    fn ask(token: &JoinToken, group: &str, address: [u8; 4], id: &str) -> Change {
        Change::Join(JoinAsk {
            token: token.clone(),
            group: group.into(),
            address: address.into(),
            labels: Labels::from([("zone".to_string(), "dc1".to_string())]),
            new_id: id.into(),
        })
    }

    fn with_tokens(tokens: &[(&JoinToken, &str)]) -> WorkloadState {
        WorkloadState {
            tokens: tokens
                .iter()
                .map(|(token, group)| token.record(group, 100, 3600))
                .collect(),
            registrations: Vec::new(),
        }
    }

    #[test]
    fn a_join_registers_the_address_it_comes_from_under_a_new_id() {
        let t = token(1);
        let mut state = with_tokens(&[(&t, GROUP)]);
        let Ok(Applied::Joined {
            registration,
            replaced: None,
        }) = state.apply(&ask(&t, GROUP, [10, 0, 1, 1], "id-1"), &mesh(), 200)
        else {
            panic!("joined")
        };
        assert_eq!(registration.address, IpAddr::from([10, 0, 1, 1]));
        assert_eq!(
            (registration.config(), registration.group_name()),
            ("legacy", "rabbitmq")
        );
        assert_eq!(registration.instance_ref().instance_id, "id-1");
        assert_eq!(registration.token, t.id);
        assert_eq!(registration.registered_at, 200);
        assert_eq!(state.registrations, [registration]);
        // Multi-use: a second VM joins with the same token.
        state
            .apply(&ask(&t, GROUP, [10, 0, 1, 2], "id-2"), &mesh(), 201)
            .unwrap();
        assert_eq!(state.registrations.len(), 2);
    }

    #[test]
    fn every_refusal_leaves_the_state_as_it_was() {
        let (t, other) = (token(1), token(2));
        let mut base = with_tokens(&[(&t, GROUP), (&other, "legacy/postgres")]);
        base.apply(
            &ask(&other, "legacy/postgres", [10, 0, 1, 9], "pg"),
            &mesh(),
            150,
        )
        .unwrap();
        let mut revoked = base.clone();
        revoked
            .apply(&Change::RevokeToken(t.id.clone()), &mesh(), 150)
            .unwrap();
        let mut forged = token(3);
        forged.id = t.id.clone();
        let unknown_group = MeshFacts {
            groups: BTreeSet::from(["legacy/postgres".to_string()]),
            ..mesh()
        };
        let cases: [(&WorkloadState, Change, &MeshFacts, u64, &str); 7] = [
            (
                &base,
                ask(&token(4), GROUP, [10, 0, 1, 1], "x"),
                &mesh(),
                200,
                "unknown_token",
            ),
            (
                &base,
                ask(&forged, GROUP, [10, 0, 1, 1], "x"),
                &mesh(),
                200,
                "forged_token",
            ),
            (
                &base,
                ask(&t, GROUP, [10, 0, 1, 1], "x"),
                &mesh(),
                3700,
                "expired_token",
            ),
            (
                &revoked,
                ask(&t, GROUP, [10, 0, 1, 1], "x"),
                &mesh(),
                200,
                "revoked_token",
            ),
            (
                &base,
                ask(&t, "legacy/postgres", [10, 0, 1, 1], "x"),
                &mesh(),
                200,
                "other_group",
            ),
            (
                &base,
                ask(&t, GROUP, [10, 0, 1, 1], "x"),
                &unknown_group,
                200,
                "unknown_group",
            ),
            (
                &base,
                ask(&t, GROUP, [10, 0, 0, 5], "x"),
                &mesh(),
                200,
                "bosh_address",
            ),
        ];
        for (state, change, mesh, now, label) in cases {
            let mut after = state.clone();
            let refusal = after.apply(&change, mesh, now).unwrap_err();
            assert_eq!(refusal.label(), label, "{refusal}");
            assert_eq!(&after, state, "{label}");
        }
        let mut after = base.clone();
        let refusal = after
            .apply(&ask(&t, GROUP, [10, 0, 1, 9], "x"), &mesh(), 200)
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "the address 10.0.1.9 is registered into the WorkloadGroup legacy/postgres: leave it first"
        );
        assert_eq!(after, base);
    }

    #[test]
    fn the_same_address_joining_the_same_group_again_replaces_its_registration() {
        let t = token(1);
        let mut state = with_tokens(&[(&t, GROUP)]);
        state
            .apply(&ask(&t, GROUP, [10, 0, 1, 1], "old"), &mesh(), 200)
            .unwrap();
        let Ok(Applied::Joined {
            registration,
            replaced: Some(replaced),
        }) = state.apply(&ask(&t, GROUP, [10, 0, 1, 1], "new"), &mesh(), 300)
        else {
            panic!("replaced")
        };
        assert_eq!(
            (registration.id.as_str(), replaced.id.as_str()),
            ("new", "old")
        );
        assert_eq!(state.registrations, [registration]);
    }

    #[test]
    fn leave_revoke_and_deregister_change_only_what_they_name() {
        let t = token(1);
        let mut state = with_tokens(&[(&t, GROUP)]);
        for (n, id) in ["a", "b", "c"].iter().enumerate() {
            state
                .apply(&ask(&t, GROUP, [10, 0, 1, n as u8], id), &mesh(), 200)
                .unwrap();
        }
        let Ok(Applied::Left(left)) = state.apply(&Change::Leave("b".into()), &mesh(), 201) else {
            panic!("left")
        };
        assert_eq!(left.id, "b");
        assert_eq!(
            state
                .apply(&Change::Leave("b".into()), &mesh(), 201)
                .unwrap_err()
                .label(),
            "not_found"
        );
        let ids = BTreeSet::from(["c".to_string(), "gone-already".to_string()]);
        let Ok(Applied::Deregistered(gone)) = state.apply(&Change::Deregister(ids), &mesh(), 202)
        else {
            panic!("deregistered")
        };
        assert_eq!(gone.len(), 1);
        assert_eq!(state.registrations.len(), 1);
        assert_eq!(state.registrations[0].id, "a");
        assert_eq!(
            state
                .apply(&Change::RevokeToken("0000000000000000".into()), &mesh(), 1)
                .unwrap_err()
                .status(),
            404
        );
    }

    #[test]
    fn expired_tokens_are_refused_as_such_for_a_day_then_pruned() {
        let (a, b) = (token(1), token(2));
        let mut state = with_tokens(&[(&a, GROUP), (&b, GROUP)]);
        state.tokens[1].expires_at = 200;
        state
            .apply(&Change::RevokeToken(a.id.clone()), &mesh(), 150)
            .unwrap();
        let day = EXPIRED_TOKEN_RETENTION_SECONDS;
        state.prune(200 + day - 1);
        assert_eq!(state.tokens.len(), 2);
        let refused = state.check_token(&b, GROUP, &mesh(), 200 + day - 1);
        assert!(
            matches!(refused, Err(JoinRefusal::Expired { .. })),
            "{refused:?}"
        );
        state.prune(200 + day);
        assert_eq!(state.tokens.len(), 1);
        assert!(state.tokens[0].revoked);
    }

    #[test]
    fn the_content_is_the_contracts_yaml() {
        let t = token(1);
        let mut state = with_tokens(&[(&t, GROUP)]);
        state
            .apply(&ask(&t, GROUP, [10, 249, 0, 30], "6c1f"), &mesh(), 200)
            .unwrap();
        let yaml = serde_yaml::to_string(&state).unwrap();
        for key in [
            "tokens:",
            "group: legacy/rabbitmq",
            "sha256:",
            "created_at: 100",
            "expires_at: 3700",
            "revoked: false",
            "registrations:",
            "address: 10.249.0.30",
            "labels:",
            "token:",
            "registered_at: 200",
        ] {
            assert!(yaml.contains(key), "{key} in {yaml}");
        }
        assert_eq!(serde_yaml::from_str::<WorkloadState>(&yaml).unwrap(), state);
        assert_eq!(
            serde_yaml::from_str::<WorkloadState>("{}").unwrap(),
            WorkloadState::default()
        );
        assert!(serde_yaml::from_str::<WorkloadState>("colour: red").is_err());
    }
}
