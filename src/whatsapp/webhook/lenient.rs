//! Reading Meta's parts leniently: a documented part in a shape the docs do not give
//! reads as absent instead of failing its item, which is kept raw as sent.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Meta sends Unix timestamps as strings; some newer objects send numbers.
pub fn lenient_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("timestamp is not an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom("timestamp is not an integer")),
        _ => Err(serde::de::Error::custom(
            "timestamp is not a string or number",
        )),
    }
}

pub(super) fn lenient_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("expected a string")),
    }
}

pub(super) fn lenient_opt_i64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    lenient_i64(deserializer).map(Some)
}

/// An item's time, or 0 when it is unreadable (the actors then take the time it
/// arrived): an odd timestamp must not cost the item.
pub(super) fn timestamp_or_zero<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    Ok(read_timestamp(&Value::deserialize(deserializer)?))
}

pub(super) fn read_timestamp(value: &Value) -> i64 {
    lenient_i64(value).unwrap_or(0)
}

/// A documented part in a shape the docs do not give reads as absent; the raw item,
/// which is what is stored, still has it.
pub(super) fn or_absent<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    Ok(T::deserialize(Value::deserialize(deserializer)?).ok())
}

/// A list in another shape reads as empty; its raw items are kept as they came (not
/// rebuilt).
pub(super) fn items_or_empty<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Value>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Array(items) => items,
        _ => Vec::new(),
    })
}

/// [`or_absent`] for each element of a list: one odd element costs only itself.
pub(super) fn each_or_absent<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    Ok(items_or_empty(deserializer)?
        .into_iter()
        .filter_map(|item| T::deserialize(item).ok())
        .collect())
}
