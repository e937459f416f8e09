//! Plain-text tables for `--format table`: one row per JSON object of a list, one column per
//! field, aligned with spaces. The API's JSON itself is printed by `--format json`.
//!
//! Owns: how one JSON value becomes one cell and how cells are laid out. Must not touch: which
//! columns a kind of object has (`commands::list`) or I/O.

use serde_json::Value;

/// A column: its header and where its value is in each object (`.` separates nested keys:
/// `queue.name`).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub field: &'static str,
}

/// Shorthand for a column list: `col("ready", "messages_ready")`.
pub const fn col(header: &'static str, field: &'static str) -> Column {
    Column { header, field }
}

/// The value at a dotted path, if every step exists.
pub fn lookup<'a>(object: &'a Value, field: &str) -> Option<&'a Value> {
    field
        .split('.')
        .try_fold(object, |value, key| value.as_object()?.get(key))
}

/// One cell: strings bare, lists of scalars joined with `,`, objects as compact JSON, a
/// missing value or `null` empty. Control characters (a newline in a payload) become spaces so
/// one row stays one line.
pub fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_object() && !i.is_array()) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The table: a header line, then one line per row; columns separated by two spaces, no
/// trailing spaces.
pub fn render(columns: &[Column], rows: &[Value]) -> String {
    let header: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(lookup(row, c.field))).collect())
        .collect();
    lay_out(&header, &body)
}

/// Key/value lines for one object (`overview`): scalars of the top level and of nested
/// objects, nested keys dotted (`object_totals.queues`); lists are left out.
pub fn render_object(object: &Value) -> String {
    let mut pairs = Vec::new();
    flatten("", object, &mut pairs);
    let body: Vec<Vec<String>> = pairs.into_iter().map(|(k, v)| vec![k, v]).collect();
    lay_out(&["key".to_owned(), "value".to_owned()], &body)
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, v, out);
            }
        }
        Value::Array(_) => {}
        scalar => out.push((prefix.to_owned(), cell(Some(scalar)))),
    }
}

fn lay_out(header: &[String], body: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in body {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(body.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, (text, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(text);
            line.push_str(&" ".repeat(width - text.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const QUEUES: [Column; 3] = [
        col("name", "name"),
        col("ready", "messages_ready"),
        col("consumer", "queue.name"),
    ];

    #[test]
    fn columns_are_aligned_and_lines_have_no_trailing_spaces() {
        let rows = [
            json!({"name": "jobs", "messages_ready": 12, "queue": {"name": "x"}}),
            json!({"name": "a-much-longer-name", "messages_ready": 0}),
        ];
        let text = render(&QUEUES, &rows);
        assert_eq!(
            text,
            "name                ready  consumer\n\
             jobs                12     x\n\
             a-much-longer-name  0\n"
        );
    }

    #[test]
    fn an_empty_list_is_the_header_alone() {
        assert_eq!(render(&QUEUES, &[]), "name  ready  consumer\n");
    }

    #[test]
    fn cells_of_each_json_type() {
        assert_eq!(cell(None), "");
        assert_eq!(cell(Some(&Value::Null)), "");
        assert_eq!(cell(Some(&json!("s"))), "s");
        assert_eq!(cell(Some(&json!(true))), "true");
        assert_eq!(cell(Some(&json!(3))), "3");
        assert_eq!(
            cell(Some(&json!(["administrator", "management"]))),
            "administrator,management"
        );
        assert_eq!(
            cell(Some(&json!({"x-max-length": 10}))),
            r#"{"x-max-length":10}"#
        );
        assert_eq!(cell(Some(&json!([{"a": 1}]))), r#"[{"a":1}]"#);
        assert_eq!(cell(Some(&json!("two\nlines\t"))), "two lines ");
    }

    #[test]
    fn wide_characters_count_as_one() {
        let rows = [json!({"name": "été", "messages_ready": 1})];
        assert_eq!(render(&QUEUES[..2], &rows), "name  ready\nété   1\n");
    }

    #[test]
    fn nested_lookup() {
        let v = json!({"a": {"b": {"c": 1}}});
        assert_eq!(lookup(&v, "a.b.c"), Some(&json!(1)));
        assert_eq!(lookup(&v, "a.x"), None);
        assert_eq!(lookup(&json!(5), "a"), None);
    }

    #[test]
    fn objects_flatten_into_key_value_lines() {
        let overview = json!({
            "product_name": "Warren",
            "object_totals": {"queues": 2},
            "listeners": [{"port": 5672}]
        });
        assert_eq!(
            render_object(&overview),
            "key                   value\n\
             object_totals.queues  2\n\
             product_name          Warren\n"
        );
    }
}
