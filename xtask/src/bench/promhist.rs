//! Prometheus text-format histograms: parse, subtract two scrapes, estimate quantiles the way
//! PromQL's `histogram_quantile` does (linear interpolation inside the bucket).

use std::collections::BTreeMap;

use hapod_testkit::prom::{self, Sample};

/// One histogram series: cumulative bucket counts by upper bound, plus sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist {
    /// (le, cumulative count), sorted by le; +Inf last
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

/// Series key: metric name + its labels except `le`, e.g. `hapod_stage_seconds{stage="decide"}`.
pub type Scrape = BTreeMap<String, Hist>;

fn key_of(name: &str, labels: &[(String, String)]) -> String {
    let l: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k != "le")
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    if l.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", l.join(","))
    }
}

/// Parses every `*_bucket`, `*_sum`, `*_count` series of the exposition (through the kit's
/// one Prometheus text parser, [`hapod_testkit::prom`]).
pub fn parse(text: &str) -> Scrape {
    let mut out: Scrape = BTreeMap::new();
    for Sample {
        name,
        labels,
        value: v,
    } in prom::samples(text)
    {
        if let Some(base) = name.strip_suffix("_bucket") {
            let Some(le) = labels.iter().find(|(k, _)| k == "le").map(|(_, v)| {
                if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or(f64::NAN)
                }
            }) else {
                continue;
            };
            out.entry(key_of(base, &labels))
                .or_default()
                .buckets
                .push((le, v));
        } else if let Some(base) = name.strip_suffix("_sum") {
            out.entry(key_of(base, &labels)).or_default().sum = v;
        } else if let Some(base) = name.strip_suffix("_count") {
            out.entry(key_of(base, &labels)).or_default().count = v;
        }
    }
    out.retain(|_, h| !h.buckets.is_empty());
    for h in out.values_mut() {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

impl Hist {
    /// self - before (bucket by bucket); for a counter reset (the process restarted) returns
    /// self unchanged.
    pub fn minus(&self, before: &Hist) -> Hist {
        if before.count > self.count || before.buckets.len() != self.buckets.len() {
            return self.clone();
        }
        Hist {
            buckets: self
                .buckets
                .iter()
                .zip(&before.buckets)
                .map(|((le, a), (_, b))| (*le, a - b))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// PromQL-style quantile estimate (q in 0..=1), in the histogram's unit.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |b| b.1);
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let mut prev_le = 0.0;
        let mut prev_c = 0.0;
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    // above the highest finite bound: report that bound
                    return prev_le;
                }
                if c - prev_c <= 0.0 {
                    return le;
                }
                return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c);
            }
            prev_le = le;
            prev_c = c;
        }
        prev_le
    }

    /// Upper bound of the highest non-empty bucket (the max is somewhere below it).
    pub fn max_bound(&self) -> f64 {
        let mut prev_c = 0.0;
        let mut bound = f64::NAN;
        for &(le, c) in &self.buckets {
            if c > prev_c {
                bound = le;
            }
            prev_c = c;
        }
        bound
    }
}

/// Difference of two scrapes, keeping only series with observations in between.
pub fn diff(after: &Scrape, before: &Scrape) -> Scrape {
    after
        .iter()
        .map(|(k, h)| {
            (
                k.clone(),
                before.get(k).map_or_else(|| h.clone(), |b| h.minus(b)),
            )
        })
        .filter(|(_, h)| h.count > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP hapod_stage_seconds Stage latency.
# TYPE hapod_stage_seconds histogram
hapod_stage_seconds_bucket{stage="decide",le="0.001"} 8
hapod_stage_seconds_bucket{stage="decide",le="0.01"} 10
hapod_stage_seconds_bucket{stage="decide",le="+Inf"} 10
hapod_stage_seconds_sum{stage="decide"} 0.02
hapod_stage_seconds_count{stage="decide"} 10
other_total 3
"#;

    #[test]
    fn parses_and_estimates() {
        let s = parse(TEXT);
        let h = &s["hapod_stage_seconds{stage=\"decide\"}"];
        assert_eq!(h.count, 10.0);
        assert_eq!(h.buckets.len(), 3);
        // rank 5 of 8 in [0, 0.001]
        assert!((h.quantile(0.5) - 0.000625).abs() < 1e-9);
        // rank 9.9: in (0.001, 0.01], 1.9 of 2
        assert!((h.quantile(0.99) - (0.001 + 0.009 * 1.9 / 2.0)).abs() < 1e-9);
        assert_eq!(h.max_bound(), 0.01);
    }

    #[test]
    fn diff_subtracts() {
        let a = parse(TEXT);
        let b = parse(&TEXT.replace("} 8", "} 4").replace("} 10", "} 6"));
        let d = diff(&a, &b);
        let h = &d["hapod_stage_seconds{stage=\"decide\"}"];
        assert_eq!(h.count, 4.0);
        assert_eq!(h.buckets[0].1, 4.0);
        assert!(diff(&a, &a).is_empty());
    }
}
