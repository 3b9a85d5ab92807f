//! `kubectl hapod`: a kubectl plugin (any `kubectl-hapod` on the PATH is one) for operators
//! of hapod. `kubectl hapod status` shows each group's active pod, its epoch and promotion,
//! the standbys with why any could not take over, and the acting controller replica. It only
//! reads: pods, Events and the controller's Lease, with the caller's own credentials.

mod status;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use hapod_controller::args::PodMatching;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, ListParams};

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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn status(kubeconfig: Option<&str>, args: StatusArgs) -> Result<()> {
    args.matching
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = hapod_controller::client::config(kubeconfig).await?;
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).context("building the API client")?;
    let namespace = (!args.all_namespaces).then(|| args.namespace.unwrap_or(default_namespace));
    let (pods, events): (Api<Pod>, Api<Event>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let matching = &args.matching;
    let mut selector = matching.selector.clone();
    if let Some(group) = &args.group {
        selector = format!("{selector},{}={group}", matching.group_label);
    }
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing the pods matching {selector:?}"))?
        .items;
    // What cannot be read only leaves its part of the view out, with a warning.
    let events = match events
        .list(&ListParams::default().fields("reason=Promoted"))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("warning: no promotion times (listing Events: {e})");
            Vec::new()
        }
    };
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
    Ok(())
}
