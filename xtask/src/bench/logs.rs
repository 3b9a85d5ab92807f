//! The controller's JSON logs (`--log-format=json`, one object per line, written by the
//! process node to `logs/<pod folder>/controller.log` in its state folder): every numeric field whose name ends in a
//! time unit (`_ns`, `_us`, `_ms`, `_s`/`_seconds`) is a stage duration (a `Some(x)` debug
//! string counts too, e.g. the `promoted` line's `latency_ms`); this collects them with the
//! line's time stamp, in milliseconds, keyed `<message>.<field>`.

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
                .and_then(Path::parent)
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

fn number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().or_else(|| {
        v.as_str()?
            .strip_prefix("Some(")?
            .strip_suffix(')')?
            .parse()
            .ok()
    })
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-22T05:01:02.123456Z` → unix ns (UTC only, as tracing-subscriber writes it).
pub fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(9).collect();
    let nanos: i64 = format!("{digits:0<9}").parse().ok()?;
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs * 1_000_000_000 + nanos).ok()
}

/// One duration found in a log line.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSample {
    /// the line's time stamp, unix ns (0 when absent)
    pub t: u64,
    /// `<message>.<field without unit>`
    pub stage: String,
    pub ms: f64,
}

/// Stage samples from one log line (fields flattened or under "fields").
pub fn line_stages(line: &str) -> Vec<LogSample> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let Some(o) = v.as_object() else {
        return Vec::new();
    };
    let t = o
        .get("timestamp")
        .and_then(|t| t.as_str())
        .and_then(parse_rfc3339_utc)
        .unwrap_or(0);
    let fields = o.get("fields").and_then(|f| f.as_object());
    let message = fields
        .and_then(|f| f.get("message"))
        .or_else(|| o.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .replace(' ', "_");
    let mut out = Vec::new();
    for obj in [Some(o), fields].into_iter().flatten() {
        for (k, v) in obj {
            // absolute time stamps are not durations
            if k.contains("unix") || k.ends_with("_at_ns") || k == "timestamp" {
                continue;
            }
            if let Some(x) = number(v)
                && let Some((stage, ms)) = to_ms(k, x)
            {
                out.push(LogSample {
                    t,
                    stage: format!("{message}.{stage}"),
                    ms,
                });
            }
        }
    }
    out
}

/// Every duration in every controller log under `run_dir`.
pub fn controller_samples(run_dir: &Path) -> Result<Vec<LogSample>> {
    let mut files = Vec::new();
    walk(run_dir, &mut files, 0);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            out.extend(line_stages(line));
        }
    }
    out.sort_by_key(|s| s.t);
    Ok(out)
}

/// Groups samples by stage name.
pub fn by_stage(samples: &[LogSample]) -> Vec<(String, Vec<f64>)> {
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in samples {
        m.entry(s.stage.clone()).or_default().push(s.ms);
    }
    m.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_durations() {
        let l = r#"{"timestamp":"1970-01-02T00:00:01.5Z","level":"INFO","fields":{"message":"write stages","decide_us":120,"write_acked_ms":3.5,"sent_at_unix_nanos":5},"target":"t"}"#;
        let s = line_stages(l);
        let t = 86_401_500_000_000;
        assert!(s.contains(&LogSample {
            t,
            stage: "write_stages.decide".into(),
            ms: 0.12
        }));
        assert!(s.contains(&LogSample {
            t,
            stage: "write_stages.write_acked".into(),
            ms: 3.5
        }));
        assert_eq!(s.len(), 2);
        assert!(line_stages("not json").is_empty());
        let p = r#"{"timestamp":"2026-11-22T05:01:02.000001Z","fields":{"message":"promoted","latency_ms":"Some(2.75)"}}"#;
        let s = line_stages(p);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].stage, "promoted.latency");
        assert_eq!(s[0].ms, 2.75);
        assert_eq!(
            parse_rfc3339_utc("2026-11-22T05:01:02.000001Z"),
            Some(1_795_323_662_000_001_000)
        );
    }
}
