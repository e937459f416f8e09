//! The lenient readers of `definitions_json` (the shapes RabbitMQ has written a field in over
//! its versions) and the texts of its parse errors.

use serde::{de, Deserialize, Deserializer};
use serde_json::Value;

use super::{Limits, Table};

pub(super) fn yes() -> bool {
    true
}

/// Tags: a list, or (older versions) one comma-separated string; `null` is none.
pub(super) fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(optional_tags(d)?.unwrap_or_default())
}

pub(super) fn optional_tags<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    struct TagsVisitor;
    impl<'de> de::Visitor<'de> for TagsVisitor {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of tags or a comma-separated string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            let tags = s.split(',').map(str::trim).filter(|t| !t.is_empty());
            Ok(Some(tags.map(str::to_owned).collect()))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut tags = Vec::new();
            while let Some(t) = seq.next_element::<String>()? {
                tags.push(t);
            }
            Ok(Some(tags))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(TagsVisitor)
}

/// An object, or the list of `[key, value]` pairs RabbitMQ writes for an Erlang proplist
/// (`[]` for an empty one); `null` is empty.
pub(super) fn pairs<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
    d: D,
) -> Result<Vec<(String, V)>, D::Error> {
    struct PairsVisitor<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> de::Visitor<'de> for PairsVisitor<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object or a list of [key, value] pairs")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, V>()? {
                out.push(entry);
            }
            Ok(out)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = seq.next_element::<(String, V)>()? {
                out.push(entry);
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(PairsVisitor(std::marker::PhantomData))
}

pub(super) fn table<'de, D: Deserializer<'de>>(d: D) -> Result<Table, D::Error> {
    Ok(pairs::<D, Value>(d)?.into_iter().collect())
}

pub(super) fn limits<'de, D: Deserializer<'de>>(d: D) -> Result<Limits, D::Error> {
    Ok(pairs::<D, i64>(d)?.into_iter().collect())
}

/// `users[2] ("bob").tags: invalid type ...`: the category and index, the entry's name (read
/// from the document, when it has one) and the rest of the path.
pub(super) fn describe_error(
    raw: &Value,
    path: &serde_path_to_error::Path,
    e: &serde_json::Error,
) -> String {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    match segments.as_slice() {
        [Segment::Map { key }, Segment::Seq { index }, rest @ ..] => format!(
            "{key}[{index}]{}{}: {e}",
            entry_label(&raw[key.as_str()][*index]),
            render_path(rest)
        ),
        [] => format!("definitions: {e}"),
        all => format!("{}: {e}", render_path(all).trim_start_matches('.')),
    }
}

pub(super) fn entry_label(entry: &Value) -> String {
    let field = |k: &str| entry.get(k).and_then(Value::as_str);
    let main = if let Some(name) = field("name") {
        format!("\"{name}\"")
    } else if let Some(user) = field("user") {
        format!("user \"{user}\"")
    } else if let (Some(s), Some(d)) = (field("source"), field("destination")) {
        format!("\"{s}\" -> \"{d}\"")
    } else {
        String::new()
    };
    let vhost = field("vhost").map(|v| format!("in vhost \"{v}\""));
    match (main.is_empty(), vhost) {
        (true, None) => String::new(),
        (true, Some(v)) => format!(" ({v})"),
        (false, None) => format!(" ({main})"),
        (false, Some(v)) => format!(" ({main} {v})"),
    }
}

pub(super) fn render_path(segments: &[&serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    segments
        .iter()
        .map(|s| match s {
            Segment::Seq { index } => format!("[{index}]"),
            Segment::Map { key } => format!(".{key}"),
            Segment::Enum { variant } => format!(".{variant}"),
            Segment::Unknown => ".?".to_owned(),
        })
        .collect()
}

pub(super) fn at_path(path: &serde_path_to_error::Path, e: &serde_json::Error) -> String {
    let segments: Vec<_> = path.iter().collect();
    if segments.is_empty() {
        e.to_string()
    } else {
        format!("value{}: {e}", render_path(&segments))
    }
}
