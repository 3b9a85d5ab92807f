//! Failed expectations, collected so that one run reports all of them.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_json::Value;

/// Collects every failed expectation, so one run reports all of them.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<String>);

impl Problems {
    pub(crate) fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    pub(crate) fn expect_eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: &str,
        got: T,
        want: T,
    ) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Like `expect_eq`, for JSON values: reports them as compact JSON.
    pub(crate) fn expect_same(&mut self, what: &str, got: Option<&Value>, want: Option<&Value>) {
        if got != want {
            let show = |v: Option<&Value>| v.map_or("(absent)".to_string(), Value::to_string);
            self.0.push(format!(
                "{what}:\n      got  {}\n      want {}",
                show(got),
                show(want)
            ));
        }
    }

    pub(crate) fn wrap(&mut self, label: &str, result: Result<()>) {
        if let Err(e) = result {
            self.0.push(format!("{label}: {e:#}"));
        }
    }

    pub(crate) fn finish(self, stage: &str) -> Result<()> {
        if self.0.is_empty() {
            eprintln!("xtask deploy: {stage}: ok");
            return Ok(());
        }
        let mut msg = format!("{stage}: {} problem(s):", self.0.len());
        for p in &self.0 {
            let _ = write!(msg, "\n  - {p}");
        }
        bail!(msg)
    }
}
