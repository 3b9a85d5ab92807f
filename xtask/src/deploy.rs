//! `cargo xtask deploy ...`: render and validate everything under `deploy/`.
//!
//! `deploy check` renders the kustomize base and overlay (`kubectl kustomize`) and the Helm
//! chart (`helm template`, several value sets), checks the invariants the manifests promise
//! (security contexts, probes, labels, the Service's port, the notify key wiring), checks that
//! the chart renders the same objects (kind/namespace/name, RBAC rules, selectors, containers)
//! as kustomize, then validates every render against a real kube-apiserver
//! (`kubectl apply --dry-run=server`) and proves the controller's RBAC with its own
//! ServiceAccount token (`kubectl auth can-i`: every verb it needs, and none of a list of
//! verbs it must not have). Any mismatch fails the command.
//!
//! `deploy rbac-check --kubeconfig K` runs only the RBAC proof against a cluster where the
//! controller's RBAC is installed (the end-to-end tests use it after `kubectl apply -k`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use hapod_testkit::helm;
use hapod_testkit::testbed::{
    ACTIVE, APP_GROUP, APP_NAME, APP_NAMESPACE, CONTROLLER_GROUP, CONTROLLER_NAME,
    CONTROLLER_NAMESPACE, CRITICAL_CONTAINER, GROUP_LABEL, NOTIFY_SECRET, ROLE_LABEL, STANDBY,
};

/// Render and validate `deploy/` (kustomize, Helm chart) against a real kube-apiserver.
#[derive(Debug, clap::Args)]
pub struct Cli {
    #[command(subcommand)]
    cmd: DeployCmd,
}

#[derive(Debug, clap::Subcommand)]
enum DeployCmd {
    /// Render kustomize + Helm, check invariants and chart/kustomize parity, validate
    /// against a real kube-apiserver and prove the RBAC.
    Check {
        /// Use this cluster instead of starting the project's control plane.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Only the renders and the offline checks (no API server).
        #[arg(long, conflicts_with = "kubeconfig")]
        offline: bool,
        /// Where to find hapod-controller / hapod-demo / hapod-agent to check that they accept
        /// the manifests' args (repeatable; default: <target>/debug and <target>/release).
        /// A binary found nowhere is skipped with a note.
        #[arg(long)]
        bin_dir: Vec<PathBuf>,
    },
    /// RBAC proof only, with the controller ServiceAccount's own token.
    RbacCheck {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, default_value = "kubectl")]
        kubectl: PathBuf,
        /// Namespace of the controller (and of its ServiceAccount, Role and Lease).
        #[arg(long, default_value = CONTROLLER_NAMESPACE)]
        namespace: String,
        #[arg(long, default_value = CONTROLLER_NAME)]
        service_account: String,
        /// A namespace holding application pods.
        #[arg(long, default_value = APP_NAMESPACE)]
        app_namespace: String,
    },
    /// Print the path of the cached helm binary, building it first if needed.
    Helm,
}

const RELEASE: &str = "hapod";

impl Cli {
    pub fn run(self) -> Result<()> {
        run(self.cmd)
    }
}

fn run(cmd: DeployCmd) -> Result<()> {
    match cmd {
        DeployCmd::Check {
            kubeconfig,
            offline,
            bin_dir,
        } => check(kubeconfig, offline, bin_dir),
        DeployCmd::RbacCheck {
            kubeconfig,
            kubectl,
            namespace,
            service_account,
            app_namespace,
        } => prove_rbac(
            &Kubectl::new(kubectl, &kubeconfig),
            &namespace,
            &service_account,
            &app_namespace,
        ),
        DeployCmd::Helm => {
            println!("{}", helm::ensure_helm()?.display());
            Ok(())
        }
    }
}

/// One rendered set of manifests.
struct Render {
    label: String,
    yaml: String,
    objects: Vec<Value>,
}

impl Render {
    fn new(label: impl Into<String>, yaml: String) -> Result<Self> {
        let label = label.into();
        let objects = parse_documents(&yaml).with_context(|| format!("parsing {label}"))?;
        ensure!(!objects.is_empty(), "{label} rendered no objects");
        Ok(Self {
            label,
            yaml,
            objects,
        })
    }

    fn ids(&self) -> BTreeSet<String> {
        self.objects.iter().map(object_id).collect()
    }

    fn find(&self, kind: &str, namespace: &str, name: &str) -> Result<&Value> {
        self.objects
            .iter()
            .find(|o| {
                str_at(o, "/kind") == kind
                    && str_at(o, "/metadata/namespace") == namespace
                    && str_at(o, "/metadata/name") == name
            })
            .with_context(|| format!("{}: no {kind} {namespace}/{name}", self.label))
    }
}

fn parse_documents(yaml: &str) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn object_id(o: &Value) -> String {
    format!(
        "{}/{}/{}",
        str_at(o, "/kind"),
        str_at(o, "/metadata/namespace"),
        str_at(o, "/metadata/name")
    )
}

/// Collects every failed expectation, so one run reports all of them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn expect_eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Like `expect_eq`, for JSON values: reports them as compact JSON.
    fn expect_same(&mut self, what: &str, got: Option<&Value>, want: Option<&Value>) {
        if got != want {
            let show = |v: Option<&Value>| v.map_or("(absent)".to_string(), Value::to_string);
            self.0.push(format!(
                "{what}:\n      got  {}\n      want {}",
                show(got),
                show(want)
            ));
        }
    }

    fn wrap(&mut self, label: &str, result: Result<()>) {
        if let Err(e) = result {
            self.0.push(format!("{label}: {e:#}"));
        }
    }

    fn finish(self, stage: &str) -> Result<()> {
        if self.0.is_empty() {
            eprintln!("xtask deploy: {stage}: ok");
            return Ok(());
        }
        let mut msg = format!("{stage}: {} problem(s):", self.0.len());
        for p in &self.0 {
            let _ = write!(msg, "\n  - {p}");
        }
        bail!(msg)
    }
}

fn run_capture(cmd: &mut Command) -> Result<String> {
    run_capture_all(cmd).map(|(stdout, _)| stdout)
}

/// Runs a command that must succeed; returns its stdout and stderr.
fn run_capture_all(cmd: &mut Command) -> Result<(String, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        String::from_utf8(out.stdout).context("non-UTF-8 output")?,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn kustomize(dir: &str) -> Result<Render> {
    let path = hapod_testkit::workspace_root().join(dir);
    let yaml = run_capture(Command::new("kubectl").arg("kustomize").arg(&path))?;
    Render::new(format!("kustomize {dir}"), yaml)
}

fn helm_template(helm: &Path, label: &str, sets: &[&str]) -> Result<Render> {
    let chart = hapod_testkit::workspace_root().join("deploy/helm/hapod");
    let mut cmd = Command::new(helm);
    cmd.args(["template", RELEASE])
        .arg(&chart)
        .args(["--namespace", CONTROLLER_NAMESPACE]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let yaml = run_capture(&mut cmd)?;
    Render::new(format!("helm template ({label})"), yaml)
}

/// Every render the check validates: (kustomize base, overlay, helm renders).
struct Renders {
    base: Render,
    overlay: Render,
    real_cluster: Render,
    helm_default: Render,
    helm_deployment: Render,
    helm_all_flags: Render,
    helm_minimal: Render,
    helm_real_cluster: Render,
}

impl Renders {
    fn all(&self) -> [&Render; 8] {
        [
            &self.base,
            &self.overlay,
            &self.real_cluster,
            &self.helm_real_cluster,
            &self.helm_default,
            &self.helm_deployment,
            &self.helm_all_flags,
            &self.helm_minimal,
        ]
    }
}

/// Flags the all-flags render sets, and what must then appear in the controller's args.
const ALL_FLAGS_SETS: &[(&str, &str)] = &[
    (
        "controller.selector=app=hapod\\,tier=demo",
        "--selector=app=hapod,tier=demo",
    ),
    (
        "controller.namespaces={hapod-demo,other}",
        "--namespaces=hapod-demo,other",
    ),
    ("controller.groupLabel=group", "--group-label=group"),
    ("controller.roleLabel=hapod-role", "--role-label=hapod-role"),
    ("controller.activeValue=primary", "--active-value=primary"),
    (
        "controller.standbyValue=secondary",
        "--standby-value=secondary",
    ),
    ("controller.criticalEnv=CRIT", "--critical-env=CRIT"),
    ("controller.criticalValue=yes", "--critical-value=yes"),
    ("controller.notifyPort=10011", "--notify-port=10011"),
    ("controller.notifyLegacy=true", "--notify-legacy"),
    (
        "controller.notifyDeadlineMs=1500",
        "--notify-deadline-ms=1500",
    ),
    ("controller.resyncSeconds=60", "--resync-seconds=60"),
    ("controller.httpPort=9090", "--http-port=9090"),
    ("controller.logFormat=text", "--log-format=text"),
    (
        "controller.leaseName=other-lease",
        "--lease-name=other-lease",
    ),
    (
        "controller.leaseDurationMs=4000000",
        "--lease-duration-ms=4000000",
    ),
    (
        "controller.renewDeadlineMs=3000",
        "--renew-deadline-ms=3000",
    ),
    ("controller.retryPeriodMs=500", "--retry-period-ms=500"),
    (
        "notifyKey.value=s3cret",
        "--notify-key-file=/etc/hapod/notify-key/key",
    ),
    (
        "controller.metrics.podAnnotations=true",
        "--listen-ip=$(POD_IP)",
    ),
];

fn render_all() -> Result<Renders> {
    let helm = helm::ensure_helm()?;
    let base = kustomize("deploy/base")?;
    let overlay = kustomize("deploy/overlays/deployment-app")?;
    let real_cluster = kustomize("deploy/overlays/real-cluster")?;
    let ns = "namespace.create=true";
    let helm_default = helm_template(&helm, "defaults", &[ns])?;
    let helm_deployment = helm_template(
        &helm,
        "sampleApp.kind=Deployment",
        &[ns, "sampleApp.kind=Deployment"],
    )?;
    let all_sets: Vec<&str> = ALL_FLAGS_SETS.iter().map(|(s, _)| *s).collect();
    let helm_all_flags = helm_template(&helm, "every flag set", &all_sets)?;
    let helm_real_cluster = helm_template(
        &helm,
        "Deployment, writable /tmp",
        &[
            ns,
            "sampleApp.kind=Deployment",
            "sampleApp.writableTmp=true",
        ],
    )?;
    let helm_minimal = helm_template(
        &helm,
        "no sample app, no key",
        &["sampleApp.enabled=false", "notifyKey.enabled=false"],
    )?;
    let lint = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(hapod_testkit::workspace_root().join("deploy/helm/hapod"))
        .output()?;
    ensure!(
        lint.status.success(),
        "helm lint --strict failed:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    Ok(Renders {
        base,
        overlay,
        real_cluster,
        helm_default,
        helm_deployment,
        helm_all_flags,
        helm_minimal,
        helm_real_cluster,
    })
}

fn check(kubeconfig: Option<PathBuf>, offline: bool, bin_dirs: Vec<PathBuf>) -> Result<()> {
    let renders = render_all()?;
    offline_checks(&renders)?;
    let bin_dirs = if bin_dirs.is_empty() {
        let target = hapod_testkit::target_dir()?;
        vec![target.join("debug"), target.join("release")]
    } else {
        bin_dirs
    };
    binaries_accept_args(&renders, &bin_dirs)?;
    if offline {
        return Ok(());
    }
    match kubeconfig {
        Some(k) => server_checks(&renders, &Kubectl::new("kubectl", &k)),
        None => {
            let cluster = hapod_testkit::controlplane::ControlPlane::start(Default::default())
                .context("starting the control plane")?;
            // The control plane's own kubectl matches the apiserver's version.
            let kubectl = Kubectl::new(cluster.binaries().path("kubectl"), &cluster.kubeconfig());
            let result = server_checks(&renders, &kubectl);
            cluster.stop()?;
            result
        }
    }
}

// ---------------------------------------------------------------------------------------
// Offline checks
// ---------------------------------------------------------------------------------------

fn offline_checks(r: &Renders) -> Result<()> {
    let mut p = Problems::default();
    for render in [
        &r.base,
        &r.overlay,
        &r.real_cluster,
        &r.helm_default,
        &r.helm_deployment,
        &r.helm_real_cluster,
    ] {
        let mut inner = Problems::default();
        let result = shipped_invariants(render, &mut inner);
        p.wrap(&render.label, result);
        for e in inner.0 {
            p.0.push(format!("{}: {e}", render.label));
        }
    }
    for render in r.all() {
        for e in pod_security_problems(render) {
            p.0.push(format!("{}: {e}", render.label));
        }
    }
    // Same objects, same RBAC, selectors and containers in chart and kustomize.
    parity(&mut p, &r.base, &r.helm_default);
    parity(&mut p, &r.overlay, &r.helm_deployment);
    parity(&mut p, &r.real_cluster, &r.helm_real_cluster);
    p.wrap("overlay", overlay_is_rolling(&r.overlay));
    p.wrap("real-cluster overlay", overlay_is_rolling(&r.real_cluster));
    p.wrap("real-cluster overlay", writable_tmp(&r.real_cluster, true));
    p.wrap("base", writable_tmp(&r.base, false));
    p.wrap("helm every flag", all_flags_rendered(&r.helm_all_flags));
    p.wrap("helm minimal", minimal_render(&r.helm_minimal));
    p.finish("offline checks")
}

/// What the shipped defaults promise (docs/contracts.md, docs/deploy.md).
fn shipped_invariants(r: &Render, p: &mut Problems) -> Result<()> {
    // Controller.
    let dep = r.find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    p.expect_eq(
        "controller replicas",
        dep.pointer("/spec/replicas"),
        Some(&json!(2)),
    );
    p.expect_eq(
        "controller selector",
        dep.pointer("/spec/selector/matchLabels"),
        Some(&json!({GROUP_LABEL: CONTROLLER_GROUP})),
    );
    let pod = dep.pointer("/spec/template").context("no pod template")?;
    p.expect_eq(
        "controller pod label app",
        str_at(pod, "/metadata/labels/app"),
        "icr",
    );
    p.expect_eq(
        "controller pod label role",
        str_at(pod, "/metadata/labels/role"),
        STANDBY,
    );
    p.expect_eq(
        "controller serviceAccountName",
        str_at(pod, "/spec/serviceAccountName"),
        CONTROLLER_NAME,
    );
    let grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    p.expect(grace.is_some_and(|g| g <= 10), || {
        format!("controller terminationGracePeriodSeconds {grace:?} is not short (<= 10)")
    });
    p.expect(
        pod.pointer("/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/0/podAffinityTerm/topologyKey")
            == Some(&json!("kubernetes.io/hostname")),
        || "controller has no preferred anti-affinity by hostname".into(),
    );
    let c = container(pod, "controller")?;
    p.expect_eq(
        "controller image",
        str_at(c, "/image"),
        "ghcr.io/hapod/hapod-controller:0.1.0",
    );
    expect_downward_env(p, "controller", c, &["POD_NAME", "POD_NAMESPACE", "POD_IP"]);
    p.expect(
        args(c).contains(&"--listen-ip=$(POD_IP)".to_string()),
        || "controller does not pass --listen-ip=$(POD_IP)".into(),
    );
    p.expect(
        args(c).contains(&"--notify-key-file=/etc/hapod/notify-key/key".to_string()),
        || "controller does not pass --notify-key-file".into(),
    );
    p.expect_eq(
        "controller liveness path",
        str_at(c, "/livenessProbe/httpGet/path"),
        "/healthz",
    );
    p.expect_eq(
        "controller readiness path",
        str_at(c, "/readinessProbe/httpGet/path"),
        "/readyz",
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let port = resolve_port(c, c.pointer(&format!("/{probe}/httpGet/port")));
        p.expect_eq(&format!("controller {probe} port"), port, Some(8080));
    }
    expect_secret_mount(p, "controller", pod, c);
    let pdb = r.find("PodDisruptionBudget", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    p.expect_eq(
        "pdb minAvailable",
        pdb.pointer("/spec/minAvailable"),
        Some(&json!(1)),
    );
    p.expect_eq(
        "pdb selector",
        pdb.pointer("/spec/selector/matchLabels"),
        Some(&json!({GROUP_LABEL: CONTROLLER_GROUP})),
    );

    // Sample application.
    let app = r
        .objects
        .iter()
        .find(|o| {
            matches!(str_at(o, "/kind"), "ReplicaSet" | "Deployment")
                && str_at(o, "/metadata/namespace") == APP_NAMESPACE
                && str_at(o, "/metadata/name") == APP_NAME
        })
        .context("no sample app workload")?;
    p.expect_eq(
        "app replicas",
        app.pointer("/spec/replicas"),
        Some(&json!(2)),
    );
    p.expect_eq(
        "app selector",
        app.pointer("/spec/selector/matchLabels"),
        Some(&json!({GROUP_LABEL: APP_GROUP})),
    );
    let pod = app.pointer("/spec/template").context("no pod template")?;
    p.expect_eq(
        "app pod label app",
        str_at(pod, "/metadata/labels/app"),
        "hapod",
    );
    p.expect_eq(
        "app pod label role",
        str_at(pod, "/metadata/labels/role"),
        STANDBY,
    );
    p.expect(
        pod.pointer("/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/0/podAffinityTerm/labelSelector/matchLabels")
            == Some(&json!({GROUP_LABEL: APP_GROUP})),
        || "app has no preferred anti-affinity between its replicas".into(),
    );
    let main = container(pod, "app")?;
    p.expect_eq(
        "app image",
        str_at(main, "/image"),
        "ghcr.io/hapod/hapod-demo:0.1.0",
    );
    p.expect_eq(
        "app first arg",
        args(main).first().map(String::as_str),
        Some("serve"),
    );
    p.expect(args(main).iter().any(|a| a.contains("$(POD_IP)")), || {
        "app does not bind $(POD_IP)".into()
    });
    expect_downward_env(p, "app", main, &["POD_NAME", "POD_NAMESPACE", "POD_IP"]);
    p.expect_eq(
        "app readiness path",
        str_at(main, "/readinessProbe/httpGet/path"),
        "/readyz",
    );
    let ready_port = resolve_port(main, main.pointer("/readinessProbe/httpGet/port"));
    p.expect_eq("app readiness port", ready_port, Some(8080));
    p.expect(
        has_port(main, 8080, "TCP") && has_port(main, 10001, "UDP"),
        || "app does not declare 8080/TCP and 10001/UDP".into(),
    );
    expect_secret_mount(p, "app", pod, main);
    let crit = container(pod, CRITICAL_CONTAINER)?;
    p.expect_eq(
        "critcontainer args",
        args(crit),
        vec!["crash".to_string(), "--file".into(), "/tmp/killme".into()],
    );
    let criticality = |c: &Value| env_value(c, "pwcriticality").unwrap_or_default();
    p.expect_eq("app pwcriticality", criticality(main), "critical".into());
    p.expect_eq(
        "critcontainer pwcriticality",
        criticality(crit),
        "critical".into(),
    );
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    p.expect(
        containers
            .iter()
            .any(|c| criticality(c).eq_ignore_ascii_case("noncritical")),
        || "app has no non-critical container".into(),
    );
    // Two processes of one pod share the pod IP: no port declared twice.
    let mut seen = BTreeSet::new();
    for c in &containers {
        for port in c
            .pointer("/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = (
                port.pointer("/containerPort").and_then(Value::as_i64),
                str_at(port, "/protocol").to_string(),
            );
            p.expect(seen.insert(key.clone()), || {
                format!("app port {key:?} declared twice")
            });
        }
    }
    let svc = r.find("Service", APP_NAMESPACE, APP_NAME)?;
    p.expect_eq(
        "service selector",
        svc.pointer("/spec/selector"),
        Some(&json!({GROUP_LABEL: APP_GROUP, ROLE_LABEL: ACTIVE})),
    );
    p.expect_eq(
        "service port",
        svc.pointer("/spec/ports/0/port"),
        Some(&json!(8080)),
    );
    let target = resolve_port(main, svc.pointer("/spec/ports/0/targetPort"));
    p.expect_eq(
        "service targetPort (resolved in the app container)",
        target,
        Some(8080),
    );

    // The notification key in both namespaces.
    for ns in [CONTROLLER_NAMESPACE, APP_NAMESPACE] {
        let secret = r.find("Secret", ns, NOTIFY_SECRET)?;
        let has_key =
            secret.pointer("/data/key").is_some() || secret.pointer("/stringData/key").is_some();
        p.expect(has_key, || {
            format!("Secret {ns}/{NOTIFY_SECRET} has no `key`")
        });
    }
    Ok(())
}

/// The restricted profile on every pod template of every render.
fn pod_security_problems(r: &Render) -> Vec<String> {
    let mut p = Problems::default();
    for o in &r.objects {
        let Some(pod) = o.pointer("/spec/template/spec") else {
            continue;
        };
        let id = object_id(o);
        p.expect_eq(
            &format!("{id} runAsNonRoot"),
            pod.pointer("/securityContext/runAsNonRoot"),
            Some(&json!(true)),
        );
        p.expect_eq(
            &format!("{id} seccompProfile"),
            str_at(pod, "/securityContext/seccompProfile/type"),
            "RuntimeDefault",
        );
        for c in pod
            .pointer("/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cid = format!("{id} container {}", str_at(c, "/name"));
            let sc = |f: &str| c.pointer(&format!("/securityContext/{f}")).cloned();
            p.expect_eq(
                &format!("{cid} allowPrivilegeEscalation"),
                sc("allowPrivilegeEscalation"),
                Some(json!(false)),
            );
            p.expect_eq(
                &format!("{cid} readOnlyRootFilesystem"),
                sc("readOnlyRootFilesystem"),
                Some(json!(true)),
            );
            p.expect_eq(
                &format!("{cid} capabilities.drop"),
                sc("capabilities/drop"),
                Some(json!(["ALL"])),
            );
            p.expect(sc("privileged") != Some(json!(true)), || {
                format!("{cid} is privileged")
            });
            for f in [
                "requests/cpu",
                "requests/memory",
                "limits/cpu",
                "limits/memory",
            ] {
                p.expect(c.pointer(&format!("/resources/{f}")).is_some(), || {
                    format!("{cid} has no resources.{}", f.replace('/', "."))
                });
            }
        }
    }
    p.0
}

fn container<'a>(pod: &'a Value, name: &str) -> Result<&'a Value> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/name") == name))
        .with_context(|| format!("no container {name}"))
}

fn args(c: &Value) -> Vec<String> {
    c.pointer("/args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(c: &Value, name: &str) -> Option<String> {
    c.pointer("/env")?
        .as_array()?
        .iter()
        .find(|e| str_at(e, "/name") == name)
        .and_then(|e| e.pointer("/value"))
        .and_then(Value::as_str)
        .map(|s| s.trim().to_string())
}

fn expect_downward_env(p: &mut Problems, who: &str, c: &Value, names: &[&str]) {
    let want = |n: &str| match n {
        "POD_NAME" => "metadata.name",
        "POD_NAMESPACE" => "metadata.namespace",
        _ => "status.podIP",
    };
    for n in names {
        let got = c
            .pointer("/env")
            .and_then(Value::as_array)
            .and_then(|es| es.iter().find(|e| str_at(e, "/name") == *n))
            .map(|e| str_at(e, "/valueFrom/fieldRef/fieldPath").to_string());
        p.expect_eq(&format!("{who} env {n}"), got.as_deref(), Some(want(n)));
    }
}

fn expect_secret_mount(p: &mut Problems, who: &str, pod: &Value, c: &Value) {
    let volume = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| str_at(v, "/secret/secretName") == NOTIFY_SECRET)
        });
    let Some(volume) = volume else {
        p.0.push(format!("{who}: no volume of Secret {NOTIFY_SECRET}"));
        return;
    };
    let mounted = c
        .pointer("/volumeMounts")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter()
                .find(|m| str_at(m, "/name") == str_at(volume, "/name"))
        })
        .map(|m| str_at(m, "/mountPath").to_string());
    p.expect_eq(
        &format!("{who} notify key mount"),
        mounted.as_deref(),
        Some("/etc/hapod/notify-key"),
    );
}

/// A probe's or Service's port (number or name) resolved in a container.
fn resolve_port(c: &Value, port: Option<&Value>) -> Option<i64> {
    match port? {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => c
            .pointer("/ports")?
            .as_array()?
            .iter()
            .find(|p| str_at(p, "/name") == name)?
            .pointer("/containerPort")?
            .as_i64(),
        _ => None,
    }
}

fn has_port(c: &Value, port: i64, protocol: &str) -> bool {
    c.pointer("/ports")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter().any(|p| {
                p.pointer("/containerPort").and_then(Value::as_i64) == Some(port)
                    && str_at(p, "/protocol") == protocol
            })
        })
}

/// The chart and kustomize must install the same thing.
fn parity(p: &mut Problems, kz: &Render, hm: &Render) {
    let (a, b) = (kz.ids(), hm.ids());
    let only_kz: Vec<_> = a.difference(&b).collect();
    let only_hm: Vec<_> = b.difference(&a).collect();
    p.expect(only_kz.is_empty() && only_hm.is_empty(), || {
        format!(
            "{} vs {}: objects differ; only in kustomize: {only_kz:?}; only in helm: {only_hm:?}",
            kz.label, hm.label
        )
    });
    for o in &kz.objects {
        let id = object_id(o);
        let Some(h) = hm.objects.iter().find(|h| object_id(h) == id) else {
            continue;
        };
        let what = format!("{} vs {}: {id}", kz.label, hm.label);
        for ptr in [
            "/rules",
            "/roleRef",
            "/subjects",
            "/spec/replicas",
            "/spec/selector",
            "/spec/ports",
            "/spec/minAvailable",
            "/spec/strategy",
            "/spec/minReadySeconds",
            "/spec/template/metadata/labels/app",
            "/spec/template/metadata/labels/role",
            "/spec/template/spec/serviceAccountName",
            "/spec/template/spec/automountServiceAccountToken",
            "/spec/template/spec/terminationGracePeriodSeconds",
            "/spec/template/spec/securityContext",
            "/spec/template/spec/affinity",
            "/metadata/labels/pod-security.kubernetes.io~1enforce",
        ] {
            p.expect_same(&format!("{what} {ptr}"), h.pointer(ptr), o.pointer(ptr));
        }
        let containers = |x: &Value| -> Vec<Value> {
            x.pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut c = c.clone();
                    // The chart passes every flag explicitly, kustomize only non-defaults.
                    if str_at(&c, "/name") == "controller" {
                        c.as_object_mut().map(|m| m.remove("args"));
                    }
                    // Mounts are a set; kustomize patches may reorder them.
                    sort_by_key(c.get_mut("volumeMounts"), "mountPath");
                    c
                })
                .collect()
        };
        let (hv, kv) = (volumes(h), volumes(o));
        p.expect_same(&format!("{what} volumes"), hv.as_ref(), kv.as_ref());
        let (hc, kc) = (Value::Array(containers(h)), Value::Array(containers(o)));
        p.expect_same(&format!("{what} containers"), Some(&hc), Some(&kc));
    }
}

/// The pod template's volumes, ordered by name (a set; kustomize patches may reorder it).
fn volumes(o: &Value) -> Option<Value> {
    let mut v = o.pointer("/spec/template/spec/volumes").cloned();
    sort_by_key(v.as_mut(), "name");
    v
}

fn sort_by_key(list: Option<&mut Value>, key: &str) {
    if let Some(Value::Array(items)) = list {
        items.sort_by(|a, b| a[key].to_string().cmp(&b[key].to_string()));
    }
}

/// Whether every sample app container has its own emptyDir on /tmp (`want`), or none has
/// (the process node of the tests provides a private /tmp and a volume there would hide it).
fn writable_tmp(r: &Render, want: bool) -> Result<()> {
    let app = r
        .objects
        .iter()
        .find(|o| {
            str_at(o, "/metadata/namespace") == APP_NAMESPACE
                && o.pointer("/spec/template").is_some()
        })
        .context("no sample app workload")?;
    let pod = app.pointer("/spec/template").context("no pod template")?;
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mount = c
            .pointer("/volumeMounts")
            .and_then(Value::as_array)
            .and_then(|ms| ms.iter().find(|m| str_at(m, "/mountPath") == "/tmp"));
        let name = str_at(c, "/name");
        match (mount, want) {
            (None, false) => {}
            (Some(_), false) => bail!("container {name} mounts a volume on /tmp"),
            (None, true) => bail!("container {name} has no writable /tmp"),
            (Some(m), true) => {
                let volume = pod
                    .pointer("/spec/volumes")
                    .and_then(Value::as_array)
                    .and_then(|vs| vs.iter().find(|v| v["name"] == m["name"]));
                ensure!(
                    volume.is_some_and(|v| v.pointer("/emptyDir").is_some()),
                    "container {name}: /tmp is not an emptyDir"
                );
            }
        }
    }
    Ok(())
}

fn overlay_is_rolling(r: &Render) -> Result<()> {
    let dep = r.find("Deployment", APP_NAMESPACE, APP_NAME)?;
    ensure!(
        dep.pointer("/spec/strategy/rollingUpdate")
            == Some(&json!({"maxSurge": 1, "maxUnavailable": 0})),
        "the app Deployment must roll with maxSurge 1 / maxUnavailable 0"
    );
    ensure!(
        !r.objects.iter().any(|o| str_at(o, "/kind") == "ReplicaSet"),
        "the overlay still has a ReplicaSet"
    );
    Ok(())
}

fn all_flags_rendered(r: &Render) -> Result<()> {
    let dep = r.find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let pod = dep.pointer("/spec/template").context("no pod template")?;
    let got = args(container(pod, "controller")?);
    let mut p = Problems::default();
    for (_, want) in ALL_FLAGS_SETS {
        p.expect(got.iter().any(|a| a == want), || {
            format!("missing {want} in {got:?}")
        });
    }
    // Flags must not appear twice (clap rejects a repeated single-value flag).
    let names: Vec<&str> = got
        .iter()
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    p.expect_eq("distinct flags", unique.len(), names.len());
    p.expect_eq(
        "controller port",
        resolve_port(container(pod, "controller")?, Some(&json!("http"))),
        Some(9090),
    );
    p.expect_eq(
        "metrics annotation",
        str_at(pod, "/metadata/annotations/prometheus.io~1port"),
        "9090",
    );
    // The chart's labels and values reach the app's pods and Service too.
    let app = r.find("ReplicaSet", APP_NAMESPACE, APP_NAME)?;
    p.expect_eq(
        "app role label follows controller.roleLabel/standbyValue",
        str_at(app, "/spec/template/metadata/labels/hapod-role"),
        "secondary",
    );
    let svc = r.find("Service", APP_NAMESPACE, APP_NAME)?;
    p.expect_eq(
        "service selects controller.activeValue",
        str_at(svc, "/spec/selector/hapod-role"),
        "primary",
    );
    let secret = r.find("Secret", APP_NAMESPACE, NOTIFY_SECRET)?;
    p.expect_eq("explicit key", str_at(secret, "/data/key"), "czNjcmV0");
    p.finish("helm every-flag render")
}

fn minimal_render(r: &Render) -> Result<()> {
    let kinds: BTreeSet<&str> = r.objects.iter().map(|o| str_at(o, "/kind")).collect();
    ensure!(
        !kinds.contains("Secret") && !kinds.contains("ReplicaSet") && !kinds.contains("Service"),
        "sampleApp.enabled=false / notifyKey.enabled=false still renders {kinds:?}"
    );
    let dep = r.find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let pod = dep.pointer("/spec/template").context("no pod template")?;
    let a = args(container(pod, "controller")?);
    ensure!(
        !a.iter().any(|x| x.starts_with("--notify-key-file")),
        "notifyKey.enabled=false still passes --notify-key-file"
    );
    Ok(())
}

/// Every container's args must parse with the real binary: `<bin> <args> --help` exits 0
/// only if every flag before `--help` exists and its value parses (clap stops at `--help`
/// before checking required arguments). `$(VAR)` references get sample values.
fn binaries_accept_args(r: &Renders, bin_dirs: &[PathBuf]) -> Result<()> {
    let mut p = Problems::default();
    let mut checked = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for render in r.all() {
        for o in &render.objects {
            for c in o
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let image = str_at(c, "/image");
                let binary = image.rsplit('/').next().unwrap_or(image);
                let binary = binary.split(':').next().unwrap_or(binary);
                let Some(path) = bin_dirs
                    .iter()
                    .map(|d| d.join(binary))
                    .find(|p| p.is_file())
                else {
                    missing.insert(binary.to_string());
                    continue;
                };
                let args: Vec<String> = args(c)
                    .iter()
                    .map(|a| {
                        a.replace("$(POD_IP)", "127.0.0.1")
                            .replace("$(POD_NAME)", "pod")
                            .replace("$(POD_NAMESPACE)", "ns")
                    })
                    .collect();
                if !checked.insert((binary.to_string(), args.clone())) {
                    continue;
                }
                let out = Command::new(&path)
                    .args(&args)
                    .arg("--help")
                    .env_clear()
                    .stdin(Stdio::null())
                    .output()
                    .with_context(|| format!("running {}", path.display()))?;
                p.expect(out.status.success(), || {
                    format!(
                        "{}: container {} of {}: `{binary} {}` is refused: {}",
                        render.label,
                        str_at(c, "/name"),
                        object_id(o),
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            }
        }
    }
    for m in &missing {
        eprintln!(
            "xtask deploy: note: {m} not found in {bin_dirs:?}; its args were not checked \
             (build the workspace or pass --bin-dir)"
        );
    }
    eprintln!(
        "xtask deploy: {} distinct command lines checked against the real binaries",
        checked.len()
    );
    p.finish("binaries accept the manifests' args")
}

// ---------------------------------------------------------------------------------------
// Server checks
// ---------------------------------------------------------------------------------------

/// A kubectl binary bound to a kubeconfig.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(bin: impl Into<PathBuf>, kubeconfig: &Path) -> Self {
        Self {
            bin: bin.into(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    fn with_kubeconfig(&self, kubeconfig: &Path) -> Self {
        Self::new(self.bin.clone(), kubeconfig)
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        run_capture(self.cmd().args(args))
    }

    /// `kubectl apply -f` of `yaml`; any warning of the API server (deprecated API, Pod
    /// Security `warn` violations of a pod template, ...) is an error.
    fn apply(&self, yaml: &str, extra: &[&str]) -> Result<String> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("manifests.yaml");
        std::fs::write(&file, yaml)?;
        let (stdout, stderr) =
            run_capture_all(self.cmd().args(["apply", "-f"]).arg(&file).args(extra))?;
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("warning"))
            .collect();
        ensure!(
            warnings.is_empty(),
            "the API server warned:\n{}",
            warnings.join("\n")
        );
        Ok(stdout)
    }
}

fn to_yaml_stream(objects: &[&Value]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(o)?);
    }
    Ok(out)
}

fn server_checks(r: &Renders, kubectl: &Kubectl) -> Result<()> {
    // Namespaces for real: a server-side dry run of a namespaced object needs its namespace.
    let namespaces: Vec<&Value> = r
        .base
        .objects
        .iter()
        .filter(|o| str_at(o, "/kind") == "Namespace")
        .collect();
    kubectl
        .apply(&to_yaml_stream(&namespaces)?, &[])
        .context("creating the namespaces")?;

    let mut p = Problems::default();
    for render in r.all() {
        let result = kubectl
            .apply(&render.yaml, &["--dry-run=server"])
            .map(|out| {
                eprintln!(
                    "xtask deploy: {}: server dry run ok ({} objects)",
                    render.label,
                    out.lines().count()
                );
            });
        p.wrap(
            &format!("{} (kubectl apply --dry-run=server)", render.label),
            result,
        );
    }
    p.finish("server-side validation")?;

    // RBAC for real, from each source in turn (same names: the second replaces the first),
    // each time proven with the ServiceAccount's own token.
    for render in [&r.base, &r.helm_default] {
        let rbac: Vec<&Value> = render
            .objects
            .iter()
            .filter(|o| {
                matches!(
                    str_at(o, "/kind"),
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            })
            .collect();
        kubectl
            .apply(&to_yaml_stream(&rbac)?, &[])
            .with_context(|| format!("applying the RBAC of {}", render.label))?;
        eprintln!("xtask deploy: RBAC of {}:", render.label);
        prove_rbac(
            kubectl,
            CONTROLLER_NAMESPACE,
            CONTROLLER_NAME,
            APP_NAMESPACE,
        )?;
    }
    Ok(())
}

/// One `kubectl auth can-i` question and the answer the RBAC must give.
struct Can {
    verb: &'static str,
    resource: &'static str,
    /// None: all namespaces (`-A`); Some("") for cluster-scoped resources.
    namespace: Option<String>,
    allowed: bool,
}

fn rbac_expectations(controller_ns: &str, app_ns: &str) -> Vec<Can> {
    let mut v = Vec::new();
    let mut add = |verbs: &[&'static str], resource: &'static str, ns: Option<&str>, allowed| {
        for verb in verbs {
            v.push(Can {
                verb,
                resource,
                namespace: ns.map(str::to_string),
                allowed,
            });
        }
    };
    // Needed.
    add(
        &["get", "list", "watch", "patch", "delete"],
        "pods",
        None,
        true,
    );
    add(
        &["get", "list", "watch", "patch", "delete"],
        "pods",
        Some(app_ns),
        true,
    );
    add(&["get", "patch", "delete"], "pods", Some("default"), true);
    add(
        &["get", "list", "watch", "patch"],
        "pods",
        Some(controller_ns),
        true,
    );
    add(
        &["create", "patch"],
        "events.events.k8s.io",
        Some(app_ns),
        true,
    );
    add(&["create", "patch"], "events", Some(app_ns), true);
    add(
        &["create", "patch"],
        "events.events.k8s.io",
        Some(controller_ns),
        true,
    );
    let lease_verbs = ["get", "list", "watch", "create", "update", "patch"];
    add(
        &lease_verbs,
        "leases.coordination.k8s.io",
        Some(controller_ns),
        true,
    );
    // Must not have.
    add(&["create", "update"], "pods", Some(app_ns), false);
    add(&["create", "update"], "pods", None, false);
    add(&["create"], "pods/exec", Some(app_ns), false);
    add(&["create"], "pods/eviction", Some(app_ns), false);
    add(&["patch", "update"], "pods/status", Some(app_ns), false);
    add(
        &["delete", "create", "patch"],
        "services",
        Some(app_ns),
        false,
    );
    add(&["get", "list"], "secrets", None, false);
    add(&["get", "list"], "secrets", Some(controller_ns), false);
    add(&["get", "list"], "secrets", Some(app_ns), false);
    add(
        &["create", "update", "get"],
        "leases.coordination.k8s.io",
        Some(app_ns),
        false,
    );
    add(
        &["delete"],
        "leases.coordination.k8s.io",
        Some(controller_ns),
        false,
    );
    add(&["delete", "list"], "events", Some(app_ns), false);
    add(
        &["patch", "delete"],
        "deployments.apps",
        Some(app_ns),
        false,
    );
    add(
        &["patch", "delete"],
        "replicasets.apps",
        Some(app_ns),
        false,
    );
    add(&["list", "patch"], "nodes", Some(""), false);
    add(
        &["create", "patch", "escalate", "bind"],
        "clusterroles.rbac.authorization.k8s.io",
        Some(""),
        false,
    );
    add(
        &["create"],
        "serviceaccounts/token",
        Some(controller_ns),
        false,
    );
    v
}

/// Proves, with the ServiceAccount's own token, that it can do everything the controller
/// does and none of the listed things it must not.
/// The RBAC proof as a library call, for the end-to-end tests: with the ServiceAccount's own
/// token (`kubectl create token`), `kubectl auth can-i` must answer yes to every verb the
/// controller uses and no to each of a list of things it must not do. `kubectl`: the binary
/// to use (e.g. the control plane's own); `kubeconfig`: an admin kubeconfig.
pub fn prove_controller_rbac(
    kubectl: &Path,
    kubeconfig: &Path,
    controller_ns: &str,
    service_account: &str,
    app_ns: &str,
) -> Result<()> {
    prove_rbac(
        &Kubectl::new(kubectl, kubeconfig),
        controller_ns,
        service_account,
        app_ns,
    )
}

fn prove_rbac(
    kubectl: &Kubectl,
    controller_ns: &str,
    service_account: &str,
    app_ns: &str,
) -> Result<()> {
    let token = kubectl
        .run(&[
            "create",
            "token",
            service_account,
            "--namespace",
            controller_ns,
            "--duration",
            "10m",
        ])
        .context("kubectl create token")?;
    let view = kubectl.run(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ])?;
    let view: Value = serde_json::from_str(&view)?;
    let mut cluster = view
        .pointer("/clusters/0/cluster")
        .context("kubeconfig has no cluster")?
        .clone();
    if let Some(m) = cluster.as_object_mut() {
        m.retain(|k, _| {
            matches!(
                k.as_str(),
                "server"
                    | "certificate-authority-data"
                    | "tls-server-name"
                    | "insecure-skip-tls-verify"
            )
        });
    }
    // A kubeconfig holding nothing but the token: no client certificate may authenticate.
    let sa_config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    });
    let dir = tempfile::tempdir()?;
    let sa_kubeconfig = dir.path().join("sa.kubeconfig");
    std::fs::write(&sa_kubeconfig, serde_json::to_vec(&sa_config)?)?;
    let sa = kubectl.with_kubeconfig(&sa_kubeconfig);

    let whoami: Value = serde_json::from_str(&sa.run(&["auth", "whoami", "-o", "json"])?)?;
    let user = str_at(&whoami, "/status/userInfo/username").to_string();
    let want_user = format!("system:serviceaccount:{controller_ns}:{service_account}");
    ensure!(
        user == want_user,
        "token authenticates as {user:?}, not {want_user}"
    );

    let mut p = Problems::default();
    let expectations = rbac_expectations(controller_ns, app_ns);
    let mut table = BTreeMap::new();
    for can in &expectations {
        let mut cmd = sa.cmd();
        cmd.args(["auth", "can-i", can.verb]);
        match can.resource.split_once('/') {
            Some((resource, sub)) => cmd.args([resource, "--subresource", sub]),
            None => cmd.arg(can.resource),
        };
        match can.namespace.as_deref() {
            None => {
                cmd.arg("--all-namespaces");
            }
            Some("") => {}
            Some(ns) => {
                cmd.args(["--namespace", ns]);
            }
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let yes = match (out.status.code(), answer.as_str()) {
            (Some(0), "yes") => true,
            (Some(1), a) if a.starts_with("no") => false,
            _ => bail!(
                "kubectl auth can-i {} {}: unexpected answer {answer:?} ({}): {}",
                can.verb,
                can.resource,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        let scope = match can.namespace.as_deref() {
            None => "all namespaces".to_string(),
            Some("") => "cluster".to_string(),
            Some(ns) => ns.to_string(),
        };
        table.insert(
            format!("{:>8} {} ({scope})", can.verb, can.resource),
            (yes, can.allowed),
        );
        p.expect(yes == can.allowed, || {
            format!(
                "{user} can-i {} {} in {scope}: {}, must be {}",
                can.verb,
                can.resource,
                if yes { "yes" } else { "no" },
                if can.allowed { "yes" } else { "no" }
            )
        });
    }
    let allowed = table.values().filter(|(yes, _)| *yes).count();
    eprintln!(
        "xtask deploy: RBAC of {user}: {} questions, {allowed} allowed, {} denied",
        table.len(),
        table.len() - allowed
    );
    p.finish("RBAC proof (kubectl auth can-i with the ServiceAccount token)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_streams_round_trip_and_skip_empty_documents() {
        let yaml = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: a\n\
                    data:\n  key: \"0123\"\n";
        let objects = parse_documents(yaml).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(str_at(&objects[1], "/data/key"), "0123");
        let again =
            parse_documents(&to_yaml_stream(&objects.iter().collect::<Vec<_>>()).unwrap()).unwrap();
        assert_eq!(again, objects);
    }
}
