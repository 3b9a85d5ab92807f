//! Machine description and per-process resource readings from /proc.

use std::path::Path;
use std::process::Command;

/// What the benchmark ran on, written next to every result.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub commit: String,
    pub dirty: bool,
}

impl Machine {
    pub fn detect(repo: &Path) -> Machine {
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .current_dir(repo)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let commit = git(&["rev-parse", "HEAD"]);
        // Only source changes count as dirty: results written by this run do not.
        let dirty = !git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "crates",
            "tools",
            "deploy",
        ])
        .is_empty();
        Machine {
            nproc,
            cpu_model,
            mem_total_mib,
            kernel,
            commit,
            dirty,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "commit `{}`{}; {} CPUs ({}), {} MiB memory, Linux {}",
            self.commit,
            if self.dirty {
                " (with uncommitted changes in crates/tools/deploy)"
            } else {
                ""
            },
            self.nproc,
            self.cpu_model,
            self.mem_total_mib,
            self.kernel
        )
    }
}

/// Resident set size and cumulative CPU time of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// user + system CPU time in seconds
    pub cpu_seconds: f64,
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture this project runs on; `getconf` confirms it
    // where available.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reads VmRSS from /proc/PID/status and utime+stime from /proc/PID/stat.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_kib,
        cpu_seconds: (utime + stime) / clock_ticks(),
    })
}

/// Datagrams dropped for a full socket receive buffer (`Udp: RcvbufErrors`), summed over
/// every socket of the network namespace that process `pid` is in.
pub fn udp_receive_buffer_drops(pid: u32) -> Option<u64> {
    snmp_udp_field(
        &std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).ok()?,
        "RcvbufErrors",
    )
}

/// Datagrams dropped by the UDP sockets that process `pid` holds (the `drops` column of
/// /proc/PID/net/udp and udp6, for the socket inodes among its file descriptors): tells the
/// controller's losses from its agents'.
pub fn udp_socket_drops(pid: u32) -> Option<u64> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut drops = 0;
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        drops += udp_table_drops(&text, &inodes);
    }
    Some(drops)
}

/// Sum of the `drops` column of a /proc/net/udp table over the sockets with these inodes.
fn udp_table_drops(table: &str, inodes: &[u64]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let drops: u64 = fields.last()?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
}

/// A field of the `Udp:` table of /proc/net/snmp (a header line, then a line of values).
fn snmp_udp_field(snmp: &str, field: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter_map(|l| l.strip_prefix("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Finds the PID of a local process whose environment has `POD_NAME=<pod>` or whose command
/// line has `--pod-name <pod>` / `--pod-name=<pod>` and whose command line mentions `binary`.
pub fn find_pid(binary: &str, pod: &str) -> Option<u32> {
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with(binary)) {
            continue;
        }
        let by_arg = args.windows(2).any(|w| w[0] == "--pod-name" && w[1] == pod)
            || args.iter().any(|a| a == &format!("--pod-name={pod}"));
        let by_env = std::fs::read(entry.path().join("environ"))
            .ok()
            .is_some_and(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv == format!("POD_NAME={pod}").as_bytes())
            });
        if by_arg || by_env {
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = proc_sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_seconds >= 0.0);
    }

    #[test]
    fn reads_a_udp_counter_by_name() {
        let snmp = "Tcp: RtoAlgorithm RtoMin\nTcp: 1 200\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 1000 2 37 990 35 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    UdpLite: 0 0 0 0 9\n";
        assert_eq!(snmp_udp_field(snmp, "RcvbufErrors"), Some(35));
        assert_eq!(snmp_udp_field(snmp, "InDatagrams"), Some(1000));
        assert_eq!(snmp_udp_field(snmp, "Missing"), None);
        assert!(udp_receive_buffer_drops(std::process::id()).is_some());
    }

    #[test]
    fn udp_table_drops_sum_the_sockets_asked_for() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20 12: 00000000:2711 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
            \x20 13: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 5\n\
            \x20 14: 0100007F:9C41 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9999 2 0000000000000000 100\n";
        assert_eq!(udp_table_drops(table, &[4242, 4243]), 22);
        assert_eq!(udp_table_drops(table, &[1]), 0);
        // this process holds no UDP socket, and its tables are readable
        assert_eq!(udp_socket_drops(std::process::id()), Some(0));
    }

    #[test]
    fn machine_has_cpus() {
        let m = Machine::detect(Path::new("."));
        assert!(m.nproc >= 1);
        assert!(!m.describe().is_empty());
    }
}
