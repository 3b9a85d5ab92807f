//! notify → ACK round trip on loopback against the real agent receiver (HMAC on, every message
//! a new epoch, so each one is applied, not just re-acknowledged).
//!
//! `cargo bench -p hapod-protocol --bench notify_rtt` (add `-- --quick` for a shorter run) also
//! writes `results/notify-rtt.md`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hapod_agent::{Agent, AgentConfig};
use hapod_protocol::sender::{Delivery, Notifier, NotifierConfig, Outcome};
use hapod_protocol::{Key, Notification, Role};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::UnboundedReceiver;

const POD: &str = "bench-0";
/// Iterations of the plain sampling loop after criterion.
const SAMPLES: usize = 2000;

struct Rig {
    runtime: Runtime,
    // Kept alive: dropping it stops the receiver.
    _agent: Agent,
    addr: SocketAddr,
    notifier: Notifier,
    outcomes: UnboundedReceiver<Outcome>,
    epoch: u64,
}

impl Rig {
    fn new() -> Rig {
        let runtime = Runtime::new().expect("tokio runtime");
        let key = Key::new(b"benchmark key, 32 bytes long ..").expect("key");
        let (agent, (notifier, outcomes)) = runtime.block_on(async {
            let mut config = AgentConfig::new("127.0.0.1:0".parse().unwrap(), POD);
            config.key = Some(key.clone());
            let agent = Agent::bind(config).await.expect("bind agent");
            let notifier = Notifier::bind(NotifierConfig {
                key: Some(key),
                ..NotifierConfig::default()
            })
            .await
            .expect("bind notifier");
            (agent, notifier)
        });
        Rig {
            runtime,
            addr: agent.local_addr(),
            _agent: agent,
            notifier,
            outcomes,
            epoch: 0,
        }
    }

    /// One notification, from `notify` to its outcome on the channel.
    fn round_trip(&mut self) -> (Duration, Outcome) {
        self.epoch += 1;
        let role = if self.epoch.is_multiple_of(2) {
            Role::Standby
        } else {
            Role::Active
        };
        let msg = Notification::new("bench", POD, role, self.epoch);
        let started = Instant::now();
        self.notifier.notify(self.addr, msg).expect("notify");
        let outcome = self
            .runtime
            .block_on(self.outcomes.recv())
            .expect("notifier alive");
        (started.elapsed(), outcome)
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut rig = Rig::new();
    let mut criterion_iterations = Vec::new();
    criterion.bench_function("notify_ack_round_trip_loopback", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (elapsed, _) = rig.round_trip();
                criterion_iterations.push(elapsed);
                total += elapsed;
            }
            total
        });
    });
    criterion.final_summary();

    // `cargo test --benches` runs each benchmark once in test mode: no report then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let mut wall = Vec::with_capacity(SAMPLES);
    let mut rtts = Vec::with_capacity(SAMPLES);
    let mut resent = 0;
    for _ in 0..SAMPLES {
        let (elapsed, outcome) = rig.round_trip();
        let Delivery::Acked { rtt, attempts } = outcome.delivery else {
            panic!("not acknowledged on loopback: {outcome:?}");
        };
        wall.push(elapsed);
        rtts.push(rtt);
        resent += usize::from(attempts > 1);
    }
    for samples in [&mut criterion_iterations, &mut wall, &mut rtts] {
        samples.sort();
    }
    let mut report = String::from(
        "# notify → ACK round trip on loopback\n\n\
         Notifier (controller side) → real `hapod-agent` receiver on 127.0.0.1, HMAC-SHA256 on,\n\
         every message a new epoch (applied, then acknowledged). Produced by\n\
         `cargo bench -p hapod-protocol --bench notify_rtt -- --quick`.\n\n\
         | measurement | samples | p50 | p99 | max |\n|---|---|---|---|---|\n",
    );
    let rows = [
        (
            "criterion iterations: `notify()` → outcome on the channel",
            &criterion_iterations,
        ),
        ("sampled loop: `notify()` → outcome on the channel", &wall),
        (
            "sampled loop: `Delivery::Acked::rtt` (first send → ACK received)",
            &rtts,
        ),
    ];
    for (name, samples) in rows {
        if samples.is_empty() {
            continue;
        }
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} | {} |",
            samples.len(),
            micros(percentile(samples, 0.5)),
            micros(percentile(samples, 0.99)),
            micros(*samples.last().expect("not empty")),
        );
    }
    let _ = writeln!(
        report,
        "\n{resent} of {SAMPLES} sampled notifications needed a resend.\n\n\
         Machine: shared 2-core VM (other builds running), so the tail is noisy."
    );
    print!("{report}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results/notify-rtt.md");
    std::fs::create_dir_all(path.parent().expect("results folder")).expect("create results/");
    std::fs::write(&path, report).expect("write results/notify-rtt.md");
}
