//! Secrets never leave (issue 11, item 9): bad configuration of every kind, each carrying a
//! marker password, run through the real binary; the marker must not appear in anything it
//! prints, on stdout or stderr, whether it refuses to start or runs and logs.

use std::process::{Output, Stdio};
use std::time::Duration;

/// A password (base64-like, with `/`, `+` and `=`) that must never be printed.
const MARKER: &str = "Mk/Secret+9f3b=";

/// `breakwater args` with no `BREAKWATER_*` variable of the test's own, plus `env`; killed
/// after `run_for` if it has not exited by then.
async fn breakwater(args: &[&str], env: &[(&str, &str)], run_for: Duration) -> (Option<bool>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BREAKWATER_") || name == "KUBECONFIG") {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn breakwater");
    let exited = tokio::time::timeout(run_for, child.wait()).await.ok().map(|s| s.expect("wait").success());
    if exited.is_none() {
        child.start_kill().expect("kill");
    }
    let Output { stdout, stderr, .. } = child.wait_with_output().await.expect("output");
    (exited, format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)))
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), text).expect("write");
    f
}

fn assert_secret_kept(what: &str, printed: &str) {
    assert!(!printed.contains(MARKER), "{what} printed the password:\n{printed}");
    let encoded = MARKER.replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
    assert!(!printed.contains(&encoded), "{what} printed the password, URL-encoded:\n{printed}");
}

#[tokio::test]
async fn bad_configuration_of_every_kind_never_prints_the_password() {
    let quick = Duration::from_secs(20);
    let redis_url = |rest: &str| format!("redis://bw-dedup:{MARKER}@{rest}");
    // Files that do not load: syntax errors on the secret's line, a wrong scheme, a bad port.
    let files = [
        format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"{}\n", redis_url("redis:6379")),
        format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = {}\n", redis_url("redis:6379")),
        format!("[dedup.redis]\nurl = \"{}\"\nurl = \"again\"\n", redis_url("redis:6379")),
        format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"{}\"\n", redis_url("redis:port")),
        format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"http://bw:{MARKER}@redis:6379\"\n"),
        format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"{}\"\n", redis_url("redis:6379/not-a-db")),
        format!("[telemetry]\notlp_endpoint = 42\n[dedup.redis]\nurl = \"{}\"\n", redis_url("redis:6379")),
    ];
    for text in &files {
        let f = file(text);
        let path = f.path().to_str().expect("utf-8");
        for args in
            [vec!["config", "check", "--config", path], vec!["--config", path, "dedup", "--listen", "127.0.0.1:0"]]
        {
            let (exited, printed) = breakwater(&args, &[], quick).await;
            assert_eq!(exited, Some(false), "{args:?} with\n{text}\nmust fail:\n{printed}");
            assert_secret_kept(&format!("{args:?} with\n{text}"), &printed);
        }
    }
    // The same as variables.
    for url in [redis_url("redis:port"), format!("ftp://bw:{MARKER}@redis:6379"), redis_url("[::1")] {
        let env = [("BREAKWATER_DEDUP__STORE", "redis"), ("BREAKWATER_DEDUP__REDIS__URL", url.as_str())];
        let (exited, printed) = breakwater(&["dedup", "--listen", "127.0.0.1:0"], &env, quick).await;
        assert_eq!(exited, Some(false), "{url}: {printed}");
        assert_secret_kept(&url, &printed);
    }
    // A malformed kubeconfig whose token line is what breaks it, and one that parses but
    // points at a server with credentials in its URL.
    let kubeconfigs = [
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {MARKER}\n   \
             bad: [\n"
        ),
        format!("apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user: {{token: \"{MARKER}\n"),
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: \
             \"https://admin:{MARKER}@127.0.0.1:1\"\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n\
             - name: u\n  user:\n    token: {MARKER}\n"
        ),
    ];
    for text in &kubeconfigs {
        let kubeconfig = file(text);
        let env =
            [("KUBECONFIG", kubeconfig.path().to_str().expect("utf-8")), ("BREAKWATER_CRD_WRITER__SINK", "kubernetes")];
        let (_, printed) = breakwater(&["crd-writer", "--listen", "127.0.0.1:0"], &env, Duration::from_secs(4)).await;
        assert_secret_kept(&format!("crd-writer with kubeconfig\n{text}"), &printed);
    }
    // A Redis that cannot be reached, for a while: connection failures are logged. The
    // password is percent-encoded here, so the URL parses and the service starts.
    let encoded = MARKER.replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
    let url = format!("redis://bw-dedup:{encoded}@127.0.0.1:1");
    let env = [("BREAKWATER_DEDUP__STORE", "redis"), ("BREAKWATER_DEDUP__REDIS__URL", url.as_str())];
    let (_, printed) = breakwater(&["dedup", "--listen", "127.0.0.1:0"], &env, Duration::from_secs(4)).await;
    assert!(!printed.is_empty(), "the unreachable Redis is reported");
    assert_secret_kept("dedup with an unreachable Redis", &printed);
    // doctor with admin URLs that do not parse or cannot connect.
    for admin in [format!("redis://admin:{MARKER}@redis:port"), format!("redis://admin:{encoded}@127.0.0.1:1")] {
        let env = [
            ("BREAKWATER_DEDUP__STORE", "redis"),
            ("BREAKWATER_DEDUP__REDIS__URL", url.as_str()),
            ("BREAKWATER_DOCTOR_ADMIN_URL", admin.as_str()),
        ];
        let (_, printed) = breakwater(&["doctor"], &env, quick).await;
        assert_secret_kept("doctor", &printed);
    }
}
