//! Polling instead of sleeping: wait for a condition with a deadline.
//!
//! Both helpers poll every [`POLL_INTERVAL`] on the tokio clock, so they also work under
//! `tokio::time::pause()`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually()`] and [`assert_eventually!`](crate::assert_eventually) re-check.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Some(value)` and returns that value.
///
/// # Panics
///
/// Panics when `timeout` passes without `probe` returning `Some`; the message names the
/// timeout. Use [`assert_eventually!`](crate::assert_eventually) for a custom message.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Deadline::after(timeout);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if deadline.expired() {
            panic!("eventually: condition not met within {timeout:?}");
        }
        deadline.tick().await;
    }
}

/// A polling deadline; the building block of [`assert_eventually!`](crate::assert_eventually).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline `timeout` from now on the tokio clock.
    pub fn after(timeout: Duration) -> Self {
        Self { at: Instant::now() + timeout }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Waits one [`POLL_INTERVAL`] before the next check.
    pub async fn tick(&self) {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asserts that an async condition becomes true within a timeout, polling every 20 ms.
///
/// The condition is an expression producing a future of `bool` (usually an `async { .. }`
/// block); it is re-evaluated on every poll, so it may borrow from the test. The optional
/// trailing arguments are a `format!` message, shown together with the timeout on failure.
///
/// ```no_run
/// # async fn demo(counter: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
/// breakwater_testkit::assert_eventually!(
///     Duration::from_secs(5),
///     async { counter.load(Ordering::SeqCst) >= 3 },
///     "expected 3 deliveries, saw {}",
///     counter.load(Ordering::SeqCst),
/// );
/// # }
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $condition:expr $(,)?) => {
        $crate::assert_eventually!($timeout, $condition, "{}", stringify!($condition))
    };
    ($timeout:expr, $condition:expr, $($message:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        let deadline = $crate::eventually::Deadline::after(timeout);
        loop {
            if $condition.await {
                break;
            }
            if deadline.expired() {
                panic!(
                    "assert_eventually: not true within {:?}: {}",
                    timeout,
                    format_args!($($message)+)
                );
            }
            deadline.tick().await;
        }
    }};
}

#[cfg(test)]
mod tests;
