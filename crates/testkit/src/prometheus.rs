//! A strict parser for the Prometheus text exposition format (version 0.0.4), for asserting on
//! `/metrics` output.
//!
//! [`parse`] accepts what Prometheus' own text parser accepts and rejects, with the line
//! number, what a scrape would choke on or what makes assertions ambiguous: bad metric or label
//! names, unterminated label sets or values, unknown escapes, unparsable values or timestamps,
//! a `# TYPE` after samples of its metric or twice for one metric, two `# HELP` lines for one
//! metric, the same label twice in a sample, and the same series twice. For histograms every
//! `_bucket` sample needs an `le` label and for summaries every quantile sample a `quantile`
//! label.
//!
//! [`scrape`] fetches and parses a `/metrics` endpoint in one call.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// One sample line: metric name, labels and value (the optional timestamp is checked, then
/// dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as written, e.g. `http_requests_total` or `latency_seconds_bucket`.
    pub name: String,
    /// Labels with unescaped values.
    pub labels: BTreeMap<String, String>,
    /// Value; `+Inf`, `-Inf` and `NaN` are the corresponding `f64`s.
    pub value: f64,
}

/// A parsed exposition: samples in order plus the `# TYPE` and `# HELP` of each metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
}

impl Scrape {
    /// Every sample, in the order of the text.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The `# TYPE` of metric family `name` (`counter`, `gauge`, `histogram`, `summary` or
    /// `untyped`), or `None` when it has no `# TYPE` line.
    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// The `# HELP` text of metric family `name` (unescaped), or `None` when it has none.
    pub fn help_of(&self, name: &str) -> Option<&str> {
        self.helps.get(name).map(String::as_str)
    }

    /// The value of the sample named `name` whose labels are exactly `labels` (in any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name && sample.labels.len() == labels.len() && has_labels(&sample.labels, labels)
            })
            .map(|sample| sample.value)
    }

    /// The sum of the values of all samples named `name` whose labels include `labels`
    /// (other labels may have any value); `0.0` when there are none. Subtract the sums of two
    /// scrapes to get how much a counter grew.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample.name == name && has_labels(&sample.labels, labels))
            .map(|sample| sample.value)
            .sum()
    }
}

fn has_labels(actual: &BTreeMap<String, String>, wanted: &[(&str, &str)]) -> bool {
    wanted.iter().all(|(name, value)| actual.get(*name).is_some_and(|actual| actual == value))
}

/// Why [`parse`] rejected a text: the 1-based line number, the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line_number: usize,
    /// The offending line.
    pub line: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {:?}", self.line_number, self.message, self.line)
    }
}

impl std::error::Error for ParseError {}

/// Parses a text exposition (format version 0.0.4).
///
/// # Errors
///
/// Returns the first line that is not valid; see the [module documentation](self) for what
/// is rejected.
pub fn parse(text: &str) -> Result<Scrape, ParseError> {
    let mut parser = Parser::default();
    for (index, line) in text.split('\n').enumerate() {
        parser.line(line).map_err(|message| ParseError { line_number: index + 1, line: line.to_owned(), message })?;
    }
    Ok(parser.scrape)
}

/// GETs `url`, checks for status 200 and a `text/plain` content type, and parses the body.
///
/// # Panics
///
/// Panics when the request fails, the status or content type is wrong, or the body does not
/// parse; the message includes the body.
pub async fn scrape(url: &str) -> Scrape {
    let http = match reqwest::Client::builder().no_proxy().build() {
        Ok(http) => http,
        Err(err) => panic!("cannot build an HTTP client to scrape {url}: {err}"),
    };
    let response = match http.get(url).send().await {
        Ok(response) => response,
        Err(err) => panic!("scrape of {url} failed: {err}"),
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = match response.text().await {
        Ok(body) => body,
        Err(err) => panic!("scrape of {url}: cannot read the body (status {status}): {err}"),
    };
    if status != http::StatusCode::OK {
        panic!("scrape of {url} answered {status}, expected 200 OK; body:\n{body}");
    }
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("text/plain") {
        panic!("scrape of {url} has content type {content_type:?}, expected text/plain; body:\n{body}");
    }
    match parse(&body) {
        Ok(scrape) => scrape,
        Err(err) => panic!("scrape of {url} is not a valid text exposition: {err}; body:\n{body}"),
    }
}

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

#[derive(Default)]
struct Parser {
    scrape: Scrape,
    /// Names of the samples seen so far, for rejecting a `# TYPE` after samples.
    sample_names: HashSet<String>,
    /// Every series seen so far, for rejecting duplicates.
    series: HashSet<(String, BTreeMap<String, String>)>,
}

impl Parser {
    fn line(&mut self, line: &str) -> Result<(), String> {
        let mut cursor = Cursor::new(line);
        cursor.skip_blanks();
        if cursor.at_end() {
            return Ok(());
        }
        if cursor.eat('#') { self.comment(cursor) } else { self.sample(cursor) }
    }

    fn comment(&mut self, mut cursor: Cursor<'_>) -> Result<(), String> {
        cursor.skip_blanks();
        let keyword = cursor.token();
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(());
        }
        cursor.skip_blanks();
        let name = cursor.token();
        if name.is_empty() {
            return Err(format!("# {keyword} without a metric name"));
        }
        if !is_metric_name(name) {
            return Err(format!("bad metric name {name:?} in # {keyword}"));
        }
        cursor.skip_blanks();
        if keyword == "HELP" {
            if self.scrape.helps.contains_key(name) {
                return Err(format!("second # HELP line for {name}"));
            }
            let help = unescape_help(cursor.rest())?;
            self.scrape.helps.insert(name.to_owned(), help);
            return Ok(());
        }
        let kind = cursor.token();
        cursor.skip_blanks();
        if kind.is_empty() {
            return Err(format!("# TYPE for {name} without a type"));
        }
        if !TYPES.contains(&kind) {
            return Err(format!("unknown metric type {kind:?} for {name}; expected one of {TYPES:?}"));
        }
        if !cursor.at_end() {
            return Err(format!("unexpected text after the type of {name}: {:?}", cursor.rest()));
        }
        if self.scrape.types.contains_key(name) {
            return Err(format!("second # TYPE line for {name}"));
        }
        let suffixes: &[&str] = match kind {
            "histogram" => &["", "_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        if let Some(seen) =
            suffixes.iter().map(|suffix| format!("{name}{suffix}")).find(|sample| self.sample_names.contains(sample))
        {
            return Err(format!("# TYPE for {name} after samples of it ({seen})"));
        }
        self.scrape.types.insert(name.to_owned(), kind.to_owned());
        Ok(())
    }

    fn sample(&mut self, mut cursor: Cursor<'_>) -> Result<(), String> {
        let name = cursor.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if name.is_empty() {
            return Err(format!("expected a metric name, found {:?}", cursor.rest()));
        }
        if !is_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        if let Some(c) = cursor.peek().filter(|&c| !is_blank(c) && c != '{') {
            return Err(format!("bad metric name: unexpected {c:?} after {name:?}"));
        }
        let mut blank_before_value = cursor.skip_blanks();
        let mut labels = BTreeMap::new();
        if cursor.eat('{') {
            labels = self::labels(&mut cursor)?;
            blank_before_value = cursor.skip_blanks();
        }
        if !blank_before_value {
            return Err(match cursor.peek() {
                None => format!("sample {name} has no value"),
                Some(c) => format!("expected a blank before the value of {name}, found {c:?}"),
            });
        }
        let value_text = cursor.token();
        if value_text.is_empty() {
            return Err(format!("sample {name} has no value"));
        }
        let value = parse_value(value_text).ok_or_else(|| format!("unparsable value {value_text:?} for {name}"))?;
        cursor.skip_blanks();
        if !cursor.at_end() {
            let timestamp = cursor.token();
            if timestamp.parse::<i64>().is_err() {
                return Err(format!("unparsable timestamp {timestamp:?} for {name}"));
            }
            cursor.skip_blanks();
            if !cursor.at_end() {
                return Err(format!("unexpected text after the timestamp of {name}: {:?}", cursor.rest()));
            }
        }
        self.check_family_labels(name, &labels)?;
        if !self.series.insert((name.to_owned(), labels.clone())) {
            return Err(format!("duplicate series {name}{labels:?}"));
        }
        self.sample_names.insert(name.to_owned());
        self.scrape.samples.push(Sample { name: name.to_owned(), labels, value });
        Ok(())
    }

    /// The `le` and `quantile` labels that histogram and summary samples need.
    fn check_family_labels(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
        let type_of = |family: &str| self.scrape.types.get(family).map(String::as_str);
        if let Some(family) = name.strip_suffix("_bucket")
            && type_of(family) == Some("histogram")
        {
            let le = labels.get("le").ok_or_else(|| format!("histogram bucket {name} without an le label"))?;
            parse_value(le).ok_or_else(|| format!("histogram bucket {name} has unparsable le {le:?}"))?;
        }
        if type_of(name) == Some("histogram") {
            return Err(format!("histogram {name} has a sample without a _bucket, _sum or _count suffix"));
        }
        if type_of(name) == Some("summary") {
            let quantile = labels
                .get("quantile")
                .ok_or_else(|| format!("summary {name} has a sample without a quantile label"))?;
            parse_value(quantile).ok_or_else(|| format!("summary {name} has unparsable quantile {quantile:?}"))?;
        }
        Ok(())
    }
}

/// Parses a label set after its `{`, through the closing `}`.
fn labels(cursor: &mut Cursor<'_>) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    loop {
        cursor.skip_blanks();
        if cursor.eat('}') {
            return Ok(labels);
        }
        if cursor.at_end() {
            return Err("unterminated label set".to_owned());
        }
        let name = cursor.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_label_name(name) {
            let found = if name.is_empty() { cursor.rest() } else { name };
            return Err(format!("bad label name at {found:?}"));
        }
        cursor.skip_blanks();
        if !cursor.eat('=') {
            return Err(match cursor.peek() {
                None => "unterminated label set".to_owned(),
                Some(c) => format!("expected '=' after label name {name:?}, found {c:?}"),
            });
        }
        cursor.skip_blanks();
        if !cursor.eat('"') {
            return Err(match cursor.peek() {
                None => "unterminated label set".to_owned(),
                Some(c) => format!("expected '\"' to open the value of label {name:?}, found {c:?}"),
            });
        }
        let value = label_value(cursor).map_err(|err| format!("{err} (label {name:?})"))?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name:?} appears twice"));
        }
        cursor.skip_blanks();
        if cursor.eat(',') {
            continue;
        }
        if cursor.eat('}') {
            return Ok(labels);
        }
        return Err(match cursor.peek() {
            None => "unterminated label set".to_owned(),
            Some(c) => format!("unterminated label set: expected ',' or '}}' after the value of {name:?}, found {c:?}"),
        });
    }
}

/// Reads a label value after its opening quote, through the closing quote.
fn label_value(cursor: &mut Cursor<'_>) -> Result<String, String> {
    let mut value = String::new();
    loop {
        match cursor.next() {
            None => return Err("unterminated label value".to_owned()),
            Some('"') => return Ok(value),
            Some('\\') => match cursor.next() {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                Some(c) => return Err(format!("invalid escape sequence \\{c} in label value")),
                None => return Err("unterminated label value".to_owned()),
            },
            Some(c) => value.push(c),
        }
    }
}

/// Unescapes a `# HELP` text, where only `\\` and `\n` are escapes.
fn unescape_help(text: &str) -> Result<String, String> {
    let mut help = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            help.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => help.push('\\'),
            Some('n') => help.push('\n'),
            Some(other) => return Err(format!("invalid escape sequence \\{other} in # HELP")),
            None => return Err("# HELP ends with a lone backslash".to_owned()),
        }
    }
    Ok(help)
}

/// A Go `ParseFloat`-style value: a decimal float, `+Inf`, `-Inf`, `Inf` or `NaN`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also parses `inf`, `infinity` and `nan`; the character filter keeps those out.
        _ if text.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) => text.parse().ok(),
        _ => None,
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A position in one line.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(line: &'a str) -> Self {
        Self { line, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.line[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos == self.line.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.pos += expected.len_utf8();
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    /// Skips spaces and tabs; whether there were any.
    fn skip_blanks(&mut self) -> bool {
        !self.take_while(is_blank).is_empty()
    }

    /// Everything up to the next blank or the end of the line.
    fn token(&mut self) -> &'a str {
        self.take_while(|c| !is_blank(c))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use axum::Router;
    use axum::routing::get;
    use http::{StatusCode, header};

    use super::{ParseError, parse, scrape};

    const VALID: &str = r#"# HELP breakwater_alerts_received_total Alerts received, by \\ source.\nSecond line.
# TYPE breakwater_alerts_received_total counter
breakwater_alerts_received_total{source="alertmanager",tenant="a"} 3
breakwater_alerts_received_total{source="webhook",tenant="a"} 1.5e3
breakwater_alerts_received_total{source="webhook",tenant="b",} 2 1712345678901

# A free-form comment.
# TYPE breakwater_inflight gauge
breakwater_inflight -1
# TYPE breakwater_latency_seconds histogram
breakwater_latency_seconds_bucket{le="0.005"} 1
breakwater_latency_seconds_bucket{le="+Inf"} 4
breakwater_latency_seconds_sum 0.25
breakwater_latency_seconds_count 4
# TYPE breakwater_batch summary
breakwater_batch{quantile="0.5"} NaN
breakwater_batch{quantile="1"} +Inf
breakwater_batch_sum -Inf
breakwater_batch_count 0
	 untyped_thing { path = "C:\\dir\\\"q\"\nnext" , empty="" }	7
"#;

    fn reject(text: &str) -> ParseError {
        match parse(text) {
            Ok(scrape) => panic!("accepted {text:?} as {scrape:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn parses_a_valid_exposition() {
        let scrape = parse(VALID).expect("valid exposition");
        assert_eq!(scrape.samples().len(), 13);
        assert_eq!(scrape.type_of("breakwater_alerts_received_total"), Some("counter"));
        assert_eq!(scrape.type_of("breakwater_inflight"), Some("gauge"));
        assert_eq!(scrape.type_of("breakwater_latency_seconds"), Some("histogram"));
        assert_eq!(scrape.type_of("breakwater_batch"), Some("summary"));
        assert_eq!(scrape.type_of("untyped_thing"), None);
        assert_eq!(
            scrape.help_of("breakwater_alerts_received_total"),
            Some("Alerts received, by \\ source.\nSecond line.")
        );
        assert_eq!(scrape.help_of("breakwater_inflight"), None);

        let total = "breakwater_alerts_received_total";
        assert_eq!(scrape.value(total, &[("source", "alertmanager"), ("tenant", "a")]), Some(3.0));
        assert_eq!(scrape.value(total, &[("tenant", "a"), ("source", "webhook")]), Some(1500.0));
        assert_eq!(scrape.value(total, &[("source", "webhook")]), None, "value needs every label");
        assert_eq!(scrape.sum(total, &[("source", "webhook")]), 1502.0);
        assert_eq!(scrape.sum(total, &[("tenant", "a")]), 1503.0);
        assert_eq!(scrape.sum(total, &[]), 1505.0);
        assert_eq!(scrape.sum(total, &[("tenant", "c")]), 0.0);
        assert_eq!(scrape.sum("absent", &[]), 0.0);

        assert_eq!(scrape.value("breakwater_inflight", &[]), Some(-1.0));
        assert_eq!(scrape.value("breakwater_latency_seconds_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(scrape.value("breakwater_latency_seconds_bucket", &[("le", "0.005")]), Some(1.0));
        assert_eq!(scrape.value("breakwater_latency_seconds_count", &[]), Some(4.0));
        assert!(scrape.value("breakwater_batch", &[("quantile", "0.5")]).is_some_and(f64::is_nan));
        assert_eq!(scrape.value("breakwater_batch", &[("quantile", "1")]), Some(f64::INFINITY));
        assert_eq!(scrape.value("breakwater_batch_sum", &[]), Some(f64::NEG_INFINITY));

        let last = scrape.samples().last().expect("a last sample");
        assert_eq!(last.name, "untyped_thing");
        assert_eq!(last.labels["path"], "C:\\dir\\\"q\"\nnext");
        assert_eq!(last.labels["empty"], "");
        assert_eq!(last.value, 7.0);
    }

    #[test]
    fn accepts_empty_text_and_bare_comments() {
        assert!(parse("").expect("empty").samples().is_empty());
        assert!(parse("\n\n#\n# HELPER text\n#TYPEX\n").expect("comments").samples().is_empty());
        // HELP may follow samples; only TYPE may not.
        let scrape = parse("x 1\n# HELP x late help\n").expect("late help");
        assert_eq!(scrape.help_of("x"), Some("late help"));
        assert_eq!(parse("x{} 1\n").expect("empty label set").value("x", &[]), Some(1.0));
    }

    #[test]
    fn errors_name_the_line() {
        let err = reject("ok 1\n\nbad-name 2\n");
        assert_eq!(err.line_number, 3);
        assert_eq!(err.line, "bad-name 2");
        assert!(err.to_string().starts_with("line 3: bad metric name"), "{err}");
        assert!(err.to_string().ends_with("\"bad-name 2\""), "{err}");
    }

    #[test]
    fn rejects_bad_metric_names() {
        for text in ["1abc 1", "a-b 1", "a.b 1", "é 1", "{a=\"b\"} 1", "# TYPE 9x counter", "# HELP a-b text", "# TYPE"]
        {
            let err = reject(text);
            assert!(err.message.contains("metric name"), "{text:?}: {err}");
        }
    }

    #[test]
    fn rejects_bad_label_sets() {
        for (text, expected) in [
            ("a{b=\"c\" 1", "unterminated label set"),
            ("a{b=\"c\"", "unterminated label set"),
            ("a{b=\"c\",", "unterminated label set"),
            ("a{b=", "unterminated label set"),
            ("a{", "unterminated label set"),
            ("a{b=\"c} 1", "unterminated label value"),
            ("a{b=\"c\\\"} 1", "unterminated label value"),
            ("a{b=\"\\t\"} 1", "invalid escape sequence"),
            ("a{b=c} 1", "expected '\"'"),
            ("a{b} 1", "expected '='"),
            ("a{1b=\"c\"} 1", "bad label name"),
            ("a{b-c=\"d\"} 1", "expected '='"),
            ("a{,} 1", "bad label name"),
            ("a{b=\"1\",b=\"2\"} 1", "appears twice"),
        ] {
            let err = reject(text);
            assert!(err.message.contains(expected), "{text:?}: expected {expected:?}, got {err}");
        }
    }

    #[test]
    fn rejects_bad_values_and_timestamps() {
        for (text, expected) in [
            ("a", "no value"),
            ("a ", "no value"),
            ("a{b=\"c\"}", "no value"),
            ("a{b=\"c\"}1", "expected a blank"),
            ("a one", "unparsable value"),
            ("a 1,5", "unparsable value"),
            ("a inf", "unparsable value"),
            ("a nan", "unparsable value"),
            ("a 0x10", "unparsable value"),
            ("a 1e", "unparsable value"),
            ("a 1 1.5", "unparsable timestamp"),
            ("a 1 now", "unparsable timestamp"),
            ("a 1 2 3", "after the timestamp"),
            ("a 1\r", "unparsable value"),
        ] {
            let err = reject(text);
            assert!(err.message.contains(expected), "{text:?}: expected {expected:?}, got {err}");
        }
    }

    #[test]
    fn rejects_misplaced_or_repeated_metadata() {
        for (text, expected) in [
            ("a 1\n# TYPE a counter", "after samples"),
            ("h_bucket{le=\"1\"} 1\n# TYPE h histogram", "after samples"),
            ("s_count 1\n# TYPE s summary", "after samples"),
            ("# TYPE a counter\n# TYPE a gauge", "second # TYPE"),
            ("# TYPE a counter\n# TYPE a counter", "second # TYPE"),
            ("# HELP a one\n# HELP a two", "second # HELP"),
            ("# TYPE a timer", "unknown metric type"),
            ("# TYPE a", "without a type"),
            ("# TYPE a counter extra", "unexpected text"),
            ("# HELP a bad \\t escape", "invalid escape"),
            ("# HELP a trailing \\", "lone backslash"),
        ] {
            let err = reject(text);
            assert!(err.message.contains(expected), "{text:?}: expected {expected:?}, got {err}");
        }
        // An untyped `a_count` sample says nothing about a later gauge family `a`.
        assert!(parse("a_count 1\n# TYPE a gauge\na 2").is_ok());
    }

    #[test]
    fn rejects_inconsistent_series() {
        for (text, expected) in [
            ("a{b=\"c\"} 1\na{b=\"c\"} 2", "duplicate series"),
            ("a 1\na 2", "duplicate series"),
            ("# TYPE h histogram\nh_bucket 1", "without an le label"),
            ("# TYPE h histogram\nh_bucket{le=\"high\"} 1", "unparsable le"),
            ("# TYPE h histogram\nh 1", "without a _bucket"),
            ("# TYPE s summary\ns 1", "without a quantile"),
            ("# TYPE s summary\ns{quantile=\"x\"} 1", "unparsable quantile"),
        ] {
            let err = reject(text);
            assert!(err.message.contains(expected), "{text:?}: expected {expected:?}, got {err}");
        }
    }

    /// Serves `/metrics` with this status, content type and body; returns the URL.
    async fn serve_metrics(status: StatusCode, content_type: &'static str, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let app = Router::new()
            .route("/metrics", get(move || async move { (status, [(header::CONTENT_TYPE, content_type)], body) }));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        format!("http://{addr}/metrics")
    }

    #[tokio::test]
    async fn scrape_fetches_and_parses() {
        let url =
            serve_metrics(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", "# TYPE up gauge\nup 1\n").await;
        let scrape = scrape(&url).await;
        assert_eq!(scrape.type_of("up"), Some("gauge"));
        assert_eq!(scrape.value("up", &[]), Some(1.0));
    }

    #[tokio::test]
    #[should_panic(expected = "answered 503 Service Unavailable, expected 200 OK; body:\nnot ready")]
    async fn scrape_panics_on_a_bad_status() {
        scrape(&serve_metrics(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready").await).await;
    }

    #[tokio::test]
    #[should_panic(expected = "has content type \"application/json\", expected text/plain; body:\n{}")]
    async fn scrape_panics_on_a_bad_content_type() {
        scrape(&serve_metrics(StatusCode::OK, "application/json", "{}").await).await;
    }

    #[tokio::test]
    #[should_panic(expected = "is not a valid text exposition: line 2: unparsable value")]
    async fn scrape_panics_on_an_invalid_body() {
        scrape(&serve_metrics(StatusCode::OK, "text/plain", "up 1\ndown zero\n").await).await;
    }
}
