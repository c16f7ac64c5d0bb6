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
