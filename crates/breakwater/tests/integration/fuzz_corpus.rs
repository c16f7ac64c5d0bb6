//! Replays the committed fuzz corpus of the config parser (`fuzz/corpus/config`) through
//! [`Config::parse_over`], as the fuzz target `config` calls it: no input panics, an error
//! never repeats the corpus's marker password, and the example file loads.

use std::collections::HashMap;
use std::path::PathBuf;

use breakwater::Config;

#[test]
fn every_config_corpus_file_is_answered_without_panic_or_password() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 10, "{} files", files.len());
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        // The target takes text; bytes that are not UTF-8 reach it as their lossy text.
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let outcome =
            std::panic::catch_unwind(|| Config::parse_over(Config::default(), Some((&file, &text)), &HashMap::new()))
                .unwrap_or_else(|_| panic!("{file} panicked"));
        match (&outcome, file.as_str()) {
            (Ok(_), "example.toml" | "empty.toml") => {}
            (Err(e), "example.toml" | "empty.toml") => panic!("{file}: {e}"),
            (Ok(_), _) => panic!("{file} should be refused"),
            (Err(e), _) => assert!(!e.to_string().contains("Fuzz-Secret"), "{file}: {e}"),
        }
    }
}
