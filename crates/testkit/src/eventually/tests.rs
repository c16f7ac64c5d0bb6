use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::eventually;

#[tokio::test]
async fn eventually_returns_the_first_some() {
    let calls = AtomicUsize::new(0);
    let value = eventually(Duration::from_secs(5), || async {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        (n >= 2).then_some(n)
    })
    .await;
    assert_eq!(value, 2);
}

#[tokio::test]
#[should_panic(expected = "condition not met within")]
async fn eventually_panics_after_the_timeout() {
    eventually(Duration::from_millis(50), || async { None::<()> }).await;
}

#[tokio::test]
async fn assert_eventually_re_evaluates_the_condition() {
    let counter = Arc::new(AtomicUsize::new(0));
    let background = Arc::clone(&counter);
    tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            background.fetch_add(1, Ordering::SeqCst);
        }
    });
    crate::assert_eventually!(
        Duration::from_secs(5),
        async { counter.load(Ordering::SeqCst) == 3 },
        "counter stuck at {}",
        counter.load(Ordering::SeqCst),
    );
}

#[tokio::test]
#[should_panic(expected = "not true within 50ms: flag never set (still false)")]
async fn assert_eventually_panics_with_the_message() {
    let flag = false;
    crate::assert_eventually!(Duration::from_millis(50), async { flag }, "flag never set (still {flag})");
}

#[tokio::test(start_paused = true)]
async fn works_under_paused_time() {
    let started = tokio::time::Instant::now();
    let value = eventually(Duration::from_secs(60), || async {
        (started.elapsed() >= Duration::from_secs(30)).then_some("done")
    })
    .await;
    assert_eq!(value, "done");
}
