//! Writes the node must not drop after one failure: the API server may be restarting, or
//! etcd stopped behind it, and a kubelet keeps trying too. One failed attempt used to leave a
//! pod terminating for good (its final delete) or its container folders unknown to the tests
//! (its /tmp annotations).

use std::future::Future;
use std::time::Duration;

/// Waits between attempts. Bounded (about a minute in all), so that a pod the API never
/// lets go does not hold its worker.
pub(crate) const API_WAITS: [Duration; 8] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
    Duration::from_secs(30),
];

/// Runs `attempt` until it succeeds or fails with an API status in `final_codes` (the pod
/// gone, or not this one any more: nothing left to write), waiting `waits` between other
/// failures; the last error once they are used up.
pub(crate) async fn until_done<F, Fut>(
    mut attempt: F,
    waits: &[Duration],
    final_codes: &[u16],
) -> kube::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kube::Result<()>>,
{
    let mut waits = waits.iter();
    loop {
        match attempt().await {
            Err(kube::Error::Api(e)) if final_codes.contains(&e.code) => return Ok(()),
            Err(e) => match waits.next() {
                Some(wait) => {
                    tracing::debug!(error = %e, ?wait, "API write failed; trying again");
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(e),
            },
            Ok(()) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("test", "Test")
                .with_code(code)
                .boxed(),
        )
    }

    /// A write that fails while the API server cannot reach etcd is tried again until it
    /// goes through; a final status (the pod gone) ends it; with every wait used up, the
    /// last error is returned.
    #[tokio::test]
    async fn a_write_is_retried_until_it_goes_through_or_has_nothing_left_to_do() {
        for (answers, final_codes, done) in [
            (vec![503, 503, 200], &[404, 409][..], true),
            (vec![500, 404], &[404, 409], true),
            (vec![409, 200], &[404], true),
            (vec![503; 4], &[404, 409], false),
        ] {
            let mut left = answers.clone().into_iter();
            let mut attempts = 0;
            let result = until_done(
                || {
                    attempts += 1;
                    let code = left.next().expect("no attempt beyond the waits");
                    async move {
                        if code == 200 {
                            Ok(())
                        } else {
                            Err(api_error(code))
                        }
                    }
                },
                &[Duration::from_millis(1); 3],
                final_codes,
            )
            .await;
            assert_eq!(result.is_ok(), done, "{answers:?}");
            assert_eq!(attempts, answers.len(), "{answers:?}");
        }
    }
}
