//! The real binaries must accept the args the manifests give them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use super::invariants::args;
use super::problems::Problems;
use super::render::{Renders, object_id, str_at};

/// Every container's args must parse with the real binary: `<bin> <args> --help` exits 0
/// only if every flag before `--help` exists and its value parses (clap stops at `--help`
/// before checking required arguments). `$(VAR)` references get sample values.
pub(crate) fn binaries_accept_args(r: &Renders, bin_dirs: &[PathBuf]) -> Result<()> {
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
