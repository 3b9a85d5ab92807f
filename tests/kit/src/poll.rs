//! One bounded poll for every "wait until" of the kit and the end-to-end tests, so that each
//! wait has a deadline, a pace and a timeout error that names what was awaited and what was
//! last seen (instead of a hand-rolled deadline/sleep loop per wait).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};

/// What one look at the system found.
pub enum Check<T> {
    /// The condition holds; the wait returns this value.
    Done(T),
    /// Not yet; why (what was seen), for the timeout error.
    NotYet(String),
}

/// Calls `check` every `every` until it returns [`Check::Done`] (returns its value), returns
/// an error (returns it at once), or `timeout` has passed: then fails with
/// "timeout after ... waiting for `what`: \<the last NotYet reason\>". A check still running at
/// the deadline is cancelled.
pub async fn await_condition<T, F, Fut>(
    what: impl Display,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let mut last = String::from("no check finished");
    let polled = tokio::time::timeout(timeout, async {
        loop {
            match check().await? {
                Check::Done(value) => return Ok(value),
                Check::NotYet(why) => last = why,
            }
            tokio::time::sleep(every).await;
        }
    })
    .await;
    match polled {
        Ok(result) => result,
        Err(_) => bail!("timeout after {timeout:?} waiting for {what}: {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_done() {
        let mut n = 0;
        let v = await_condition(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                let n = n;
                async move {
                    Ok(if n >= 3 {
                        Check::Done(n)
                    } else {
                        Check::NotYet(format!("n={n}"))
                    })
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn timeout_names_what_and_the_last_reason() {
        let err = await_condition(
            "the moon",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { Ok(Check::<()>::NotYet("still night".into())) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("waiting for the moon: still night"), "{err}");
    }

    #[tokio::test]
    async fn an_error_ends_the_wait() {
        let err = await_condition("x", Duration::from_secs(5), Duration::ZERO, || async {
            Err::<Check<()>, _>(anyhow::anyhow!("boom"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
