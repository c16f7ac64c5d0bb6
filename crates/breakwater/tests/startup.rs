//! Start-up refuses a service whose Redis user cannot write its own keyspace.

use std::process::Stdio;
use std::time::Duration;

use breakwater_testkit::{RedisServer, deploy_acl_for_test};
use tokio::process::Command;

/// Dedup given storm's Redis user (limited to `bw:storm:*`) exits at once,
/// saying which keys it cannot write and what to do.
#[tokio::test]
async fn a_service_with_another_services_redis_user_fails_at_start_up() {
    let acl = deploy_acl_for_test("dev.acl");
    let redis = RedisServer::builder().acl_file(acl.path()).start().await;
    let run = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["dedup", "--listen", "127.0.0.1:0"])
        .env("BREAKWATER_DEDUP__STORE", "redis")
        .env("BREAKWATER_DEDUP__REDIS__URL", redis.url_as("bw-storm", "change-me-storm"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run).await.expect("exits by itself").expect("runs");
    assert!(!output.status.success(), "dedup must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dedup may not write its own keys bw:dedup:*"), "{stderr}");
    assert!(stderr.contains("another service's user"), "{stderr}");

    // With its own user it starts (and is stopped by the test).
    let mut own = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["dedup", "--listen", "127.0.0.1:0"])
        .env("BREAKWATER_DEDUP__STORE", "redis")
        .env("BREAKWATER_DEDUP__REDIS__URL", redis.url_as("bw-dedup", "change-me-dedup"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let early_exit = tokio::time::timeout(Duration::from_secs(2), own.wait()).await;
    assert!(early_exit.is_err(), "dedup with its own user keeps running: {early_exit:?}");
}
