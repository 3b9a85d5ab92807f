//! The sidecar example of docs/deploy.md: an application pod with the `hapod-agent` sidecar,
//! taken from the doc itself so that the doc cannot drift from what works.

use anyhow::{Context, Result};
use serde_json::Value;

use super::invariants::{args, expect_downward_env, expect_file_on_empty_dir, pod_spec};
use super::problems::Problems;
use super::render::{Render, str_at};

const DOC: &str = "docs/deploy.md";
/// The comment right before the example's YAML block.
const MARKER: &str = "<!-- cargo xtask deploy check applies this pod";

/// The YAML block after `MARKER` in docs/deploy.md.
pub(crate) fn sidecar_example() -> Result<Render> {
    let text = std::fs::read_to_string(hapod_testkit::workspace_root().join(DOC))?;
    let after = text
        .split_once(MARKER)
        .with_context(|| format!("{DOC}: no {MARKER:?}"))?
        .1;
    let block = after
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .with_context(|| format!("{DOC}: no ```yaml block after the marker"))?
        .0;
    Render::new(format!("{DOC} sidecar example"), block.to_string())
}

/// The agent container of the example has what the agent needs: the downward API env, its
/// epoch file on an emptyDir, the key from a mounted Secret, the notify port declared, and a
/// role file on an emptyDir the application's container mounts too.
pub(crate) fn sidecar_example_checks(r: &Render) -> Result<()> {
    let pod = r
        .objects
        .iter()
        .find(|o| str_at(o, "/kind") == "Pod")
        .context("no Pod")?;
    let spec = pod_spec(pod).context("no pod spec")?;
    let containers = spec
        .pointer("/containers")
        .and_then(Value::as_array)
        .context("no containers")?;
    let agent = containers
        .iter()
        .find(|c| str_at(c, "/image").contains("/hapod-agent:"))
        .context("no hapod-agent container")?;
    let mut p = Problems::default();
    expect_downward_env(&mut p, "agent", agent, &["POD_IP", "POD_NAME", "POD_UID"]);
    let a = args(agent);
    let flag = |name: &str| {
        let prefix = format!("--{name}=");
        a.iter().find_map(|x| x.strip_prefix(&prefix))
    };
    p.expect_eq("agent --pod-ip", flag("pod-ip"), Some("$(POD_IP)"));
    let epoch_file = agent
        .pointer("/env")
        .and_then(Value::as_array)
        .and_then(|es| es.iter().find(|e| str_at(e, "/name") == "HAPOD_EPOCH_FILE"))
        .map(|e| str_at(e, "/value"));
    match epoch_file {
        Some(file) => {
            expect_file_on_empty_dir(&mut p, spec, agent, "agent: HAPOD_EPOCH_FILE", file);
        }
        None => p.0.push("agent has no HAPOD_EPOCH_FILE".into()),
    }
    match flag("notify-key-file") {
        Some(key) => p.expect(
            volume_of(spec, agent, key).is_some_and(|v| v.pointer("/secret").is_some()),
            || format!("agent: the key file {key} is not on a mounted Secret"),
        ),
        None => p.0.push("agent has no --notify-key-file".into()),
    }
    let port = flag("notify-port").unwrap_or("10001");
    let declared = agent
        .pointer("/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|x| {
            x.pointer("/containerPort").map(Value::to_string).as_deref() == Some(port)
                && str_at(x, "/protocol") == "UDP"
        });
    p.expect(declared, || {
        format!("agent does not declare its notify port {port}/UDP")
    });
    match flag("role-file") {
        Some(file) => {
            expect_file_on_empty_dir(&mut p, spec, agent, "agent: --role-file", file);
            let shared = containers
                .iter()
                .filter(|c| !std::ptr::eq(*c, agent))
                .any(|c| mount_of(c, file).is_some());
            p.expect(shared, || {
                format!("no other container mounts the agent's role file {file}")
            });
        }
        None => p.0.push("agent has no --role-file".into()),
    }
    p.finish(&r.label)
}

/// The volume mount of container `c` holding `file`.
fn mount_of<'a>(c: &'a Value, file: &str) -> Option<&'a Value> {
    c.pointer("/volumeMounts")
        .and_then(Value::as_array)?
        .iter()
        .find(|m| {
            let dir = str_at(m, "/mountPath").trim_end_matches('/');
            file.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// The volume of the pod `spec` that holds `file` in container `c`.
pub(crate) fn volume_of<'a>(spec: &'a Value, c: &Value, file: &str) -> Option<&'a Value> {
    let mount = mount_of(c, file)?;
    spec.pointer("/volumes")?
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])
}
