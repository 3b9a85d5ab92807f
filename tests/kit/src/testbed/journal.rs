//! The applications' own evidence of acting active: the demo app's acting journals (one file
//! per pod, a line per leader-only step with the host's CLOCK_MONOTONIC), which the process
//! node points every container at (`--container-env HAPOD_DEMO_JOURNAL_DIR=...`). Merged per
//! group on that one clock, two applications acting at once show up as a step of a lower
//! epoch after a step of a higher one, or as two pods stepping under one epoch.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::Testbed;

/// The variable the demo app reads its journal folder from.
pub const JOURNAL_ENV: &str = "HAPOD_DEMO_JOURNAL_DIR";
/// Where the journals of every run go, one folder per run.
const JOURNAL_ROOT: &str = "/var/tmp/hapod-journals";

/// One leader-only step of one application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// CLOCK_MONOTONIC of the host, nanoseconds.
    pub at_nanos: i128,
    pub epoch: u64,
    pub pod: String,
    pub uid: String,
}

/// Two applications of one group acting at once: `late` stepped after `early` although its
/// epoch is not newer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub group: String,
    pub early: Step,
    pub late: Step,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group {}: {} (uid {}) acted at epoch {} at {} ns, after {} (uid {}) acted at \
             epoch {} at {} ns",
            self.group,
            self.late.pod,
            self.late.uid,
            self.late.epoch,
            self.late.at_nanos,
            self.early.pod,
            self.early.uid,
            self.early.epoch,
            self.early.at_nanos
        )
    }
}

/// A change of the acting application in a group: the last step of one, the first of the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    pub group: String,
    pub from: Step,
    pub to: Step,
}

impl Handover {
    /// Time no application of the group acted, milliseconds.
    pub fn gap_ms(&self) -> f64 {
        (self.to.at_nanos - self.from.at_nanos) as f64 / 1e6
    }
}

/// Every group's steps in time order, keyed by the group as the orders name it
/// (`namespace/group`).
#[derive(Clone, Debug, Default)]
pub struct Journals {
    pub groups: BTreeMap<String, Vec<Step>>,
}

impl Journals {
    /// Reads every `<namespace>_<pod>_<uid>.acts` file in `dir` (none yet is an empty set).
    pub fn read(dir: &Path) -> Result<Journals> {
        let mut journals = Journals::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(journals),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "acts") {
                journals.add_file(&path)?;
            }
        }
        for steps in journals.groups.values_mut() {
            steps.sort_by_key(|s| s.at_nanos);
        }
        Ok(journals)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("journal name {}", path.display()))?;
        // Names and UIDs cannot contain `_` (DNS labels, UUIDs).
        let [_namespace, pod, uid] = stem.splitn(3, '_').collect::<Vec<_>>()[..] else {
            bail!(
                "journal name {} is not <namespace>_<pod>_<uid>",
                path.display()
            );
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            // The last line may be cut short by a write in progress.
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(at), Some(epoch), Some(group)) = (
                fields.first().and_then(|f| f.parse().ok()),
                fields.get(1).and_then(|f| f.parse().ok()),
                fields.get(2).filter(|g| !g.is_empty()),
            ) else {
                if n + 1 == text.lines().count() {
                    continue;
                }
                bail!(
                    "{}:{}: malformed journal line {line:?}",
                    path.display(),
                    n + 1
                );
            };
            // The group as the orders name it: `namespace/group`.
            self.groups
                .entry((*group).to_owned())
                .or_default()
                .push(Step {
                    at_nanos: at,
                    epoch,
                    pod: pod.to_owned(),
                    uid: uid.to_owned(),
                });
        }
        Ok(())
    }

    /// Every time two applications of a group acted at once.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let mut found = Vec::new();
        for (group, steps) in &self.groups {
            // The step with the highest epoch so far: any later step of another pod must
            // carry a higher epoch still.
            let mut newest: Option<&Step> = None;
            for step in steps {
                match newest {
                    Some(prev) if prev.uid != step.uid && step.epoch <= prev.epoch => {
                        found.push(Overlap {
                            group: group.clone(),
                            early: prev.clone(),
                            late: step.clone(),
                        });
                    }
                    Some(prev) if step.epoch < prev.epoch => {}
                    _ => newest = Some(step),
                }
            }
        }
        found
    }

    /// When two applications of a group acted at once, per group (merged spans, in time
    /// order): each [`Overlap`] spans from the first step its `early` pod took under its epoch
    /// to the `late` step. Empty when [`Journals::overlaps`] is.
    pub fn overlap_spans(&self) -> Vec<(String, i128, i128)> {
        let mut spans: Vec<(String, i128, i128)> = self
            .overlaps()
            .into_iter()
            .map(|o| {
                let start = self.groups[&o.group]
                    .iter()
                    .find(|s| s.uid == o.early.uid && s.epoch == o.early.epoch)
                    .map_or(o.early.at_nanos, |s| s.at_nanos);
                (o.group, start, o.late.at_nanos)
            })
            .collect();
        spans.sort();
        let mut merged: Vec<(String, i128, i128)> = Vec::new();
        for (group, start, end) in spans {
            match merged.last_mut() {
                Some(last) if last.0 == group && start <= last.2 => last.2 = last.2.max(end),
                _ => merged.push((group, start, end)),
            }
        }
        merged
    }

    /// Every change of the acting application, per group in time order.
    pub fn handovers(&self) -> Vec<Handover> {
        let mut out = Vec::new();
        for (group, steps) in &self.groups {
            for pair in steps.windows(2) {
                if pair[0].uid != pair[1].uid {
                    out.push(Handover {
                        group: group.clone(),
                        from: pair[0].clone(),
                        to: pair[1].clone(),
                    });
                }
            }
        }
        out
    }

    /// Steps of one pod.
    pub fn steps_of(&self, uid: &str) -> impl Iterator<Item = &Step> {
        self.groups.values().flatten().filter(move |s| s.uid == uid)
    }
}

/// The host's CLOCK_MONOTONIC now, nanoseconds (the journals' clock).
pub fn monotonic_nanos() -> i128 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec())
}

impl Testbed {
    /// Folder of the applications' acting journals: named after the run folder, under
    /// `/var/tmp`, since every container has its own `/tmp` (a run folder below `/tmp`, as in
    /// a checkout there, would be hidden from the applications).
    pub fn journal_dir(&self) -> PathBuf {
        let run = self.run_dir.file_name().unwrap_or_default();
        Path::new(JOURNAL_ROOT).join(run)
    }

    /// Reads the acting journals of the run so far.
    pub fn journals(&self) -> Result<Journals> {
        Journals::read(&self.journal_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[(i128, u64)]) {
        let text: String = lines
            .iter()
            .map(|(at, epoch)| format!("{at} {epoch} demo\n"))
            .collect();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn a_clean_handover_has_no_overlap_and_one_gap() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ns_a_uida.acts", &[(10, 1), (20, 1), (30, 1)]);
        write(dir.path(), "ns_b_uidb.acts", &[(45, 2), (55, 2)]);
        let journals = Journals::read(dir.path()).unwrap();
        assert!(journals.overlaps().is_empty());
        assert!(journals.overlap_spans().is_empty());
        let handovers = journals.handovers();
        assert_eq!(handovers.len(), 1);
        assert_eq!(
            (handovers[0].from.pod.as_str(), handovers[0].to.pod.as_str()),
            ("a", "b")
        );
        assert!((handovers[0].gap_ms() - 15e-6).abs() < 1e-12);
    }

    #[test]
    fn an_old_active_acting_after_the_new_one_is_an_overlap() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ns_a_uida.acts", &[(10, 1), (50, 1)]);
        write(dir.path(), "ns_b_uidb.acts", &[(40, 2), (60, 2)]);
        let overlaps = Journals::read(dir.path()).unwrap().overlaps();
        assert_eq!(overlaps.len(), 1, "{overlaps:?}");
        assert_eq!(
            (
                overlaps[0].early.pod.as_str(),
                overlaps[0].late.pod.as_str()
            ),
            ("b", "a")
        );
        let journals = Journals::read(dir.path()).unwrap();
        assert_eq!(journals.overlap_spans(), vec![("demo".to_owned(), 40, 50)]);
    }

    #[test]
    fn two_pods_under_one_epoch_is_an_overlap_and_a_bad_line_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ns_a_uida.acts", &[(10, 3)]);
        write(dir.path(), "ns_b_uidb.acts", &[(20, 3)]);
        assert_eq!(Journals::read(dir.path()).unwrap().overlaps().len(), 1);
        std::fs::write(dir.path().join("ns_c_uidc.acts"), "x 1 demo\n5 1 demo\n").unwrap();
        let error = Journals::read(dir.path()).unwrap_err();
        assert!(
            format!("{error:#}").contains("malformed journal line"),
            "{error:#}"
        );
    }
}
