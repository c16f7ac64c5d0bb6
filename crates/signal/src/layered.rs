//! A signal's labels (or annotations) as one map without copying: its own, over
//! those its batch shares by every signal (an Alertmanager webhook's
//! `commonLabels` and `commonAnnotations`). A webhook of 1,000 alerts sharing a
//! 32 KiB annotation holds it once, not 1,000 times.

use std::collections::HashMap;

type StringMap = HashMap<String, String>;

/// `own` over `shared`: a key of `own` hides the same key of `shared`.
#[derive(Debug, Clone, Copy)]
pub struct Layered<'a> {
    own: &'a StringMap,
    shared: Option<&'a StringMap>,
}

impl<'a> Layered<'a> {
    /// `own` over `shared`.
    pub fn new(own: &'a StringMap, shared: &'a StringMap) -> Self {
        Self { own, shared: (!shared.is_empty()).then_some(shared) }
    }

    /// `own` alone.
    pub fn own(own: &'a StringMap) -> Self {
        Self { own, shared: None }
    }

    /// The value of `key`: its own, else the shared one.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.own.get(key).or_else(|| self.shared?.get(key)).map(String::as_str)
    }

    /// Every key once, with the value [`Self::get`] gives it; in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let own = self.own;
        let shared = self.shared.into_iter().flatten().filter(move |(k, _)| !own.contains_key(k.as_str()));
        own.iter().chain(shared).map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> StringMap {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn own_values_hide_shared_ones_and_each_key_is_listed_once() {
        let own = map(&[("pod", "p-1"), ("severity", "critical")]);
        let shared = map(&[("severity", "warning"), ("team", "db")]);
        let labels = Layered::new(&own, &shared);
        assert_eq!(labels.get("severity"), Some("critical"));
        assert_eq!(labels.get("team"), Some("db"));
        assert_eq!(labels.get("missing"), None);
        let mut all: Vec<_> = labels.iter().collect();
        all.sort_unstable();
        assert_eq!(all, [("pod", "p-1"), ("severity", "critical"), ("team", "db")]);
    }
}
