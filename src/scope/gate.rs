//! The agent's side of the scope: which of the names it answers its VM's Envoy holds. The DNS
//! server answers a name in scope at once; a name out of scope is first put into the scope at
//! the pilots (`admission`), and answered once the Envoy has it.
//!
//! A [`Slot`] per hostname is shared with the zone the DNS server answers from, so the hot
//! path reads an atomic of the entry it has already found, with no other lookup. It marks the
//! slot asked (a relaxed store, only when not already marked); a sweep every so often turns
//! the marks into times, and takes out of the scope what has not been asked for `idle`. Pure:
//! the clock is passed in.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One hostname the agent answers.
#[derive(Debug)]
pub struct Slot {
    /// Shared with the gate's keys: at 10,000 names every copy is a quarter of a megabyte.
    hostname: Arc<str>,
    in_scope: AtomicBool,
    asked: AtomicBool,
}

impl Slot {
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Whether the VM's Envoy holds this service: answer at once.
    pub fn in_scope(&self) -> bool {
        self.in_scope.load(Ordering::Acquire)
    }

    /// A query named it: it stays in scope for another `idle`.
    pub fn mark_asked(&self) {
        // Only a store when the mark is not there yet: most queries read a shared line.
        if !self.asked.load(Ordering::Relaxed) {
            self.asked.store(true, Ordering::Relaxed);
        }
    }
}

/// Every slot, and when each hostname in scope was last asked for.
#[derive(Debug)]
pub struct Gate {
    /// `Some`: no scoping (an agent that names no instance): every name shares this one slot,
    /// in scope for good, so answering without a scope costs no memory per name.
    open: Option<Arc<Slot>>,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    slots: HashMap<Arc<str>, Arc<Slot>>,
    /// Hostname in scope → the time (seconds) it was last seen asked for.
    last_asked: HashMap<Arc<str>, u64>,
}

impl Gate {
    /// A gate that scopes: every hostname out of scope until admitted.
    pub fn scoped() -> Self {
        Gate {
            open: None,
            state: Mutex::default(),
        }
    }

    /// No scoping: every name is answered at once (the Envoy gets the whole mesh).
    pub fn open() -> Self {
        Gate {
            open: Some(Arc::new(Slot {
                hostname: Arc::from(""),
                in_scope: AtomicBool::new(true),
                asked: AtomicBool::new(false),
            })),
            state: Mutex::default(),
        }
    }

    pub fn is_scoped(&self) -> bool {
        self.open.is_none()
    }

    /// The slot of `hostname`, made (out of scope) when new; the one shared slot of an open
    /// gate.
    pub fn slot(&self, hostname: &str) -> Arc<Slot> {
        if let Some(open) = &self.open {
            return open.clone();
        }
        let mut state = self.lock();
        if let Some(slot) = state.slots.get(hostname) {
            return slot.clone();
        }
        let hostname: Arc<str> = Arc::from(hostname);
        let slot = Arc::new(Slot {
            hostname: hostname.clone(),
            in_scope: AtomicBool::new(false),
            asked: AtomicBool::new(false),
        });
        state.slots.insert(hostname, slot.clone());
        slot
    }

    /// Puts `hostnames` in scope, asked at `now`: after the pilots took them, or at start
    /// from the scope saved before a restart. True when any was not in scope.
    pub fn admit<'a>(&self, hostnames: impl IntoIterator<Item = &'a str>, now: u64) -> bool {
        let mut added = false;
        for hostname in hostnames.into_iter().filter(|_| self.is_scoped()) {
            let slot = self.slot(hostname);
            added |= !slot.in_scope.swap(true, Ordering::AcqRel);
            self.lock().last_asked.insert(slot.hostname.clone(), now);
        }
        added
    }

    /// The hostnames in scope, sorted.
    pub fn in_scope(&self) -> Vec<String> {
        let state = self.lock();
        let hosts: BTreeSet<&str> = state.last_asked.keys().map(|h| &**h).collect();
        hosts.into_iter().map(str::to_string).collect()
    }

    /// Turns the marks of queries into times, and takes out of the scope the hostnames not
    /// asked for during `idle` (seconds) before `now`: those, sorted. Also forgets the slots
    /// no zone holds any more.
    pub fn sweep(&self, now: u64, idle: u64) -> Vec<String> {
        let mut state = self.lock();
        let GateState { slots, last_asked } = &mut *state;
        let mut expired = Vec::new();
        last_asked.retain(|hostname, last| {
            let Some(slot) = slots.get(hostname) else {
                return false;
            };
            if slot.asked.swap(false, Ordering::Relaxed) {
                *last = now;
            }
            let keep = now.saturating_sub(*last) < idle;
            if !keep {
                slot.in_scope.store(false, Ordering::Release);
                expired.push(hostname.to_string());
            }
            keep
        });
        slots.retain(|hostname, slot| {
            Arc::strong_count(slot) > 1 || last_asked.contains_key(hostname)
        });
        expired.sort();
        expired
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    #[test]
    fn a_name_is_out_of_scope_until_admitted_and_leaves_after_idle_without_a_query() {
        let gate = Gate::scoped();
        let web = gate.slot("web.boshy");
        let db = gate.slot("db.boshy");
        assert!(!web.in_scope() && !db.in_scope());
        assert!(gate.admit(["web.boshy", "db.boshy"], 0));
        assert!(!gate.admit(["web.boshy"], 0), "already in scope");
        assert!(web.in_scope() && db.in_scope());
        assert_eq!(gate.in_scope(), ["db.boshy", "web.boshy"]);

        web.mark_asked();
        assert!(gate.sweep(HOUR, 2 * HOUR).is_empty());
        assert_eq!(
            gate.sweep(2 * HOUR, 2 * HOUR),
            ["db.boshy"],
            "never asked since 0"
        );
        assert!(!db.in_scope() && web.in_scope());
        assert_eq!(gate.sweep(3 * HOUR - 1, 2 * HOUR), Vec::<String>::new());
        assert_eq!(
            gate.sweep(3 * HOUR, 2 * HOUR),
            ["web.boshy"],
            "last asked at 1 h"
        );
        assert!(gate.in_scope().is_empty());
    }

    #[test]
    fn slots_no_zone_holds_are_forgotten_unless_in_scope_and_an_open_gate_admits_all() {
        let gate = Gate::scoped();
        let kept = gate.slot("kept.boshy");
        drop(gate.slot("dropped.boshy"));
        gate.admit(["restored.boshy"], 0);
        gate.sweep(1, HOUR);
        let state = gate.lock();
        let mut names: Vec<&str> = state.slots.keys().map(|h| &**h).collect();
        names.sort();
        assert_eq!(names, ["kept.boshy", "restored.boshy"]);
        drop(state);
        drop(kept);

        let open = Gate::open();
        assert!(open.slot("any.boshy").in_scope());
        assert!(!open.is_scoped());
    }
}
