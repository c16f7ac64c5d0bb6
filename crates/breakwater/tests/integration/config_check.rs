//! The configuration as an operator meets it: `breakwater config check`, the
//! example file `deploy/config/breakwater.toml`, `BREAKWATER_CONFIG`, the
//! variables Kubernetes puts in every pod, and passwords from files. Every
//! test runs the real binary.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use breakwater::Config;
use breakwater_testkit::{RedisServer, deploy_acl_for_test};

/// A password that must never appear in anything the binary prints.
const MARKER: &str = "Marker-Secret-5ca1ab1e";

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/breakwater.toml")
}

/// `breakwater <args>` with no `BREAKWATER_*` variable of the test's own
/// environment, plus `env`.
async fn breakwater(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BREAKWATER_")) {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output()).await.expect("exits by itself").expect("runs")
}

fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// Every key path the code accepts, asked of serde itself: a table given an
/// unknown key is refused with "expected one of `a`, `b`…", listing every field
/// of that table, optional ones included. Tables are walked from the defaults.
fn known_keys() -> BTreeSet<String> {
    fn walk(root: &toml::Table, path: &[String], keys: &mut BTreeSet<String>) {
        let mut probe = root.clone();
        let mut table = &mut probe;
        for part in path {
            table = table.get_mut(part).and_then(toml::Value::as_table_mut).unwrap();
        }
        table.insert("zz_probe".into(), toml::Value::Boolean(true));
        let err = toml::Value::Table(probe).try_into::<Config>().unwrap_err().to_string();
        // A map of the user's own keys (such as edge.classification.environments) is one key.
        if !err.contains("unknown field") {
            keys.insert(path.join("."));
            return;
        }
        let listed = err.split_once("expected ").map(|(_, list)| list).unwrap_or_else(|| panic!("{err}"));
        // The message ends with where the table is (`in `dedup.redis``): not a field.
        let here = path.join(".");
        let fields: Vec<String> =
            listed.split('`').skip(1).step_by(2).filter(|field| *field != here).map(str::to_owned).collect();
        assert!(!fields.is_empty(), "{err}");
        let defaults = path.iter().try_fold(root, |t, part| t.get(part).and_then(toml::Value::as_table)).unwrap();
        for field in fields {
            let mut key = path.to_vec();
            key.push(field.clone());
            match defaults.get(&field) {
                Some(toml::Value::Table(_)) => walk(root, &key, keys),
                _ => {
                    keys.insert(key.join("."));
                }
            }
        }
    }
    let root = toml::Table::try_from(Config::default()).unwrap();
    let mut keys = BTreeSet::new();
    walk(&root, &[], &mut keys);
    keys
}

/// Key paths set in `text`.
fn keys_of(text: &str) -> BTreeSet<String> {
    fn walk(table: &toml::Table, prefix: &str, keys: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                // An empty table is a map of the user's own keys, set to its default (none).
                toml::Value::Table(inner) if inner.is_empty() => {
                    keys.insert(path);
                }
                toml::Value::Table(inner) => walk(inner, &path, keys),
                _ => {
                    keys.insert(path);
                }
            }
        }
    }
    let mut keys = BTreeSet::new();
    walk(&text.parse::<toml::Table>().unwrap(), "", &mut keys);
    keys
}

/// The example with its `# key = value` lines (keys unset by default) set.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn example_config_lists_every_key_the_code_knows_at_its_default() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let known = known_keys();
    assert!(known.contains("dedup.redis.password_file") && known.contains("embedded.dir"), "{known:?}");
    let documented = keys_of(&uncommented(&text));
    let missing: Vec<_> = known.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "missing from the example: {missing:?}; unknown to the code: {unknown:?}"
    );
    // Set values are the defaults.
    let example: Config = toml::from_str(&text).unwrap();
    assert_eq!(example, Config::default());
    // The optional keys' examples are valid values.
    let all_set: Config = toml::from_str(&uncommented(&text)).unwrap();
    all_set.validate().unwrap();
}

#[tokio::test]
async fn the_example_passes_config_check_and_check_prints_the_effective_configuration() {
    let example = example_path();
    let output = breakwater(&["config", "check", "--config", example.to_str().unwrap()], &[]).await;
    assert!(output.status.success(), "{}", printed(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let effective: Config = toml::from_str(&stdout).unwrap();
    assert_eq!(effective, Config::default());

    // BREAKWATER_CONFIG names the file; variables override it; service links are ignored.
    let output = breakwater(
        &["config", "check", "--up"],
        &[
            ("BREAKWATER_CONFIG", example.to_str().unwrap()),
            ("BREAKWATER_EDGE_PORT", "tcp://10.0.0.1:8080"),
            ("BREAKWATER_EDGE_SERVICE_HOST", "10.0.0.1"),
            ("BREAKWATER_STORM__RATE_THRESHOLD", "20"),
            ("BREAKWATER_DEDUP_WINDOW_SECS", "60"),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", printed(&output));
    let effective: Config = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(effective.storm.rate_threshold, 20);
    assert_eq!(effective.dedup.window_secs, 300);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: BREAKWATER_DEDUP_WINDOW_SECS is ignored"), "{stderr}");
    assert!(!stderr.contains("EDGE_PORT") && !stderr.contains("SERVICE_HOST"), "{stderr}");
}

#[tokio::test]
async fn config_check_fails_with_the_problem_and_never_the_password() {
    let bad_files = [
        format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"http://bw-dedup:{MARKER}@redis:6379\"\n"),
        format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"redis://bw-dedup:{MARKER}@redis:port\"\n"),
        format!("[dedup.redis]\nurl = \"redis://bw-dedup:{MARKER}@redis:6379\n"),
        format!("[dedup.redis]\nurl = redis://bw-dedup:{MARKER}@redis:6379\n"),
    ];
    for text in bad_files {
        let f = file(&text);
        let output = breakwater(&["config", "check", "--config", f.path().to_str().unwrap()], &[]).await;
        let all = printed(&output);
        assert!(!output.status.success(), "{all}");
        assert!(all.starts_with("breakwater: "), "{all}");
        assert!(!all.contains(MARKER), "{all}");
    }
    // A valid file: the password is printed as ***.
    let f =
        file(&format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"redis://bw-dedup:{MARKER}@redis:6379\"\n"));
    let output = breakwater(&["config", "check", "--config", f.path().to_str().unwrap()], &[]).await;
    assert!(output.status.success());
    let all = printed(&output);
    assert!(!all.contains(MARKER) && all.contains("redis://***@redis:6379"), "{all}");
    // The same URL as a variable, and a missing file.
    let url = format!("redis://bw-dedup:{MARKER}@redis:port");
    let output = breakwater(
        &["config", "check"],
        &[("BREAKWATER_DEDUP__STORE", "redis"), ("BREAKWATER_DEDUP__REDIS__URL", &url)],
    )
    .await;
    assert!(!output.status.success() && !printed(&output).contains(MARKER), "{}", printed(&output));
    let output = breakwater(&["config", "check", "--config", "does-not-exist.toml"], &[]).await;
    assert_eq!(
        printed(&output).trim_end(),
        "breakwater: cannot read config file does-not-exist.toml: No such file or directory (os error 2)"
    );
}

/// `breakwater up` as a pod runs it: the file from `BREAKWATER_CONFIG`, among the
/// service-link variables of a namespace with a breakwater-edge Service.
#[tokio::test]
async fn up_runs_with_breakwater_config_among_service_link_variables() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(&format!(
        "[listen]\nedge = \"127.0.0.1:0\"\n[crd_writer]\ndirectory = {:?}\n",
        dir.path().join("crs").display().to_string()
    ));
    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_breakwater"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BREAKWATER_")) {
        up.env_remove(name);
    }
    let mut child = up
        .args(["up", "--log-format", "json"])
        .env("BREAKWATER_CONFIG", config.path())
        .env("BREAKWATER_EDGE_PORT", "tcp://10.0.0.1:8080")
        .env("BREAKWATER_EDGE_PORT_8080_TCP", "tcp://10.0.0.1:8080")
        .env("BREAKWATER_EDGE_SERVICE_HOST", "10.0.0.1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let listening = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let line = match listening {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = child.start_kill();
            let output = child.wait_with_output().await.unwrap();
            panic!("up did not start: {other:?}\n{}", String::from_utf8_lossy(&output.stderr));
        }
    };
    assert!(line.starts_with("breakwater edge listening on 127.0.0.1:"), "{line}");
    let addr = line.rsplit(' ').next().unwrap();
    let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert!(health.status().is_success());
    child.start_kill().unwrap();
}

/// A Redis password from a file (a mounted Secret): `doctor` reaches dedup's
/// Redis as its ACL user with it, and never prints it.
#[tokio::test]
async fn a_redis_password_comes_from_its_file() {
    let acl = deploy_acl_for_test("dedup.acl");
    let redis = RedisServer::builder().acl_file(acl.path()).start().await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "change-me-dedup\n").unwrap();
    let url = format!("redis://bw-dedup@127.0.0.1:{}", redis.port());
    let env: HashMap<&str, String> = [
        ("BREAKWATER_DEDUP__STORE", "redis".to_owned()),
        ("BREAKWATER_DEDUP__REDIS__URL", url),
        ("BREAKWATER_DEDUP__REDIS__PASSWORD_FILE", secret.path().display().to_string()),
    ]
    .into_iter()
    .collect();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = breakwater(&["doctor"], &pairs).await;
    let all = printed(&output);
    let reachable = all.lines().find(|l| l.contains("dedup reachable")).unwrap_or_else(|| panic!("{all}"));
    assert!(reachable.starts_with("ok "), "{all}");
    assert!(!all.contains("change-me-dedup"), "{all}");

    // A wrong password in the file: not reachable as that user.
    std::fs::write(secret.path(), "wrong").unwrap();
    let output = breakwater(&["doctor"], &pairs).await;
    let all = printed(&output);
    let reachable = all.lines().find(|l| l.contains("dedup reachable")).unwrap_or_else(|| panic!("{all}"));
    assert!(reachable.starts_with("FAIL"), "{all}");
}

/// A password file that is not there stops the service at start, naming the file.
#[tokio::test]
async fn a_missing_password_file_stops_the_service_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("redis-password");
    let output = breakwater(
        &["dedup", "--listen", "127.0.0.1:0"],
        &[
            ("BREAKWATER_DEDUP__STORE", "redis"),
            ("BREAKWATER_DEDUP__REDIS__URL", "redis://bw-dedup@127.0.0.1:1"),
            ("BREAKWATER_DEDUP__REDIS__PASSWORD_FILE", missing.to_str().unwrap()),
        ],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("redis.password_file {:?} cannot be read", missing.display().to_string())),
        "{stderr}"
    );
}
