//! A component's effective configuration: `key=value` assignments and JSON merge patches over
//! the recipe's defaults.

use serde_json::Value;

use super::error::{RecipeError, show};

/// Applies `key=value` to a configuration tree, creating objects along the way.
///
/// The key is a JSON pointer like `/server/port` or dotted like `server.port`; the value is
/// parsed as JSON if it parses (`8080`, `true`, `[1,2]`, `"8080"`), else taken as a string.
/// A non-object configuration (such as null) becomes an empty object first; an existing
/// non-object value on the way is an error, an array on the way is indexed by number.
pub fn apply_set(configuration: &mut Value, assignment: &str) -> Result<(), RecipeError> {
    let fail = |message: String| RecipeError::Set {
        assignment: show(assignment),
        message,
    };
    let (key, value_text) = assignment
        .split_once('=')
        .ok_or_else(|| fail("expected key=value".to_owned()))?;
    let key = key.trim();
    let segments: Vec<String> = if let Some(pointer) = key.strip_prefix('/') {
        pointer
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect()
    } else {
        key.split('.').map(str::to_owned).collect()
    };
    if key.is_empty() || segments.iter().any(String::is_empty) {
        return Err(fail(
            "the key is empty or has an empty segment; write server.port or /server/port"
                .to_owned(),
        ));
    }
    let value = serde_json::from_str::<Value>(value_text)
        .unwrap_or_else(|_| Value::String(value_text.to_owned()));

    if !configuration.is_object() {
        *configuration = Value::Object(serde_json::Map::new());
    }
    let last_index = segments.len().saturating_sub(1);
    let mut current = configuration;
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i == last_index;
        if current.is_null() {
            *current = Value::Object(serde_json::Map::new());
        }
        current = match current {
            Value::Object(map) => {
                if is_last {
                    map.insert(segment.clone(), value);
                    return Ok(());
                }
                map.entry(segment.clone()).or_insert(Value::Null)
            }
            Value::Array(items) => {
                let len = items.len();
                let Some(item) = segment
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| items.get_mut(index))
                else {
                    return Err(fail(format!(
                        "{} is an array of {len} elements; `{}` is not an index of it",
                        pointer_of(&segments[..i]),
                        show(segment)
                    )));
                };
                if is_last {
                    *item = value;
                    return Ok(());
                }
                item
            }
            other => {
                return Err(fail(format!(
                    "{} is {}, not a mapping",
                    pointer_of(&segments[..i]),
                    kind_of(other)
                )));
            }
        };
    }
    Ok(())
}

/// A JSON pointer for configuration error messages.
fn pointer_of(segments: &[String]) -> String {
    if segments.is_empty() {
        return "the configuration".to_owned();
    }
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&s.replace('~', "~0").replace('/', "~1"));
    }
    show(&out)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a mapping",
    }
}

/// RFC 7386 JSON merge patch (null deletes), for configuration overrides over defaults.
pub fn merge(base: &mut Value, patch: &Value) {
    match patch {
        Value::Object(entries) => {
            if !base.is_object() {
                *base = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(target) = base {
                for (key, value) in entries {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *base = other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::test_support::*;
    use serde_json::json;

    #[test]
    fn apply_set_pointer_and_dotted_keys() -> TestResult {
        let mut c = json!({"server": {"port": 1}, "keep": true});
        apply_set(&mut c, "/server/port=8080")?;
        apply_set(&mut c, "server.host=example.com")?;
        apply_set(&mut c, "a.b.c=1")?;
        apply_set(&mut c, "/x~1y=2")?;
        assert_eq!(
            c,
            json!({"server": {"port": 8080, "host": "example.com"}, "keep": true,
                   "a": {"b": {"c": 1}}, "x/y": 2})
        );
        let mut empty = Value::Null;
        apply_set(&mut empty, "top=1")?;
        assert_eq!(empty, json!({"top": 1}));
        let mut list = json!({"l": [{"a": 1}, 2]});
        apply_set(&mut list, "l.0.a=3")?;
        apply_set(&mut list, "/l/1=4")?;
        assert_eq!(list, json!({"l": [{"a": 3}, 4]}));
        Ok(())
    }

    #[test]
    fn apply_set_json_and_string_values() -> TestResult {
        let mut c = json!({});
        for assignment in [
            "n=8080",
            "f=1.5",
            "b=false",
            "s=hello world",
            "q=\"8080\"",
            "o={\"k\": [1, 2]}",
            "e=",
            "eq=a=b",
            "z=null",
        ] {
            apply_set(&mut c, assignment)?;
        }
        assert_eq!(
            c,
            json!({"n": 8080, "f": 1.5, "b": false, "s": "hello world", "q": "8080",
                   "o": {"k": [1, 2]}, "e": "", "eq": "a=b", "z": null})
        );
        Ok(())
    }

    #[test]
    fn apply_set_errors() -> TestResult {
        let mut c = json!({"port": 1, "l": [1]});
        for (assignment, part) in [
            ("noequals", "expected key=value"),
            ("=1", "key is empty"),
            ("a..b=1", "empty segment"),
            ("port.x=1", "/port is a number, not a mapping"),
            ("l.5=1", "/l is an array of 1 elements"),
        ] {
            match apply_set(&mut c, assignment) {
                Ok(()) => return Err(format!("{assignment} was accepted").into()),
                Err(e) => assert_contains(&e.to_string(), &[&format!("`{assignment}`"), part])?,
            }
        }
        assert_eq!(c, json!({"port": 1, "l": [1]}));
        Ok(())
    }

    #[test]
    fn merge_with_null_deletion() -> TestResult {
        let mut base = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "f": "x"});
        merge(
            &mut base,
            &json!({"a": null, "b": {"c": null, "n": 4}, "e": [3], "f": {"g": 1}, "h": null}),
        );
        assert_eq!(
            base,
            json!({"b": {"d": 3, "n": 4}, "e": [3], "f": {"g": 1}})
        );
        let mut scalar = json!(1);
        merge(&mut scalar, &json!({"a": {"b": null, "c": 1}}));
        assert_eq!(scalar, json!({"a": {"c": 1}}));
        let mut whole = json!({"a": 1});
        merge(&mut whole, &json!("text"));
        assert_eq!(whole, json!("text"));
        Ok(())
    }
}
