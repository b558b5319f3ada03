//! Waiting on something that may not exist right now (a deadline, a listener, a child, a task).
//!
//! A `select!` branch needs a future even when there is nothing to wait for, and a future that never
//! completes is the honest stand-in: the branch simply never fires. Spelled once here rather than as a
//! hand-written `Some => .await, None => pending()` per source.

use std::future::Future;

use tokio::time::Instant;

/// `fut`'s output; never, without one.
pub async fn or_never<F: Future>(fut: Option<F>) -> F::Output {
    match fut {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

/// Completes at `at`; never, without a deadline.
pub async fn sleep_until(at: Option<impl Into<Instant>>) {
    or_never(at.map(|at| tokio::time::sleep_until(at.into()))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn none_never_completes_and_some_does() {
        let never = tokio::time::timeout(Duration::from_millis(50), sleep_until(None::<Instant>)).await;
        assert!(never.is_err());
        let at = Instant::now() + Duration::from_millis(20);
        sleep_until(Some(at)).await;
        assert!(Instant::now() >= at);
        assert_eq!(or_never(Some(async { 7 })).await, 7);
    }
}
