use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn no_file_gives_the_embedded_defaults() {
    let c = Config::load(None, &HashMap::new()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.listen.edge.to_string(), "127.0.0.1:8080");
    assert_eq!(c.dedup.store, breakwater_dedup::StoreKind::Memory);
    assert_eq!(c.crd_writer.sink, breakwater_crd_writer::SinkKind::Directory);
}

#[test]
fn file_then_env_override() {
    let f = file("[dedup]\nwindow_secs = 60\nstore = \"redis\"\n[dedup.redis]\nurl = \"redis://a:1\"\n");
    let c = Config::load(
        Some(f.path()),
        &env(&[
            ("BREAKWATER_DEDUP__REDIS__URL", "redis://b:2"),
            ("BREAKWATER_STORM__RATE_THRESHOLD", "20"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.dedup.window_secs, 60);
    assert_eq!(c.dedup.redis.url, "redis://b:2");
    assert_eq!(c.storm.rate_threshold, 20);
}

#[test]
fn errors_name_the_key_the_value_and_what_is_allowed() {
    let err = |f: &str, e: &[(&str, &str)]| Config::load(Some(file(f).path()), &env(e)).unwrap_err().to_string();
    assert_eq!(
        err("[storm]\nrate_threshold = 0\n", &[]),
        "storm.rate_threshold = 0 is not allowed: use 1 or more alerts per window"
    );
    assert!(err("[dedup]\nwindow = 5\n", &[]).starts_with("dedup.window: unknown field `window`, expected one of"));
    assert!(
        err("[edge]\nbody_limit_bytes = \"big\"\n", &[])
            .starts_with("edge.body_limit_bytes: invalid type: string \"big\"")
    );
    assert_eq!(
        err("", &[("BREAKWATER_DEDUP__WINDOW_SECS", "soon")]),
        "BREAKWATER_DEDUP__WINDOW_SECS: \"soon\" is not an integer"
    );
    assert!(err("[listen]\nedge = \"nowhere\"\n", &[]).starts_with("listen.edge"));
    assert!(err("not toml [", &[]).contains("is not valid TOML"));
}

#[test]
fn only_section_double_underscore_key_variables_are_configuration() {
    // What Kubernetes sets in every pod of a namespace with a breakwater-edge
    // Service, and the variable naming the file: none of them is configuration.
    let c = Config::load(
        None,
        &env(&[
            ("BREAKWATER_CONFIG", "/etc/breakwater/breakwater.toml"),
            ("BREAKWATER_EDGE_PORT", "tcp://10.0.0.1:8080"),
            ("BREAKWATER_EDGE_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("BREAKWATER_EDGE_SERVICE_HOST", "10.0.0.1"),
            ("BREAKWATER_DEDUP_WINDOW_SECS", "60"),
            ("BREAKWATER_", "x"),
            ("BREAKWATER___X", "x"),
            ("BREAKWATER_DEDUP__", "x"),
            ("BREAKWATER_DEDUP__WINDOW_SECS", "90"),
        ]),
    )
    .unwrap();
    assert_eq!(c.dedup.window_secs, 90);
    assert_eq!(Config { dedup: Config::default().dedup, ..c }, Config::default());
    // An override of a section that does not exist is still an error.
    let err = Config::load(None, &env(&[("BREAKWATER_NOPE__KEY", "1")])).unwrap_err().to_string();
    assert!(err.starts_with("nope: unknown field `nope`"), "{err}");
}

#[test]
fn misspelt_overrides_are_listed_and_service_links_are_not() {
    let typos = likely_env_typos(&env(&[
        ("BREAKWATER_DEDUP_WINDOW_SECS", "60"),
        ("BREAKWATER_CRD_WRITER_SINK", "kubernetes"),
        ("BREAKWATER_EDGE_PORT", "tcp://10.0.0.1:8080"),
        ("BREAKWATER_EDGE_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
        ("BREAKWATER_EDGE_PORT_8080_TCP_PROTO", "tcp"),
        ("BREAKWATER_DEDUP_SERVICE_HOST", "10.0.0.2"),
        ("BREAKWATER_DEDUP_SERVICE_PORT_GRPC", "9102"),
        ("BREAKWATER_CONFIG", "/etc/breakwater.toml"),
        ("BREAKWATER_DEDUP__WINDOW_SECS", "60"),
        ("DEDUP_WINDOW_SECS", "60"),
    ]));
    assert_eq!(typos, ["BREAKWATER_CRD_WRITER_SINK", "BREAKWATER_DEDUP_WINDOW_SECS"]);
}

/// A password that must never appear in any message.
const MARKER: &str = "Marker-Secret-c0ffee";

#[test]
fn config_errors_never_show_a_password() {
    let err = |f: &str, e: &[(&str, &str)]| Config::load(Some(file(f).path()), &env(e)).unwrap_err().to_string();
    let cases = [
        // Wrong scheme.
        err(&format!("[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"http://bw:{MARKER}@redis:6379\"\n"), &[]),
        // Does not parse as a Redis URL.
        err(&format!("[storm]\nstore = \"redis\"\n[storm.redis]\nurl = \"redis://bw:{MARKER}@redis:port\"\n"), &[]),
        // A TOML syntax error on the line holding the password.
        err(&format!("[dedup.redis]\nurl = \"redis://bw:{MARKER}@redis:6379\n"), &[]),
        err(&format!("[dedup.redis]\nurl = redis://bw:{MARKER}@redis:6379\n"), &[]),
        // A URL where another type was expected, from the file and from a variable.
        err(&format!("[dedup.redis]\npool_size = \"redis://bw:{MARKER}@redis\"\n"), &[]),
        err("", &[("BREAKWATER_DEDUP__REDIS__POOL_SIZE", &format!("redis://bw:{MARKER}@redis"))]),
        err("", &[("BREAKWATER_DEDUP__STORE", &format!("redis://bw:{MARKER}@redis"))]),
        err("", &[("BREAKWATER_TELEMETRY__OTLP_ENDPOINT", &format!("grpc://bw:{MARKER}@collector:4317"))]),
        err("", &[("BREAKWATER_EDGE__COMPONENTS__DEDUP", &format!("tcp://bw:{MARKER}@dedup:9102"))]),
    ];
    for message in cases {
        assert!(!message.contains(MARKER), "{message}");
        assert!(message.contains("***") || message.contains("line 2"), "says where: {message}");
    }
}

#[test]
fn the_printed_configuration_hides_passwords() {
    let f = file(&format!(
        "[dedup]\nstore = \"redis\"\n[dedup.redis]\nurl = \"redis://bw-dedup:{MARKER}@redis-dedup:6379\"\n"
    ));
    let c = Config::load(Some(f.path()), &HashMap::new()).unwrap();
    let printed = c.to_redacted_toml().unwrap();
    assert!(!printed.contains(MARKER), "{printed}");
    assert!(printed.contains("url = \"redis://***@redis-dedup:6379\""), "{printed}");
    // What is printed is a configuration again: every key, the same values but the password.
    let reread: Config = toml::from_str(&printed).unwrap();
    assert_eq!(reread.dedup.redis.url, "redis://***@redis-dedup:6379");
    assert_eq!(Config { dedup: c.dedup.clone(), ..reread }, c);
}

#[test]
fn a_syntax_error_gives_its_position() {
    let err = Config::load(Some(file("[edge]\nbody_limit_bytes = 1\nx = [\n").path()), &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not valid TOML at line 3, column"), "{err}");
}
