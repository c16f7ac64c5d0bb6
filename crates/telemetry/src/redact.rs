//! Redaction of secrets and annotation bodies in text that reaches logs or
//! error bodies (reference spec §1.4): error details can quote the payload.

use std::borrow::Cow;

/// Keys whose values never leave the process as written (compared without case).
const SENSITIVE_KEYS: &[&str] =
    &["password", "passwd", "secret", "token", "api_key", "apikey", "authorization", "annotations", "generatorurl"];

const REDACTED: &str = "\"[REDACTED]\"";

/// `endpoint` (an OTLP URL) as it may be logged: any user information
/// (`user:password@`, or a token given as the user) becomes `***`, and so
/// does a query string, which collectors also take keys in.
pub fn redact_endpoint(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else { return endpoint.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?***"),
        None => tail.to_owned(),
    };
    format!("{scheme}://{host}{tail}")
}

/// `text` with the user information of every URL in it (`scheme://user:password@host`) made
/// `***`, so no log line carries a URL's password, whoever logs it (kube's request spans log
/// the cluster URL of a kubeconfig as written). The user information is taken to run to the
/// last `@` before the next quote, backslash, whitespace or end, since a password may hold a
/// `/`; a URL with an `@` in its path loses its host too, which costs only readability.
pub fn redact_url_credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let start = i + "://".len();
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find(|c: char| c == '"' || c == '\\' || c.is_whitespace()).unwrap_or(after.len());
        let segment = &after[..end];
        match segment.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&segment[at..]);
            }
            None => out.push_str(segment),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Replaces the value of every sensitive JSON key in `text` (a string, an
/// object, an array or a scalar) with `"[REDACTED]"`, and the string a serde
/// error quotes (`invalid type: string "…"`), whose field it does not name.
/// Other text is kept as is.
pub fn redact(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    if !SENSITIVE_KEYS.iter().any(|k| lower.contains(k)) && !lower.contains(": string \"") {
        return Cow::Borrowed(text);
    }
    let (bytes, bytes_lower) = (text.as_bytes(), lower.as_bytes());
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let end = string_end(bytes, i);
            let key = lower.get(i + 1..end.saturating_sub(1).max(i + 1)).unwrap_or("");
            let is_sensitive = SENSITIVE_KEYS.contains(&key);
            if let (true, Some(value)) = (is_sensitive, value_after_colon(bytes, end)) {
                out.push_str(&text[copied..value]);
                out.push_str(REDACTED);
                copied = value_end(bytes, value);
                i = copied;
                continue;
            }
            i = end;
            continue;
        }
        // serde quotes the offending value (`invalid type: string "…", expected …`)
        // without naming the field, so it may be any field: never repeat it.
        let quoted_by_serde = bytes_lower[..i].ends_with(b"type: ") || bytes_lower[..i].ends_with(b"value: ");
        if quoted_by_serde && bytes_lower[i..].starts_with(b"string \"") {
            let value = i + "string ".len();
            out.push_str(&text[copied..value]);
            out.push_str(REDACTED);
            copied = string_end(bytes, value);
            i = copied;
            continue;
        }
        i += 1;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Index just past the string starting at `start` (a `"`), escapes honoured;
/// the end of the text for an unterminated string.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Where the value starts when `after_key` is followed by `:` (JSON key).
fn value_after_colon(bytes: &[u8], after_key: usize) -> Option<usize> {
    let mut i = after_key;
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    (i < bytes.len()).then_some(i)
}

/// Index just past the JSON value starting at `start`; nested objects and
/// arrays are skipped whole, a truncated value runs to the end of the text.
fn value_end(bytes: &[u8], start: usize) -> usize {
    match bytes[start] {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        i = string_end(bytes, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            bytes.len()
        }
        _ => {
            let mut i = start;
            while i < bytes.len() && !matches!(bytes[i], b',' | b'}' | b']') && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, redact_endpoint, redact_url_credentials};

    #[test]
    fn endpoint_credentials_and_query_are_hidden() {
        assert_eq!(redact_endpoint("https://user:s3cret@otel.example:4317"), "https://***@otel.example:4317");
        assert_eq!(
            redact_endpoint("https://t0ken@otel.example:4317/v1?api-key=k3y"),
            "https://***@otel.example:4317/v1?***"
        );
        assert_eq!(redact_endpoint("http://jaeger-collector:4317"), "http://jaeger-collector:4317");
        assert_eq!(redact_endpoint("not a url"), "not a url");
    }

    #[test]
    fn redacts_secret_values_of_every_shape() {
        let text = r#"{"password":"hunter2","Token": "abc","api_key":12345,"user":"bob"}"#;
        assert_eq!(
            redact(text),
            r#"{"password":"[REDACTED]","Token": "[REDACTED]","api_key":"[REDACTED]","user":"bob"}"#
        );
    }

    #[test]
    fn url_credentials_never_reach_a_log_line() {
        let line = r#"{"http.url":"https://admin:Mk/Secret+9f3b=@127.0.0.1:1/apis/x?limit=500","n":1}"#;
        assert_eq!(redact_url_credentials(line), r#"{"http.url":"https://***@127.0.0.1:1/apis/x?limit=500","n":1}"#);
        assert_eq!(
            redact_url_credentials("to redis://bw:pw@redis:6379 and http://h/p"),
            "to redis://***@redis:6379 and http://h/p"
        );
        assert_eq!(redact_url_credentials("see http://example.com/a@b"), "see http://***@b");
        let plain = "GET https://127.0.0.1:6443/apis ok, mail me@example.com";
        assert_eq!(redact_url_credentials(plain), plain);
        assert_eq!(redact_url_credentials("no url here"), "no url here");
    }

    #[test]
    fn redacts_whole_annotation_objects_and_generator_urls() {
        let text = r#"{"labels":{"alertname":"X"},"annotations":{"summary":"a \"b\" {c}","runbook":"r"},"generatorURL":"http://p/graph?g0.expr=up"}"#;
        assert_eq!(
            redact(text),
            r#"{"labels":{"alertname":"X"},"annotations":"[REDACTED]","generatorURL":"[REDACTED]"}"#
        );
    }

    #[test]
    fn redacts_strings_serde_quotes() {
        let text =
            r#"alerts[0] is not a valid alert: invalid type: string "db password is x", expected a map at line 1"#;
        let redacted = r#"alerts[0] is not a valid alert: invalid type: string "[REDACTED]", expected a map at line 1"#;
        assert_eq!(redact(text), redacted);
        let value = r#"invalid value: string "tok", expected one of"#;
        assert_eq!(redact(value), r#"invalid value: string "[REDACTED]", expected one of"#);
        let harmless = "alerts[0] is not a valid alert: invalid type: integer `5`, expected a string";
        assert_eq!(redact(harmless), harmless);
    }

    #[test]
    fn keeps_text_without_secrets_and_survives_truncation() {
        assert_eq!(redact("no alerts in webhook payload"), "no alerts in webhook payload");
        assert_eq!(redact(r#"{"password":"unterminated"#), r#"{"password":"[REDACTED]""#);
        assert_eq!(redact(r#"{"annotations":{"a":"#), r#"{"annotations":"[REDACTED]""#);
        assert_eq!(redact("\"token\""), "\"token\"");
        assert_eq!(redact("é \"token\": \"é\" ü"), "é \"token\": \"[REDACTED]\" ü");
    }
}
