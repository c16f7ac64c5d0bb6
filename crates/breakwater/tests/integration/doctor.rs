//! `breakwater doctor` against redis-servers of the tests' own, set up as the
//! development topology (`deploy/redis/dev.acl`: one Redis, three users).
//! The test plays the operator through the `default` user; only its own
//! throwaway servers are changed.

use std::path::PathBuf;
use std::process::Output;

use breakwater_testkit::RedisServer;

const SERVICES: [(&str, &str); 3] = [("DEDUP", "bw-dedup"), ("STORM", "bw-storm"), ("RATELIMIT", "bw-ratelimit")];

/// `dev.acl` with the `default` user kept usable for the test's operator and
/// `edit` applied.
fn dev_acl(edit: impl FnOnce(String) -> String) -> tempfile::NamedTempFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis/dev.acl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains("user default off"), "dev.acl turns the default user off");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), edit(text.replace("user default off", "user default on nopass ~* &* +@all"))).unwrap();
    file
}

/// The development topology on a 16 MiB volatile-lru server.
async fn dev_server(acl: &tempfile::NamedTempFile, policy: &str) -> RedisServer {
    RedisServer::builder().maxmemory("16mb").maxmemory_policy(policy).acl_file(acl.path()).start().await
}

fn password(user: &str) -> String {
    format!("change-me-{}", user.trim_start_matches("bw-"))
}

/// Runs `breakwater doctor` with every service on `server` as its own user,
/// budgets of 4 MiB each (12 MiB of the 16), `args` and `env`.
async fn doctor(server: &RedisServer, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BREAKWATER_")) {
        command.env_remove(name);
    }
    for (section, user) in SERVICES {
        command
            .env(format!("BREAKWATER_{section}__STORE"), "redis")
            .env(format!("BREAKWATER_{section}__REDIS__URL"), server.url_as(user, &password(user)))
            .env(format!("BREAKWATER_{section}__REDIS__MEMORY_BUDGET_BYTES"), (4 << 20).to_string());
    }
    let output = command.arg("doctor").args(args).envs(env.iter().copied()).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

fn admin_url(server: &RedisServer) -> String {
    server.url_as("admin", "change-me-admin")
}

/// The line of check `subject` (`maxmemory`, `dedup keys`, …) with `status`.
fn line<'a>(stdout: &'a str, status: &str, subject: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{status:<4} ")) && l.contains(&format!(" {subject}: ")))
        .unwrap_or_else(|| panic!("no {status} line for {subject}:\n{stdout}"))
}

#[tokio::test]
async fn a_healthy_dev_topology_passes_every_check() {
    let acl = dev_acl(|t| t);
    let server = dev_server(&acl, "volatile-lru").await;
    server.admin_command(&["SET", "bw:dedup:open", "1", "EX", "600"]).await;
    server.admin_command(&["SET", "other:app:key", "kept"]).await;
    // The admin URL from a file (comments and blank lines skipped), never the command line.
    let admin_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(admin_file.path(), format!("# operator\n\n{}\n", admin_url(&server))).unwrap();

    let (output, stdout) = doctor(&server, &["--admin-url-file", admin_file.path().to_str().unwrap()], &[]).await;
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // One instance: its checks once, each service's prefix attributed.
    let version = line(&stdout, "ok", "version");
    assert!(version.contains("dedup (bw:dedup:), storm (bw:storm:) and ratelimit (bw:rl:)"), "{version}");
    assert_eq!(stdout.matches(" maxmemory: ").count(), 1, "{stdout}");
    assert!(line(&stdout, "ok", "maxmemory").contains("16777216"), "{stdout}");
    assert!(line(&stdout, "ok", "maxmemory-policy").contains("volatile-lru"), "{stdout}");
    line(&stdout, "ok", "memory");
    for (service, prefix) in [("dedup", "bw:dedup:"), ("storm", "bw:storm:"), ("ratelimit", "bw:rl:")] {
        line(&stdout, "ok", &format!("{service} reachable"));
        let acl = line(&stdout, "ok", &format!("{service} acl"));
        assert!(acl.contains("FLUSHDB") && acl.contains("ACL DRYRUN as the admin"), "{acl}");
        assert!(line(&stdout, "ok", &format!("{service} keys")).contains(prefix), "{stdout}");
    }
    assert!(line(&stdout, "ok", "dedup keys").contains("(1 scanned"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    assert_eq!(server.admin_command(&["GET", "other:app:key"]).await, "kept");
}

#[tokio::test]
async fn without_an_admin_the_services_users_are_probed_and_the_rest_is_skipped() {
    let acl = dev_acl(|t| t);
    let server = dev_server(&acl, "volatile-lru").await;

    let (output, stdout) = doctor(&server, &[], &[]).await;
    assert!(output.status.success(), "{stdout}");
    for service in ["dedup", "storm", "ratelimit"] {
        let acl = line(&stdout, "ok", &format!("{service} acl"));
        assert!(
            acl.contains("refused CONFIG SET, CONFIG GET, KEYS and writes outside") && acl.contains("probed"),
            "{acl}"
        );
        assert!(line(&stdout, "skip", &format!("{service} acl")).contains("FLUSHDB"), "{stdout}");
        // Their users may not SCAN, by design.
        assert!(line(&stdout, "skip", &format!("{service} keys")).contains("BREAKWATER_DOCTOR_ADMIN_URL"), "{stdout}");
    }
    // The probes changed nothing.
    assert_eq!(server.admin_command(&["CONFIG", "GET", "maxmemory-policy"]).await, "maxmemory-policy\nvolatile-lru");
    assert_eq!(server.admin_command(&["DBSIZE"]).await, "0");
}

#[tokio::test]
async fn lowered_maxmemory_fails_naming_the_value() {
    let acl = dev_acl(|t| t);
    let server = dev_server(&acl, "volatile-lru").await;
    // Seed 001: an operator (here: this test, on its own server) lowers maxmemory.
    server.admin_command(&["CONFIG", "SET", "maxmemory", "8mb"]).await;

    let (output, stdout) = doctor(&server, &[], &[("BREAKWATER_DOCTOR_ADMIN_URL", &admin_url(&server))]).await;
    assert!(!output.status.success(), "{stdout}");
    let finding = line(&stdout, "FAIL", "maxmemory");
    assert!(finding.contains("maxmemory is 8388608 (8.0 MiB), less than 12582912 (12.0 MiB)"), "{finding}");
    assert!(finding.contains("set maxmemory 12582912"), "{finding}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("checks failed"));
}

#[tokio::test]
async fn no_maxmemory_fails() {
    let acl = dev_acl(|t| t);
    let server = dev_server(&acl, "volatile-lru").await;
    server.admin_command(&["CONFIG", "SET", "maxmemory", "0"]).await;

    let (output, stdout) = doctor(&server, &[], &[]).await;
    assert!(!output.status.success(), "{stdout}");
    assert!(line(&stdout, "FAIL", "maxmemory").contains("maxmemory is 0 (no limit)"), "{stdout}");
    line(&stdout, "skip", "memory");
}

#[tokio::test]
async fn a_key_without_ttl_under_a_prefix_fails_naming_it() {
    let acl = dev_acl(|t| t);
    let server = dev_server(&acl, "volatile-lru").await;
    server.admin_command(&["SET", "bw:storm:w:leaked", "1"]).await;
    server.admin_command(&["SET", "bw:storm:w:fine", "1", "PX", "600000"]).await;

    let (output, stdout) = doctor(&server, &[], &[("BREAKWATER_DOCTOR_ADMIN_URL", &admin_url(&server))]).await;
    assert!(!output.status.success(), "{stdout}");
    let finding = line(&stdout, "FAIL", "storm keys");
    assert!(finding.contains("1 of 2 keys under bw:storm: have no TTL: bw:storm:w:leaked"), "{finding}");
    line(&stdout, "ok", "dedup keys");
}

#[tokio::test]
async fn an_eviction_policy_other_than_volatile_fails() {
    let acl = dev_acl(|t| t);
    let server = dev_server(&acl, "noeviction").await;

    let (output, stdout) = doctor(&server, &[], &[]).await;
    assert!(!output.status.success(), "{stdout}");
    let finding = line(&stdout, "FAIL", "maxmemory-policy");
    assert!(finding.contains("noeviction") && finding.contains("volatile-lru"), "{finding}");
}

#[tokio::test]
async fn a_user_allowed_too_much_fails_with_and_without_an_admin() {
    // bw-ratelimit may run everything but ACL on every key.
    let acl = dev_acl(|t| t.replace("resetkeys ~bw:rl:* resetchannels -@all", "~* resetchannels +@all -acl"));
    let server = dev_server(&acl, "volatile-lru").await;

    let (output, stdout) = doctor(&server, &[], &[("BREAKWATER_DOCTOR_ADMIN_URL", &admin_url(&server))]).await;
    assert!(!output.status.success(), "{stdout}");
    let finding = line(&stdout, "FAIL", "ratelimit acl");
    assert!(
        finding.contains("bw-ratelimit may run CONFIG SET, CONFIG GET, FLUSHDB, FLUSHALL, KEYS, DEBUG, SHUTDOWN"),
        "{finding}"
    );
    line(&stdout, "ok", "dedup acl");

    let (output, stdout) = doctor(&server, &[], &[]).await;
    assert!(!output.status.success(), "{stdout}");
    let finding = line(&stdout, "FAIL", "ratelimit acl");
    assert!(
        finding.contains("CONFIG SET (maxmemory-policy volatile-lru, its current value, was accepted)"),
        "{finding}"
    );
    assert!(finding.contains("a write to bw:dedup:doctor-probe-"), "{finding}");
    assert!(finding.contains("CONFIG GET (was accepted; it returns masterauth"), "{finding}");
    // What was allowed changed nothing.
    assert_eq!(server.admin_command(&["CONFIG", "GET", "maxmemory-policy"]).await, "maxmemory-policy\nvolatile-lru");
    assert_eq!(server.admin_command(&["DBSIZE"]).await, "0");
}

#[tokio::test]
async fn an_unreachable_redis_fails_and_its_other_checks_are_skipped() {
    let acl = dev_acl(|t| t);
    let mut server = dev_server(&acl, "volatile-lru").await;
    server.kill().await;

    let (output, stdout) = doctor(&server, &[], &[]).await;
    assert!(!output.status.success(), "{stdout}");
    assert!(line(&stdout, "FAIL", "dedup reachable").contains("cannot PING as bw-dedup"), "{stdout}");
    line(&stdout, "skip", "checks");
}

#[tokio::test]
async fn the_admin_url_is_not_taken_from_the_command_line() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["doctor", "--admin-url", "redis://admin:Marker-Admin-77@127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unexpected argument '--admin-url'"), "{stderr}");
}
