//! A private network namespace for the end-to-end tests, the demo and the benchmark.
//!
//! kube-apiserver refuses loopback addresses (127.0.0.0/8, ::1) as EndpointSlice endpoints, so
//! pods with 127.x.y.z IPs can never be listed by a Service. The testbed therefore runs in a
//! network namespace that it creates itself: its loopback interface carries [`POD_CIDRS`] as
//! well, pods take their IPs from them, the EndpointSlice controller accepts them, and every
//! packet to them stays on that namespace's `lo` (it has no other interface and no route out).
//! Anything that needs the package registries (Go and cargo builds) runs before entering.

use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};

/// Pod IPs inside the private namespace, one range per process node of the testbed (the
/// first node's, then a second node's). Local to its `lo`, reachable from nowhere else.
pub const POD_CIDRS: [&str; 2] = ["10.244.0.0/16", "10.245.0.0/16"];
/// The first node's pod IPs.
pub const POD_CIDR: &str = POD_CIDRS[0];
/// The namespace's own address in each of [`POD_CIDRS`] (what makes the range local on `lo`).
const LO_ADDRESSES: [&str; 2] = ["10.244.0.1/16", "10.245.0.1/16"];
/// The namespace's own address that a real node's pods reach the API server and the node at
/// (the first of its `lo` addresses).
pub const API_ADDRESS: &str = "10.244.0.1";
/// Pod IPs of the real node: on its CNI bridge, not on `lo` (a range on `lo` is local to
/// the namespace, so packets to it would never reach the bridge).
pub const REAL_NODE_POD_CIDR: &str = "10.246.0.0/16";
/// Set in the environment of the process re-run inside the namespace.
const MARKER: &str = "HAPOD_PRIVATE_NETNS";

/// Set once [`enter_here`] moved this process into a fresh namespace.
static ENTERED: AtomicBool = AtomicBool::new(false);

/// Whether this process runs inside the namespace [`reexec_inside`] or [`enter_here`] made.
pub fn inside() -> bool {
    ENTERED.load(Ordering::Relaxed) || std::env::var_os(MARKER).is_some()
}

/// Moves this process, which must still be single-threaded (the namespace of threads that
/// already exist does not change), into a fresh network namespace set up as in
/// [`reexec_inside`]. Sockets opened before keep their namespace: a listener bound here
/// first stays reachable from the outside (`cargo xtask up` serves the API that way).
pub fn enter_here() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unshare(CLONE_NEWNET): creating the test network namespace needs root")?;
    let lo_up = ["link", "set", "lo", "up"];
    let addresses = LO_ADDRESSES.map(|address| ["addr", "add", address, "dev", "lo"]);
    for args in std::iter::once(&lo_up[..]).chain(addresses.iter().map(|a| &a[..])) {
        let status = Command::new("ip")
            .args(args)
            .status()
            .context("running ip (iproute2)")?;
        ensure!(status.success(), "ip {} failed ({status})", args.join(" "));
    }
    ENTERED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Runs this same command again inside a fresh network namespace with `lo` up and
/// [`POD_CIDRS`] on it, and exits with its status. Needs root (the project's machines and CI
/// run as root) and `unshare`/`ip` (util-linux, iproute2).
pub fn reexec_inside() -> Result<Infallible> {
    if inside() {
        bail!("already inside the private network namespace");
    }
    let exe = std::env::current_exe().context("locating the running binary")?;
    // The running binary (`cargo xtask`) may have been rebuilt by `cargo build --workspace`
    // meanwhile: run the new one.
    let exe = exe
        .to_str()
        .and_then(|path| path.strip_suffix(" (deleted)"))
        .map_or(exe.clone(), Into::into);
    let addresses: String = LO_ADDRESSES
        .iter()
        .map(|address| format!(" && ip addr add {address} dev lo"))
        .collect();
    let setup = format!("ip link set lo up{addresses} && exec \"$0\" \"$@\"");
    let error = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &setup])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(MARKER, "1")
        .exec();
    Err(error).context("running unshare --net (util-linux) to create the test network namespace")
}

/// A network partition between two addresses of the private namespace: every packet from one
/// to the other, either way, is dropped at the routing decision (policy rules ahead of the
/// local table; iproute2 only, no netfilter). Senders get `EINVAL`, as from a blackhole
/// route. Healed by [`Partition::heal`] or when dropped, so that a failed check never leaves
/// the testbed cut.
pub struct Partition {
    rules: Vec<String>,
    healed: bool,
}

/// Preference of the partition rules, ahead of the local table's.
const PARTITION_PREF: u32 = 10;
/// Where the local table's rule moves to (it is at 0, where nothing can precede it).
const LOCAL_PREF: u32 = 100;

impl Partition {
    /// Cuts `a` from `b`. Both must be addresses of [`POD_CIDRS`] (process nodes), inside the
    /// namespace.
    pub fn cut(a: std::net::Ipv4Addr, b: std::net::Ipv4Addr) -> Result<Partition> {
        if !inside() {
            bail!("partitions are made only inside the private network namespace");
        }
        for ip in [a, b] {
            if !is_process_node_address(ip) {
                bail!(
                    "{ip} is not a process node's pod address ({})",
                    POD_CIDRS.join(", ")
                );
            }
        }
        move_local_rule()?;
        let mut partition = Partition {
            rules: Vec::new(),
            healed: false,
        };
        for (from, to) in [(a, b), (b, a)] {
            let rule = format!("pref {PARTITION_PREF} from {from} to {to} blackhole");
            ip_rule("add", &rule)?;
            partition.rules.push(rule);
        }
        Ok(partition)
    }

    pub fn heal(mut self) -> Result<()> {
        self.healed = true;
        self.rules.iter().try_for_each(|rule| ip_rule("del", rule))
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.healed {
            for rule in &self.rules {
                let _ = ip_rule("del", rule);
            }
        }
    }
}

/// Whether `ip` is a pod IP of the testbed's nodes: one of [`POD_CIDRS`] (process nodes) or
/// [`REAL_NODE_POD_CIDR`].
pub fn is_pod_address(ip: std::net::Ipv4Addr) -> bool {
    is_process_node_address(ip) || in_cidr(ip, REAL_NODE_POD_CIDR)
}

/// Whether `ip` is a Service's ClusterIP: kube-proxy forwards it to a pod IP on the real
/// node; without kube-proxy (the process node) there is no route to it in the namespace.
pub fn is_service_address(ip: std::net::Ipv4Addr) -> bool {
    in_cidr(ip, crate::controlplane::SERVICE_CLUSTER_IP_RANGE)
}

/// Whether `ip` is in one of [`POD_CIDRS`]: on `lo`, where partitions cut by policy routing.
fn is_process_node_address(ip: std::net::Ipv4Addr) -> bool {
    POD_CIDRS.iter().any(|cidr| in_cidr(ip, cidr))
}

fn in_cidr(ip: std::net::Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Moves the local table's rule from preference 0 to [`LOCAL_PREF`], once (partitions may be
/// cut concurrently: one at a time looks and moves).
fn move_local_rule() -> Result<()> {
    static MOVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MOVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let shown = Command::new("ip")
        .args(["rule", "show", "pref", "0"])
        .output()
        .context("running ip rule show (iproute2)")?;
    if String::from_utf8_lossy(&shown.stdout).contains("lookup local") {
        ip_rule("add", &format!("pref {LOCAL_PREF} lookup local"))?;
        ip_rule("del", "pref 0 lookup local")?;
    }
    Ok(())
}

fn ip_rule(verb: &str, rule: &str) -> Result<()> {
    let status = Command::new("ip")
        .arg("rule")
        .arg(verb)
        .args(rule.split(' '))
        .status()
        .with_context(|| format!("running ip rule {verb} {rule}"))?;
    if !status.success() {
        bail!("ip rule {verb} {rule}: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_process_node_pod_addresses_can_be_partitioned() {
        assert!(is_process_node_address("10.244.3.7".parse().unwrap()));
        assert!(is_process_node_address("10.245.0.9".parse().unwrap()));
        assert!(!is_process_node_address("10.246.0.9".parse().unwrap()));
        assert!(is_pod_address("10.246.0.9".parse().unwrap()));
        assert!(!is_pod_address("10.247.0.1".parse().unwrap()));
        assert!(!is_pod_address("127.0.0.1".parse().unwrap()));
        assert!(is_service_address("10.96.0.10".parse().unwrap()));
        assert!(!is_service_address("10.97.0.10".parse().unwrap()));
    }
}
