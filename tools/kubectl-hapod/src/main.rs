//! `kubectl hapod`: a kubectl plugin (any `kubectl-hapod` on the PATH is one) for operators
//! of hapod, with the caller's own credentials. `kubectl hapod status` shows each group's
//! active pod, its epoch and promotion, the standbys with why any could not take over, and
//! the acting controller replica; it only reads pods, Events and the controller's Lease.
//! `kubectl hapod switchover` moves the active role to a standby without killing a pod;
//! `pause` and `resume` stop and restart a group's failovers for maintenance.

mod pause;
mod pods;
mod status;
mod switchover;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use hapod_controller::args::PodMatching;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, ListParams};

use pause::Action;

#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl-hapod",
    version,
    about = "Operate hapod's active/standby groups"
)]
struct Cli {
    /// Kubeconfig file(s) (colon separated). Default: the usual kubeconfig search.
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Each group's active pod (epoch, when and why promoted, the failover's latency), its
    /// standbys (and why any is not eligible), problems, and the acting controller replica.
    Status(StatusArgs),
    /// Moves the active role of GROUP to a standby without killing a pod (no window of two
    /// applications acting), and waits until it moved.
    Switchover(SwitchoverArgs),
    /// Stops the controller's role changes in GROUP for maintenance: no promotion, demotion
    /// or kill until `resume` (annotates every pod of the group hapod.io/paused=true).
    Pause(GroupArgs),
    /// Lets the controller manage GROUP again (removes hapod.io/paused from every pod of the
    /// group that has it).
    Resume(GroupArgs),
}

#[derive(clap::Args, Debug)]
struct GroupArgs {
    /// The group (the value of the group label).
    group: String,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    matching: PodMatching,
}

#[derive(clap::Args, Debug)]
struct SwitchoverArgs {
    /// The group (the value of the group label).
    group: String,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// The standby to promote (default: the one the controller picks, the oldest eligible).
    #[arg(long)]
    to: Option<String>,
    /// How long to wait for the role to move, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Keep the old active drained (not eligible) afterwards, e.g. before its node is
    /// drained; remove the annotation hapod.io/drain to lift it.
    #[arg(long)]
    keep_drained: bool,
    #[command(flatten)]
    matching: PodMatching,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Only this group (the value of the group label).
    group: Option<String>,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The controller's namespace, where its election Lease is.
    #[arg(
        long,
        env = "HAPOD_CONTROLLER_NAMESPACE",
        default_value = "hapod-system"
    )]
    controller_namespace: String,
    /// The controller's election Lease.
    #[arg(long, env = "HAPOD_LEASE_NAME", default_value = "hapod-controller")]
    lease_name: String,
    /// Fail (exit 1, after the status) unless a controller replica holds the Lease and every
    /// group shown has one pod labeled active: for `helm test` and scripts.
    #[arg(long)]
    require_active: bool,
    /// The controller's pod matching flags (the same defaults; change them as on the
    /// controller).
    #[command(flatten)]
    matching: PodMatching,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = clap::Parser::parse();
    let result = match cli.command {
        Command::Status(args) => status(cli.kubeconfig.as_deref(), args).await,
        Command::Switchover(args) => switchover(cli.kubeconfig.as_deref(), args).await,
        Command::Pause(args) => pause(cli.kubeconfig.as_deref(), args, Action::Pause).await,
        Command::Resume(args) => pause(cli.kubeconfig.as_deref(), args, Action::Resume).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The API client, and the namespace: `namespace`, else the kubeconfig context's.
async fn connect(
    kubeconfig: Option<&str>,
    matching: &PodMatching,
    namespace: Option<String>,
) -> Result<(Client, String)> {
    matching.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = hapod_controller::client::config(kubeconfig).await?;
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    Ok((
        Client::try_from(config).context("building the API client")?,
        namespace,
    ))
}

/// The label selector of the pods of `group`.
fn group_selector(matching: &PodMatching, group: &str) -> String {
    format!("{},{}={group}", matching.selector, matching.group_label)
}

async fn switchover(kubeconfig: Option<&str>, args: SwitchoverArgs) -> Result<()> {
    let (client, namespace) = connect(kubeconfig, &args.matching, args.namespace).await?;
    let matching = &args.matching;
    let selector = group_selector(matching, &args.group);
    let request = switchover::Request {
        group: &args.group,
        to: args.to.as_deref(),
        timeout: std::time::Duration::from_secs(args.timeout),
        keep_drained: args.keep_drained,
    };
    let started = std::time::Instant::now();
    let api = Api::namespaced(client, &namespace);
    let config = matching.config(None);
    let new = switchover::run(&api, &selector, &config, &matching.group_label, &request).await?;
    println!(
        "{namespace}/{}: {new} is active ({:.0} ms)",
        args.group,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

async fn pause(kubeconfig: Option<&str>, args: GroupArgs, action: Action) -> Result<()> {
    let (client, namespace) = connect(kubeconfig, &args.matching, args.namespace).await?;
    let api = Api::namespaced(client, &namespace);
    let pods = pods::list(&api, &group_selector(&args.matching, &args.group)).await?;
    let done = pause::run(&api, &args.group, &namespace, &pods, action).await?;
    println!("{done}");
    Ok(())
}

async fn status(kubeconfig: Option<&str>, args: StatusArgs) -> Result<()> {
    let (client, default_namespace) = connect(kubeconfig, &args.matching, args.namespace).await?;
    let namespace = (!args.all_namespaces).then_some(default_namespace);
    let (pods, events): (Api<Pod>, Api<Event>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let matching = &args.matching;
    let selector = match &args.group {
        Some(group) => group_selector(matching, group),
        None => matching.selector.clone(),
    };
    let pods = pods::list(&pods, &selector).await?;
    // What cannot be read only leaves its part of the view out, with a warning. A field
    // selector matches one reason: one list per reason the view reads.
    let mut notes = Vec::new();
    for (reason, what) in [
        ("Promoted", "promotion times"),
        ("Acknowledged", "acknowledgements"),
    ] {
        match events
            .list(&ListParams::default().fields(&format!("reason={reason}")))
            .await
        {
            Ok(list) => notes.extend(list.items),
            Err(e) => eprintln!("warning: no {what} (listing Events: {e})"),
        }
    }
    let events = notes;
    let lease_ref = format!("{}/{}", args.controller_namespace, args.lease_name);
    let lease = match Api::<Lease>::namespaced(client, &args.controller_namespace)
        .get_opt(&args.lease_name)
        .await
    {
        Ok(Some(lease)) => Some(lease),
        Ok(None) => {
            eprintln!("warning: no Lease {lease_ref}: is the controller running?");
            None
        }
        Err(e) => {
            eprintln!("warning: reading the Lease {lease_ref}: {e}");
            None
        }
    };
    let now = Timestamp::now();
    let status = status::build(
        &pods,
        &events,
        lease.as_ref().map(|l| (lease_ref.as_str(), l)),
        &matching.config(None),
        &matching.group_label,
        now,
    );
    let shown = match args.output {
        Output::Table => status::table(&status, now),
        Output::Json => serde_json::to_string_pretty(&status)? + "\n",
        Output::Yaml => serde_norway::to_string(&status)?,
    };
    print!("{shown}");
    if args.require_active {
        let unmet = status::unmet(&status);
        anyhow::ensure!(unmet.is_empty(), "{}", unmet.join("; "));
    }
    Ok(())
}
