//! Writes per failover, from the acting controller's `/metrics` before and after each failure
//! kind: every write it sent (the `send` stage is observed once per write), those the API
//! acknowledged, those it refused by verb and status, and what the acknowledged ones did
//! (promotions, demotions, kills).

use std::collections::BTreeMap;

use hapod_testkit::prom;

use super::failover::Kind;
use super::promhist::Scrape;

/// The counters of one scrape, keyed `name{labels}` (labels in exposition order).
pub type Counters = BTreeMap<String, f64>;

/// Every `*_total` sample of an exposition.
pub fn counters(text: &str) -> Counters {
    prom::samples(text)
        .into_iter()
        .filter(|s| s.name.ends_with("_total"))
        .map(|s| {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (format!("{}{{{}}}", s.name, labels.join(",")), s.value)
        })
        .collect()
}

/// The writes of one kind's failovers, per failover.
#[derive(Clone, Debug, PartialEq)]
pub struct Writes {
    pub kind: Kind,
    pub failovers: usize,
    pub sent: f64,
    pub acked: f64,
    pub promotions: f64,
    pub demotions: f64,
    pub kills: f64,
    /// refused writes: (`verb code`, per failover)
    pub refused: Vec<(String, f64)>,
}

impl Writes {
    /// From the histogram and counter differences of `failovers` failovers of `kind`.
    pub fn per_failover(
        kind: Kind,
        failovers: usize,
        hists: &Scrape,
        after: &Counters,
        before: &Counters,
    ) -> Option<Writes> {
        if failovers == 0 {
            return None;
        }
        let n = failovers as f64;
        let stage = |s: &str| {
            hists
                .get(&format!("hapod_failover_stage_seconds{{stage=\"{s}\"}}"))
                .map_or(0.0, |h| h.count)
                / n
        };
        let delta = |key: &str| after.get(key).unwrap_or(&0.0) - before.get(key).unwrap_or(&0.0);
        let sum = |prefix: &str| -> f64 {
            after
                .keys()
                .filter(|k| k.starts_with(prefix))
                .map(|k| delta(k))
                .sum::<f64>()
                / n
        };
        let refused = after
            .keys()
            .filter(|k| k.starts_with("hapod_api_errors_total{"))
            .filter(|k| k.contains("verb=patch") || k.contains("verb=delete"))
            .filter_map(|k| {
                let d = delta(k);
                let labels = k.split_once('{')?.1.trim_end_matches('}');
                let get = |l: &str| {
                    labels
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(l)?.strip_prefix('='))
                        .unwrap_or("?")
                        .to_string()
                };
                (d > 0.0).then(|| (format!("{} {}", get("verb"), get("code")), d / n))
            })
            .collect();
        Some(Writes {
            kind,
            failovers,
            sent: stage("send"),
            acked: stage("ack"),
            promotions: sum("hapod_promotions_total{"),
            demotions: sum("hapod_demotions_total{"),
            kills: sum("hapod_critical_kills_total{"),
            refused,
        })
    }

    /// One line for the kind's stage table.
    pub fn describe(&self) -> String {
        let refused = if self.refused.is_empty() {
            "none refused".to_string()
        } else {
            self.refused
                .iter()
                .map(|(what, x)| format!("{x:.2} refused ({what})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "Writes per failover (the acting controller's counters over {} failovers): {:.2} \
             sent, {:.2} acknowledged ({:.2} promotions, {:.2} demotions, {:.2} kills), {refused}.",
            self.failovers, self.sent, self.acked, self.promotions, self.demotions, self.kills
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::promhist;

    const BEFORE: &str = r#"
hapod_failover_stage_seconds_bucket{stage="send",le="+Inf"} 4
hapod_failover_stage_seconds_count{stage="send"} 4
hapod_failover_stage_seconds_bucket{stage="ack",le="+Inf"} 2
hapod_failover_stage_seconds_count{stage="ack"} 2
hapod_promotions_total{reason="deleted"} 2
hapod_demotions_total 0
hapod_api_errors_total{verb="patch",code="404"} 1
hapod_api_errors_total{verb="get",code="404"} 1
"#;

    #[test]
    fn counts_each_kind_of_write_per_failover() {
        let after = BEFORE
            .replace("} 4", "} 8")
            .replace("ack\"} 2", "ack\"} 4")
            .replace("ack\",le=\"+Inf\"} 2", "ack\",le=\"+Inf\"} 4")
            .replace("deleted\"} 2", "deleted\"} 4")
            .replace("\"404\"} 1", "\"404\"} 3");
        let hists = promhist::diff(&promhist::parse(&after), &promhist::parse(BEFORE));
        let w = Writes::per_failover(
            Kind::ForceDelete,
            2,
            &hists,
            &counters(&after),
            &counters(BEFORE),
        )
        .unwrap();
        assert_eq!(
            (w.sent, w.acked, w.promotions, w.demotions),
            (2.0, 1.0, 1.0, 0.0)
        );
        // the re-read (get) is not a write
        assert_eq!(w.refused, vec![("patch 404".to_string(), 1.0)]);
        assert!(
            w.describe().contains("1.00 refused (patch 404)"),
            "{}",
            w.describe()
        );
        assert!(
            Writes::per_failover(
                Kind::ForceDelete,
                0,
                &hists,
                &Counters::new(),
                &Counters::new()
            )
            .is_none()
        );
    }
}
