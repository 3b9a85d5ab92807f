//! `cargo xtask demo`: hapod failing over for real, in one command.
//!
//! Builds what is needed (the control plane the first time, with Go's progress), starts the
//! control plane and the process node, installs the controller (2 replicas) and the sample
//! app from `deploy/`, shows the pods and their roles, kills the active pod and prints the
//! failover timeline with measured latencies; then stops everything it started.

use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::ResourceExt;

use hapod_testkit::testbed::{
    self, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, NodeKind, Options, Profile, Testbed, Trigger,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    /// How to kill the active pod.
    #[arg(long, value_enum, default_value_t = DemoTrigger::Delete)]
    pub kill: DemoTrigger,
    /// Failovers to run.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Build and run release binaries.
    #[arg(long)]
    pub release: bool,
    /// What runs the pods: the process node, or a kubelet with containerd, runc, CNI and
    /// kube-proxy built from their Go modules.
    #[arg(long, value_enum, default_value_t)]
    pub node: NodeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoTrigger {
    /// `kubectl delete pod` (graceful: the failover happens at the deletionTimestamp).
    Delete,
    /// `kubectl delete pod --grace-period=0 --force`.
    ForceDelete,
    /// `touch /tmp/killme` in the critical container (it aborts).
    Crash,
    /// Make the app's readiness probe fail.
    Unready,
}

impl DemoTrigger {
    fn trigger(self) -> Trigger {
        match self {
            DemoTrigger::Delete => Trigger::GracefulDelete,
            DemoTrigger::ForceDelete => Trigger::ForceDelete,
            DemoTrigger::Crash => Trigger::KillCritical,
            DemoTrigger::Unready => Trigger::Unready,
        }
    }
}

const WAIT: Duration = Duration::from_secs(90);

impl Cli {
    pub fn run(self) -> Result<()> {
        run(self)
    }
}

pub fn run(args: Cli) -> Result<()> {
    println!("== hapod demo ==");
    println!(
        "control plane: built from controlplane/ and cached; the first build takes 8-25 minutes \
         (Go's progress follows), later runs reuse it."
    );
    hapod_testkit::testbed::enter_private_network(profile(&args), args.node)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(demo(args))
}

fn profile(args: &Cli) -> Profile {
    if args.release {
        Profile::Release
    } else {
        Profile::Debug
    }
}

async fn demo(args: Cli) -> Result<()> {
    let tb = Testbed::start(Options {
        name: "demo".into(),
        profile: profile(&args),
        node: args.node,
        ..Default::default()
    })
    .await?;
    let res = rounds(&tb, &args).await;
    if res.is_err() {
        eprintln!("{}", tb.diagnostics().await);
    }
    println!("\nlogs of this run: {}", tb.run_dir.display());
    println!("stopping everything the demo started");
    drop(tb);
    res
}

async fn show_pods(tb: &Testbed) -> Result<()> {
    println!(
        "\n$ kubectl get pods -A -L role -o wide   (pod IPs live only inside the testbed\'s private network namespace)"
    );
    let out = tb.kubectl(&[
        "get",
        "pods",
        "-A",
        "-l",
        "app in (hapod,icr)",
        "-L",
        "role",
        "-o",
        "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,ROLE:.metadata.labels.role,STATUS:.status.phase,IP:.status.podIP,EPOCH:.metadata.annotations.hapod\\.io/epoch",
    ])?;
    print!("{out}");
    let eps = tb
        .service_endpoints(APP_NAMESPACE, testbed::APP_SERVICE)
        .await?;
    println!(
        "Service {APP_NAMESPACE}/{} endpoints (EndpointSlice): {eps:?}",
        testbed::APP_SERVICE
    );
    Ok(())
}

async fn rounds(tb: &Testbed, args: &Cli) -> Result<()> {
    show_pods(tb).await?;
    let holder = tb.lease_holder().await?;
    println!("controller Lease holder (acting replica): {holder:?}");
    for round in 1..=args.rounds.max(1) {
        let before = tb
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
            .await?;
        println!(
            "\n-- round {round}: {:?} of the active pod {} --",
            args.kill,
            before.active.name_any()
        );
        let f = tb.failover(args.kill.trigger(), WAIT).await?;
        println!(
            "failover {} -> {} (epoch {:?})",
            f.old.name_any(),
            f.new.name_any(),
            f.app_state.epoch
        );
        let seen = match args.kill {
            DemoTrigger::Delete => "deletionTimestamp seen (watch)",
            DemoTrigger::ForceDelete => "deletion seen (watch)",
            DemoTrigger::Crash => "container exit seen (watch)",
            DemoTrigger::Unready => "not-Ready seen (watch)",
        };
        let t = &f.timeline;
        let ms = |x: Option<u64>| {
            x.map(|x| format!("{:>9.1} ms", (x as f64 - t.trigger_unix_nanos as f64) / 1e6))
                .unwrap_or_else(|| "   (not seen)".into())
        };
        println!("timeline (one host clock, from the trigger):");
        println!("  {:>12}  trigger ({})", "0.0 ms", trigger_text(args.kill));
        println!("  {}  {seen}", ms(t.seen_unix_nanos));
        println!("  {}  old active demoted", ms(t.demoted_unix_nanos));
        println!(
            "  {}  new active labeled role=active",
            ms(t.promoted_unix_nanos)
        );
        println!(
            "  {}  app applied the notification (its /state)",
            ms(t.app_applied_unix_nanos)
        );
        println!(
            "  {}  EndpointSlice lists only the new pod",
            ms(t.endpoints_unix_nanos)
        );
        if args.kill == DemoTrigger::Unready
            && let Some(old) = tb.pod(APP_NAMESPACE, &f.old.name_any()).await?
        {
            tb.remove_in_container(&old, testbed::APP_CONTAINER, "unready")?;
        }
        tb.wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
            .await
            .context("the group did not settle after the failover")?;
        println!("the ReplicaSet's replacement joined as standby:");
        show_pods(tb).await?;
    }
    tb.history
        .assert_no_double_active()
        .context("label history")?;
    println!("\nlabel history: never two active pods in a group at the same resourceVersion");
    Ok(())
}

fn trigger_text(t: DemoTrigger) -> &'static str {
    match t {
        DemoTrigger::Delete => "DELETE pod, default grace period",
        DemoTrigger::ForceDelete => "DELETE pod, grace period 0",
        DemoTrigger::Crash => "touch /tmp/killme in the critical container",
        DemoTrigger::Unready => "touch /tmp/unready in the app container",
    }
}
