//! The real binaries must accept the args the manifests give them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use super::invariants::{args, pod_spec};
use super::problems::Problems;
use super::render::{Render, Renders, object_id, str_at};

/// Every container's args must parse with the real binary: `<bin> <args> --help` exits 0
/// only if every flag before `--help` exists and its value parses (clap stops at `--help`
/// before checking required arguments). `$(VAR)` references get sample values. The binary
/// is the image's (its entrypoint), or the container's `command`. Every env var the
/// container sets must be one the binary reads (`[env: NAME=]` in that help), one its args
/// refer to as `$(NAME)`, or the controller's critical container marker.
pub(crate) fn binaries_accept_args(r: &Renders, bin_dirs: &[PathBuf]) -> Result<()> {
    let mut p = Problems::default();
    let mut checked = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for render in r.all() {
        let critical_env = critical_env(render);
        for o in &render.objects {
            for c in pod_spec(o)
                .and_then(|pod| pod.pointer("/containers"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // Only hapod's own images (not an example's application).
                if !str_at(c, "/image").starts_with("ghcr.io/hapod/") {
                    continue;
                }
                let binary = match c.pointer("/command/0").and_then(Value::as_str) {
                    Some(command) => command.rsplit('/').next().unwrap_or(command),
                    None => {
                        let image = str_at(c, "/image");
                        let binary = image.rsplit('/').next().unwrap_or(image);
                        binary.split(':').next().unwrap_or(binary)
                    }
                };
                let Some(path) = bin_dirs
                    .iter()
                    .map(|d| d.join(binary))
                    .find(|p| p.is_file())
                else {
                    missing.insert(binary.to_string());
                    continue;
                };
                let raw_args = args(c);
                let args: Vec<String> = raw_args
                    .iter()
                    .map(|a| {
                        a.replace("$(POD_IP)", "127.0.0.1")
                            .replace("$(POD_NAME)", "pod")
                            .replace("$(POD_NAMESPACE)", "ns")
                    })
                    .collect();
                let env: Vec<&str> = c
                    .pointer("/env")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|e| str_at(e, "/name"))
                    .collect();
                if !checked.insert((binary.to_string(), args.clone(), env.join(","))) {
                    continue;
                }
                let out = Command::new(&path)
                    .args(&args)
                    .arg("--help")
                    .env_clear()
                    .stdin(Stdio::null())
                    .output()
                    .with_context(|| format!("running {}", path.display()))?;
                let who = format!(
                    "{}: container {} of {}",
                    render.label,
                    str_at(c, "/name"),
                    object_id(o)
                );
                p.expect(out.status.success(), || {
                    format!(
                        "{who}: `{binary} {}` is refused: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
                let help = String::from_utf8_lossy(&out.stdout);
                let read: BTreeSet<&str> = help
                    .split("[env: ")
                    .skip(1)
                    .filter_map(|rest| rest.split('=').next())
                    .collect();
                for name in env {
                    let referenced = raw_args.iter().any(|a| a.contains(&format!("$({name})")));
                    p.expect(
                        read.contains(name) || referenced || name == critical_env,
                        || format!("{who}: env {name} is read by no flag of {binary}"),
                    );
                }
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
        "xtask deploy: {} distinct containers checked against the real binaries",
        checked.len()
    );
    p.finish("binaries accept the manifests' args")
}

/// The env var marking critical containers: the render's `--critical-env`, else the default.
fn critical_env(r: &Render) -> String {
    r.objects
        .iter()
        .filter_map(|o| o.pointer("/spec/template/spec/containers"))
        .filter_map(Value::as_array)
        .flatten()
        .flat_map(args)
        .find_map(|a| a.strip_prefix("--critical-env=").map(str::to_string))
        .unwrap_or_else(|| "pwcriticality".into())
}
