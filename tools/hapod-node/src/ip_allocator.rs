//! Pod IP allocation: every pod gets its own address so that pods running as processes on one
//! host can all bind the same ports. By default a loopback range (127.x.y.z). kube-apiserver
//! refuses loopback addresses as EndpointSlice endpoints, so a test that needs a Service's
//! endpoints runs the node in a network namespace of its own whose `lo` carries another range;
//! [`PodCidr::check_confined`] makes sure such addresses can never reach a real network.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Mutex;

/// A pod range that does not parse (`--pod-cidr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodCidrError {
    #[error("{0}: expected ADDRESS/PREFIX")]
    Malformed(String),
    #[error("{input}: {error}")]
    BadAddress {
        input: String,
        error: std::net::AddrParseError,
    },
    #[error("{input}: {error}")]
    BadPrefixNumber {
        input: String,
        error: std::num::ParseIntError,
    },
    #[error("prefix /{0} must be between /8 and /30")]
    PrefixOutOfRange(u8),
}

/// A pod range whose addresses could reach a real network (see [`PodCidr::check_confined`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfinementError {
    #[error("reading /proc/self/net/dev: {0}")]
    ReadInterfaces(std::io::Error),
    #[error(
        "pod range {range} is not loopback and this network namespace has interfaces \
         besides lo ({interfaces}): run the node in a private namespace (`unshare --net`) with \
         the range on lo"
    )]
    OtherInterfaces { range: PodCidr, interfaces: String },
    #[error("pod range {range} is not local here ({probe}: {error}): add it to lo first")]
    NotLocal {
        range: PodCidr,
        probe: Ipv4Addr,
        error: std::io::Error,
    },
}

/// An IPv4 pod range: inside 127.0.0.0/8, or any range confined to a private network
/// namespace (see [`PodCidr::check_confined`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    base: u32,
    prefix: u8,
}

impl PodCidr {
    /// 127.10.0.0/16, the default pod range.
    pub const DEFAULT: Self = Self {
        base: u32::from_be_bytes([127, 10, 0, 0]),
        prefix: 16,
    };

    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, PodCidrError> {
        if !(8..=30).contains(&prefix) {
            return Err(PodCidrError::PrefixOutOfRange(prefix));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: u32::from(address) & mask,
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    fn is_loopback(&self) -> bool {
        self.prefix >= 8 && Ipv4Addr::from(self.base).is_loopback()
    }

    /// The network rule: pod traffic stays on this machine's loopback. A loopback range always
    /// does; any other range only where this process's network namespace has no interface but
    /// `lo` (so no packet can leave it) and the range is local there (assigned to `lo`).
    pub fn check_confined(&self) -> Result<(), ConfinementError> {
        if self.is_loopback() {
            return Ok(());
        }
        // /proc/self/net/dev lists the interfaces of the caller's own network namespace.
        let dev = std::fs::read_to_string("/proc/self/net/dev")
            .map_err(ConfinementError::ReadInterfaces)?;
        let others: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next().map(str::trim))
            .filter(|name| *name != "lo")
            .collect();
        if !others.is_empty() {
            return Err(ConfinementError::OtherInterfaces {
                range: *self,
                interfaces: others.join(", "),
            });
        }
        let probe = Ipv4Addr::from(self.base + 1);
        std::net::UdpSocket::bind((probe, 0))
            .map(drop)
            .map_err(|error| ConfinementError::NotLocal {
                range: *self,
                probe,
                error,
            })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.base
    }
}

impl std::fmt::Display for PodCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl FromStr for PodCidr {
    type Err = PodCidrError;
    fn from_str(s: &str) -> Result<Self, PodCidrError> {
        let (address, prefix) = s
            .split_once('/')
            .ok_or_else(|| PodCidrError::Malformed(s.to_string()))?;
        let address: Ipv4Addr = address.parse().map_err(|error| PodCidrError::BadAddress {
            input: s.to_string(),
            error,
        })?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|error| PodCidrError::BadPrefixNumber {
                input: s.to_string(),
                error,
            })?;
        Self::new(address, prefix)
    }
}

/// Hands out unique addresses of a range; freed addresses are reused only after the rest of
/// the range has been used, so that a just-deleted pod's address is not immediately given to a
/// new pod (late packets and stale EndpointSlices would reach the wrong process).
#[derive(Debug)]
pub struct IpAllocator {
    cidr: PodCidr,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    used: HashSet<u32>,
    next: u32,
}

impl IpAllocator {
    pub fn new(cidr: PodCidr) -> Self {
        Self::starting_at(cidr, 1)
    }

    /// Starts handing out addresses at `offset` into the range (wrapping).
    pub fn starting_at(cidr: PodCidr, offset: u32) -> Self {
        Self {
            cidr,
            inner: Mutex::new(Inner {
                used: HashSet::new(),
                next: offset % cidr.size(),
            }),
        }
    }

    /// Two node processes on one machine (say, two test runs side by side) using the same range
    /// rarely hand out the same address when each starts at a place drawn from its process id.
    pub fn for_this_process(cidr: PodCidr) -> Self {
        let spread = std::process::id().wrapping_mul(2_654_435_761);
        Self::starting_at(cidr, spread)
    }

    /// Reserves `preferred` if it is inside the range and free (a pod that already has an
    /// address keeps it across node restarts), else the next free address.
    pub fn allocate(&self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = preferred
            && self.cidr.contains(ip)
            && Self::usable(u32::from(ip))
            && inner.used.insert(u32::from(ip))
        {
            return Some(ip);
        }
        let size = self.cidr.size();
        for _ in 0..size {
            let offset = inner.next % size;
            inner.next = inner.next.wrapping_add(1);
            let candidate = self.cidr.base + offset;
            if Self::usable(candidate) && inner.used.insert(candidate) {
                return Some(Ipv4Addr::from(candidate));
            }
        }
        None
    }

    /// Addresses ending in .0 or .255 are skipped: some tools treat them as network or
    /// broadcast addresses even on loopback.
    fn usable(ip: u32) -> bool {
        !matches!(ip & 0xff, 0 | 255)
    }

    pub fn release(&self, ip: Ipv4Addr) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.used.remove(&u32::from(ip));
    }

    pub fn in_use(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        assert!("127.10.0.0/16".parse::<PodCidr>().is_ok());
        assert!("127.10.0.0/31".parse::<PodCidr>().is_err());
        assert_eq!(
            "10.244.7.9/16".parse::<PodCidr>().unwrap().to_string(),
            "10.244.0.0/16"
        );
        assert!("127.10.0.0".parse::<PodCidr>().is_err());
        assert_eq!("127.10.0.0/16".parse::<PodCidr>(), Ok(PodCidr::DEFAULT));
    }

    #[test]
    fn only_loopback_ranges_are_confined_outside_a_private_namespace() {
        assert!(matches!(PodCidr::DEFAULT.check_confined(), Ok(())));
        let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap();
        let only_lo = dev
            .lines()
            .skip(2)
            .all(|l| l.trim_start().starts_with("lo:"));
        let private: PodCidr = "10.244.0.0/16".parse().unwrap();
        if only_lo {
            // Inside the test namespace of `cargo xtask test`: accepted only where it is local.
            let local = std::net::UdpSocket::bind((Ipv4Addr::new(10, 244, 0, 1), 0)).is_ok();
            assert_eq!(private.check_confined().is_ok(), local);
        } else {
            let err = private.check_confined().unwrap_err().to_string();
            assert!(err.contains("interfaces besides lo"), "{err}");
        }
    }

    #[test]
    fn unique_addresses_inside_the_range() {
        let allocator = IpAllocator::new("127.10.0.0/16".parse().unwrap());
        let mut seen = HashSet::new();
        for _ in 0..600 {
            let ip = allocator.allocate(None).unwrap();
            assert_eq!(ip.octets()[..2], [127, 10]);
            assert!(!matches!(ip.octets()[3], 0 | 255), "{ip}");
            assert!(seen.insert(ip), "duplicate {ip}");
        }
        assert_eq!(allocator.in_use(), 600);
    }

    #[test]
    fn starting_offset_wraps() {
        let allocator = IpAllocator::starting_at("127.20.0.0/29".parse().unwrap(), 6 + 8 * 100);
        let order: Vec<_> = std::iter::from_fn(|| allocator.allocate(None))
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(order, [6, 7, 1, 2, 3, 4, 5]);
        let allocator = IpAllocator::for_this_process(PodCidr::DEFAULT);
        assert!(PodCidr::DEFAULT.contains(allocator.allocate(None).unwrap()));
    }

    #[test]
    fn release_and_preferred() {
        let allocator = IpAllocator::new("127.20.0.0/29".parse().unwrap());
        let all: Vec<_> = std::iter::from_fn(|| allocator.allocate(None)).collect();
        // .0 is skipped; .1 to .7 are usable.
        assert_eq!(all.len(), 7);
        assert_eq!(allocator.allocate(None), None);
        allocator.release(all[2]);
        assert_eq!(allocator.allocate(None), Some(all[2]));
        allocator.release(all[4]);
        assert_eq!(allocator.allocate(Some(all[4])), Some(all[4]));
        // Preferred but taken or outside the range: falls back to a free one (none here).
        assert_eq!(allocator.allocate(Some(all[0])), None);
        assert_eq!(allocator.allocate(Some(Ipv4Addr::new(127, 99, 0, 1))), None);
    }
}
