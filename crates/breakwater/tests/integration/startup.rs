//! Start-up refuses a service whose Redis user cannot write its own keyspace, an edge off
//! loopback without authentication, and unusable token files or kubeconfig of edge.auth.

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

/// `breakwater <args>` with `env` and no `BREAKWATER_*` or `KUBECONFIG` of the test's own,
/// run to its exit (a process that stays up past 20 s fails the test).
async fn exits(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_breakwater"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BREAKWATER_") || name == "KUBECONFIG") {
        command.env_remove(name);
    }
    let run = command.args(args).envs(env.iter().copied()).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(20), run).await.expect("exits by itself").expect("runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// An edge other hosts can reach does not start without authentication, unless told to
/// (`edge.auth.mode = "none"`); on loopback it needs nothing.
#[tokio::test]
async fn a_non_loopback_edge_without_auth_does_not_start() {
    let sink = tempfile::tempdir().unwrap();
    let sink_dir = sink.path().to_str().unwrap();
    let edge: &[&str] = &["edge", "--listen", "0.0.0.0:0"];
    let up: &[&str] = &["up", "--listen", "0.0.0.0:0", "--sink-dir", sink_dir];
    for args in [edge, up] {
        let (started, printed) = exits(args, &[]).await;
        assert!(!started, "{args:?} must not start: {printed}");
        assert!(
            printed.contains("--listen = 0.0.0.0:0 is not a loopback address and edge.auth.mode is not set")
                && printed.contains("edge.auth.mode = \"static\" or \"kubernetes\"")
                && printed.contains("\"none\""),
            "{args:?}: {printed}"
        );
    }
    // The same from the file's (or a variable's) listen.edge, in config check too.
    let (valid, printed) = exits(&["config", "check"], &[("BREAKWATER_LISTEN__EDGE", "0.0.0.0:8080")]).await;
    assert!(!valid && printed.contains("listen.edge = 0.0.0.0:8080 is not a loopback address"), "{printed}");
    let (valid, printed) = exits(
        &["config", "check"],
        &[("BREAKWATER_LISTEN__EDGE", "0.0.0.0:8080"), ("BREAKWATER_EDGE__AUTH__MODE", "none")],
    )
    .await;
    assert!(valid, "{printed}");

    // Said explicitly, it starts.
    let env = [("BREAKWATER_EDGE__AUTH__MODE".to_owned(), "none".to_owned())];
    let up = breakwater_testkit::BreakwaterProcess::start(
        env!("CARGO_BIN_EXE_breakwater"),
        &["up", "--listen", "0.0.0.0:0", "--sink-dir", sink_dir],
        &env,
    )
    .await;
    assert!(up.addr.starts_with("0.0.0.0:"), "{}", up.addr);
}

/// Token files are read at start-up: one that is missing or empty stops it, naming the key.
#[tokio::test]
async fn unusable_token_files_or_kubeconfig_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("crs");
    let missing = dir.path().join("missing-token");
    let static_env = |path: &std::path::Path| {
        vec![
            ("BREAKWATER_EDGE__AUTH__MODE", "static".to_owned()),
            ("BREAKWATER_EDGE__AUTH__TOKEN_FILES", format!("[{:?}]", path.to_str().unwrap())),
        ]
    };
    let run = async |env: Vec<(&str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        exits(&["up", "--listen", "127.0.0.1:0", "--sink-dir", sink_dir.to_str().unwrap()], &env).await
    };
    let (started, printed) = run(static_env(&missing)).await;
    assert!(
        !started && printed.contains("edge.auth.token_files: cannot read") && printed.contains("missing-token"),
        "{printed}"
    );
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let (started, printed) = run(static_env(&empty)).await;
    assert!(!started && printed.contains("holds no token"), "{printed}");
    // A mode that needs files without any, or files without the mode: refused by config check too.
    let (valid, printed) = exits(&["config", "check"], &[("BREAKWATER_EDGE__AUTH__MODE", "static")]).await;
    assert!(!valid && printed.contains("edge.auth.mode = \"static\" needs edge.auth.token_files"), "{printed}");

    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nusers:\n- name: x\n  user:\n    token: Marker-Secret-5ca1ab1e\n  : [\n",
    )
    .unwrap();
    let (started, printed) = run(vec![
        ("BREAKWATER_EDGE__AUTH__MODE", "kubernetes".to_owned()),
        ("BREAKWATER_EDGE__AUTH__KUBERNETES__KUBECONFIG", kubeconfig.to_str().unwrap().to_owned()),
    ])
    .await;
    assert!(!started && printed.contains("edge.auth.kubernetes.kubeconfig"), "{printed}");
    assert!(!printed.contains("Marker-Secret"), "the kubeconfig's text is not shown: {printed}");
}
