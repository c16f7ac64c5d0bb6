//! Promise 6 and seed 001: each service runs as its own Redis ACL user from
//! `deploy/redis/`, limited to its prefix, unable to read or change server
//! config, flush, list keys or touch another service's keys.

use std::time::Duration;

use breakwater_keyspace::{Keyspace, KeyspaceError, RedisConfig};
use breakwater_testkit::{RedisServer, RespConnection, RespValue, assert_eventually, deploy_acl_for_test};
use breakwater_tests::{Alert, TestGateway, accounted_alerts, webhook};

fn password(user: &str) -> String {
    format!("change-me-{}", user.trim_start_matches("bw-"))
}

fn redis_as(server: &RedisServer, user: &str) -> RedisConfig {
    // Budget checks every second: one that ran before the test's metrics recorder was in
    // place is not seen, the next one is.
    RedisConfig {
        url: server.url_as(user, &password(user)),
        key_root: "bw".into(),
        budget_check_secs: 1,
        ..RedisConfig::default()
    }
}

async fn run_as(server: &RedisServer, user: &str, args: &[&str]) -> RespValue {
    let mut conn = RespConnection::connect(server.port()).await.expect("connect");
    let auth = conn.command(&["AUTH", user, &password(user)]).await.expect("AUTH");
    assert!(!matches!(auth, RespValue::Error(_)), "AUTH {user}: {auth:?}");
    conn.command(args).await.expect("command")
}

/// `breakwater_redis_maxmemory_bytes{component}` from the gateway's `/metrics`.
async fn maxmemory_gauge(gw: &TestGateway, component: &str) -> Option<f64> {
    let metrics = reqwest::get(format!("{}/metrics", gw.url)).await.ok()?.text().await.ok()?;
    let prefix = format!("breakwater_redis_maxmemory_bytes{{component=\"{component}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok())
}

async fn storm_and_repeats(gw: &TestGateway) {
    let pods: Vec<Alert> =
        (0..8).map(|p| Alert::firing("PodCrashLooping").in_ns("prod").pod(&format!("p{p}"))).collect();
    let (status, answer) = gw.post_prometheus(&webhook(&pods)).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["results"][5]["outcome"], "storm_created");
    let (status, answer) = gw.post_prometheus(&webhook(&[pods[0].clone(), pods[7].clone()])).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(gw.degraded_calls().await, 0, "every component worked under its ACL user");
    // The drift guard read maxmemory with INFO alone (no CONFIG GET): each component's gauge
    // is set once its first check ran (whether the budgets fit is another test's matter).
    for component in ["dedup", "storm", "ratelimit"] {
        assert_eventually!(
            Duration::from_secs(5),
            async { maxmemory_gauge(gw, component).await.is_some_and(|m| m > 0.0) },
            "{component} read maxmemory: {:?}",
            maxmemory_gauge(gw, component).await
        );
    }
    assert_eventually!(
        Duration::from_secs(5),
        async { accounted_alerts(&gw.remediations()) == 10 },
        "10 alerts accounted for: {}",
        accounted_alerts(&gw.remediations())
    );
}

#[tokio::test]
async fn dev_topology_users_run_the_gateway_and_nothing_else() {
    let acl = deploy_acl_for_test("dev.acl");
    let server =
        RedisServer::builder().maxmemory("16mb").maxmemory_policy("volatile-lru").acl_file(acl.path()).start().await;
    let (dedup, storm, ratelimit) =
        (redis_as(&server, "bw-dedup"), redis_as(&server, "bw-storm"), redis_as(&server, "bw-ratelimit"));
    let gw = TestGateway::start_with_redis(server, |c| {
        c.dedup.redis = dedup;
        c.storm.redis = storm;
        c.ratelimit.redis = ratelimit;
    })
    .await;
    storm_and_repeats(&gw).await;
    let server = gw.redis.as_ref().expect("redis");

    let keys = server.admin_command(&["SCAN", "0", "COUNT", "10000"]).await;
    let keys: Vec<&str> = keys.lines().skip(1).collect();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(["bw:dedup:", "bw:storm:", "bw:rl:"].iter().any(|p| key.starts_with(p)), "{key} outside the prefixes");
    }
    for (user, other_prefix) in [("bw-dedup", "bw:storm:x"), ("bw-storm", "bw:rl:x"), ("bw-ratelimit", "bw:dedup:x")] {
        // Seed 001: a service cannot lower maxmemory.
        let answer = run_as(server, user, &["CONFIG", "SET", "maxmemory", "1mb"]).await;
        assert!(matches!(&answer, RespValue::Error(e) if e.starts_with("NOPERM")), "{user} CONFIG SET: {answer:?}");
        for forbidden in [
            &["CONFIG", "SET", "maxmemory-policy", "noeviction"][..],
            // It returns masterauth and the data directory.
            &["CONFIG", "GET", "masterauth"],
            &["FLUSHDB"],
            &["FLUSHALL"],
            &["KEYS", "*"],
            &["DEBUG", "SLEEP", "0"],
            &["SHUTDOWN", "NOSAVE"],
        ] {
            let mut dryrun = vec!["ACL", "DRYRUN", user];
            dryrun.extend_from_slice(forbidden);
            let answer = server.admin_resp(&dryrun).await;
            let denied = answer.as_text().is_some_and(|t| t.contains("no permissions"));
            assert!(denied, "{user} may run {forbidden:?}: {answer:?}");
        }
        let script = format!("return redis.call('SET', '{other_prefix}', '1', 'PX', '1000')");
        let answer = run_as(server, user, &["EVAL", &script, "0"]).await;
        assert!(matches!(answer, RespValue::Error(_)), "{user} wrote {other_prefix}: {answer:?}");
    }
    assert_eq!(server.admin_command(&["CONFIG", "GET", "maxmemory"]).await, format!("maxmemory\n{}", 16 * 1024 * 1024));
    assert_eq!(server.keys_without_ttl("*").await, Vec::<String>::new());
}

#[tokio::test]
async fn reference_topology_one_redis_per_service() {
    let mut servers = Vec::new();
    for file in ["dedup.acl", "storm.acl", "ratelimit.acl"] {
        let acl = deploy_acl_for_test(file);
        let server =
            RedisServer::builder().maxmemory("8mb").maxmemory_policy("volatile-lru").acl_file(acl.path()).start().await;
        servers.push((server, acl));
    }
    let (dedup, storm, ratelimit) = (
        redis_as(&servers[0].0, "bw-dedup"),
        redis_as(&servers[1].0, "bw-storm"),
        redis_as(&servers[2].0, "bw-ratelimit"),
    );
    let spare = RedisServer::start().await;
    let gw = TestGateway::start_with_redis(spare, |c| {
        c.dedup.redis = dedup;
        c.storm.redis = storm;
        c.ratelimit.redis = ratelimit;
    })
    .await;
    storm_and_repeats(&gw).await;
    for ((server, _), prefix) in servers.iter().zip(["bw:dedup:", "bw:storm:", "bw:rl:"]) {
        let keys = server.admin_command(&["SCAN", "0", "COUNT", "10000"]).await;
        let keys: Vec<&str> = keys.lines().skip(1).collect();
        assert!(!keys.is_empty() && keys.iter().all(|k| k.starts_with(prefix)), "{prefix}: {keys:?}");
    }
}

/// A wrong password is an authentication failure, said as such (and without the password),
/// not a pool that timed out.
#[tokio::test]
async fn a_wrong_password_is_reported_as_an_authentication_failure() {
    let acl = deploy_acl_for_test("dev.acl");
    let server = RedisServer::builder().acl_file(acl.path()).start().await;
    let wrong = RedisConfig { url: server.url_as("bw-dedup", "not-the-password"), ..redis_as(&server, "bw-dedup") };
    let keyspace = Keyspace::from_config(&wrong, "dedup").expect("config");
    let err = keyspace.probe_write().await.expect_err("a wrong password cannot write");
    assert!(matches!(err, KeyspaceError::Authentication(_)), "{err:?}");
    assert_eq!(err.metric_label(), "auth");
    let said = format!("{err} / {err:?}");
    assert!(said.contains("authentication failed"), "{said}");
    assert!(!said.contains("not-the-password"), "the password is not shown: {said}");
    // The same user with its password writes: it was the password.
    let right = Keyspace::from_config(&redis_as(&server, "bw-dedup"), "dedup").expect("config");
    right.probe_write().await.expect("the right password writes");
}
