//! The controller's JSON logs (`--log-format=json`, one object per line, written by the
//! process node to `<pod dir>/logs/controller.log`): every numeric field whose name ends in a
//! time unit (`_ns`, `_us`, `_ms`, `_s`/`_seconds`) is a stage duration; this collects them per
//! field name, in milliseconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 12 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&p, out, depth + 1);
        } else if ft.is_file()
            && p.file_name().is_some_and(|n| n == "controller.log")
            && p.parent()
                .and_then(|d| d.file_name())
                .is_some_and(|n| n == "logs")
        {
            out.push(p);
        }
    }
}

fn to_ms(key: &str, v: f64) -> Option<(String, f64)> {
    for (suffix, f) in [
        ("_ns", 1e-6),
        ("_nanos", 1e-6),
        ("_us", 1e-3),
        ("_micros", 1e-3),
        ("_ms", 1.0),
        ("_millis", 1.0),
        ("_seconds", 1e3),
        ("_secs", 1e3),
    ] {
        if let Some(stage) = key.strip_suffix(suffix) {
            return Some((stage.to_string(), v * f));
        }
    }
    None
}

/// Stage samples from one log line (fields flattened or under "fields").
pub fn line_stages(line: &str) -> Vec<(String, f64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut visit = |obj: &serde_json::Map<String, serde_json::Value>| {
        for (k, v) in obj {
            // absolute time stamps are not durations
            if k.contains("unix") || k.ends_with("_at_ns") || k == "timestamp" {
                continue;
            }
            if let Some(x) = v.as_f64()
                && let Some(s) = to_ms(k, x)
            {
                out.push(s);
            }
        }
    };
    if let Some(o) = v.as_object() {
        visit(o);
        if let Some(f) = o.get("fields").and_then(|f| f.as_object()) {
            visit(f);
        }
    }
    out
}

/// Every controller log under `run_dir`, stage name → samples (ms).
pub fn controller_stages(run_dir: &Path) -> Result<Vec<(String, Vec<f64>)>> {
    let mut files = Vec::new();
    walk(run_dir, &mut files, 0);
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            for (k, v) in line_stages(line) {
                m.entry(k).or_default().push(v);
            }
        }
    }
    Ok(m.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_durations() {
        let l = r#"{"timestamp":"x","level":"INFO","fields":{"message":"failover","decide_us":120,"write_acked_ms":3.5,"sent_at_unix_nanos":5},"target":"t"}"#;
        let s = line_stages(l);
        assert!(s.contains(&("decide".into(), 0.12)));
        assert!(s.contains(&("write_acked".into(), 3.5)));
        assert_eq!(s.len(), 2);
        assert!(line_stages("not json").is_empty());
    }
}
