//! The query parameters every list endpoint takes, as RabbitMQ's management API reads them:
//! `name` (with `use_regex`) filters by name, `sort` (a dotted path, e.g.
//! `message_stats.publish`) with `sort_reverse` orders, `columns` (comma-separated dotted
//! paths) trims each item, and `page` with `page_size` answer with RabbitMQ's paginated
//! envelope.
//!
//! Owns: parsing those parameters and applying them to a list of JSON items. Must not touch:
//! the broker (endpoints build the items; `queues.rs` pages from the broker itself).

use std::cmp::Ordering;
use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde_json::{json, Map, Value};

use crate::ApiError;

/// RabbitMQ's default `page_size`.
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// RabbitMQ's largest `page_size` (more is a 400).
pub const PAGE_SIZE_MAX: usize = 500;
/// Longest `name` regular expression accepted (its compiled size is bounded by `regex` too).
pub const NAME_REGEX_BYTES_MAX: usize = 1024;

/// How the name filter matches.
#[derive(Clone, Debug)]
pub enum NameFilter {
    /// A substring of the name (case-sensitive).
    Contains(String),
    Regex(regex::Regex),
}

impl NameFilter {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NameFilter::Contains(s) => name.contains(s.as_str()),
            NameFilter::Regex(r) => r.is_match(name),
        }
    }
}

/// The parsed listing parameters of a request.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub columns: Option<Vec<String>>,
    pub sort: Option<String>,
    pub sort_reverse: bool,
    pub name: Option<NameFilter>,
    /// Some when the paginated form was asked for (1-based).
    pub page: Option<usize>,
    pub page_size: usize,
    /// Other parameters (e.g. `if-unused`), for endpoints that read them.
    pub rest: HashMap<String, String>,
}

fn truthy(v: Option<&String>) -> bool {
    matches!(v.map(|s| s.as_str()), Some("true") | Some("1"))
}

fn positive(params: &HashMap<String, String>, key: &str) -> Result<Option<usize>, ApiError> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "{key} must be a positive integer, got '{v}'"
            ))),
        },
    }
}

impl ListQuery {
    pub fn parse(mut params: HashMap<String, String>) -> Result<ListQuery, ApiError> {
        let page = positive(&params, "page")?;
        let page_size = positive(&params, "page_size")?.unwrap_or(PAGE_SIZE_DEFAULT);
        if page_size > PAGE_SIZE_MAX {
            return Err(ApiError::bad_request(format!(
                "page_size must be between 1 and {PAGE_SIZE_MAX}, got {page_size}"
            )));
        }
        let use_regex = truthy(params.get("use_regex"));
        let name = match params.remove("name").filter(|n| !n.is_empty()) {
            None => None,
            Some(n) if use_regex => {
                if n.len() > NAME_REGEX_BYTES_MAX {
                    return Err(ApiError::bad_request("name: regular expression too long"));
                }
                let re = regex::RegexBuilder::new(&n)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| ApiError::bad_request(format!("name: bad regex: {e}")))?;
                Some(NameFilter::Regex(re))
            }
            Some(n) => Some(NameFilter::Contains(n)),
        };
        let columns = params.remove("columns").map(|c| {
            c.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Ok(ListQuery {
            columns,
            sort: params.remove("sort").filter(|s| !s.is_empty()),
            sort_reverse: truthy(params.get("sort_reverse")),
            name,
            page,
            page_size,
            rest: params,
        })
    }

    /// Whether a boolean parameter (e.g. `if-unused`) is `true`.
    pub fn flag(&self, key: &str) -> bool {
        truthy(self.rest.get(key))
    }

    /// Filters, sorts, pages and trims `items` (JSON objects), then
    /// answers with a list or RabbitMQ's paginated envelope.
    pub fn respond(&self, mut items: Vec<Value>) -> Result<Value, ApiError> {
        let total = items.len();
        if let Some(filter) = &self.name {
            // Items without a name (bindings, consumers) are not filtered.
            items.retain(|i| {
                i.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(|n| filter.matches(n))
            });
        }
        if let Some(sort) = &self.sort {
            items.sort_by(|a, b| compare(lookup(a, sort), lookup(b, sort)));
        }
        if self.sort_reverse {
            items.reverse();
        }
        let filtered = items.len();
        match self.page {
            None => Ok(Value::Array(self.trim_all(items))),
            Some(page) => {
                let start = (page - 1).saturating_mul(self.page_size);
                self.check_page(page, filtered)?;
                let items: Vec<Value> =
                    items.into_iter().skip(start).take(self.page_size).collect();
                Ok(self.envelope(self.trim_all(items), page, filtered, total))
            }
        }
    }

    /// RabbitMQ answers 400 for a page past the last (an empty list has one empty page).
    pub fn check_page(&self, page: usize, filtered: usize) -> Result<(), ApiError> {
        if page > page_count(filtered, self.page_size).max(1) {
            return Err(ApiError::bad_request("page out of range"));
        }
        Ok(())
    }

    /// RabbitMQ's paginated answer around a page of already filtered and sorted items.
    pub fn envelope(&self, items: Vec<Value>, page: usize, filtered: usize, total: usize) -> Value {
        json!({
            "filtered_count": filtered,
            "item_count": items.len(),
            "items": items,
            "page": page,
            "page_count": page_count(filtered, self.page_size),
            "page_size": self.page_size,
            "total_count": total,
        })
    }

    /// Keeps only the asked `columns` of each item.
    pub fn trim_all(&self, items: Vec<Value>) -> Vec<Value> {
        match &self.columns {
            None => items,
            Some(columns) => items.iter().map(|i| trim(i, columns)).collect(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        ListQuery::parse(params)
    }
}

fn page_count(filtered: usize, page_size: usize) -> usize {
    filtered.div_ceil(page_size)
}

/// The value at a dotted path (`message_stats.publish`).
pub fn lookup<'a>(item: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(item, |v, key| v.get(key))
}

/// Missing and null first, then booleans, numbers (by value), strings, the rest.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_)) => 1,
            Some(Value::Number(_)) => 2,
            Some(Value::String(_)) => 3,
            Some(_) => 4,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The item with only `columns` (dotted paths keep their nesting).
fn trim(item: &Value, columns: &[String]) -> Value {
    let mut out = Map::new();
    for column in columns {
        let Some(value) = lookup(item, column) else {
            continue;
        };
        let mut keys = column.split('.').peekable();
        let mut at = &mut out;
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                at.insert(key.to_owned(), value.clone());
                break;
            }
            let next = at
                .entry(key.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(map) => at = map,
                _ => break,
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        ListQuery::parse(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn items() -> Vec<Value> {
        (0..7)
            .map(|i| json!({"name": format!("q{i}"), "stats": {"n": (i * 3) % 7}, "x": i}))
            .collect()
    }

    #[test]
    fn sorts_by_dotted_path_trims_columns_and_pages() {
        let q = query(&[
            ("sort", "stats.n"),
            ("sort_reverse", "true"),
            ("columns", "name,stats.n"),
            ("page", "2"),
            ("page_size", "3"),
        ])
        .unwrap();
        let v = q.respond(items()).unwrap();
        assert_eq!(v["page_count"], 3);
        assert_eq!(v["total_count"], 7);
        assert_eq!(v["filtered_count"], 7);
        assert_eq!(v["item_count"], 3);
        // n values: q0 0, q1 3, q2 6, q3 2, q4 5, q5 1, q6 4 → descending 6 5 4 | 3 2 1 | 0.
        assert_eq!(
            v["items"],
            json!([
                {"name": "q1", "stats": {"n": 3}},
                {"name": "q3", "stats": {"n": 2}},
                {"name": "q5", "stats": {"n": 1}},
            ])
        );
    }

    #[test]
    fn filters_by_name_and_regex_and_refuses_bad_pages() {
        let v = query(&[("name", "q1")]).unwrap().respond(items()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        let v = query(&[("name", "^Q[0-2]$"), ("use_regex", "true")])
            .unwrap()
            .respond(items())
            .unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert!(query(&[("page_size", "501"), ("page", "1")]).is_err());
        assert!(query(&[("page", "0")]).is_err());
        assert!(query(&[("name", "("), ("use_regex", "true")]).is_err());
        let out_of_range = query(&[("page", "3"), ("page_size", "5")])
            .unwrap()
            .respond(items());
        assert!(matches!(out_of_range, Err(ApiError::BadRequest(_))));
        let empty = query(&[("page", "1")]).unwrap().respond(vec![]).unwrap();
        assert_eq!(empty["page_count"], 0);
    }
}
