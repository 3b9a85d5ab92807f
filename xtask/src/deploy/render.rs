//! Rendering `deploy/`: kustomize builds, Helm templates, and the YAML streams between them and kubectl.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::docs_example::sidecar_example;
use super::observability::MONITORING_SETS;

use hapod_testkit::helm;
use hapod_testkit::testbed::{APP_NAMESPACE, CONTROLLER_NAMESPACE};

/// The release of every render but the side-by-side ones: its cluster-scoped names are
/// deploy/base's.
pub(crate) const RELEASE: &str = "hapod";

/// One rendered set of manifests.
pub(crate) struct Render {
    pub(crate) label: String,
    pub(crate) yaml: String,
    pub(crate) objects: Vec<Value>,
}

impl Render {
    pub(crate) fn new(label: impl Into<String>, yaml: String) -> Result<Self> {
        let label = label.into();
        let objects = parse_documents(&yaml).with_context(|| format!("parsing {label}"))?;
        ensure!(!objects.is_empty(), "{label} rendered no objects");
        Ok(Self {
            label,
            yaml,
            objects,
        })
    }

    pub(crate) fn ids(&self) -> BTreeSet<String> {
        self.objects.iter().map(object_id).collect()
    }

    pub(crate) fn find(&self, kind: &str, namespace: &str, name: &str) -> Result<&Value> {
        self.objects
            .iter()
            .find(|o| {
                str_at(o, "/kind") == kind
                    && str_at(o, "/metadata/namespace") == namespace
                    && str_at(o, "/metadata/name") == name
            })
            .with_context(|| format!("{}: no {kind} {namespace}/{name}", self.label))
    }

    /// The sample app's workload (ReplicaSet or Deployment).
    pub(crate) fn app_workload(&self) -> Result<&Value> {
        self.objects
            .iter()
            .find(|o| {
                str_at(o, "/metadata/namespace") == APP_NAMESPACE
                    && o.pointer("/spec/template").is_some()
            })
            .with_context(|| format!("{}: no sample app workload", self.label))
    }
}

pub(crate) fn parse_documents(yaml: &str) -> Result<Vec<Value>> {
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

pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn object_id(o: &Value) -> String {
    format!(
        "{}/{}/{}",
        str_at(o, "/kind"),
        str_at(o, "/metadata/namespace"),
        str_at(o, "/metadata/name")
    )
}

pub(crate) fn run_capture(cmd: &mut Command) -> Result<String> {
    run_capture_all(cmd).map(|(stdout, _)| stdout)
}

/// Runs a command that must succeed; returns its stdout and stderr.
pub(crate) fn run_capture_all(cmd: &mut Command) -> Result<(String, String)> {
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

pub(crate) fn helm_template(helm: &Path, label: &str, sets: &[&str]) -> Result<Render> {
    helm_release(helm, RELEASE, CONTROLLER_NAMESPACE, label, sets)
}

/// `helm template` of the chart as release `release` in `namespace`.
pub(crate) fn helm_release(
    helm: &Path,
    release: &str,
    namespace: &str,
    label: &str,
    sets: &[&str],
) -> Result<Render> {
    let chart = hapod_testkit::workspace_root().join("deploy/helm/hapod");
    let mut cmd = Command::new(helm);
    cmd.args(["template", release])
        .arg(&chart)
        .args(["--namespace", namespace]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let yaml = run_capture(&mut cmd)?;
    Render::new(format!("helm template ({label})"), yaml)
}

/// Every render the check validates: (kustomize base, overlay, helm renders).
pub(crate) struct Renders {
    pub(crate) base: Render,
    pub(crate) overlay: Render,
    pub(crate) real_cluster: Render,
    /// The chart's own defaults: no sample app, the `helm test` hook.
    pub(crate) helm_chart_defaults: Render,
    /// The chart as deploy/base: the sample app on, no test hook.
    pub(crate) helm_default: Render,
    pub(crate) helm_deployment: Render,
    pub(crate) helm_all_flags: Render,
    pub(crate) helm_minimal: Render,
    pub(crate) helm_real_cluster: Render,
    /// PodMonitor and PrometheusRule on: checked offline only (the control plane has no
    /// Prometheus Operator CRDs).
    pub(crate) helm_monitoring: Render,
    /// `helm_default` with every label and name a user may change on upgrade changed.
    pub(crate) helm_renamed: Render,
    /// Two releases of different names and namespaces, to be installed side by side.
    pub(crate) helm_side_by_side: [Render; 2],
    /// The application pod with the `hapod-agent` sidecar of docs/deploy.md.
    pub(crate) docs_sidecar: Render,
}

impl Renders {
    pub(crate) fn all(&self) -> [&Render; 10] {
        [
            &self.docs_sidecar,
            &self.base,
            &self.overlay,
            &self.real_cluster,
            &self.helm_chart_defaults,
            &self.helm_real_cluster,
            &self.helm_default,
            &self.helm_deployment,
            &self.helm_all_flags,
            &self.helm_minimal,
        ]
    }
}

/// Flags the all-flags render sets, and what must then appear in the controller's args.
pub(crate) const ALL_FLAGS_SETS: &[(&str, &str)] = &[
    ("sampleApp.enabled=true", "--listen-ip=$(POD_IP)"),
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
        "controller.applicationLeaseMs=3000",
        "--application-lease-ms=3000",
    ),
    ("controller.heartbeatMs=200", "--heartbeat-ms=200"),
    ("controller.reportTimeoutMs=0", "--report-timeout-ms=0"),
    ("controller.driftPpm=500", "--drift-ppm=500"),
    (
        "notifyKey.value=s3cret",
        "--notify-key-file=/etc/hapod/notify-key/key",
    ),
    (
        "controller.metrics.podAnnotations=true",
        "--listen-ip=$(POD_IP)",
    ),
];

/// More namespaces for the key Secret in the all-flags render (besides `controller.namespaces`).
pub(crate) const KEY_NAMESPACES_SET: &str = "notifyKey.namespaces={team-c,other}";

/// The sample app's pods in the all-flags render carry its group label and match its selector
/// (the app's workload selects by the group label, so the render fails without it).
const ALL_FLAGS_APP_LABELS: [&str; 2] = [
    "sampleApp.podLabels.group=hapod",
    "sampleApp.podLabels.tier=demo",
];

pub(crate) fn render_all() -> Result<Renders> {
    let helm = helm::ensure_helm()?;
    let base = kustomize("deploy/base")?;
    let overlay = kustomize("deploy/overlays/deployment-app")?;
    let real_cluster = kustomize("deploy/overlays/real-cluster")?;
    let helm_chart_defaults = helm_template(&helm, "chart defaults", &[])?;
    let ns = "namespace.create=true";
    // deploy/base ships the sample app and no test hook.
    let as_base = [ns, "sampleApp.enabled=true", "tests.enabled=false"];
    let helm_default = helm_template(&helm, "as deploy/base", &as_base)?;
    let helm_deployment = helm_template(
        &helm,
        "sampleApp.kind=Deployment",
        &[&as_base[..], &["sampleApp.kind=Deployment"]].concat(),
    )?;
    let all_sets: Vec<&str> = ALL_FLAGS_SETS
        .iter()
        .map(|(s, _)| *s)
        .chain([KEY_NAMESPACES_SET])
        .chain(ALL_FLAGS_APP_LABELS)
        .collect();
    let helm_all_flags = helm_template(&helm, "every flag set", &all_sets)?;
    let helm_real_cluster = helm_template(
        &helm,
        "Deployment, writable /tmp",
        &[
            &as_base[..],
            &["sampleApp.kind=Deployment", "sampleApp.writableTmp=true"],
        ]
        .concat(),
    )?;
    let helm_minimal = helm_template(
        &helm,
        "no sample app, no key, no application lease, no NetworkPolicy",
        &[
            "notifyKey.enabled=false",
            "controller.applicationLeaseMs=0",
            "networkPolicy.enabled=false",
        ],
    )?;
    let helm_monitoring = helm_template(&helm, "monitoring", MONITORING_SETS)?;
    let helm_renamed = helm_template(
        &helm,
        "as deploy/base, labels and names changed",
        &[&as_base[..], RENAMED_SETS].concat(),
    )?;
    let helm_side_by_side = SIDE_BY_SIDE.map(|(release, namespace)| {
        let demo = format!("sampleApp.namespace={namespace}-demo");
        let lease = format!("controller.leaseName={release}-lease");
        helm_release(
            &helm,
            release,
            namespace,
            &format!("release {release} in {namespace}"),
            &[ns, "sampleApp.enabled=true", &demo, &lease],
        )
    });
    let [a, b] = helm_side_by_side;
    let helm_side_by_side = [a?, b?];
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
    schema_refuses(&helm)?;
    Ok(Renders {
        base,
        overlay,
        real_cluster,
        helm_chart_defaults,
        helm_default,
        helm_deployment,
        helm_all_flags,
        helm_minimal,
        helm_real_cluster,
        helm_monitoring,
        helm_renamed,
        helm_side_by_side,
        docs_sidecar: sidecar_example()?,
    })
}

/// Values a user may change on upgrade: every label and name the workloads derive from them,
/// but the group labels (`app`), which name the groups and which the workloads select by.
pub(crate) const RENAMED_SETS: &[&str] = &[
    "controller.name=hapod-ctl",
    "controller.podLabels.tier=control",
    "sampleApp.name=demo",
    "sampleApp.podLabels.tier=web",
    "serviceAccount.name=ctl",
];

/// Releases (name, namespace) rendered to be installed side by side, each with its sample app
/// in a namespace of its own and a Lease of its own.
const SIDE_BY_SIDE: [(&str, &str); 2] = [("a", "hapod-a"), ("b", "hapod-b")];

/// Values `values.schema.json` must refuse: a wrong type, a misspelt key, a value outside its
/// enum, a port out of range, the controller's pods without the label their Deployment selects.
const REFUSED_SETS: &[&str] = &[
    "controller.replicas=two",
    "controller.podLabels.app=null",
    "controller.replica=2",
    "controller.logFormat=xml",
    "sampleApp.httpPort=70000",
];

/// `helm template` refuses each of `REFUSED_SETS` with a schema error: the schema is wired.
fn schema_refuses(helm: &Path) -> Result<()> {
    let chart = hapod_testkit::workspace_root().join("deploy/helm/hapod");
    for set in REFUSED_SETS {
        let out = Command::new(helm)
            .args(["template", RELEASE])
            .arg(&chart)
            .args(["--set", set])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("schema"),
            "helm template --set {set} was not refused by values.schema.json ({}):\n{stderr}",
            out.status
        );
    }
    eprintln!(
        "xtask deploy: values.schema.json refuses {} bad value sets",
        REFUSED_SETS.len()
    );
    Ok(())
}

pub(crate) fn to_yaml_stream(objects: &[&Value]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(o)?);
    }
    Ok(out)
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
