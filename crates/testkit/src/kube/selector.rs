//! Label and field selectors, parsed the way the API server's query parameters are.

use std::collections::BTreeMap;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)` and `k notin (a,b)`, separated
    /// by commas.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        split_top_level(text)
            .into_iter()
            .filter(|term| !term.trim().is_empty())
            .map(|term| parse_requirement(term.trim()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `labels` satisfy every requirement. As in Kubernetes, `!=` and `notin` also
    /// match objects without the label.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => !labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }
}

/// Splits on commas that are not inside a `( .. )` value set.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0_i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(valid_key(key.trim())?));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(valid_key(key.trim())?, valid_value(value.trim())?));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(valid_key(key.trim())?, valid_value(value.trim())?));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let Some(rest) = words.next().map(str::trim_start) else {
        return Ok(Requirement::Exists(valid_key(key)?));
    };
    let (negated, set) = if let Some(set) = rest.strip_prefix("notin") {
        (true, set)
    } else if let Some(set) = rest.strip_prefix("in") {
        (false, set)
    } else {
        return Err(format!("unable to parse requirement: {term:?}: expected in or notin"));
    };
    let Some(inner) = set.trim().strip_prefix('(').and_then(|set| set.strip_suffix(')')) else {
        return Err(format!("unable to parse requirement: {term:?}: expected a (value,...) set"));
    };
    let values = inner.split(',').map(|value| valid_value(value.trim())).collect::<Result<Vec<_>, _>>()?;
    let key = valid_key(key)?;
    Ok(if negated { Requirement::NotIn(key, values) } else { Requirement::In(key, values) })
}

fn valid_key(key: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && key.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok { Ok(key.to_owned()) } else { Err(format!("invalid label key {key:?}")) }
}

fn valid_value(value: &str) -> Result<String, String> {
    if value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

/// A parsed `fieldSelector`; only `metadata.name` and `metadata.namespace` are supported, as
/// for custom resources on a real API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `field=v`, `field==v` and `field!=v`, separated by commas.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|term| !term.is_empty()) {
            let (field, equal, value) = if let Some((field, value)) = term.split_once("!=") {
                (field, false, value)
            } else if let Some((field, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (field, true, value)
            } else {
                return Err(format!("invalid field selector {term:?}: expected field=value"));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field label not supported: {field}"));
            }
            requirements.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(requirements))
    }

    /// Whether an object with this name and namespace satisfies every requirement.
    pub(crate) fn matches(&self, name: &str, namespace: &str) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = if field == "metadata.name" { name } else { namespace };
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{FieldSelector, LabelSelector};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn label_selector_forms() {
        let object = labels(&[("app", "web"), ("tier", "front"), ("breakwater.io/fp", "abc")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web, tier=back", false),
            ("breakwater.io/fp=abc", true),
            ("tier in (front,back)", true),
            ("tier in (back)", false),
            ("tier notin (back, middle)", true),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app=web,tier in (a,front),!missing", true),
        ];
        for (selector, expected) in cases {
            let parsed = LabelSelector::parse(selector).unwrap_or_else(|err| panic!("{selector}: {err}"));
            assert_eq!(parsed.matches(&object), expected, "selector {selector:?}");
        }
    }

    #[test]
    fn invalid_label_selectors_are_errors() {
        for selector in ["app=we b", "=x", "tier on (a)", "tier in a", "!"] {
            assert!(LabelSelector::parse(selector).is_err(), "{selector:?} should not parse");
        }
    }

    #[test]
    fn field_selectors_on_name_and_namespace() {
        let selector = FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system").expect("parses");
        assert!(selector.matches("a", "prod"));
        assert!(!selector.matches("b", "prod"));
        assert!(!selector.matches("a", "kube-system"));
        assert!(FieldSelector::parse("spec.x=1").is_err());
    }
}
