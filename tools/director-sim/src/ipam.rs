//! Instance IP addresses: one pool per simulated director, lowest free address first.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Offset of the first assignable address from the network address. Below it sit the gateway
/// (.1) and the director (.6) in bosh-lite's layout, and room for the lab's own addresses.
const FIRST_OFFSET: u32 = 10;
/// Last octets never handed out anywhere in the pool, even inside a wider network: they look
/// like a network, gateway, director or broadcast address to anyone reading the lab.
const RESERVED_LAST_OCTETS: [u8; 4] = [0, 1, 6, 255];

#[derive(Debug, Clone)]
pub struct IpPool {
    network: Ipv4Net,
    taken: BTreeSet<Ipv4Addr>,
}

impl IpPool {
    pub fn new(network: Ipv4Net) -> anyhow::Result<IpPool> {
        let pool = IpPool {
            network: network.trunc(),
            taken: BTreeSet::new(),
        };
        if pool.candidates().next().is_none() {
            anyhow::bail!(
                "--instance-network {network} has no assignable address (they start at .{FIRST_OFFSET})"
            );
        }
        Ok(pool)
    }

    fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = u32::from(self.network.network()) + FIRST_OFFSET;
        let broadcast = u32::from(self.network.broadcast());
        (first..broadcast)
            .map(Ipv4Addr::from)
            .filter(|ip| !RESERVED_LAST_OCTETS.contains(&ip.octets()[3]))
    }

    /// Takes the lowest free address, or `None` when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let ip = self.candidates().find(|ip| !self.taken.contains(ip))?;
        self.taken.insert(ip);
        Some(ip)
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.taken.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str) -> IpPool {
        IpPool::new(cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn starts_at_ten_and_reuses_the_lowest_freed_address() {
        let mut pool = pool("10.244.0.0/24");
        let first: Vec<Ipv4Addr> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(
            first,
            ["10.244.0.10", "10.244.0.11", "10.244.0.12"].map(|s| s.parse::<Ipv4Addr>().unwrap())
        );
        pool.release("10.244.0.11".parse().unwrap());
        assert_eq!(pool.allocate(), Some("10.244.0.11".parse().unwrap()));
        assert_eq!(pool.allocate(), Some("10.244.0.13".parse().unwrap()));
    }

    #[test]
    fn never_hands_out_broadcast_or_reserved_octets_and_reports_exhaustion() {
        let mut pool = pool("10.0.0.0/23");
        let all: Vec<Ipv4Addr> = std::iter::from_fn(|| pool.allocate()).collect();
        assert!(!all.contains(&"10.0.1.255".parse().unwrap()));
        for reserved in ["10.0.1.0", "10.0.1.1", "10.0.1.6", "10.0.0.255"] {
            assert!(!all.contains(&reserved.parse().unwrap()), "{reserved}");
        }
        assert!(all.contains(&"10.0.1.2".parse().unwrap()));
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn rejects_networks_too_small_to_reach_dot_ten() {
        assert!(IpPool::new("10.0.0.0/29".parse().unwrap()).is_err());
    }
}
