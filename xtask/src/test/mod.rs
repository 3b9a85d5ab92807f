//! `cargo xtask test`: THE command CI runs (`.ci/run`).
//!
//! Steps, in order, each streaming its output; the first failure stops the run with a
//! non-zero exit and a summary:
//! 1. static checks: `cargo fmt --check`, `cargo clippy -D warnings`, `cargo doc` with
//!    rustdoc warnings denied, and `cargo deny check licenses bans sources` against `deny.toml`
//!    (cargo-deny is installed with `cargo install` when missing),
//! 2. build the control plane (cached outside the repository; the first build takes
//!    8–25 minutes on 2 cores and prints Go's progress),
//! 3. `cargo build --workspace` (every binary, the e2e crate included),
//! 4. `cargo test --workspace --exclude hapod-e2e` (unit and integration tests),
//! 5. `cargo xtask deploy check` (renders, invariants, server-side validation, RBAC proof),
//! 6. the end-to-end tests (`cargo test -p hapod-e2e`) against the real control plane,
//! 7. the real-node subset of them (`HAPOD_E2E_NODE=real`: the e2e crate runs the scenarios it
//!    lists for the real node and ignores the others) on a kubelet with containerd, runc, CNI
//!    and kube-proxy,
//! 8. a short benchmark run (`cargo xtask bench --quick`, on the debug build of step 3),
//! 9. a short chaos run (`cargo xtask chaos --quick`: 300 randomized failovers over 20
//!    groups with controller faults, every history checker; its seed is printed).
//!
//! Before the first step it prints an estimate of each step on this machine
//! (the `estimate` module); each step starts with a progress line that repeats its estimate.

mod estimate;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use estimate::{Machine, Timings, human};
use hapod_testkit::{target_dir, workspace_root};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct Cli {
    /// Skip a step (repeatable): static, controlplane, build, unit, deploy, e2e, realnode,
    /// bench, chaos.
    #[arg(long = "skip", value_name = "STEP")]
    pub skip: Vec<String>,
    /// Only run the end-to-end scenarios whose name contains this: libtest's filter, passed to
    /// the e2e test binary (`cargo test -p hapod-e2e -- --list` lists the names).
    #[arg(long = "e2e-filter", value_name = "FILTER")]
    pub e2e_filter: Option<String>,
    /// More arguments for the e2e test binary, after `--`: libtest's, such as `--exact`,
    /// `--skip FILTER` or `--list`.
    #[arg(last = true, value_name = "E2E_ARGS")]
    pub e2e_args: Vec<String>,
}

const STEPS: [&str; 9] = [
    "static",
    "controlplane",
    "build",
    "unit",
    "deploy",
    "e2e",
    "realnode",
    "bench",
    "chaos",
];

/// Steps that need the package registries (`static` may install cargo-deny) run first,
/// outside; the others run again in the private network namespace of the testbed
/// ([`crate::netns`]), which reaches nothing. They must come first in [`STEPS`], so that
/// the steps run in the order listed.
const OUTSIDE: [&str; 3] = ["static", "controlplane", "build"];

/// Seed of the property tests in the `unit` step (see there).
const PROPTEST_SEED: u64 = 20_261_130;

/// Installed by the `static` step when `cargo deny` is missing (CI starts on a fresh machine).
/// Pinned so that every run checks with the same rules; it needs Rust 1.88 or later.
const CARGO_DENY_VERSION: &str = "0.20.2";

struct Outcome {
    step: &'static str,
    what: String,
    result: Result<(), String>,
    took: Duration,
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run_command(mut cmd: Command) -> Result<(), String> {
    cmd.current_dir(workspace_root());
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("exited with {s}")),
        Err(e) => Err(format!("could not start: {e}")),
    }
}

fn xtask(args: &[&str]) -> Command {
    // The running xtask binary itself: no nested cargo, no rebuild.
    let exe = std::env::current_exe().unwrap_or_else(|_| "xtask".into());
    let mut cmd = Command::new(exe);
    cmd.args(args);
    cmd
}

impl Cli {
    pub fn run(self) -> Result<()> {
        run(self)
    }
}

pub fn run(args: Cli) -> Result<()> {
    for s in &args.skip {
        if !STEPS.contains(&s.as_str()) {
            bail!("unknown step {s:?}; steps: {}", STEPS.join(", "));
        }
    }
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failed = false;
    let inside = crate::netns::inside();
    let timings = Timings::load();
    let machine = Machine {
        cargo_deny_installed: cargo_deny_installed(),
        control_plane_cached: crate::controlplane::is_cached(),
        helm_cached: crate::helm::is_cached(),
        node_runtime_cached: hapod_testkit::realnode::is_cached(),
    };
    let selected: Vec<&str> = STEPS
        .into_iter()
        .filter(|step| !args.skip.iter().any(|s| s == step))
        .collect();
    if !inside {
        print_estimate(&selected, &timings, &machine);
    }
    for step in STEPS {
        if OUTSIDE.contains(&step) == inside {
            continue;
        }
        if let Some(index) = selected.iter().position(|s| *s == step) {
            let (seconds, why) = timings.estimate(step, &machine);
            println!(
                "\n==> [{}/{}] {step}: estimated {} ({why}); {} elapsed so far",
                index + 1,
                selected.len(),
                human(seconds),
                human(started.elapsed().as_secs())
            );
        }
        if args.skip.iter().any(|s| s == step) {
            outcomes.push(Outcome {
                step,
                what: "skipped (--skip)".into(),
                result: Ok(()),
                took: Duration::ZERO,
            });
            continue;
        }
        let t = Instant::now();
        let (what, result): (String, Result<(), String>) = match step {
            "static" => {
                banner("static checks: rustfmt, clippy, rustdoc, cargo-deny");
                (
                    "cargo fmt, clippy and doc with warnings denied; cargo deny (licenses, bans, sources)"
                        .into(),
                    static_checks(),
                )
            }
            "controlplane" => {
                banner("control plane build (cached; the first build takes 8-25 min)");
                (
                    "kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kubectl, \
                     kubelet, kube-proxy, helm, containerd, runc, CNI plugins"
                        .into(),
                    crate::controlplane::ensure_built()
                        .map(|b| println!("control plane binaries: {}", b.dir().display()))
                        .and_then(|()| crate::helm::ensure_helm().map(drop))
                        .and_then(|()| hapod_testkit::realnode::ensure_built())
                        .map(|runtime| println!("real node runtime: {}", runtime.dir().display()))
                        .map_err(|e| format!("{e:#}")),
                )
            }
            "build" => {
                banner("cargo build --workspace");
                // One debug build serves the tests, the e2e testbed and the quick benchmark.
                let mut c = cargo();
                c.args(["build", "--workspace", "--bins", "--tests"]);
                ("every binary and test, debug".into(), run_command(c))
            }
            "unit" => {
                banner("cargo test --workspace --exclude hapod-e2e");
                let mut c = cargo();
                c.args(["test", "--workspace", "--exclude", "hapod-e2e"]);
                // The same property-test cases on every run, so that a red run means the
                // change broke something; set PROPTEST_RNG_SEED to explore other cases.
                let seed = std::env::var("PROPTEST_RNG_SEED")
                    .unwrap_or_else(|_| PROPTEST_SEED.to_string());
                println!("property tests: PROPTEST_RNG_SEED={seed}");
                c.env("PROPTEST_RNG_SEED", seed);
                (
                    "unit + integration tests, model checks included".into(),
                    run_command(c),
                )
            }
            "deploy" => {
                banner("cargo xtask deploy check");
                (
                    "deploy check".into(),
                    run_command(xtask(&["deploy", "check"])),
                )
            }
            "e2e" => {
                banner("end-to-end tests (cargo test -p hapod-e2e)");
                let mut c = cargo();
                c.args(["test", "-p", "hapod-e2e", "--test", "e2e", "--"]);
                c.args(&args.e2e_filter).args(&args.e2e_args);
                // The `build` step built the binaries the testbed runs.
                if !args.skip.iter().any(|s| s == "build") {
                    c.env("HAPOD_E2E_NO_BUILD", "1");
                }
                ("end-to-end scenarios".into(), run_command(c))
            }
            "realnode" => {
                banner("end-to-end scenarios on the real node (HAPOD_E2E_NODE=real)");
                let mut c = cargo();
                c.args(["test", "-p", "hapod-e2e", "--test", "e2e", "--"]);
                c.args(&args.e2e_filter).args(&args.e2e_args);
                c.env("HAPOD_E2E_NODE", "real");
                if !args.skip.iter().any(|s| s == "build") {
                    c.env("HAPOD_E2E_NO_BUILD", "1");
                }
                (
                    "end-to-end scenarios on the real node".into(),
                    run_command(c),
                )
            }
            "bench" => {
                banner("short benchmark run (cargo xtask bench --quick)");
                (
                    "benchmark, quick".into(),
                    run_command(xtask(&["bench", "--quick"])),
                )
            }
            "chaos" => {
                banner("short chaos run (cargo xtask chaos --quick)");
                (
                    "randomized failovers, quick".into(),
                    run_command(xtask(&["chaos", "--quick"])),
                )
            }
            _ => unreachable!(),
        };
        let took = t.elapsed();
        failed = result.is_err();
        if !failed {
            Timings::record(step, took);
        }
        outcomes.push(Outcome {
            step,
            what,
            result,
            took,
        });
        if failed {
            break;
        }
    }
    if !failed && !inside {
        summary(&outcomes, started);
        println!("\n==> entering the testbed's private network namespace");
        crate::netns::reexec_inside()?;
    }
    summary(&outcomes, started);
    if failed {
        let o = outcomes.last().expect("a failed step");
        println!(
            "(testbed logs, if any, are under {})",
            target_dir()
                .map(|d| d.join("testbed").display().to_string())
                .unwrap_or_default()
        );
        bail!("step {} failed", o.step);
    }
    Ok(())
}

/// The `static` step: each check is named in the failure it reports.
fn static_checks() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    // Advisories are left out: their database is fetched from a Git host this project's
    // machines cannot reach (see deny.toml).
    let mut deny = cargo();
    deny.args(["deny", "check", "licenses", "bans", "sources"]);
    let check = |name: &str, cmd: Command| run_command(cmd).map_err(|e| format!("{name}: {e}"));
    check("cargo fmt --check", fmt)
        .and_then(|()| check("cargo clippy", clippy))
        .and_then(|()| check("cargo doc", doc))
        .and_then(|()| ensure_cargo_deny())
        .and_then(|()| check("cargo deny", deny))
}

fn cargo_deny_installed() -> bool {
    cargo()
        .args(["deny", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs cargo-deny into cargo's bin folder unless `cargo deny` already runs.
fn ensure_cargo_deny() -> Result<(), String> {
    if cargo_deny_installed() {
        return Ok(());
    }
    println!(
        "cargo-deny is missing: installing cargo-deny {CARGO_DENY_VERSION} from crates.io \
         (cargo install --locked; about 10 minutes on 2 cores)"
    );
    let mut install = cargo();
    install.args([
        "install",
        "--locked",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
    ]);
    run_command(install).map_err(|e| format!("installing cargo-deny: {e}"))
}

fn print_estimate(selected: &[&str], timings: &Timings, machine: &Machine) {
    let rows: Vec<(&str, u64, String)> = selected
        .iter()
        .map(|step| {
            let (seconds, why) = timings.estimate(step, machine);
            (*step, seconds, why)
        })
        .collect();
    let total: u64 = rows.iter().map(|(_, seconds, _)| seconds).sum();
    println!(
        "== cargo xtask test: {} step(s), estimated {} on this machine ==",
        rows.len(),
        human(total)
    );
    for (step, seconds, why) in rows {
        println!("  {step:<13} ~{:<12} {why}", human(seconds));
    }
}

fn summary(outcomes: &[Outcome], started: Instant) {
    println!(
        "\n== cargo xtask test: summary ({:.0} s) ==",
        started.elapsed().as_secs_f64()
    );
    for o in outcomes {
        let status = match &o.result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("FAILED: {e}"),
        };
        println!(
            "  {:<13} {:>7.1} s  {:<8} {}",
            o.step,
            o.took.as_secs_f64(),
            status,
            o.what
        );
    }
}

fn banner(s: &str) {
    println!("\n==> {s}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_steps_come_first_so_steps_run_in_the_order_listed() {
        assert_eq!(STEPS[..OUTSIDE.len()], OUTSIDE);
    }

    #[test]
    fn static_checks_run_first() {
        assert_eq!(STEPS[0], "static");
    }

    #[test]
    fn e2e_filter_and_arguments_after_the_separator_are_for_the_e2e_binary() {
        #[derive(clap::Parser)]
        struct Top {
            #[command(flatten)]
            cli: Cli,
        }
        let top = <Top as clap::Parser>::try_parse_from([
            "test",
            "--skip",
            "bench",
            "--e2e-filter",
            "duplicate_namespaces",
            "--",
            "--exact",
            "--skip",
            "x",
        ])
        .expect("parses");
        assert_eq!(top.cli.skip, ["bench"]);
        assert_eq!(top.cli.e2e_filter.as_deref(), Some("duplicate_namespaces"));
        assert_eq!(top.cli.e2e_args, ["--exact", "--skip", "x"]);
    }
}
