//! A structural OpenAPI v3 schema, as the API server applies a CRD version's
//! `openAPIV3Schema` to a custom resource on every write: unknown fields are pruned (or reported,
//! for `fieldValidation=Strict`), non-nullable nulls are dropped, defaults are filled in, and the
//! result is validated. Error messages follow the API server's (`field.Error` wording of
//! `apiextensions-apiserver`'s validation), because clients and tests match on them.
//!
//! Supported keywords: `type`, `properties`, `required`, `additionalProperties` (a schema),
//! `items`, `enum`, `pattern`, `maxLength`, `minLength`, `maximum`, `minimum`, `nullable`,
//! `default`, `format` (`date-time`, `byte`; other formats are accepted unchecked),
//! `x-kubernetes-preserve-unknown-fields` and `x-kubernetes-int-or-string`. Anything else (CEL
//! rules, `maxItems`, ...) is ignored, so the fake accepts more than a real server would there.

use regex::Regex;
use serde_json::{Map, Value};

/// A compiled schema node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schema {
    kind: Option<Type>,
    nullable: bool,
    /// In schema order, so errors come out in a stable order.
    properties: Vec<(String, Schema)>,
    required: Vec<String>,
    additional: Option<Box<Schema>>,
    items: Option<Box<Schema>>,
    allowed: Option<Vec<Value>>,
    pattern: Option<(String, Regex)>,
    max_length: Option<u64>,
    min_length: Option<u64>,
    maximum: Option<f64>,
    minimum: Option<f64>,
    format: Option<String>,
    default: Option<Value>,
    preserve_unknown: bool,
    int_or_string: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Object => "object",
            Type::Array => "array",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }
}

/// One invalid field, as a `details.causes` entry of the 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// `spec.signalFingerprint`.
    pub(crate) field: String,
    /// The cause's `reason`: `FieldValueInvalid`, `FieldValueRequired`, ...
    pub(crate) reason: &'static str,
    /// The message without the field: `Invalid value: "x": ...`.
    pub(crate) body: String,
}

impl FieldError {
    /// `field: body`, as the Status message lists it.
    pub(crate) fn full(&self) -> String {
        format!("{}: {}", self.field, self.body)
    }
}

/// What applying a schema to an object found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) errors: Vec<FieldError>,
    /// Paths of the unknown fields, which were pruned.
    pub(crate) unknown: Vec<String>,
}

/// Fields the API server keeps on every object whatever its schema says.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

impl Schema {
    /// Compiles a schema, or says which keyword is malformed.
    pub(crate) fn compile(raw: &Value) -> Result<Self, String> {
        Self::compile_at(raw, "openAPIV3Schema")
    }

    fn compile_at(raw: &Value, at: &str) -> Result<Self, String> {
        let Some(fields) = raw.as_object() else {
            return Err(format!("{at}: a schema must be an object, got {raw}"));
        };
        let mut schema = Schema {
            nullable: flag(fields, "nullable"),
            preserve_unknown: flag(fields, "x-kubernetes-preserve-unknown-fields"),
            int_or_string: flag(fields, "x-kubernetes-int-or-string"),
            default: fields.get("default").cloned(),
            format: fields.get("format").and_then(Value::as_str).map(str::to_owned),
            max_length: fields.get("maxLength").and_then(Value::as_u64),
            min_length: fields.get("minLength").and_then(Value::as_u64),
            maximum: fields.get("maximum").and_then(Value::as_f64),
            minimum: fields.get("minimum").and_then(Value::as_f64),
            allowed: fields.get("enum").and_then(Value::as_array).cloned(),
            ..Schema::default()
        };
        schema.kind = match fields.get("type").and_then(Value::as_str) {
            None => None,
            Some("object") => Some(Type::Object),
            Some("array") => Some(Type::Array),
            Some("string") => Some(Type::String),
            Some("integer") => Some(Type::Integer),
            Some("number") => Some(Type::Number),
            Some("boolean") => Some(Type::Boolean),
            Some(other) => return Err(format!("{at}.type: unsupported type {other:?}")),
        };
        if let Some(pattern) = fields.get("pattern").and_then(Value::as_str) {
            let regex = Regex::new(pattern).map_err(|err| format!("{at}.pattern: {err}"))?;
            schema.pattern = Some((pattern.to_owned(), regex));
        }
        if let Some(properties) = fields.get("properties").and_then(Value::as_object) {
            for (name, raw) in properties {
                schema.properties.push((name.clone(), Self::compile_at(raw, &format!("{at}.properties.{name}"))?));
            }
        }
        if let Some(required) = fields.get("required").and_then(Value::as_array) {
            schema.required = required.iter().filter_map(Value::as_str).map(str::to_owned).collect();
        }
        // `additionalProperties: true/false` is not allowed in a structural schema; only a schema.
        if let Some(raw @ Value::Object(_)) = fields.get("additionalProperties") {
            schema.additional = Some(Box::new(Self::compile_at(raw, &format!("{at}.additionalProperties"))?));
        }
        if let Some(raw) = fields.get("items") {
            schema.items = Some(Box::new(Self::compile_at(raw, &format!("{at}.items"))?));
        }
        Ok(schema)
    }

    /// Prunes, defaults and validates `object` (a whole custom resource) in place.
    pub(crate) fn apply(&self, object: &mut Value) -> Outcome {
        let mut outcome = Outcome::default();
        self.apply_at(object, "", true, &mut outcome);
        outcome
    }

    fn property(&self, name: &str) -> Option<&Schema> {
        self.properties.iter().find(|(known, _)| known == name).map(|(_, schema)| schema)
    }

    fn apply_at(&self, value: &mut Value, path: &str, root: bool, outcome: &mut Outcome) {
        if value.is_null() && self.nullable {
            return;
        }
        if let Some(error) = self.type_error(value, path) {
            outcome.errors.push(error);
            return;
        }
        match value {
            Value::Object(fields) => self.apply_object(fields, path, root, outcome),
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for (index, item) in items.iter_mut().enumerate() {
                        schema.apply_at(item, &format!("{path}[{index}]"), false, outcome);
                    }
                }
            }
            _ => {}
        }
        self.check_scalar(value, path, outcome);
    }

    fn apply_object(&self, fields: &mut Map<String, Value>, path: &str, root: bool, outcome: &mut Outcome) {
        let names: Vec<String> = fields.keys().cloned().collect();
        for name in names {
            let child_path = join(path, &name);
            let schema = self.property(&name).or(self.additional.as_deref());
            let Some(schema) = schema else {
                if !(self.preserve_unknown || root && ROOT_FIELDS.contains(&name.as_str())) {
                    fields.remove(&name);
                    outcome.unknown.push(child_path);
                }
                continue;
            };
            // Non-nullable nulls are pruned (or defaulted) before validation; a required one
            // is left to fail as a value of the wrong type, as the API server reports it.
            let is_null = fields.get(&name).is_some_and(Value::is_null);
            if is_null && !schema.nullable {
                match &schema.default {
                    Some(default) => {
                        fields.insert(name.clone(), default.clone());
                    }
                    None if self.required.contains(&name) => {}
                    None => {
                        fields.remove(&name);
                        continue;
                    }
                }
            }
            if let Some(child) = fields.get_mut(&name) {
                schema.apply_at(child, &child_path, false, outcome);
            }
        }
        for (name, schema) in &self.properties {
            if let Some(default) = &schema.default
                && !fields.contains_key(name)
            {
                fields.insert(name.clone(), default.clone());
            }
        }
        for name in &self.required {
            if !fields.contains_key(name) {
                outcome.errors.push(FieldError {
                    field: join(path, name),
                    reason: "FieldValueRequired",
                    body: "Required value".to_owned(),
                });
            }
        }
    }

    fn type_error(&self, value: &Value, path: &str) -> Option<FieldError> {
        let fits = if self.int_or_string {
            value.is_string() || is_integer(value)
        } else {
            match self.kind {
                None => true,
                Some(Type::Object) => value.is_object(),
                Some(Type::Array) => value.is_array(),
                Some(Type::String) => value.is_string(),
                Some(Type::Integer) => is_integer(value),
                Some(Type::Number) => value.is_number(),
                Some(Type::Boolean) => value.is_boolean(),
            }
        };
        if fits {
            return None;
        }
        let expected = if self.int_or_string { "integer,string" } else { self.kind.map_or("", Type::name) };
        let actual = type_name(value);
        Some(FieldError {
            field: path.to_owned(),
            reason: "FieldValueTypeInvalid",
            body: format!("Invalid value: {actual:?}: {path} in body must be of type {expected}: {actual:?}"),
        })
    }

    fn check_scalar(&self, value: &Value, path: &str, outcome: &mut Outcome) {
        if let Some(allowed) = &self.allowed
            && !allowed.contains(value)
        {
            let supported: Vec<String> = allowed.iter().map(show).collect();
            outcome.errors.push(FieldError {
                field: path.to_owned(),
                reason: "FieldValueNotSupported",
                body: format!("Unsupported value: {}: supported values: {}", show(value), supported.join(", ")),
            });
        }
        let invalid = |detail: String| FieldError {
            field: path.to_owned(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {}: {path} in body {detail}", show(value)),
        };
        if let Some(text) = value.as_str() {
            // OpenAPI lengths count characters (Go runes), not bytes.
            let length = u64::try_from(text.chars().count()).unwrap_or(u64::MAX);
            if let Some(max) = self.max_length
                && length > max
            {
                outcome.errors.push(FieldError {
                    field: path.to_owned(),
                    reason: "FieldValueTooLong",
                    body: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(min) = self.min_length
                && length < min
            {
                outcome.errors.push(invalid(format!("should be at least {min} chars long")));
            }
            if let Some((source, regex)) = &self.pattern
                && !regex.is_match(text)
            {
                outcome.errors.push(invalid(format!("should match '{source}'")));
            }
            if let Some(format) = &self.format
                && !format_matches(format, text)
            {
                outcome.errors.push(invalid(format!("must be of type {format}: {text:?}")));
            }
        }
        if let Some(number) = value.as_f64() {
            if let Some(max) = self.maximum
                && number > max
            {
                outcome.errors.push(invalid(format!("should be less than or equal to {max}")));
            }
            if let Some(min) = self.minimum
                && number < min
            {
                outcome.errors.push(invalid(format!("should be greater than or equal to {min}")));
            }
        }
    }
}

fn flag(fields: &Map<String, Value>, name: &str) -> bool {
    fields.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") }
}

/// Whole numbers count as integers even when written `1.0`, as go-openapi counts them.
fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|n| n.is_finite() && n.fract() == 0.0)
}

/// The JSON type of a value as go-openapi names it in a type error.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(value) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as `field.Error` prints it: strings quoted, everything else as JSON.
fn show(value: &Value) -> String {
    value.to_string()
}

fn format_matches(format: &str, text: &str) -> bool {
    match format {
        "date-time" => is_rfc3339(text),
        "byte" => is_base64(text),
        // The API server checks more formats (`int64` is not one of them); those are not used
        // by the schemas the fake serves, so they pass unchecked.
        _ => true,
    }
}

/// RFC 3339 `date-time`: a full date, `T`, a full time and an offset, and a real instant.
fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|b| b.iter().all(u8::is_ascii_digit));
    let shaped = digits(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits(5..7)
        && bytes.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(bytes.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && bytes.get(13) == Some(&b':')
        && digits(14..16)
        && bytes.get(16) == Some(&b':')
        && digits(17..19);
    if !shaped {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return false;
        }
        rest = &fraction[len..];
    }
    let offset_ok = matches!(rest, "Z" | "z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest.bytes().enumerate().all(|(i, b)| matches!(i, 0 | 3) || b.is_ascii_digit()));
    // The shape alone would take `2024-02-30T25:00:00Z`; jiff checks the calendar and clock.
    offset_ok && text.to_ascii_uppercase().parse::<jiff::Timestamp>().is_ok()
}

/// Standard base64 with padding, as Go's `base64.StdEncoding` decodes it.
fn is_base64(text: &str) -> bool {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return false;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    padding <= 2 && bytes[..bytes.len() - padding].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
