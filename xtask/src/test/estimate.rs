//! How long each step of `cargo xtask test` should take on this machine: the time it took
//! in the last run here (kept in cargo's target folder), else what a first run took on a
//! fresh 2-core machine. Printed up front and with each step, so that a first run (which
//! builds the control plane, Helm and cargo-deny) is not mistaken for a hang.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Measured on a fresh 2-core machine (seconds; a clean clone on a machine without any cache,
/// 38 minutes in all): the static checks were 353 s with cargo-deny's install, split here
/// about evenly; the control plane; Helm; the real node's runtime (with its Debian packages);
/// and the other steps cold.
const STATIC_CHECKS: u64 = 160;
const CARGO_DENY_INSTALL: u64 = 200;
const CONTROL_PLANE_BUILD: u64 = 500;
const HELM_BUILD: u64 = 180;
const NODE_RUNTIME_BUILD: u64 = 100;
const CACHED: u64 = 5;
const COLD: [(&str, u64); 8] = [
    ("static", STATIC_CHECKS),
    ("build", 270),
    ("unit", 140),
    ("deploy", 40),
    ("e2e", 270),
    ("realnode", 100),
    ("bench", 130),
    ("chaos", 160),
];

/// What this machine has already, which decides the first steps' estimates.
pub struct Machine {
    pub cargo_deny_installed: bool,
    pub control_plane_cached: bool,
    pub helm_cached: bool,
    pub node_runtime_cached: bool,
}

/// Step durations of the last run on this machine.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    seconds: BTreeMap<String, u64>,
}

impl Timings {
    fn file() -> Option<PathBuf> {
        hapod_testkit::target_dir()
            .ok()
            .map(|d| d.join("xtask-test-timings.json"))
    }

    /// The recorded timings, or none when there is no readable record.
    pub fn load() -> Self {
        Self::file()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Records that `step` passed in `took` (a failed step's time says little).
    pub fn record(step: &str, took: Duration) {
        let mut timings = Self::load();
        timings.seconds.insert(step.into(), took.as_secs());
        if let Some(file) = Self::file() {
            // Only an estimate is lost if this fails.
            let _ = serde_json::to_vec_pretty(&timings).map(|json| std::fs::write(file, json));
        }
    }

    /// Estimated seconds for `step` and why.
    pub fn estimate(&self, step: &str, machine: &Machine) -> (u64, String) {
        let last = self.seconds.get(step).copied();
        match step {
            "static" if !machine.cargo_deny_installed => (
                last.unwrap_or(cold(step)) + CARGO_DENY_INSTALL,
                "cargo-deny is installed first".into(),
            ),
            "controlplane" => {
                let missing: Vec<(&str, u64)> = [
                    (
                        machine.control_plane_cached,
                        "the control plane",
                        CONTROL_PLANE_BUILD,
                    ),
                    (machine.helm_cached, "Helm", HELM_BUILD),
                    (
                        machine.node_runtime_cached,
                        "the real node's runtime",
                        NODE_RUNTIME_BUILD,
                    ),
                ]
                .into_iter()
                .filter(|(cached, _, _)| !cached)
                .map(|(_, what, seconds)| (what, seconds))
                .collect();
                if missing.is_empty() {
                    return (CACHED, "cached".into());
                }
                let names: Vec<&str> = missing.iter().map(|(what, _)| *what).collect();
                (
                    missing.iter().map(|(_, seconds)| seconds).sum(),
                    format!("built first: {}", names.join(", ")),
                )
            }
            _ => match last {
                Some(seconds) => (seconds, "as in the last run here".into()),
                None => (cold(step), "first run here".into()),
            },
        }
    }
}

fn cold(step: &str) -> u64 {
    COLD.iter()
        .find(|(name, _)| *name == step)
        .map_or(0, |(_, seconds)| *seconds)
}

/// `m min s s` for a human.
pub fn human(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        _ => format!("{} min {:02} s", seconds / 60, seconds % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cached: bool) -> Machine {
        Machine {
            cargo_deny_installed: cached,
            control_plane_cached: cached,
            helm_cached: cached,
            node_runtime_cached: cached,
        }
    }

    #[test]
    fn a_fresh_machine_is_estimated_with_the_cold_builds() {
        let timings = Timings::default();
        let fresh = machine(false);
        assert_eq!(
            timings.estimate("controlplane", &fresh),
            (
                CONTROL_PLANE_BUILD + HELM_BUILD + NODE_RUNTIME_BUILD,
                "built first: the control plane, Helm, the real node's runtime".into()
            )
        );
        assert_eq!(
            timings.estimate("static", &fresh).0,
            STATIC_CHECKS + CARGO_DENY_INSTALL
        );
        assert_eq!(timings.estimate("build", &fresh).0, 270);
    }

    #[test]
    fn the_last_run_here_wins_over_the_cold_numbers() {
        let mut timings = Timings::default();
        timings.seconds.insert("build".into(), 42);
        timings.seconds.insert("static".into(), 7);
        let warm = machine(true);
        assert_eq!(
            timings.estimate("build", &warm),
            (42, "as in the last run here".into())
        );
        assert_eq!(timings.estimate("static", &warm).0, 7);
        assert_eq!(timings.estimate("controlplane", &warm).0, CACHED);
        // cargo-deny missing again: its install is added to the recorded checks
        assert_eq!(
            timings.estimate("static", &machine(false)).0,
            7 + CARGO_DENY_INSTALL
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(59), "59 s");
        assert_eq!(human(61), "1 min 01 s");
    }
}
