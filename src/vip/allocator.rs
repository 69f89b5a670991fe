//! The pure VIP allocator.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// What is persisted: who has which VIP, and when and by whom each freed VIP was freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipState {
    /// hostname → VIP. Keyed by the service's hostname (made of the canonical DNS forms of its
    /// BOSH names, see `catalog::hostnames`), not by the BOSH names: a VIP is the answer for
    /// that name, which clients resolve and cache, so it follows the name. Names that were
    /// DNS labels already are their own canonical form, so their keys are the same as before
    /// names were canonicalized; and renaming instance group `diego_cell` to `diego-cell`
    /// keeps its services' VIPs.
    pub assignments: BTreeMap<String, Ipv4Addr>,
    /// Freed VIP → its release; a VIP is listed here from its release until it is assigned
    /// again.
    pub released: BTreeMap<Ipv4Addr, Released>,
}

/// One freed VIP. The hostname is kept so that a service that comes back (a deployment
/// deleted and redeployed, or one a lagging replica briefly did not see) gets its old VIP
/// again: clients that cached the name then still reach the right service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Released {
    /// Unix seconds.
    pub at: u64,
    pub hostname: String,
}

/// A `virtual_ip_cidr` the allocator cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(
        "virtual_ip_cidr {0}: must lie inside 169.254.0.0/16: VIPs are link-local so that \
         they never collide with a routable address"
    )]
    NotLinkLocal(Ipv4Net),
    #[error("virtual_ip_cidr {0}: a prefix shorter than /16 is not allowed")]
    TooLarge(Ipv4Net),
    #[error(
        "virtual_ip_cidr {0}: has no usable address (the network and broadcast addresses, \
         169.254.169.254 and 169.254.0.0/24, which bosh-dns uses, are never VIPs)"
    )]
    NoUsableAddress(Ipv4Net),
}

/// What one `sync` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// New hostnames and the VIP each got.
    pub allocated: Vec<(String, Ipv4Addr)>,
    /// Hostnames no longer wanted and the VIP each gave back.
    pub released: Vec<(String, Ipv4Addr)>,
    /// New hostnames that got no VIP: the pool is full. They stay without one (and out of
    /// the catalog) until a later sync finds room.
    pub exhausted: Vec<String>,
    /// One line per new hostname that got a VIP still in quarantine (the pool had no other),
    /// for the caller to log: clients with a cached answer for the VIP's old hostname reach
    /// the new one.
    pub warnings: Vec<String>,
}

impl SyncOutcome {
    /// Whether the state changed and must be persisted.
    pub fn changed(&self) -> bool {
        !self.allocated.is_empty() || !self.released.is_empty()
    }
}

/// How full the pool is, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Addresses that may be VIPs.
    pub size: u64,
    /// Assigned to a hostname.
    pub used: u64,
    /// Released and still in quarantine.
    pub quarantined: u64,
}

#[derive(Debug, Clone)]
pub struct VipAllocator {
    pool: Ipv4Net,
    quarantine_seconds: u64,
    state: VipState,
    /// What `new` dropped from the state it was given, one line each.
    load_warnings: Vec<String>,
}

impl VipAllocator {
    /// An allocator over `pool` continuing from `state` (as loaded at start). Assignments
    /// that are outside the pool (the CIDR was changed) or duplicate another one are dropped,
    /// each with a line in `load_warnings`: their hostnames get a new VIP at the next sync.
    pub fn new(pool: Ipv4Net, quarantine_seconds: u64, state: VipState) -> Result<Self, PoolError> {
        check_pool(pool)?;
        let pool = pool.trunc();
        let mut kept = VipState::default();
        let mut load_warnings = Vec::new();
        let mut taken = HashSet::new();
        for (hostname, vip) in state.assignments {
            if !is_usable(pool, vip) {
                load_warnings.push(format!(
                    "VIP {vip} of {hostname} is not usable in the pool {pool}; {hostname} \
                     gets a new VIP"
                ));
            } else if !taken.insert(vip) {
                load_warnings.push(format!(
                    "VIP {vip} of {hostname} is also assigned to another hostname; \
                     {hostname} gets a new VIP"
                ));
            } else {
                kept.assignments.insert(hostname, vip);
            }
        }
        kept.released = state
            .released
            .into_iter()
            .filter(|(vip, _)| is_usable(pool, *vip) && !taken.contains(vip))
            .collect();
        Ok(VipAllocator {
            pool,
            quarantine_seconds,
            state: kept,
            load_warnings,
        })
    }

    pub fn state(&self) -> &VipState {
        &self.state
    }

    /// The assignments `new` dropped from the state it was given, one line each, for the
    /// caller to log.
    pub(crate) fn load_warnings(&self) -> &[String] {
        &self.load_warnings
    }

    /// hostname → VIP, as `catalog::build` takes it.
    pub fn assignments(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.state.assignments
    }

    /// Makes the assignments match `wanted`: existing ones are kept, those of hostnames no
    /// longer wanted are released (and quarantined), and each new hostname gets back the VIP
    /// it last released if that is still free; the others, in name order, get the lowest
    /// never-used address, else the lowest address whose quarantine is over, else, rather
    /// than failing, the address released longest ago.
    pub fn sync(&mut self, wanted: &BTreeSet<String>, now_unix: u64) -> SyncOutcome {
        let mut outcome = SyncOutcome::default();
        let gone: Vec<String> = self
            .state
            .assignments
            .keys()
            .filter(|hostname| !wanted.contains(*hostname))
            .cloned()
            .collect();
        for hostname in gone {
            if let Some(vip) = self.state.assignments.remove(&hostname) {
                let released = Released {
                    at: now_unix,
                    hostname: hostname.clone(),
                };
                self.state.released.insert(vip, released);
                outcome.released.push((hostname, vip));
            }
        }

        let mut new: Vec<&String> = wanted
            .iter()
            .filter(|hostname| !self.state.assignments.contains_key(*hostname))
            .collect();
        // Returning hostnames first, so that no other new hostname takes their old VIP.
        new.retain(|hostname| match self.released_by(hostname) {
            Some(vip) => {
                self.assign(hostname, vip, &mut outcome);
                false
            }
            None => true,
        });
        if new.is_empty() {
            return outcome;
        }
        let taken: HashSet<Ipv4Addr> = self
            .state
            .assignments
            .values()
            .chain(self.state.released.keys())
            .copied()
            .collect();
        let pool = self.pool;
        let mut never_used = pool
            .hosts()
            .filter(|vip| is_usable(pool, *vip) && !taken.contains(vip));
        let quarantine = self.quarantine_seconds;
        // (released_at, vip), both popped from the back: expired ones lowest address
        // first, quarantined ones longest released first.
        let (mut expired, mut quarantined): (Vec<FreeVip>, Vec<FreeVip>) = self
            .state
            .released
            .iter()
            .rev()
            .map(|(vip, released)| (released.at, *vip))
            .partition(|(released_at, _)| now_unix.saturating_sub(*released_at) >= quarantine);
        quarantined.sort_by_key(|released| std::cmp::Reverse(*released));

        for hostname in new {
            let vip = if let Some(vip) = never_used.next() {
                vip
            } else if let Some((_, vip)) = expired.pop() {
                vip
            } else if let Some((released_at, vip)) = quarantined.pop() {
                outcome.warnings.push(format!(
                    "VIP pool {pool} is full: {hostname} gets {vip}, released only {}s ago \
                     (quarantine is {quarantine}s); clients with a cached answer for the \
                     old name may reach {hostname}",
                    now_unix.saturating_sub(released_at)
                ));
                vip
            } else {
                outcome.exhausted.push(hostname.clone());
                continue;
            };
            self.assign(hostname, vip, &mut outcome);
        }
        outcome
    }

    /// How full the pool is at `now_unix`.
    pub fn usage(&self, now_unix: u64) -> PoolUsage {
        let pool = self.pool;
        let quarantined = self
            .state
            .released
            .values()
            .filter(|released| now_unix.saturating_sub(released.at) < self.quarantine_seconds)
            .count();
        PoolUsage {
            size: pool.hosts().filter(|vip| is_usable(pool, *vip)).count() as u64,
            used: self.state.assignments.len() as u64,
            quarantined: quarantined as u64,
        }
    }

    /// The VIP `hostname` released last, if no one has taken it since.
    fn released_by(&self, hostname: &str) -> Option<Ipv4Addr> {
        self.state
            .released
            .iter()
            .filter(|(_, released)| released.hostname == hostname)
            .max_by_key(|(_, released)| released.at)
            .map(|(vip, _)| *vip)
    }

    fn assign(&mut self, hostname: &str, vip: Ipv4Addr, outcome: &mut SyncOutcome) {
        self.state.released.remove(&vip);
        self.state.assignments.insert(hostname.to_string(), vip);
        outcome.allocated.push((hostname.to_string(), vip));
    }
}

/// A released VIP: (released_at, vip).
type FreeVip = (u64, Ipv4Addr);

/// Rejects pools that are not link-local, larger than a /16, or without a usable address.
pub fn check_pool(pool: Ipv4Net) -> Result<(), PoolError> {
    if pool.prefix_len() < 16 {
        return Err(PoolError::TooLarge(pool));
    }
    let link_local = Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16).expect("valid");
    if !link_local.contains(&pool) {
        return Err(PoolError::NotLinkLocal(pool));
    }
    let pool = pool.trunc();
    if !pool.hosts().any(|vip| is_usable(pool, vip)) {
        return Err(PoolError::NoUsableAddress(pool));
    }
    Ok(())
}

/// Whether `vip` may be handed out from `pool`.
fn is_usable(pool: Ipv4Net, vip: Ipv4Addr) -> bool {
    let bosh_dns = Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 24).expect("valid");
    pool.contains(&vip)
        && vip != pool.network()
        && vip != pool.broadcast()
        && vip != Ipv4Addr::new(169, 254, 169, 254)
        && !bosh_dns.contains(&vip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUARANTINE: u64 = 3600;

    fn allocator(cidr: &str) -> VipAllocator {
        VipAllocator::new(cidr.parse().unwrap(), QUARANTINE, VipState::default()).unwrap()
    }

    fn wanted(hostnames: &[&str]) -> BTreeSet<String> {
        hostnames.iter().map(|h| h.to_string()).collect()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn released(at: u64, hostname: &str) -> Released {
        Released {
            at,
            hostname: hostname.into(),
        }
    }

    #[test]
    fn usage_counts_usable_assigned_and_quarantined_addresses() {
        // A /24 has 254 hosts; 169.254.0.0/24 is bosh-dns's, so a /23 around it loses 256.
        let mut vips = allocator("169.254.255.0/24");
        vips.sync(&wanted(&["a", "b", "c"]), 0);
        vips.sync(&wanted(&["a"]), 100);
        assert_eq!(
            vips.usage(100 + QUARANTINE - 1),
            PoolUsage {
                size: 254,
                used: 1,
                quarantined: 2
            }
        );
        assert_eq!(
            vips.usage(100 + QUARANTINE).quarantined,
            0,
            "quarantine over"
        );
        assert_eq!(allocator("169.254.0.0/23").usage(0).size, 255);
    }

    #[test]
    fn allocates_lowest_addresses_in_name_order() {
        let mut vips = allocator("169.254.255.0/24");
        let outcome = vips.sync(&wanted(&["b", "a"]), 0);
        assert_eq!(
            outcome.allocated,
            vec![
                ("a".into(), ip("169.254.255.1")),
                ("b".into(), ip("169.254.255.2"))
            ]
        );
        assert!(outcome.changed());
        let again = vips.sync(&wanted(&["b", "a"]), 10);
        assert_eq!(again, SyncOutcome::default());
        assert!(!again.changed());
    }

    #[test]
    fn existing_assignments_are_kept_when_others_come_and_go() {
        let mut vips = allocator("169.254.255.0/24");
        vips.sync(&wanted(&["m", "z"]), 0);
        let outcome = vips.sync(&wanted(&["a", "z"]), 10);
        assert_eq!(outcome.released, vec![("m".into(), ip("169.254.255.1"))]);
        // "a" does not get m's freshly released VIP.
        assert_eq!(outcome.allocated, vec![("a".into(), ip("169.254.255.3"))]);
        assert_eq!(vips.assignments()["z"], ip("169.254.255.2"));
        assert_eq!(
            vips.state().released,
            BTreeMap::from([(ip("169.254.255.1"), released(10, "m"))])
        );
    }

    #[test]
    fn released_vips_are_reused_after_quarantine_lowest_first() {
        // A /29 has six hosts: .1 to .6.
        let mut vips = allocator("169.254.255.0/29");
        let all = ["a", "b", "c", "d", "e", "f"];
        vips.sync(&wanted(&all), 0);
        vips.sync(&wanted(&["a", "b", "c", "d"]), 100); // e (.5), f (.6) released at 100
        vips.sync(&wanted(&["b", "c", "d"]), 200); // a (.1) released at 200
        let outcome = vips.sync(&wanted(&["b", "c", "d", "x", "y"]), 200 + QUARANTINE);
        // .1, .5 and .6 are all out of quarantine: the lowest first.
        assert_eq!(
            outcome.allocated,
            vec![
                ("x".into(), ip("169.254.255.1")),
                ("y".into(), ip("169.254.255.5"))
            ]
        );
        assert_eq!(
            vips.state().released,
            BTreeMap::from([(ip("169.254.255.6"), released(100, "f"))])
        );
    }

    #[test]
    fn quarantined_vips_are_used_only_when_the_pool_is_otherwise_full() {
        let mut vips = allocator("169.254.255.0/29");
        vips.sync(&wanted(&["a", "b", "c", "d", "e", "f"]), 0);
        vips.sync(&wanted(&["a", "b", "c", "d", "f"]), 10); // e (.5) released at 10
        vips.sync(&wanted(&["b", "c", "d", "f"]), 20); // a (.1) released at 20
        vips.sync(&wanted(&["b", "c", "d"]), 30); // f (.6) released at 30
                                                  // Quarantine is not over for any: the longest released goes first.
        let outcome = vips.sync(&wanted(&["b", "c", "d", "x", "y"]), 40);
        assert_eq!(
            outcome.allocated,
            vec![
                ("x".into(), ip("169.254.255.5")),
                ("y".into(), ip("169.254.255.1"))
            ]
        );
        assert!(outcome.exhausted.is_empty());
        assert_eq!(
            outcome.warnings,
            [
                "VIP pool 169.254.255.0/29 is full: x gets 169.254.255.5, released only 30s ago \
                 (quarantine is 3600s); clients with a cached answer for the old name may reach x",
                "VIP pool 169.254.255.0/29 is full: y gets 169.254.255.1, released only 20s ago \
                 (quarantine is 3600s); clients with a cached answer for the old name may reach y",
            ]
        );
    }

    #[test]
    fn a_returning_hostname_gets_its_old_vip_back() {
        let mut vips = allocator("169.254.255.0/24");
        vips.sync(&wanted(&["a", "b", "c"]), 0);
        vips.sync(&wanted(&["c"]), 10); // a (.1) and b (.2) released
                                        // "0" sorts before "a" and would take .1 if a's old VIP were free for anyone.
        let outcome = vips.sync(&wanted(&["0", "b", "c"]), 20);
        assert_eq!(
            outcome.allocated,
            vec![
                ("b".into(), ip("169.254.255.2")),
                ("0".into(), ip("169.254.255.4"))
            ]
        );
        // Even after its quarantine, as long as no one else took it.
        let outcome = vips.sync(&wanted(&["0", "a", "b", "c"]), 20 + QUARANTINE);
        assert_eq!(outcome.allocated, vec![("a".into(), ip("169.254.255.1"))]);
        assert!(vips.state().released.is_empty());
    }

    #[test]
    fn exhaustion_fails_only_the_new_hostnames() {
        let mut vips = allocator("169.254.255.0/30"); // two hosts
        let outcome = vips.sync(&wanted(&["a", "b", "c", "d"]), 0);
        assert_eq!(outcome.allocated.len(), 2);
        assert_eq!(outcome.exhausted, vec!["c".to_string(), "d".to_string()]);
        assert_eq!(vips.assignments().len(), 2);
        // Room appears: the waiting hostname gets a VIP; the others keep theirs.
        let outcome = vips.sync(&wanted(&["b", "c", "d"]), 10);
        assert_eq!(outcome.allocated, vec![("c".into(), ip("169.254.255.1"))]);
        assert_eq!(outcome.exhausted, vec!["d".to_string()]);
        assert_eq!(vips.assignments()["b"], ip("169.254.255.2"));
    }

    #[test]
    fn never_hands_out_reserved_addresses() {
        let mut vips = allocator("169.254.0.0/16");
        let many: BTreeSet<String> = (0..70_000).map(|n| format!("s{n:05}")).collect();
        let outcome = vips.sync(&many, 0);
        let given: BTreeSet<Ipv4Addr> = vips.assignments().values().copied().collect();
        assert_eq!(given.len(), outcome.allocated.len());
        // 65536 - 256 (169.254.0.0/24) - 1 (169.254.169.254) - 1 (broadcast)
        assert_eq!(given.len(), 65_278);
        assert_eq!(outcome.exhausted.len(), 70_000 - 65_278);
        assert!(!given.contains(&ip("169.254.169.254")));
        assert!(!given.contains(&ip("169.254.255.255")));
        assert!(given.iter().all(|vip| vip.octets()[2] != 0));
        assert_eq!(given.first(), Some(&ip("169.254.1.0")));
    }

    #[test]
    fn pool_must_be_link_local_and_at_most_a_slash_16() {
        let check = |cidr: &str| check_pool(cidr.parse().unwrap());
        assert_eq!(check("169.254.255.0/24"), Ok(()));
        assert_eq!(check("169.254.0.0/16"), Ok(()));
        assert_eq!(check("169.254.1.0/30"), Ok(()));
        assert!(matches!(
            check("10.0.0.0/24"),
            Err(PoolError::NotLinkLocal(_))
        ));
        assert!(matches!(check("169.0.0.0/8"), Err(PoolError::TooLarge(_))));
        assert!(matches!(
            check("169.254.0.0/15"),
            Err(PoolError::TooLarge(_))
        ));
        assert!(matches!(
            check("169.255.0.0/24"),
            Err(PoolError::NotLinkLocal(_))
        ));
        assert!(matches!(
            check("169.254.0.0/24"),
            Err(PoolError::NoUsableAddress(_))
        ));
        assert!(matches!(
            check("169.254.169.254/32"),
            Err(PoolError::NoUsableAddress(_))
        ));
        let msg = check("10.0.0.0/24").unwrap_err().to_string();
        assert!(
            msg.contains("10.0.0.0/24") && msg.contains("169.254.0.0/16"),
            "{msg}"
        );
        assert!(
            VipAllocator::new("192.168.0.0/24".parse().unwrap(), 1, VipState::default()).is_err()
        );
    }

    #[test]
    fn a_restart_keeps_every_vip() {
        let mut before = allocator("169.254.255.0/24");
        before.sync(&wanted(&["a", "b", "c"]), 0);
        before.sync(&wanted(&["a", "c"]), 5);
        let state = before.state().clone();
        let mut after =
            VipAllocator::new("169.254.255.0/24".parse().unwrap(), QUARANTINE, state).unwrap();
        assert_eq!(after.state(), before.state());
        assert!(after.load_warnings().is_empty());
        let outcome = after.sync(&wanted(&["a", "c", "d"]), 6);
        assert_eq!(outcome.allocated, vec![("d".into(), ip("169.254.255.4"))]);
        assert_eq!(after.assignments()["a"], before.assignments()["a"]);
        assert_eq!(after.assignments()["c"], before.assignments()["c"]);
    }

    #[test]
    fn loaded_state_that_does_not_fit_the_pool_is_reassigned() {
        let state = VipState {
            assignments: BTreeMap::from([
                ("a".into(), ip("169.254.255.7")),
                ("b".into(), ip("169.254.255.7")),
                ("c".into(), ip("169.254.10.1")),
                ("d".into(), ip("169.254.255.0")),
            ]),
            released: BTreeMap::from([
                (ip("169.254.255.7"), released(1, "x")),
                (ip("169.254.9.9"), released(1, "y")),
            ]),
        };
        let mut vips =
            VipAllocator::new("169.254.255.0/24".parse().unwrap(), QUARANTINE, state).unwrap();
        assert_eq!(
            vips.state(),
            &VipState {
                assignments: BTreeMap::from([("a".into(), ip("169.254.255.7"))]),
                released: BTreeMap::new(),
            }
        );
        assert_eq!(
            vips.load_warnings(),
            [
                "VIP 169.254.255.7 of b is also assigned to another hostname; b gets a new VIP",
                "VIP 169.254.10.1 of c is not usable in the pool 169.254.255.0/24; c gets a new \
                 VIP",
                "VIP 169.254.255.0 of d is not usable in the pool 169.254.255.0/24; d gets a new \
                 VIP",
            ]
        );
        let outcome = vips.sync(&wanted(&["a", "b", "c", "d"]), 0);
        assert_eq!(outcome.allocated.len(), 3);
        assert_eq!(vips.assignments()["a"], ip("169.254.255.7"));
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut vips = allocator("169.254.255.0/24");
        vips.sync(&wanted(&["a", "b"]), 0);
        vips.sync(&wanted(&["b"]), 7);
        let json = serde_json::to_string(vips.state()).unwrap();
        assert_eq!(
            json,
            r#"{"assignments":{"b":"169.254.255.2"},"released":{"169.254.255.1":{"at":7,"hostname":"a"}}}"#
        );
        let back: VipState = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, vips.state());
    }
}
