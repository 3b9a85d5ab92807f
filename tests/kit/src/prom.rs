//! The one Prometheus/OpenMetrics text parser of the kit: the testbed reads counters off a
//! controller's `/metrics` with it ([`sum`]), and the benchmark builds its histograms from its
//! [`samples`].

/// One sample line: metric name, labels (in exposition order), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of one label.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of an exposition (comments, blank and unparsable lines skipped; a timestamp or
/// exemplar after the value ignored).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rfind('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => match line.split_once(' ') {
                Some((a, b)) => (a, b.trim()),
                None => continue,
            },
        };
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i + 1..series.len() - 1])),
            None => (series, Vec::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// Sum of the samples named `metric` whose labels include every `labels` pair.
pub fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == metric && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(start) = after.find('"') else { break };
        let mut val = String::new();
        let mut chars = after[start + 1..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(n);
                    }
                }
                '"' => {
                    end = Some(start + 1 + i);
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((key, val));
        match end {
            Some(e) => rest = &after[e + 1..],
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_filters_labels() {
        let text = "# TYPE hapod_notifications counter\n\
            hapod_notifications_total{role=\"active\",outcome=\"acked\"} 3\n\
            hapod_notifications_total{role=\"standby\",outcome=\"acked\"} 5\n\
            hapod_notifications_total{role=\"active\",outcome=\"timed_out\"} 1\n\
            hapod_groups 2\n\
            hapod_groups_total 7\n";
        let acked = [("role", "active"), ("outcome", "acked")];
        assert_eq!(sum(text, "hapod_notifications_total", &acked), 3.0);
        assert_eq!(sum(text, "hapod_notifications_total", &[]), 9.0);
        assert_eq!(sum(text, "hapod_groups", &[]), 2.0);
    }

    #[test]
    fn samples_read_escaped_labels_and_skip_timestamps() {
        let s = samples("m{a=\"x\\\"y\",b=\"z\"} 1.5 1700000000\n# c\nbad\n");
        assert_eq!(
            s,
            vec![Sample {
                name: "m".into(),
                labels: vec![("a".into(), "x\"y".into()), ("b".into(), "z".into())],
                value: 1.5,
            }]
        );
    }
}
