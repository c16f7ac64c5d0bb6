use std::time::Duration;

use super::DedupConfig;

#[test]
fn the_cooldown_defaults_to_the_window_and_is_bounded() {
    let mut config = DedupConfig { window_secs: 42, ..DedupConfig::default() };
    assert_eq!(config.cooldown(), Duration::from_secs(42));
    config.cooldown_secs = Some(0);
    assert_eq!(config.cooldown(), Duration::ZERO);
    assert_eq!(config.validate(), Ok(()));
    config.cooldown_secs = Some(604_801);
    assert_eq!(
        config.validate(),
        Err("dedup.cooldown_secs = 604801 is not allowed: use 0..=604800 seconds".to_owned())
    );
}
