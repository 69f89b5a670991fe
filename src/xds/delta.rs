//! The state of one delta (incremental) ADS stream, free of I/O so it can be unit-tested.
//!
//! Per type URL we remember what Envoy subscribed to (wildcard and/or explicit names), the
//! version of every resource it has or was last sent, and our last nonce. The rules:
//! - the first request for a type may carry `initial_resource_versions` (an Envoy that
//!   reconnects): those are what it has, so only what differs is sent;
//! - a first request with no names is a wildcard subscription for listeners and clusters
//!   (Envoy's legacy wildcard); `*` subscribes to everything of any type, and
//!   unsubscribing `*` ends that;
//! - subscription changes apply from every request, whatever its nonce; subscribing to a
//!   name sends it again even if Envoy was sent it before (unless it told us its version
//!   in the same request); unsubscribed names are forgotten without a removal;
//! - a request answering our last nonce is an ACK, or a NACK when `error_detail` is set;
//!   one answering an older nonce is stale (a newer one follows);
//! - a response carries the resources whose version differs from what Envoy has and, in
//!   `removed_resources`, the names Envoy has that are gone (or that it asked for and that
//!   do not exist). A NACKed version is not sent again (Envoy keeps its last good config);
//!   a newer one goes out normally;
//! - a new snapshot is pushed, in `ResourceType::PUSH_ORDER`, to the types not waiting for
//!   an ACK; the ACK then sends whatever changed meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::cache::{position, SharedKey, Snapshot};
use super::client::{Client, SourceClass};
use super::resources::{NamedResource, ResourceType};
use super::sotw::{RequestKind, CONTROL_PLANE_ID};
use super::stream_config::TypeConfig;
use crate::scope::filter::ScopeFilter;
use crate::traffic::security::WorkloadKey;

/// The resource name that stands for "every resource of this type".
const WILDCARD: &str = "*";

#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    /// Names and versions are the snapshot's shared strings where it has them
    /// (`Snapshot::shared_key`): with thousands of streams, a copy per stream would be most
    /// of the server's memory.
    names: Names,
    /// Name → version of what Envoy has or was last sent.
    known: Known,
    /// What Envoy ACKed, while it may differ from `known` (a response is unanswered, or one
    /// was rejected); `None` while Envoy accepted everything sent, so a stream in sync
    /// remembers nothing more to say what it has accepted. It is `known` as it was when a
    /// response left (a pointer and a few overrides), not a version per name sent: those of
    /// an initial sync, every name of the type until Envoy answers, were +30 kB per stream at
    /// the server's peak with 1000 streams syncing at once (bench/notes.md).
    acked: Option<Known>,
    /// The names of a rejected response not sent since, with the version Envoy kept.
    rejected: BTreeMap<Arc<str>, Option<Arc<str>>>,
    /// Names subscribed since the last response: one that does not exist is reported in
    /// `removed_resources` so that Envoy stops waiting for it.
    unanswered: BTreeSet<Arc<str>>,
    /// The catalog version our last diff was taken against while the subscription stayed
    /// the same: then the next snapshot only needs its changed names looked at.
    diffed_against: Option<u64>,
    /// Nonce of our last response; "" before we sent one.
    nonce: String,
    awaiting_reply: bool,
    /// `system_version_info` of our last response and of the last one Envoy ACKed.
    sent_version: String,
    acked_version: String,
}

/// What Envoy has of one type, name → version: the resources of `base`, except where
/// `overrides` says otherwise (another version, or `None`: not had). Right after a response
/// Envoy has exactly the snapshot it was diffed against, so the usual state is a `base` and
/// no overrides: one pointer per stream rather than a map of every name (which was a third
/// of the server's memory per connected Envoy).
#[derive(Debug, Default, Clone)]
struct Known {
    base: Option<View>,
    overrides: BTreeMap<Arc<str>, Option<Arc<str>>>,
}

/// A snapshot as one stream's Envoy gets it: every resource, or those its VM's scope admits,
/// but of the workloads' own resources (inbound listeners) only its instance group's. What a
/// scoped Envoy has is then still one pointer, not the hundreds of names of the mesh it does
/// not have.
#[derive(Debug, Clone)]
struct View {
    snapshot: Arc<Snapshot>,
    filter: Option<Arc<ScopeFilter>>,
    /// The instance group of the stream's Envoy; `None` for an Envoy of no BOSH instance.
    workload: Option<Arc<WorkloadKey>>,
}

impl View {
    fn admits(&self, resource_type: ResourceType, name: &str) -> bool {
        self.snapshot
            .is_for(self.workload.as_deref(), resource_type, name)
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.admits(self.snapshot.services(), resource_type, name))
    }

    /// The snapshot's shared key of that resource, if the view has it.
    fn key(&self, resource_type: ResourceType, name: &str) -> Option<&SharedKey> {
        self.snapshot
            .shared_key(resource_type, name)
            .filter(|_| self.admits(resource_type, name))
    }

    /// The names of that type the view has.
    fn names(&self, resource_type: ResourceType) -> impl Iterator<Item = &str> {
        self.snapshot
            .of_type(resource_type)
            .iter()
            .map(|r| r.name.as_str())
            .filter(move |name| self.admits(resource_type, name))
    }

    /// Whether `other` filters the same way (the same filter, by pointer: a stream replaces
    /// its filter only when it changed).
    fn same_filter(&self, other: &View) -> bool {
        let same_scope = match (&self.filter, &other.filter) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_scope && self.workload == other.workload
    }
}

/// The names Envoy subscribed to, kept like [`Known`]: the names of `base`, except where
/// `overrides` says otherwise (`true`: subscribed though `base` lacks it; `false`: in `base`
/// but not subscribed). An Envoy subscribes to the load assignment of every cluster and to the
/// routes of every listener, so this is usually one pointer; a set of the names was 14 kB per
/// stream with 300 load assignments, a quarter of the server's memory per connected Envoy.
#[derive(Debug, Default)]
struct Names {
    base: Option<View>,
    overrides: BTreeMap<Arc<str>, bool>,
}

impl Names {
    fn contains(&self, resource_type: ResourceType, name: &str) -> bool {
        match self.overrides.get(name) {
            Some(subscribed) => *subscribed,
            None => self
                .base
                .as_ref()
                .is_some_and(|base| base.key(resource_type, name).is_some()),
        }
    }

    fn set(&mut self, name: Arc<str>, subscribed: bool) {
        self.overrides.insert(name, subscribed);
    }

    /// Every subscribed name.
    fn all(&self, resource_type: ResourceType) -> BTreeSet<&str> {
        let from_base = self
            .base
            .iter()
            .flat_map(|base| base.names(resource_type))
            .filter(|name| self.overrides.get(*name) != Some(&false));
        let added = self
            .overrides
            .iter()
            .filter(|(_, subscribed)| **subscribed)
            .map(|(name, _)| &**name);
        from_base.chain(added).collect()
    }

    /// The same names against `snapshot`, as [`Known::rebase`]; none stay none (a wildcard
    /// subscription names nothing, and against a snapshot it would deny every name).
    fn rebase(&mut self, resource_type: ResourceType, view: &View) {
        if self.base.is_none() && self.overrides.is_empty() {
            return;
        }
        let candidates = rebase_candidates(
            resource_type,
            self.base.as_ref(),
            view,
            self.overrides.keys(),
            || self.all(resource_type),
        );
        let overrides = candidates
            .into_iter()
            .filter_map(|name| {
                let subscribed = self.contains(resource_type, name);
                let in_view = view.key(resource_type, name).is_some();
                (subscribed != in_view)
                    .then(|| (view.snapshot.shared_name(resource_type, name), subscribed))
            })
            .collect();
        self.base = Some(view.clone());
        self.overrides = overrides;
    }
}

/// The names whose value may differ between a stream's memory expressed against `base` and
/// the same against `view`: when `base` is the view's snapshot itself or its predecessor,
/// filtered the same way, only the overrides and the names that changed in between; otherwise
/// every name of either.
fn rebase_candidates<'a>(
    resource_type: ResourceType,
    base: Option<&View>,
    view: &'a View,
    overrides: impl Iterator<Item = &'a Arc<str>>,
    every_name: impl FnOnce() -> BTreeSet<&'a str>,
) -> BTreeSet<&'a str> {
    let snapshot = &view.snapshot;
    let changed = base
        .filter(|base| base.same_filter(view))
        .and_then(|base| snapshot.changed_since(resource_type, base.snapshot.version()));
    match changed {
        Some(changed) => changed
            .iter()
            .map(String::as_str)
            .chain(overrides.map(|n| &**n))
            .collect(),
        None => {
            let mut names = every_name();
            names.extend(view.names(resource_type));
            names
        }
    }
}

impl Known {
    fn from_versions(versions: impl Iterator<Item = (Arc<str>, Arc<str>)>) -> Self {
        Known {
            base: None,
            overrides: versions
                .map(|(name, version)| (name, Some(version)))
                .collect(),
        }
    }

    fn get(&self, resource_type: ResourceType, name: &str) -> Option<&Arc<str>> {
        match self.overrides.get(name) {
            Some(version) => version.as_ref(),
            None => self
                .base
                .as_ref()?
                .key(resource_type, name)
                .map(|key| &key.version),
        }
    }

    /// Envoy has `version` of `name` (`None`: not that resource). Kept as an override only
    /// where `base` says otherwise: a new subscription says "none yet" of each name it
    /// names, which is what an empty memory says already.
    fn set(&mut self, resource_type: ResourceType, name: Arc<str>, version: Option<Arc<str>>) {
        let in_base = self
            .base
            .as_ref()
            .and_then(|base| base.key(resource_type, &name))
            .map(|key| &key.version);
        if in_base == version.as_ref() {
            self.overrides.remove(&name);
        } else {
            self.overrides.insert(name, version);
        }
    }

    /// Every name Envoy has.
    fn names(&self, resource_type: ResourceType) -> BTreeSet<&str> {
        let from_base = self
            .base
            .iter()
            .flat_map(|base| base.names(resource_type))
            .filter(|name| !matches!(self.overrides.get(*name), Some(None)));
        let overridden = self
            .overrides
            .iter()
            .filter(|(_, version)| version.is_some())
            .map(|(name, _)| &**name);
        from_base.chain(overridden).collect()
    }

    /// Re-expresses the same knowledge against `view`, keeping as overrides only the names
    /// where Envoy's version differs from it ([`rebase_candidates`] are the names that can
    /// differ).
    fn rebase(&mut self, resource_type: ResourceType, view: &View) {
        let candidates = rebase_candidates(
            resource_type,
            self.base.as_ref(),
            view,
            self.overrides.keys(),
            || self.names(resource_type),
        );
        let overrides = candidates
            .into_iter()
            .filter_map(|name| {
                let had = self.get(resource_type, name);
                let in_view = view.key(resource_type, name).map(|key| &key.version);
                (in_view != had)
                    .then(|| (view.snapshot.shared_name(resource_type, name), had.cloned()))
            })
            .collect();
        self.base = Some(view.clone());
        self.overrides = overrides;
    }
}

impl Subscription {
    /// Whether Envoy should have that resource: it subscribed to it, or to every resource of
    /// the type and its VM's scope admits this one (a scope never holds back what Envoy names:
    /// it names only what its clusters and listeners need).
    fn wants(&self, resource_type: ResourceType, name: &str, view: &View) -> bool {
        (self.wildcard && view.admits(resource_type, name))
            || self.names.contains(resource_type, name)
    }

    /// The resource of that name Envoy should have of `view`, as the client of `class` gets
    /// it; `snapshot` is the view's (borrowed apart, so that the resource outlives the view).
    fn current<'s>(
        &self,
        resource_type: ResourceType,
        name: &str,
        view: &View,
        snapshot: &'s Snapshot,
        class: &SourceClass,
    ) -> Option<&'s NamedResource> {
        debug_assert!(std::ptr::eq(&*view.snapshot, snapshot));
        self.wants(resource_type, name, view)
            .then(|| snapshot.get_for(resource_type, name, class))
            .flatten()
    }

    /// The names of `view` Envoy subscribed to, by wildcard or by name.
    fn subscribed<'s>(&'s self, resource_type: ResourceType, view: &'s View) -> BTreeSet<&'s str> {
        let wildcard = view.names(resource_type).filter(|_| self.wildcard);
        wildcard.chain(self.names.all(resource_type)).collect()
    }

    /// Every resource Envoy should have of `view`, by name.
    fn wanted<'s>(
        &self,
        resource_type: ResourceType,
        view: &View,
        snapshot: &'s Snapshot,
        class: &SourceClass,
    ) -> Vec<&'s NamedResource> {
        self.subscribed(resource_type, view)
            .into_iter()
            .filter_map(|name| self.current(resource_type, name, view, snapshot, class))
            .collect()
    }

    /// Name → version of every resource Envoy ACKed.
    fn acked(&self, resource_type: ResourceType) -> BTreeMap<String, String> {
        let acked = self.acked.as_ref().unwrap_or(&self.known);
        acked
            .names(resource_type)
            .into_iter()
            .filter_map(|name| {
                let version = acked.get(resource_type, name)?;
                Some((name.to_string(), version.to_string()))
            })
            .collect()
    }

    /// A response is about to change `known`: what Envoy ACKed is kept apart until it
    /// answers.
    fn sending(&mut self) {
        if self.acked.is_none() {
            self.acked = Some(self.known.clone());
        }
    }

    /// Envoy is sent `version` of `name` (`None`: its removal), after [`Self::sending`].
    fn send(&mut self, resource_type: ResourceType, name: Arc<str>, version: Option<Arc<str>>) {
        self.rejected.remove(&name);
        self.known.set(resource_type, name, version);
    }

    /// Envoy has nothing of `name` (it subscribes to it anew, or unsubscribed).
    fn has_none(&mut self, resource_type: ResourceType, name: Arc<str>) {
        self.rejected.remove(&name);
        if let Some(acked) = &mut self.acked {
            acked.set(resource_type, name.clone(), None);
        }
        self.known.set(resource_type, name, None);
    }

    /// Envoy accepted our last response: it has what it was sent, but for the names of a
    /// rejected response not sent since.
    fn accept(&mut self, resource_type: ResourceType) {
        self.acked = (!self.rejected.is_empty()).then(|| {
            let mut acked = self.known.clone();
            for (name, version) in &self.rejected {
                acked.set(resource_type, name.clone(), version.clone());
            }
            acked
        });
    }

    /// Envoy rejected our last response: every name sent since its last ACK keeps the
    /// version it ACKed until it is sent again and accepted.
    fn reject(&mut self, resource_type: ResourceType) {
        let Some(acked) = &self.acked else {
            return;
        };
        let names: BTreeSet<&str> = self
            .known
            .names(resource_type)
            .into_iter()
            .chain(acked.names(resource_type))
            .collect();
        for name in names {
            let kept = acked.get(resource_type, name);
            if kept != self.known.get(resource_type, name) {
                self.rejected
                    .entry(Arc::from(name))
                    .or_insert_with(|| kept.cloned());
            }
        }
    }

    /// What Envoy lacks (`updated`) and what it must drop (`removed`) to match `view` as the
    /// client of `class` gets it.
    fn diff<'s>(
        &self,
        resource_type: ResourceType,
        view: &'s View,
        class: &SourceClass,
    ) -> (Vec<&'s NamedResource>, Vec<String>) {
        let snapshot = &*view.snapshot;
        let mut updated = Vec::new();
        let mut removed = Vec::new();
        let check = |name: &str| match (
            self.current(resource_type, name, view, snapshot, class),
            self.known.get(resource_type, name),
        ) {
            (Some(resource), Some(version)) if **version == resource.version => {}
            (Some(resource), _) => updated.push(resource),
            (None, Some(_)) => removed.push(name.to_string()),
            (None, None) if self.unanswered.contains(name) => removed.push(name.to_string()),
            (None, None) => {}
        };
        let changed = self
            .diffed_against
            .and_then(|since| snapshot.changed_since(resource_type, since));
        match changed {
            // What changed since the last diff, and the names subscribed since: an Envoy
            // that subscribes to one new cluster's endpoints costs a lookup of that name, not
            // of the hundreds it already has.
            Some(changed) => {
                let subscribed = self.unanswered.iter().map(|n| &**n);
                let candidates: BTreeSet<&str> = changed
                    .iter()
                    .map(String::as_str)
                    .chain(subscribed)
                    .collect();
                candidates.into_iter().for_each(check);
            }
            None => {
                let mut candidates = self.subscribed(resource_type, view);
                candidates.extend(self.known.names(resource_type));
                candidates.into_iter().for_each(check);
            }
        }
        (updated, removed)
    }
}

/// A stream's subscription of each type, in [`ResourceType::PUSH_ORDER`]: a `BTreeMap` of four
/// allocates a node for eleven, 2 kB per stream.
#[derive(Debug, Default)]
struct Subscriptions([Option<Subscription>; 4]);

impl Subscriptions {
    fn get(&self, resource_type: ResourceType) -> Option<&Subscription> {
        self.0[position(resource_type)].as_ref()
    }

    fn get_mut(&mut self, resource_type: ResourceType) -> Option<&mut Subscription> {
        self.0[position(resource_type)].as_mut()
    }

    /// The subscription of that type, a new one if there was none.
    fn entry(&mut self, resource_type: ResourceType) -> &mut Subscription {
        self.0[position(resource_type)].get_or_insert_with(Subscription::default)
    }
}

#[derive(Debug, Default)]
pub(crate) struct DeltaStreamState {
    subscriptions: Subscriptions,
    responses_sent: u64,
    /// The BOSH instance of the Envoy, from the first request's node, and the `sourceLabels`
    /// selectors it satisfied at the last diff: which route configurations it gets.
    client: Option<Client>,
    class: SourceClass,
    scope: StreamScope,
}

/// Which services the stream's Envoy gets (docs/scope.md).
#[derive(Debug, Default)]
pub(crate) enum StreamScope {
    /// The whole mesh: a client that names no BOSH instance, or whose agent did not tell its
    /// scope in time.
    #[default]
    Full,
    /// The scope is not known yet (the pilot just started and the VM's agent has not
    /// reconnected): listeners and clusters wait, so that Envoy keeps what it has rather than
    /// getting the whole mesh and losing most of it again a moment later.
    Waiting,
    /// What the VM's agent asked for, at a generation of the pilot's scope registry.
    Scoped {
        generation: u64,
        asked: Arc<BTreeSet<String>>,
        /// `asked` against the latest snapshot: replaced only when it changes.
        filter: Option<Arc<ScopeFilter>>,
        /// The version of the snapshot `filter` was computed against.
        filtered_at: Option<u64>,
    },
}

impl DeltaStreamState {
    /// Handles one request against the current snapshot (`None` before the first catalog:
    /// the subscription is recorded and served once a snapshot exists).
    pub(crate) fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> (RequestKind, Option<DeltaDiscoveryResponse>) {
        let Some(resource_type) = ResourceType::from_type_url(&request.type_url) else {
            return (RequestKind::UnknownType, None);
        };
        if self.client.is_none() {
            self.client = request.node.as_ref().and_then(Client::from_node);
        }
        let first = self.subscriptions.get(resource_type).is_none();
        let subscription = self.subscriptions.entry(resource_type);
        let resubscribed =
            apply_subscription_changes(subscription, request, first, resource_type, snapshot);
        let kind = if request.response_nonce.is_empty() {
            RequestKind::Subscribe
        } else if request.response_nonce != subscription.nonce {
            RequestKind::Stale
        } else {
            subscription.awaiting_reply = false;
            match &request.error_detail {
                Some(error) => {
                    subscription.reject(resource_type);
                    RequestKind::Nack {
                        rejected_version: subscription.sent_version.clone(),
                        kept_version: subscription.acked_version.clone(),
                        message: error.message.clone(),
                    }
                }
                None => {
                    subscription.acked_version = subscription.sent_version.clone();
                    subscription.accept(resource_type);
                    RequestKind::Ack {
                        version: subscription.acked_version.clone(),
                    }
                }
            }
        };
        // A pending response is not overtaken by a push, but a subscription change is
        // answered at once: Envoy is waiting for those resources to warm a cluster or a
        // listener.
        if subscription.awaiting_reply && !resubscribed {
            return (kind, None);
        }
        let response = snapshot.and_then(|snapshot| {
            self.follow_class(snapshot);
            self.follow_scope(snapshot);
            self.respond(resource_type, snapshot)
        });
        (kind, response)
    }

    /// Responses to push after the snapshot changed, in push order.
    pub(crate) fn on_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> Vec<DeltaDiscoveryResponse> {
        self.follow_class(snapshot);
        self.follow_scope(snapshot);
        self.push(snapshot)
    }

    /// Takes a new scope for the stream; what to push for it when there is a snapshot.
    pub(crate) fn on_scope(
        &mut self,
        scope: StreamScope,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> Vec<DeltaDiscoveryResponse> {
        self.scope = scope;
        self.forget_diffs();
        match snapshot {
            Some(snapshot) => {
                self.follow_scope(snapshot);
                self.push(snapshot)
            }
            None => Vec::new(),
        }
    }

    /// The scope generation whose resources the Envoy holds, every response answered: every
    /// listener, cluster, load assignment and route configuration its scope admits in
    /// `snapshot` sent to it (the load assignments and route configurations only after Envoy
    /// subscribed to them, so once its clusters and listeners can warm), and nothing of ours
    /// left unanswered. `None` while it does not, and for a stream without a scope.
    pub(crate) fn scope_held(&self, snapshot: &Arc<Snapshot>) -> Option<u64> {
        let StreamScope::Scoped {
            generation, filter, ..
        } = &self.scope
        else {
            return None;
        };
        let view = View {
            snapshot: snapshot.clone(),
            filter: filter.clone(),
            workload: self.workload(),
        };
        let held = ResourceType::PUSH_ORDER.into_iter().all(|t| {
            let Some(subscription) = self.subscriptions.get(t) else {
                // Envoy subscribes to load assignments and route configurations only once it
                // has clusters and listeners that need them.
                return view.names(t).next().is_none();
            };
            !subscription.awaiting_reply
                && subscription.unanswered.is_empty()
                && subscription.diffed_against == Some(snapshot.version())
                && view
                    .names(t)
                    .all(|name| subscription.known.get(t, name).is_some())
        });
        held.then_some(*generation)
    }

    /// Recomputes the scope's filter against `snapshot` (its services and rules decide what
    /// a hostname brings in); a changed filter makes every next diff a full one.
    fn follow_scope(&mut self, snapshot: &Snapshot) {
        let StreamScope::Scoped {
            asked,
            filter,
            filtered_at,
            ..
        } = &mut self.scope
        else {
            return;
        };
        if *filtered_at == Some(snapshot.version()) {
            return;
        }
        *filtered_at = Some(snapshot.version());
        let next = scope_filter(asked, self.client.as_ref(), snapshot);
        if filter.as_deref() != Some(&next) {
            *filter = Some(Arc::new(next));
            self.forget_diffs();
        }
    }

    /// Per subscribed type, what the stream would have its Envoy hold of `snapshot` (the
    /// diff of its responses makes Envoy's state this) and what Envoy ACKed.
    pub(crate) fn config<'s>(&self, snapshot: &'s Arc<Snapshot>) -> Vec<TypeConfig<'s>> {
        let filter = match &self.scope {
            StreamScope::Scoped {
                filter: Some(filter),
                filtered_at,
                ..
            } if *filtered_at == Some(snapshot.version()) => Some(filter.clone()),
            StreamScope::Scoped { asked, .. } => Some(Arc::new(scope_filter(
                asked,
                self.client.as_ref(),
                snapshot,
            ))),
            StreamScope::Full | StreamScope::Waiting => None,
        };
        let view = View {
            snapshot: snapshot.clone(),
            filter,
            workload: self.workload(),
        };
        let class = snapshot.source_class(self.client.as_ref());
        ResourceType::PUSH_ORDER
            .into_iter()
            .filter_map(|t| {
                let subscription = self.subscriptions.get(t)?;
                let held_back = matches!(self.scope, StreamScope::Waiting) && t.is_wildcard();
                let wanted = (!held_back).then(|| subscription.wanted(t, &view, snapshot, &class));
                Some(TypeConfig {
                    resource_type: t,
                    wanted,
                    acked: subscription.acked(t),
                })
            })
            .collect()
    }

    fn forget_diffs(&mut self) {
        for subscription in self.subscriptions.0.iter_mut().flatten() {
            subscription.diffed_against = None;
        }
    }

    /// The snapshot as this stream's Envoy gets it.
    fn view(&self, snapshot: &Arc<Snapshot>) -> View {
        let filter = match &self.scope {
            StreamScope::Scoped { filter, .. } => filter.clone(),
            StreamScope::Full | StreamScope::Waiting => None,
        };
        View {
            snapshot: snapshot.clone(),
            filter,
            workload: self.workload(),
        }
    }

    /// The instance group of the stream's Envoy.
    fn workload(&self) -> Option<Arc<WorkloadKey>> {
        self.client.as_ref().map(|client| client.workload().clone())
    }

    /// Responses for every type not waiting for an ACK, in push order.
    fn push(&mut self, snapshot: &Arc<Snapshot>) -> Vec<DeltaDiscoveryResponse> {
        let ready: Vec<ResourceType> = ResourceType::PUSH_ORDER
            .into_iter()
            .filter(|t| {
                self.subscriptions
                    .get(*t)
                    .is_some_and(|s| !s.awaiting_reply)
            })
            .collect();
        ready
            .into_iter()
            .filter_map(|t| self.respond(t, snapshot))
            .collect()
    }

    /// Takes the selectors the client satisfies in `snapshot`. When they changed (its labels
    /// or the rules did), any route configuration may differ for it, whatever changed in the
    /// snapshot: the next diff of routes looks at every name.
    fn follow_class(&mut self, snapshot: &Snapshot) {
        let class = snapshot.source_class(self.client.as_ref());
        if class != self.class {
            self.class = class;
            if let Some(routes) = self.subscriptions.get_mut(ResourceType::Route) {
                routes.diffed_against = None;
            }
        }
    }

    fn respond(
        &mut self,
        resource_type: ResourceType,
        snapshot: &Arc<Snapshot>,
    ) -> Option<DeltaDiscoveryResponse> {
        // Until the scope is known, listeners and clusters wait (see `StreamScope::Waiting`).
        if matches!(self.scope, StreamScope::Waiting) && resource_type.is_wildcard() {
            return None;
        }
        let view = self.view(snapshot);
        let subscription = self.subscriptions.get_mut(resource_type)?;
        if subscription.diffed_against == Some(snapshot.version())
            && subscription.unanswered.is_empty()
        {
            return None;
        }
        let (updated, removed) = subscription.diff(resource_type, &view, &self.class);
        subscription.diffed_against = Some(snapshot.version());
        subscription.unanswered.clear();
        if !(updated.is_empty() && removed.is_empty()) {
            subscription.sending();
        }
        for resource in &updated {
            let key = snapshot.key_of(resource_type, resource);
            subscription.send(resource_type, key.name, Some(key.version));
        }
        for name in &removed {
            subscription.send(
                resource_type,
                snapshot.shared_name(resource_type, name),
                None,
            );
        }
        subscription.known.rebase(resource_type, &view);
        subscription.names.rebase(resource_type, &view);
        if updated.is_empty() && removed.is_empty() {
            return None;
        }
        self.responses_sent += 1;
        let nonce = self.responses_sent.to_string();
        subscription.nonce = nonce.clone();
        subscription.awaiting_reply = true;
        subscription.sent_version = snapshot.version().to_string();
        Some(DeltaDiscoveryResponse {
            system_version_info: subscription.sent_version.clone(),
            resources: updated
                .into_iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.resource.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: resource_type.type_url().to_string(),
            removed_resources: removed,
            nonce,
            control_plane: Some(ControlPlane {
                identifier: CONTROL_PLANE_ID.to_string(),
            }),
            ..Default::default()
        })
    }
}

/// The hosts the VM's agent `asked` for and those the client's Sidecars pin, against
/// `snapshot` (its services and rules decide what a hostname brings in).
fn scope_filter(
    asked: &BTreeSet<String>,
    client: Option<&Client>,
    snapshot: &Snapshot,
) -> ScopeFilter {
    let pinned = snapshot.services().pinned(client);
    let hosts = asked.iter().chain(&pinned).map(String::as_str);
    ScopeFilter::new(snapshot.services(), hosts)
}

/// Applies the request's (un)subscriptions; true when they changed what Envoy wants.
fn apply_subscription_changes(
    subscription: &mut Subscription,
    request: &DeltaDiscoveryRequest,
    first: bool,
    resource_type: ResourceType,
    snapshot: Option<&Arc<Snapshot>>,
) -> bool {
    let shared_name = |name: &str| match snapshot {
        Some(snapshot) => snapshot.shared_name(resource_type, name),
        None => Arc::from(name),
    };
    let was_wildcard = subscription.wildcard;
    if first {
        subscription.known = Known::from_versions(
            request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| (shared_name(name), Arc::from(version.as_str()))),
        );
        subscription.acked = None;
        subscription.rejected.clear();
        subscription.wildcard =
            resource_type.is_wildcard() && request.resource_names_subscribe.is_empty();
    }
    for name in &request.resource_names_subscribe {
        if name == WILDCARD {
            subscription.wildcard = true;
            continue;
        }
        let name = shared_name(name);
        if !request.initial_resource_versions.contains_key(&*name) {
            subscription.has_none(resource_type, name.clone());
        }
        subscription.names.set(name.clone(), true);
        subscription.unanswered.insert(name);
    }
    for name in &request.resource_names_unsubscribe {
        if name == WILDCARD {
            subscription.wildcard = false;
            continue;
        }
        let name = shared_name(name);
        subscription.names.set(name.clone(), false);
        subscription.unanswered.remove(&*name);
        if !subscription.wildcard {
            subscription.has_none(resource_type, name);
        }
    }
    // New names are diffed as `unanswered` and dropped ones are forgotten, so only a new
    // subscription or a change of the wildcard needs a diff of everything.
    if first || subscription.wildcard != was_wildcard {
        subscription.diffed_against = None;
    }
    first
        || !request.resource_names_subscribe.is_empty()
        || !request.resource_names_unsubscribe.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Catalog, Protocol};
    use crate::catalog::testing::{self, endpoint, service};
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc::Status;

    const CDS: ResourceType = ResourceType::Cluster;
    const EDS: ResourceType = ResourceType::Endpoint;
    const LDS: ResourceType = ResourceType::Listener;
    const RDS: ResourceType = ResourceType::Route;
    const A: &str = "outbound|80||a.g.d.boshy";
    const B: &str = "outbound|80||b.g.d.boshy";
    const C: &str = "outbound|80||c.g.d.boshy";

    /// One http service per `(job, healthy endpoints)`.
    fn catalog(version: u64, jobs: &[(&str, usize)]) -> Catalog {
        testing::catalog(
            version,
            jobs.iter().zip(2u8..).map(|((job, endpoints), host)| {
                (1..=*endpoints).fold(
                    service("d", "g", job).vip([169, 254, 255, host]).port(
                        "http",
                        80,
                        Protocol::Http,
                    ),
                    |service, n| service.endpoint(endpoint(&format!("10.0.0.{n}"))),
                )
            }),
        )
    }

    fn snapshot(version: u64, jobs: &[(&str, usize)]) -> Arc<Snapshot> {
        Arc::new(Snapshot::from_catalog(&catalog(version, jobs)))
    }

    fn next(previous: &Snapshot, version: u64, jobs: &[(&str, usize)]) -> Arc<Snapshot> {
        Arc::new(Snapshot::following(&catalog(version, jobs), Some(previous)))
    }

    fn subscribe(t: ResourceType, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        }
    }

    fn nack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad cluster".into(),
                ..Default::default()
            }),
            ..ack(response)
        }
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    /// Subscribes and ACKs the first response; returns it.
    fn synced(
        state: &mut DeltaStreamState,
        t: ResourceType,
        names: &[&str],
        snap: &Arc<Snapshot>,
    ) -> DeltaDiscoveryResponse {
        let (kind, response) = state.on_request(&subscribe(t, names), Some(snap));
        assert_eq!(kind, RequestKind::Subscribe);
        let response = response.expect("initial response");
        let (kind, more) = state.on_request(&ack(&response), Some(snap));
        assert!(matches!(kind, RequestKind::Ack { .. }), "{kind:?}");
        assert!(more.is_none());
        response
    }

    fn scoped(generation: u64, hosts: &[&str]) -> StreamScope {
        StreamScope::Scoped {
            generation,
            asked: Arc::new(hosts.iter().map(|h| h.to_string()).collect()),
            filter: None,
            filtered_at: None,
        }
    }

    #[test]
    fn a_scoped_envoy_gets_its_services_and_holds_a_new_one_once_it_has_every_resource() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1), ("c", 1)]);
        let mut state = DeltaStreamState::default();
        state.on_scope(scoped(1, &["a.g.d.boshy"]), None);
        assert_eq!(names(&synced(&mut state, CDS, &[], &v1)), [A]);
        let listeners = synced(&mut state, LDS, &[], &v1);
        assert_eq!(names(&listeners), ["169.254.255.2_80", "outbound"]);
        assert_eq!(
            state.scope_held(&v1),
            None,
            "Envoy has not asked for a's endpoints yet"
        );
        synced(&mut state, EDS, &[A], &v1);
        assert_eq!(state.scope_held(&v1), None, "nor for its routes");
        synced(&mut state, RDS, &[A], &v1);
        assert_eq!(state.scope_held(&v1), Some(1));
        let known = &state.subscriptions.get(CDS).unwrap().known;
        assert!(
            known.overrides.is_empty(),
            "what a scoped Envoy has is one pointer"
        );

        // The VM asks for b: its cluster and listener go out, nothing is removed.
        let pushed = state.on_scope(scoped(2, &["a.g.d.boshy", "b.g.d.boshy"]), Some(&v1));
        let pushed: Vec<(&str, Vec<&str>)> = pushed
            .iter()
            .map(|r| (r.type_url.as_str(), names(r)))
            .collect();
        assert_eq!(
            pushed,
            [
                (CDS.type_url(), vec![B]),
                (LDS.type_url(), vec!["169.254.255.3_80"])
            ]
        );
        assert_eq!(state.scope_held(&v1), None, "not acknowledged yet");
        let cds = state.on_request(&subscribe(CDS, &[]), Some(&v1)); // stale: no nonce
        assert!(cds.1.is_none());
        for t in [CDS, LDS] {
            let nonce = state.subscriptions.get(t).unwrap().nonce.clone();
            let ack = DeltaDiscoveryRequest {
                type_url: t.type_url().into(),
                response_nonce: nonce,
                ..Default::default()
            };
            assert!(state.on_request(&ack, Some(&v1)).1.is_none());
        }
        assert_eq!(
            state.scope_held(&v1),
            None,
            "b's endpoints and routes not asked for"
        );
        synced(&mut state, EDS, &[B], &v1);
        synced(&mut state, RDS, &[B], &v1);
        assert_eq!(state.scope_held(&v1), Some(2));

        // A catalog change reaches only what the scope admits.
        let v2 = next(&v1, 2, &[("a", 1), ("b", 1), ("c", 2)]);
        assert!(state.on_snapshot(&v2).is_empty(), "c is not in scope");
        let v3 = next(&v2, 3, &[("a", 2), ("b", 1), ("c", 2)]);
        let pushed = state.on_snapshot(&v3);
        assert_eq!(pushed.len(), 1);
        assert_eq!(names(&pushed[0]), [A]);

        // Names leave the scope: their clusters and listeners are removed.
        let pushed = state.on_scope(scoped(3, &[]), Some(&v3));
        let removed: Vec<(&str, &[String])> = pushed
            .iter()
            .map(|r| (r.type_url.as_str(), r.removed_resources.as_slice()))
            .collect();
        assert_eq!(
            removed,
            [
                (CDS.type_url(), &[A.to_string(), B.to_string()][..]),
                (
                    LDS.type_url(),
                    &[
                        "169.254.255.2_80".to_string(),
                        "169.254.255.3_80".to_string()
                    ][..]
                )
            ],
            "the load assignment of a, pushed with v3, awaits its ACK"
        );
    }

    #[test]
    fn an_envoy_gets_its_own_groups_inbound_listener_alone_whatever_its_scope() {
        use crate::xds::client::testing::{identified_mesh, node, OTHER_INBOUND, OWN_INBOUND};
        let mesh = Arc::new(identified_mesh());
        let listeners = |scope: Option<StreamScope>, node: Option<Node>| {
            let mut state = DeltaStreamState::default();
            if let Some(scope) = scope {
                state.on_scope(scope, None);
            }
            let request = DeltaDiscoveryRequest {
                node,
                ..subscribe(LDS, &[])
            };
            let (_, response) = state.on_request(&request, Some(&mesh));
            let response = response.expect("listeners");
            let names: Vec<String> = names(&response).into_iter().map(String::from).collect();
            assert!(!names.iter().any(|n| n == OTHER_INBOUND), "{names:?}");
            let (_, more) = state.on_request(&ack(&response), Some(&mesh));
            assert!(more.is_none());
            assert!(
                state.on_snapshot(&mesh).is_empty(),
                "nothing more for the same snapshot"
            );
            names
        };
        let whole_mesh = listeners(None, Some(node()));
        assert_eq!(
            whole_mesh,
            [
                "169.254.255.2_80",
                "169.254.255.3_80",
                OWN_INBOUND,
                "outbound"
            ]
        );
        let scoped_to_b = listeners(Some(scoped(1, &["b.h.d.boshy"])), Some(node()));
        assert_eq!(
            scoped_to_b,
            ["169.254.255.3_80", OWN_INBOUND, "outbound"],
            "a scope is about the services it calls, not its own inbound side"
        );
        let no_instance = listeners(None, None);
        assert_eq!(
            no_instance,
            ["169.254.255.2_80", "169.254.255.3_80", "outbound"],
            "an Envoy of no BOSH instance gets no inbound listener"
        );
    }

    #[test]
    fn a_waiting_stream_holds_back_listeners_and_clusters_until_the_scope_or_the_whole_mesh() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        state.on_scope(StreamScope::Waiting, None);
        let (_, response) = state.on_request(&subscribe(CDS, &[]), Some(&v1));
        assert!(response.is_none(), "clusters wait for the scope");
        let (_, response) = state.on_request(&subscribe(EDS, &[A]), Some(&v1));
        assert_eq!(
            names(&response.unwrap()),
            [A],
            "what Envoy names is answered"
        );
        let pushed = state.on_scope(StreamScope::Full, Some(&v1));
        assert_eq!(
            names(&pushed[0]),
            [A, B],
            "no scope in time: the whole mesh"
        );
    }

    #[test]
    fn wildcard_types_get_everything_and_the_ack_sends_nothing_more() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        let first = synced(&mut state, CDS, &[], &v1);
        assert_eq!(names(&first), [A, B]);
        assert!(first.removed_resources.is_empty());
        assert_eq!(first.system_version_info, "1");
        assert!(first.resources.iter().all(|r| !r.version.is_empty()));
        assert!(state.on_snapshot(&v1).is_empty(), "nothing changed");

        let listeners = synced(&mut state, LDS, &[WILDCARD], &v1);
        assert_eq!(
            names(&listeners),
            ["169.254.255.2_80", "169.254.255.3_80", "outbound"]
        );
    }

    #[test]
    fn a_stream_in_sync_remembers_what_envoy_has_as_one_pointer_to_the_snapshot() {
        let in_sync_with = |state: &DeltaStreamState, t: ResourceType, snap: &Arc<Snapshot>| {
            let Subscription { known, names, .. } = &state.subscriptions.get(t).unwrap();
            let on = |base: &Option<View>| {
                base.as_ref()
                    .is_some_and(|b| Arc::ptr_eq(&b.snapshot, snap))
            };
            // A wildcard subscription names nothing.
            let names_in_sync = match t {
                CDS => names.base.is_none(),
                _ => on(&names.base),
            };
            known.overrides.is_empty()
                && on(&known.base)
                && names.overrides.is_empty()
                && names_in_sync
        };
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        synced(&mut state, CDS, &[], &v1);
        synced(&mut state, EDS, &[A, B], &v1);
        assert!(in_sync_with(&state, CDS, &v1));
        assert!(in_sync_with(&state, EDS, &v1));

        let v2 = next(&v1, 2, &[("a", 2), ("b", 1)]);
        let [pushed] = state.on_snapshot(&v2).try_into().unwrap();
        assert_eq!(names(&pushed), [A]);
        assert!(
            in_sync_with(&state, EDS, &v2),
            "rebased on the changed names only"
        );

        // Envoy unsubscribes from b: what it has is the snapshot minus b.
        state.on_request(
            &DeltaDiscoveryRequest {
                type_url: EDS.type_url().into(),
                resource_names_unsubscribe: vec![B.into()],
                ..ack(&pushed)
            },
            Some(&v2),
        );
        let known = &state.subscriptions.get(EDS).unwrap().known;
        assert_eq!(known.names(EDS), BTreeSet::from([A]));
        assert_eq!(known.get(EDS, B), None);
        let names = &state.subscriptions.get(EDS).unwrap().names;
        assert_eq!(names.all(EDS), BTreeSet::from([A]));
        assert!(!names.contains(EDS, B));
    }

    /// (name, version) pairs.
    type Versions = Vec<(String, String)>;

    /// What `config` says of type `t` against `snapshot`: the versions it would send, and
    /// those Envoy ACKed.
    fn versions_of(
        state: &DeltaStreamState,
        t: ResourceType,
        snapshot: &Arc<Snapshot>,
    ) -> (Versions, Versions) {
        let config = state.config(snapshot);
        let of_type = config.iter().find(|c| c.resource_type == t).unwrap();
        let wanted = of_type.wanted.as_ref().unwrap();
        let wanted = wanted
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        (wanted, of_type.acked.clone().into_iter().collect())
    }

    #[test]
    fn an_unanswered_response_keeps_no_version_per_name_it_sent() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        for t in [CDS, EDS] {
            let subscribed: &[&str] = if t == EDS { &[A, B] } else { &[] };
            let (_, response) = state.on_request(&subscribe(t, subscribed), Some(&v1));
            assert_eq!(names(&response.unwrap()).len(), 2);
            let subscription = state.subscriptions.get(t).unwrap();
            let acked = subscription
                .acked
                .as_ref()
                .expect("kept apart until answered");
            assert!(acked.base.is_none() && acked.overrides.is_empty(), "{t:?}");
            assert!(
                subscription.known.overrides.is_empty(),
                "{t:?}: the snapshot says it"
            );
            assert_eq!(
                versions_of(&state, t, &v1).1,
                [],
                "{t:?}: nothing accepted yet"
            );
        }
    }

    #[test]
    fn what_envoy_acked_stays_apart_from_what_it_was_sent_until_it_accepts_it() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        synced(&mut state, EDS, &[A, B], &v1);
        let (wanted, acked) = versions_of(&state, EDS, &v1);
        assert_eq!(wanted, acked, "in sync");
        assert!(state.subscriptions.get(EDS).unwrap().acked.is_none());
        let at = |s: &Snapshot, name: &str| {
            let version = s.get(EDS, name).unwrap().version.clone();
            (name.to_string(), version)
        };

        let v2 = next(&v1, 2, &[("a", 1), ("b", 2)]);
        let [pushed] = state.on_snapshot(&v2).try_into().unwrap();
        let (wanted, acked) = versions_of(&state, EDS, &v2);
        assert_eq!(wanted, [at(&v2, A), at(&v2, B)]);
        assert_eq!(acked, [at(&v1, A), at(&v1, B)], "sent, not yet accepted");

        state.on_request(&nack(&pushed), Some(&v2));
        assert_eq!(versions_of(&state, EDS, &v2).1, [at(&v1, A), at(&v1, B)]);

        // a changes: only a is sent (b's rejected version is not), and accepted; Envoy still
        // runs the b it had.
        let v3 = next(&v2, 3, &[("a", 2), ("b", 2)]);
        let [pushed] = state.on_snapshot(&v3).try_into().unwrap();
        assert_eq!(names(&pushed), [A]);
        state.on_request(&ack(&pushed), Some(&v3));
        let (wanted, acked) = versions_of(&state, EDS, &v3);
        assert_eq!(wanted, [at(&v3, A), at(&v3, B)]);
        assert_eq!(acked, [at(&v3, A), at(&v1, B)]);

        // b changes again and is accepted: in sync, nothing left to remember.
        let v4 = next(&v3, 4, &[("a", 2), ("b", 3)]);
        let [pushed] = state.on_snapshot(&v4).try_into().unwrap();
        state.on_request(&ack(&pushed), Some(&v4));
        let (wanted, acked) = versions_of(&state, EDS, &v4);
        assert_eq!(wanted, acked);
        assert!(state.subscriptions.get(EDS).unwrap().acked.is_none());

        // Unsubscribing from a: neither sent nor had any more.
        let unsubscribe = DeltaDiscoveryRequest {
            resource_names_unsubscribe: vec![A.into()],
            ..subscribe(EDS, &[])
        };
        state.on_request(&unsubscribe, Some(&v4));
        assert_eq!(
            versions_of(&state, EDS, &v4),
            (vec![at(&v4, B)], vec![at(&v4, B)])
        );
    }

    #[test]
    fn the_config_of_a_scoped_stream_is_its_scope_and_listeners_wait_with_it() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1), ("c", 1)]);
        let mut state = DeltaStreamState::default();
        state.on_scope(StreamScope::Waiting, None);
        state.on_request(&subscribe(CDS, &[]), Some(&v1));
        let config = state.config(&v1);
        assert!(config[0].wanted.is_none(), "held back");
        state.on_scope(scoped(1, &["b.g.d.boshy"]), None);
        let config = state.config(&v1);
        let wanted: Vec<&str> = config[0]
            .wanted
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(wanted, [B], "the scope, against a snapshot not seen yet");
        assert!(config[0].acked.is_empty());
    }

    #[test]
    fn an_endpoint_change_sends_exactly_that_cluster_load_assignment() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        synced(&mut state, CDS, &[], &v1);
        synced(&mut state, LDS, &[], &v1);
        synced(&mut state, EDS, &[A, B], &v1);
        synced(&mut state, RDS, &[A, B], &v1);

        let v2 = next(&v1, 2, &[("a", 1), ("b", 2)]);
        let pushed = state.on_snapshot(&v2);
        assert_eq!(pushed.len(), 1, "{pushed:?}");
        assert_eq!(pushed[0].type_url, EDS.type_url());
        assert_eq!(names(&pushed[0]), [B]);
        assert!(pushed[0].removed_resources.is_empty());
    }

    #[test]
    fn explicit_subscriptions_get_only_their_names_and_changes_apply_from_any_request() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1), ("c", 1)]);
        let mut state = DeltaStreamState::default();
        let (_, first) = state.on_request(&subscribe(EDS, &[A]), Some(&v1));
        let first = first.unwrap();
        assert_eq!(names(&first), [A]);

        // Before ACKing, Envoy warms a new cluster and asks for its endpoints: answered at
        // once, and only the new name.
        let (kind, second) = state.on_request(&subscribe(EDS, &[B]), Some(&v1));
        assert_eq!(kind, RequestKind::Subscribe);
        assert_eq!(names(&second.unwrap()), [B]);
        // The ACK of the first response is now stale.
        let (kind, none) = state.on_request(&ack(&first), Some(&v1));
        assert_eq!(kind, RequestKind::Stale);
        assert!(none.is_none());

        // Unsubscribing forgets the name without a removal; the rest stays.
        let unsubscribe = DeltaDiscoveryRequest {
            resource_names_unsubscribe: vec![A.into()],
            ..subscribe(EDS, &[])
        };
        assert!(state.on_request(&unsubscribe, Some(&v1)).1.is_none());
        let v2 = next(&v1, 2, &[("a", 2), ("b", 2), ("c", 2)]);
        let pushed = state.on_snapshot(&v2);
        assert!(pushed.is_empty(), "still waiting for the ACK of B");
        let (_, resubscribed) = state.on_request(&subscribe(EDS, &[A]), Some(&v2));
        let resubscribed = resubscribed.unwrap();
        assert_eq!(names(&resubscribed), [A, B], "A again, B's new version");
    }

    #[test]
    fn removed_resources_name_what_disappeared_or_never_existed() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        synced(&mut state, CDS, &[], &v1);
        let routes = synced(&mut state, RDS, &[A, B, C], &v1);
        assert_eq!(names(&routes), [A, B]);
        assert_eq!(routes.removed_resources, [C], "C does not exist");

        let v2 = next(&v1, 2, &[("a", 1)]);
        let pushed = state.on_snapshot(&v2);
        let by_type: Vec<(&str, Vec<&str>, Vec<String>)> = pushed
            .iter()
            .map(|r| (r.type_url.as_str(), names(r), r.removed_resources.clone()))
            .collect();
        assert_eq!(
            by_type,
            [
                (CDS.type_url(), vec![], vec![B.to_string()]),
                (RDS.type_url(), vec![], vec![B.to_string()]),
            ]
        );
    }

    #[test]
    fn a_nacked_version_is_not_resent_but_a_newer_one_is() {
        let v1 = snapshot(1, &[("a", 1)]);
        let mut state = DeltaStreamState::default();
        synced(&mut state, CDS, &[], &v1);
        let v2 = next(&v1, 2, &[("a", 1), ("b", 1)]);
        let pushed = state.on_snapshot(&v2);
        let (kind, resend) = state.on_request(&nack(&pushed[0]), Some(&v2));
        assert_eq!(
            kind,
            RequestKind::Nack {
                rejected_version: "2".into(),
                kept_version: "1".into(),
                message: "bad cluster".into()
            }
        );
        assert!(resend.is_none());
        assert!(state.on_snapshot(&v2).is_empty());

        let v3 = next(&v2, 3, &[("a", 1), ("c", 1)]);
        let pushed = state.on_snapshot(&v3);
        assert_eq!(names(&pushed[0]), [C]);
        assert_eq!(pushed[0].removed_resources, [B]);
    }

    #[test]
    fn pushes_wait_for_the_ack_which_then_sends_everything_that_changed_meanwhile() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        let (_, first) = state.on_request(&subscribe(EDS, &[A, B]), Some(&v1));
        let first = first.unwrap();
        let v2 = next(&v1, 2, &[("a", 2), ("b", 1)]);
        assert!(state.on_snapshot(&v2).is_empty());
        let v3 = next(&v2, 3, &[("a", 2), ("b", 2)]);
        assert!(state.on_snapshot(&v3).is_empty());
        let (_, after_ack) = state.on_request(&ack(&first), Some(&v3));
        let after_ack = after_ack.unwrap();
        assert_eq!(names(&after_ack), [A, B]);
        assert_eq!(after_ack.system_version_info, "3");
    }

    #[test]
    fn a_reconnecting_envoy_gets_exactly_what_differs_from_what_it_has() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut old_stream = DeltaStreamState::default();
        let had = synced(&mut old_stream, CDS, &[], &v1);
        let had_eds = synced(&mut old_stream, EDS, &[A, B], &v1);

        // Meanwhile b lost its endpoint... and c appeared; a is unchanged.
        let v2 = snapshot(2, &[("a", 1), ("b", 2), ("c", 1)]);
        let versions = |response: &DeltaDiscoveryResponse| {
            response
                .resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect()
        };
        let mut reconnected = DeltaStreamState::default();
        let (_, clusters) = reconnected.on_request(
            &DeltaDiscoveryRequest {
                initial_resource_versions: versions(&had),
                ..subscribe(CDS, &[])
            },
            Some(&v2),
        );
        let clusters = clusters.unwrap();
        assert_eq!(names(&clusters), [C]);
        assert!(clusters.removed_resources.is_empty());

        let mut stale = versions(&had_eds);
        stale.insert("outbound|80||gone.g.d.boshy".into(), "0123".into());
        let (_, endpoints) = reconnected.on_request(
            &DeltaDiscoveryRequest {
                initial_resource_versions: stale,
                ..subscribe(EDS, &[A, B])
            },
            Some(&v2),
        );
        let endpoints = endpoints.unwrap();
        assert_eq!(names(&endpoints), [B]);
        assert_eq!(endpoints.removed_resources, ["outbound|80||gone.g.d.boshy"]);

        let mut up_to_date = DeltaStreamState::default();
        let (_, nothing) = up_to_date.on_request(
            &DeltaDiscoveryRequest {
                initial_resource_versions: versions(&had),
                ..subscribe(CDS, &[])
            },
            Some(&v1),
        );
        assert!(nothing.is_none());
    }

    #[test]
    fn a_lagging_stream_is_diffed_in_full_against_the_current_snapshot() {
        let v1 = snapshot(1, &[("a", 1), ("b", 1)]);
        let mut state = DeltaStreamState::default();
        synced(&mut state, CDS, &[], &v1);
        let v2 = next(&v1, 2, &[("a", 1)]);
        // v2 never reached this stream (it was busy); v3 only knows what changed since v2.
        let v3 = next(&v2, 3, &[("a", 1), ("c", 1)]);
        let pushed = state.on_snapshot(&v3);
        assert_eq!(names(&pushed[0]), [C]);
        assert_eq!(pushed[0].removed_resources, [B]);
    }

    #[test]
    fn requests_before_the_first_snapshot_are_served_when_it_arrives() {
        let mut state = DeltaStreamState::default();
        let (kind, response) = state.on_request(&subscribe(CDS, &[]), None);
        assert_eq!(kind, RequestKind::Subscribe);
        assert!(response.is_none());
        let pushed = state.on_snapshot(&snapshot(1, &[("a", 1)]));
        assert_eq!(pushed.len(), 1);
        assert_eq!(names(&pushed[0]), [A]);
    }

    #[test]
    fn a_client_gets_the_routes_of_its_labels_and_new_ones_when_its_labels_change() {
        use crate::xds::client::testing::{node, route_names, source_routed, ROUTES};
        use crate::xds::resources::Inputs;
        let built = |version, app, previous: Option<&Snapshot>| {
            let (catalog, traffic) = source_routed(version, app);
            let inputs = Inputs {
                catalog: &catalog,
                traffic: &traffic,
                identity: None,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            };
            Arc::new(Snapshot::following(inputs, previous))
        };
        let productpage = built(1, "productpage", None);
        let sent = |response: &DeltaDiscoveryResponse| {
            let [resource] = &response.resources[..] else {
                panic!("one route configuration: {response:?}")
            };
            route_names(resource.resource.as_ref().unwrap())
        };

        let mut client = DeltaStreamState::default();
        let first = DeltaDiscoveryRequest {
            node: Some(node()),
            ..subscribe(RDS, &[ROUTES])
        };
        let (_, response) = client.on_request(&first, Some(&productpage));
        let response = response.expect("the routes");
        assert_eq!(sent(&response), ["from-productpage", ""]);
        let mut anonymous = DeltaStreamState::default();
        let theirs = synced(&mut anonymous, RDS, &[ROUTES], &productpage);
        assert_eq!(sent(&theirs), [""], "an Envoy that names no instance");
        client.on_request(&ack(&response), Some(&productpage));

        // The instance's labels change: the rules did not, and only its variant did.
        let reviews = built(2, "reviews", Some(&productpage));
        let [pushed] = &client.on_snapshot(&reviews)[..] else {
            panic!("one push")
        };
        assert_eq!(sent(pushed), [""]);
        assert!(anonymous.on_snapshot(&reviews).is_empty());
        client.on_request(&ack(pushed), Some(&reviews));
        let back = built(3, "productpage", Some(&reviews));
        let [pushed] = &client.on_snapshot(&back)[..] else {
            panic!("one push")
        };
        assert_eq!(sent(pushed), ["from-productpage", ""]);
    }

    #[test]
    fn unknown_types_are_reported_and_not_answered() {
        let mut state = DeltaStreamState::default();
        let request = DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            ..Default::default()
        };
        assert_eq!(
            state.on_request(&request, Some(&snapshot(1, &[("a", 1)]))),
            (RequestKind::UnknownType, None)
        );
    }
}
