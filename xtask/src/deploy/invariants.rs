//! Offline checks of the renders: what the shipped defaults promise, the restricted pod
//! security profile, the overlays and the chart's values.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use hapod_testkit::testbed::{
    ACTIVE, APP_GROUP, APP_NAME, APP_NAMESPACE, CONTROLLER_GROUP, CONTROLLER_NAME,
    CONTROLLER_NAMESPACE, CRITICAL_CONTAINER, GROUP_LABEL, NOTIFY_SECRET, ROLE_LABEL, STANDBY,
};

use super::docs_example::{sidecar_example_checks, volume_of};
use super::helm_test::test_hook;
use super::netpol::network_policies;
use super::observability::monitoring;
use super::parity::parity;
use super::problems::Problems;
use super::releases::{selectors_fixed, side_by_side};
use super::render::{ALL_FLAGS_SETS, RELEASE, Render, Renders, object_id, str_at};

pub(crate) fn offline_checks(r: &Renders) -> Result<()> {
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
        network_policies(&mut p, render);
    }
    network_policies(&mut p, &r.helm_all_flags);
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
    p.wrap("helm monitoring", monitoring(&r.helm_monitoring));
    p.wrap("helm chart defaults", no_sample_app(&r.helm_chart_defaults));
    p.wrap("helm test", test_hook(&r.helm_chart_defaults));
    p.wrap("helm test", test_hook(&r.helm_all_flags));
    side_by_side(&mut p, &r.helm_side_by_side);
    selectors_fixed(&mut p, &r.helm_default, &r.helm_renamed);
    p.wrap("docs", sidecar_example_checks(&r.docs_sidecar));
    p.finish("offline checks")
}

/// What the shipped defaults promise (docs/contracts.md, docs/deploy.md).
fn shipped_invariants(r: &Render, p: &mut Problems) -> Result<()> {
    // Controller.
    let dep = r.find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let pod = expect_group_workload(p, "controller", dep, CONTROLLER_NAME, CONTROLLER_GROUP)?;
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
    // The application lease is on (docs/fencing.md): 10 renewals per lease, and an active
    // silent for 5 heartbeats is replaced.
    for flag in [
        "--application-lease-ms=1000",
        "--heartbeat-ms=100",
        "--report-timeout-ms=500",
    ] {
        p.expect(args(c).contains(&flag.to_string()), || {
            format!("controller does not pass {flag}")
        });
    }
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
    expect_secret_mount(p, r, "controller", pod, c);
    let pdb = r.find("PodDisruptionBudget", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    p.expect_eq(
        "pdb minAvailable",
        pdb.pointer("/spec/minAvailable"),
        Some(&json!(1)),
    );
    p.expect_eq(
        "pdb selector",
        pdb.pointer("/spec/selector"),
        dep.pointer("/spec/selector"),
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
    let pod = expect_group_workload(p, "app", app, APP_NAME, APP_GROUP)?;
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
    expect_downward_env(
        p,
        "app",
        main,
        &["POD_NAME", "POD_NAMESPACE", "POD_IP", "POD_UID"],
    );
    expect_epoch_file_on_empty_dir(p, pod, main);
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
    expect_secret_mount(p, r, "app", pod, main);
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

/// A workload of the shipped defaults: 2 replicas selected by `<group label>=<group>` alone
/// (a pod relabeled out of its group leaves its workload too; never the role label, which
/// changes on live pods), a pod template labeled with it, `role=standby`, the name `component`
/// and the release `RELEASE`. Returns the pod template.
fn expect_group_workload<'a>(
    p: &mut Problems,
    who: &str,
    workload: &'a Value,
    component: &str,
    group: &str,
) -> Result<&'a Value> {
    p.expect_eq(
        &format!("{who} replicas"),
        workload.pointer("/spec/replicas"),
        Some(&json!(2)),
    );
    p.expect_eq(
        &format!("{who} selector"),
        workload.pointer("/spec/selector/matchLabels"),
        Some(&json!({ GROUP_LABEL: group })),
    );
    let pod = workload
        .pointer("/spec/template")
        .context("no pod template")?;
    for (key, value) in [
        (GROUP_LABEL, group),
        ("role", STANDBY),
        ("app.kubernetes.io/name", component),
        ("app.kubernetes.io/instance", RELEASE),
    ] {
        p.expect_eq(
            &format!("{who} pod label {key}"),
            str_at(pod, &format!("/metadata/labels/{}", key.replace('/', "~1"))),
            value,
        );
    }
    Ok(pod)
}

/// The restricted profile on every pod template of every render.
fn pod_security_problems(r: &Render) -> Vec<String> {
    let mut p = Problems::default();
    for o in &r.objects {
        let Some(pod) = pod_spec(o) else {
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

/// The pod spec of a workload's template, or of a Pod.
pub(crate) fn pod_spec(o: &Value) -> Option<&Value> {
    match str_at(o, "/kind") {
        "Pod" => o.pointer("/spec"),
        _ => o.pointer("/spec/template/spec"),
    }
}

fn container<'a>(pod: &'a Value, name: &str) -> Result<&'a Value> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/name") == name))
        .with_context(|| format!("no container {name}"))
}

pub(crate) fn args(c: &Value) -> Vec<String> {
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

pub(crate) fn expect_downward_env(p: &mut Problems, who: &str, c: &Value, names: &[&str]) {
    let want = |n: &str| match n {
        "POD_NAME" => "metadata.name",
        "POD_NAMESPACE" => "metadata.namespace",
        "POD_UID" => "metadata.uid",
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

/// The agent's epoch file (`HAPOD_EPOCH_FILE`) lies on an emptyDir mounted in the container:
/// it must survive a container restart (not the pod), on a read-only root filesystem.
fn expect_epoch_file_on_empty_dir(p: &mut Problems, pod: &Value, c: &Value) {
    match (env_value(c, "HAPOD_EPOCH_FILE"), pod.pointer("/spec")) {
        (Some(file), Some(spec)) => {
            expect_file_on_empty_dir(p, spec, c, "app: HAPOD_EPOCH_FILE", &file);
        }
        _ => p.0.push("app has no HAPOD_EPOCH_FILE".into()),
    }
}

/// `file` lies on an emptyDir volume of the pod `spec` mounted in container `c`.
pub(crate) fn expect_file_on_empty_dir(
    p: &mut Problems,
    spec: &Value,
    c: &Value,
    what: &str,
    file: &str,
) {
    let empty_dir = volume_of(spec, c, file).and_then(|v| v.pointer("/emptyDir"));
    p.expect(empty_dir.is_some(), || {
        format!("{what} {file} is not on a mounted emptyDir")
    });
}

/// deploy/base ships the public placeholder key, which the binaries refuse unless allowed: its
/// pods must allow it or they would not start. The chart generates a key: it never allows it.
pub(crate) const ALLOW_DEMO_KEY: &str = "HAPOD_ALLOW_DEMO_KEY";

fn expect_secret_mount(p: &mut Problems, r: &Render, who: &str, pod: &Value, c: &Value) {
    let kustomize = r.label.starts_with("kustomize");
    p.expect_eq(
        &format!("{who} {ALLOW_DEMO_KEY}"),
        env_value(c, ALLOW_DEMO_KEY).as_deref(),
        kustomize.then_some("true"),
    );
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

/// Whether every sample app container has its own emptyDir on /tmp (`want`), or none has
/// (the process node of the tests provides a private /tmp and a volume there would hide it).
fn writable_tmp(r: &Render, want: bool) -> Result<()> {
    let pod = r
        .app_workload()?
        .pointer("/spec/template")
        .context("no pod template")?;
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
    // The key reaches every watched namespace and every extra one, no copy by hand
    // (`controller.namespaces={hapod-demo,other}`, `notifyKey.namespaces={team-c,other}`).
    for ns in [CONTROLLER_NAMESPACE, APP_NAMESPACE, "other", "team-c"] {
        match r.find("Secret", ns, NOTIFY_SECRET) {
            Ok(secret) => p.expect_eq(
                &format!("explicit key in {ns}"),
                str_at(secret, "/data/key"),
                "czNjcmV0",
            ),
            Err(e) => p.expect(false, || format!("{e:#}")),
        }
    }
    let secrets = r.objects.iter().filter(|o| str_at(o, "/kind") == "Secret");
    p.expect_eq("one key Secret per namespace", secrets.count(), 4);
    // The agents get the controller's drift allowance.
    let app_pod = app
        .pointer("/spec/template")
        .context("no app pod template")?;
    p.expect_eq(
        "app HAPOD_DRIFT_PPM follows controller.driftPpm",
        env_value(container(app_pod, "app")?, "HAPOD_DRIFT_PPM"),
        Some("500".into()),
    );
    p.finish("helm every-flag render")
}

/// The sample app is a demo: the chart installs it only when asked (deploy/base ships it).
fn no_sample_app(r: &Render) -> Result<()> {
    let demo: Vec<String> = r
        .objects
        .iter()
        .filter(|o| str_at(o, "/metadata/namespace") == APP_NAMESPACE)
        .map(object_id)
        .collect();
    ensure!(
        demo.is_empty(),
        "the sample app is installed by default: {demo:?}"
    );
    Ok(())
}

fn minimal_render(r: &Render) -> Result<()> {
    let kinds: BTreeSet<&str> = r.objects.iter().map(|o| str_at(o, "/kind")).collect();
    ensure!(
        !kinds.contains("Secret")
            && !kinds.contains("ReplicaSet")
            && !kinds.contains("Service")
            && !kinds.contains("NetworkPolicy"),
        "sampleApp.enabled=false / notifyKey.enabled=false / networkPolicy.enabled=false still \
         renders {kinds:?}"
    );
    let dep = r.find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let pod = dep.pointer("/spec/template").context("no pod template")?;
    let a = args(container(pod, "controller")?);
    ensure!(
        !a.iter().any(|x| x.starts_with("--notify-key-file")),
        "notifyKey.enabled=false still passes --notify-key-file"
    );
    ensure!(
        !a.iter()
            .any(|x| x.starts_with("--application-lease-ms") || x.starts_with("--heartbeat-ms")),
        "controller.applicationLeaseMs=0 still passes the lease flags: {a:?}"
    );
    Ok(())
}
