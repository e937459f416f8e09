//! Content filters on headers-exchange bindings (`x-match: filter`): the grammar of AWS SNS
//! filter policies, their compiler, the matcher, and the per-exchange index of compiled
//! filters that the routing snapshot holds.
//!
//! Owns: checking a filter binding's arguments (`x-filter`, `x-filter-scope`), compiling the
//! policy once at bind time into a `Filter`, matching a `Filter` against a message's
//! `headers` table (never converted to JSON) or its body parsed as a JSON object, and
//! `FilterSet`, a persistent (O(1) clone, O(log n) change) collection of one exchange's
//! filter bindings indexed by an exact-string header value or a numeric interval. It knows
//! nothing of queues, vhosts or the classic `all`/`any` modes (`headers.rs`), and never
//! parses a policy per message.
//!
//! Semantics follow SNS message filtering: keys combine with AND, the values listed for a
//! key with OR; a key must be present for any condition but `{"exists": false}` to match;
//! an array value matches when any of its elements does; nested tables (or JSON objects)
//! are nested keys; `"$or"` at any level takes a list of alternative objects.

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::hash::Hash;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};

use crate::args::type_name;

/// The `x-match` value that selects content filtering.
pub const FILTER_MODE: &str = "filter";
/// The binding argument holding the JSON filter policy (a long string).
pub const X_FILTER: &str = "x-filter";
/// The binding argument choosing what the policy is matched against: `headers` (the
/// default) or `body` (SNS's payload-based filtering).
pub const X_FILTER_SCOPE: &str = "x-filter-scope";
/// SNS's maximum size of a filter policy (256 KB).
pub const POLICY_BYTES_MAX: usize = 256 * 1024;
/// SNS's maximum number of keys in a policy (distinct leaf key paths, nested ones included).
pub const POLICY_KEYS_MAX: usize = 5;
/// The deepest key path a policy may name (`{"a": {"b": {"c": {"d": {"e": [..]}}}}}` is 5).
pub const POLICY_DEPTH_MAX: usize = 5;
/// SNS's limit on a policy's combinations: the product over keys of the number of values
/// listed for each (the alternatives of an `"$or"` add up).
pub const POLICY_COMBINATIONS_MAX: u64 = 150;
/// SNS accepts numbers in a policy from -10^9 to 10^9.
pub const POLICY_NUMBER_ABS_MAX: f64 = 1e9;
/// The fewest alternatives an `"$or"` may list (SNS: two).
const OR_ALTERNATIVES_MIN: usize = 2;

/// Why a filter binding's arguments were refused; the text becomes 406 PRECONDITION_FAILED.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("x-match filter requires an x-filter argument")]
    Missing,
    #[error("invalid x-filter type {0}; expected longstr")]
    PolicyType(&'static str),
    #[error("invalid x-filter-scope {0}; expected \"headers\" or \"body\"")]
    Scope(String),
    #[error("invalid x-filter: {0}")]
    Policy(String),
}

/// What a policy is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Headers,
    Body,
}

/// A compiled filter policy.
#[derive(Clone, Debug)]
pub struct Filter {
    scope: Scope,
    root: Node,
}

#[derive(Clone, Debug)]
enum Node {
    All(Box<[Node]>),
    Any(Box<[Node]>),
    /// The conditions listed for one key path; any one of them matching is enough.
    Leaf {
        path: Box<[Box<str>]>,
        conditions: Box<[Condition]>,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Condition {
    Equals(Box<str>),
    Boolean(bool),
    Null,
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Holds the lower-cased text.
    EqualsIgnoreCase(Box<str>),
    Range {
        lower: Bound,
        upper: Bound,
    },
    Exists(bool),
    AnythingBut {
        strings: Box<[Box<str>]>,
        numbers: Box<[f64]>,
    },
    AnythingButPrefix(Box<str>),
    AnythingButSuffix(Box<str>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    Open,
    Inclusive(f64),
    Exclusive(f64),
}

impl Bound {
    fn value(self) -> Option<f64> {
        match self {
            Bound::Open => None,
            Bound::Inclusive(n) | Bound::Exclusive(n) => Some(n),
        }
    }
}

/// One value found at a key path, as the matcher sees it.
#[derive(Clone, Copy, Debug)]
enum Scalar<'v> {
    Text(&'v str),
    Number(f64),
    Boolean(bool),
    Null,
    /// A table or object where the policy names a leaf, or bytes that are not UTF-8.
    Other,
}

/// True if the binding arguments select content filtering (`x-match: filter`).
pub fn is_filter_binding(args: &FieldTable) -> bool {
    args.inner()
        .get("x-match")
        .and_then(long_string)
        .is_some_and(|mode| mode == FILTER_MODE)
}

impl Filter {
    /// Compiles a filter binding's arguments; call only when `is_filter_binding(args)`.
    pub fn from_binding_args(args: &FieldTable) -> Result<Filter, FilterError> {
        let scope = match args.inner().get(X_FILTER_SCOPE) {
            None => Scope::Headers,
            Some(value) => match long_string(value) {
                Some("headers") => Scope::Headers,
                Some("body") => Scope::Body,
                Some(other) => return Err(FilterError::Scope(format!("{other:?}"))),
                None => return Err(FilterError::Scope(format!("of type {}", type_name(value)))),
            },
        };
        let value = args.inner().get(X_FILTER).ok_or(FilterError::Missing)?;
        let policy = long_string(value).ok_or(FilterError::PolicyType(type_name(value)))?;
        Filter::compile(policy, scope).map_err(FilterError::Policy)
    }

    /// Compiles a policy; `Err` names the problem (and the key it is at).
    pub fn compile(policy: &str, scope: Scope) -> Result<Filter, String> {
        if policy.len() > POLICY_BYTES_MAX {
            return Err(format!(
                "policy is {} bytes, more than {POLICY_BYTES_MAX}",
                policy.len()
            ));
        }
        let value: Value =
            serde_json::from_str(policy).map_err(|error| format!("bad JSON: {error}"))?;
        let Value::Object(object) = value else {
            return Err("the policy must be a JSON object".to_owned());
        };
        let root = compile_object(&object, &mut Vec::new())?;
        let mut keys = BTreeSet::new();
        root.collect_paths(&mut keys);
        if keys.len() > POLICY_KEYS_MAX {
            return Err(format!("{} keys, more than {POLICY_KEYS_MAX}", keys.len()));
        }
        let combinations = root.combinations();
        if combinations > POLICY_COMBINATIONS_MAX {
            return Err(format!(
                "{combinations} combinations, more than {POLICY_COMBINATIONS_MAX}"
            ));
        }
        Ok(Filter { scope, root })
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Matches the policy against a message's headers (absent headers: an empty table).
    pub fn matches_headers(&self, headers: Option<&FieldTable>) -> bool {
        self.root.matches(&HeadersDocument(headers))
    }

    /// Matches the policy against a message body already parsed as a JSON object.
    pub fn matches_body(&self, body: &Map<String, Value>) -> bool {
        self.root.matches(&BodyDocument(body))
    }

    /// The leaves the whole policy requires (not under an `"$or"`), for header scope only.
    fn required_leaves(&self) -> &[Node] {
        if self.scope != Scope::Headers {
            return &[];
        }
        match &self.root {
            Node::All(children) => children,
            leaf @ Node::Leaf { .. } => std::slice::from_ref(leaf),
            Node::Any(_) => &[],
        }
    }

    /// The required top-level keys whose every condition is a closed numeric interval (an
    /// exact number is one of width 0), with those intervals: any of them can index the filter.
    fn numeric_terms(&self) -> Vec<(&str, Vec<(f64, f64)>)> {
        self.required_leaves()
            .iter()
            .filter_map(|node| match node {
                Node::Leaf { path, conditions } if path.len() == 1 => {
                    let intervals: Option<Vec<(f64, f64)>> = conditions
                        .iter()
                        .map(|c| match c {
                            Condition::Range { lower, upper } => {
                                Some((lower.value()?, upper.value()?))
                            }
                            _ => None,
                        })
                        .collect();
                    Some((&*path[0], intervals?))
                }
                _ => None,
            })
            .collect()
    }

    /// The required top-level keys whose every condition is an exact string, with those
    /// strings: any of them can index the filter.
    fn index_terms(&self) -> Vec<(&str, Vec<&str>)> {
        self.required_leaves()
            .iter()
            .filter_map(|node| match node {
                Node::Leaf { path, conditions } if path.len() == 1 => {
                    let values: Option<Vec<&str>> = conditions
                        .iter()
                        .map(|c| match c {
                            Condition::Equals(text) => Some(&**text),
                            _ => None,
                        })
                        .collect();
                    Some((&*path[0], values?))
                }
                _ => None,
            })
            .collect()
    }
}

fn compile_object(object: &Map<String, Value>, path: &mut Vec<Box<str>>) -> Result<Node, String> {
    if object.is_empty() {
        return Err(match path.last() {
            Some(_) => format!("empty object at key {}", show_path(path)),
            None => "the policy is empty".to_owned(),
        });
    }
    let mut all = Vec::with_capacity(object.len());
    for (key, value) in object {
        if key == "$or" {
            all.push(compile_or(value, path)?);
            continue;
        }
        path.push(key.as_str().into());
        if path.len() > POLICY_DEPTH_MAX {
            return Err(format!(
                "key {} is nested deeper than {POLICY_DEPTH_MAX} levels",
                show_path(path)
            ));
        }
        let node = match value {
            Value::Object(inner) => compile_object(inner, path)?,
            Value::Array(values) => Node::Leaf {
                conditions: compile_conditions(values, path)?,
                path: path.clone().into_boxed_slice(),
            },
            _ => {
                return Err(format!(
                    "the value at key {} must be an array or an object",
                    show_path(path)
                ))
            }
        };
        path.pop();
        all.push(node);
    }
    Ok(match all.len() {
        1 => all.remove(0),
        _ => Node::All(all.into_boxed_slice()),
    })
}

fn compile_or(value: &Value, path: &mut Vec<Box<str>>) -> Result<Node, String> {
    let where_ = match path.last() {
        Some(_) => format!(" at key {}", show_path(path)),
        None => String::new(),
    };
    let Value::Array(alternatives) = value else {
        return Err(format!("\"$or\" must be an array of objects{where_}"));
    };
    if alternatives.len() < OR_ALTERNATIVES_MIN {
        return Err(format!(
            "\"$or\" needs at least {OR_ALTERNATIVES_MIN} alternatives{where_}"
        ));
    }
    let mut any = Vec::with_capacity(alternatives.len());
    for alternative in alternatives {
        let Value::Object(object) = alternative else {
            return Err(format!("\"$or\" must be an array of objects{where_}"));
        };
        any.push(compile_object(object, path)?);
    }
    Ok(Node::Any(any.into_boxed_slice()))
}

fn compile_conditions(values: &[Value], path: &[Box<str>]) -> Result<Box<[Condition]>, String> {
    if values.is_empty() {
        return Err(format!("empty array at key {}", show_path(path)));
    }
    values
        .iter()
        .map(|value| compile_condition(value, path))
        .collect()
}

fn compile_condition(value: &Value, path: &[Box<str>]) -> Result<Condition, String> {
    let at = || show_path(path);
    match value {
        Value::String(text) => Ok(Condition::Equals(text.as_str().into())),
        Value::Number(_) => {
            let n = policy_number(value, path)?;
            Ok(Condition::Range {
                lower: Bound::Inclusive(n),
                upper: Bound::Inclusive(n),
            })
        }
        Value::Bool(b) => Ok(Condition::Boolean(*b)),
        Value::Null => Ok(Condition::Null),
        Value::Array(_) => Err(format!("nested array at key {}", at())),
        Value::Object(operator) => {
            let mut entries = operator.iter();
            let (Some((name, argument)), None) = (entries.next(), entries.next()) else {
                return Err(format!(
                    "an operator object must hold exactly one operator at key {}",
                    at()
                ));
            };
            let text = |what: &str| match argument {
                Value::String(text) => Ok(text.as_str()),
                _ => Err(format!("\"{what}\" needs a string at key {}", at())),
            };
            match name.as_str() {
                "prefix" => Ok(Condition::Prefix(text("prefix")?.into())),
                "suffix" => Ok(Condition::Suffix(text("suffix")?.into())),
                "equals-ignore-case" => Ok(Condition::EqualsIgnoreCase(
                    text("equals-ignore-case")?.to_lowercase().into(),
                )),
                "exists" => match argument {
                    Value::Bool(b) => Ok(Condition::Exists(*b)),
                    _ => Err(format!("\"exists\" needs true or false at key {}", at())),
                },
                "numeric" => compile_numeric(argument, path),
                "anything-but" => compile_anything_but(argument, path),
                other => Err(format!("unknown operator {other:?} at key {}", at())),
            }
        }
    }
}

fn policy_number(value: &Value, path: &[Box<str>]) -> Result<f64, String> {
    match value.as_f64() {
        Some(n) if n.abs() <= POLICY_NUMBER_ABS_MAX => Ok(n),
        Some(n) => Err(format!(
            "number {n} at key {} is outside -{POLICY_NUMBER_ABS_MAX:e}..{POLICY_NUMBER_ABS_MAX:e}",
            show_path(path)
        )),
        None => Err(format!(
            "\"numeric\" needs a number, not {value} at key {}",
            show_path(path)
        )),
    }
}

/// `["=", n]`, `[op, n]` with op one of `<`, `<=`, `>`, `>=`, or a lower bound then an upper
/// bound: `[">", a, "<=", b]` with `a < b`.
fn compile_numeric(argument: &Value, path: &[Box<str>]) -> Result<Condition, String> {
    let bad = || {
        format!(
            "\"numeric\" needs [operator, number] or [lower operator, number, upper operator, number] at key {}",
            show_path(path)
        )
    };
    let Value::Array(items) = argument else {
        return Err(bad());
    };
    let pair = |i: usize| -> Result<(&str, f64), String> {
        match (items.get(i), items.get(i + 1)) {
            (Some(Value::String(op)), Some(n)) => Ok((op.as_str(), policy_number(n, path)?)),
            _ => Err(bad()),
        }
    };
    let (first, n) = pair(0)?;
    let (mut lower, mut upper) = (Bound::Open, Bound::Open);
    match first {
        "=" if items.len() == 2 => {
            return Ok(Condition::Range {
                lower: Bound::Inclusive(n),
                upper: Bound::Inclusive(n),
            })
        }
        ">" => lower = Bound::Exclusive(n),
        ">=" => lower = Bound::Inclusive(n),
        "<" if items.len() == 2 => upper = Bound::Exclusive(n),
        "<=" if items.len() == 2 => upper = Bound::Inclusive(n),
        "=" | "<" | "<=" => return Err(bad()),
        other => {
            return Err(format!(
                "unknown numeric operator {other:?} at key {}",
                show_path(path)
            ))
        }
    }
    match items.len() {
        2 => {}
        4 => {
            let (second, m) = pair(2)?;
            upper = match second {
                "<" => Bound::Exclusive(m),
                "<=" => Bound::Inclusive(m),
                _ => return Err(bad()),
            };
            if m <= n {
                return Err(format!("numeric range is empty at key {}", show_path(path)));
            }
        }
        _ => return Err(bad()),
    }
    Ok(Condition::Range { lower, upper })
}

fn compile_anything_but(argument: &Value, path: &[Box<str>]) -> Result<Condition, String> {
    let bad = || {
        format!(
            "\"anything-but\" needs a string, a number, a list of them, or {{\"prefix\"|\"suffix\": string}} at key {}",
            show_path(path)
        )
    };
    let mut strings = Vec::new();
    let mut numbers = Vec::new();
    let mut add = |value: &Value| -> Result<(), String> {
        match value {
            Value::String(text) => strings.push(text.as_str().into()),
            Value::Number(_) => numbers.push(policy_number(value, path)?),
            _ => return Err(bad()),
        }
        Ok(())
    };
    match argument {
        Value::Array(items) if !items.is_empty() => items.iter().try_for_each(&mut add)?,
        Value::String(_) | Value::Number(_) => add(argument)?,
        Value::Object(operator) if operator.len() == 1 => {
            return match operator.iter().next() {
                Some((name, Value::String(text))) if name == "prefix" => {
                    Ok(Condition::AnythingButPrefix(text.as_str().into()))
                }
                Some((name, Value::String(text))) if name == "suffix" => {
                    Ok(Condition::AnythingButSuffix(text.as_str().into()))
                }
                _ => Err(bad()),
            }
        }
        _ => return Err(bad()),
    }
    Ok(Condition::AnythingBut {
        strings: strings.into_boxed_slice(),
        numbers: numbers.into_boxed_slice(),
    })
}

fn show_path(path: &[Box<str>]) -> String {
    let joined: Vec<&str> = path.iter().map(|key| &**key).collect();
    format!("{:?}", joined.join("."))
}

impl Node {
    fn collect_paths<'n>(&'n self, out: &mut BTreeSet<&'n [Box<str>]>) {
        match self {
            Node::All(children) | Node::Any(children) => {
                children.iter().for_each(|child| child.collect_paths(out));
            }
            Node::Leaf { path, .. } => {
                out.insert(path);
            }
        }
    }

    fn combinations(&self) -> u64 {
        match self {
            Node::All(children) => children
                .iter()
                .fold(1u64, |n, child| n.saturating_mul(child.combinations())),
            Node::Any(children) => children
                .iter()
                .fold(0u64, |n, child| n.saturating_add(child.combinations())),
            Node::Leaf { conditions, .. } => conditions.len() as u64,
        }
    }

    fn matches(&self, document: &dyn Document) -> bool {
        match self {
            Node::All(children) => children.iter().all(|child| child.matches(document)),
            Node::Any(children) => children.iter().any(|child| child.matches(document)),
            Node::Leaf { path, conditions } => {
                let mut present = false;
                let mut hit = false;
                document.visit(path, &mut |value| {
                    present = true;
                    hit = conditions.iter().any(|c| c.matches(value));
                    hit
                });
                // SNS: `exists: false` needs the message to carry some attribute at all.
                hit || (!present
                    && !document.is_empty()
                    && conditions.contains(&Condition::Exists(false)))
            }
        }
    }
}

impl Condition {
    fn matches(&self, value: Scalar<'_>) -> bool {
        match (self, value) {
            (Condition::Exists(_), Scalar::Null) => false,
            (Condition::Exists(exists), _) => *exists,
            (Condition::Null, Scalar::Null) => true,
            (Condition::Boolean(b), Scalar::Boolean(v)) => *b == v,
            (Condition::Equals(text), Scalar::Text(v)) => **text == *v,
            (Condition::Prefix(text), Scalar::Text(v)) => v.starts_with(&**text),
            (Condition::Suffix(text), Scalar::Text(v)) => v.ends_with(&**text),
            (Condition::EqualsIgnoreCase(lower), Scalar::Text(v)) => {
                v.chars().flat_map(char::to_lowercase).eq(lower.chars())
            }
            (Condition::Range { lower, upper }, Scalar::Number(v)) => {
                let above = match *lower {
                    Bound::Open => true,
                    Bound::Inclusive(n) => v >= n,
                    Bound::Exclusive(n) => v > n,
                };
                let below = match *upper {
                    Bound::Open => true,
                    Bound::Inclusive(n) => v <= n,
                    Bound::Exclusive(n) => v < n,
                };
                above && below
            }
            (Condition::AnythingBut { .. }, Scalar::Null) => false,
            (Condition::AnythingBut { strings, .. }, Scalar::Text(v)) => {
                !strings.iter().any(|s| **s == *v)
            }
            (Condition::AnythingBut { numbers, .. }, Scalar::Number(v)) => !numbers.contains(&v),
            (Condition::AnythingBut { .. }, _) => true,
            (Condition::AnythingButPrefix(text), Scalar::Text(v)) => !v.starts_with(&**text),
            (Condition::AnythingButSuffix(text), Scalar::Text(v)) => !v.ends_with(&**text),
            _ => false,
        }
    }
}

/// A message as a tree of keys; `visit` calls `f` with each value found at `path` (arrays
/// flattened) until `f` returns true.
trait Document {
    fn visit(&self, path: &[Box<str>], f: &mut dyn FnMut(Scalar<'_>) -> bool);
    fn is_empty(&self) -> bool;
}

struct HeadersDocument<'m>(Option<&'m FieldTable>);

impl Document for HeadersDocument<'_> {
    fn visit(&self, path: &[Box<str>], f: &mut dyn FnMut(Scalar<'_>) -> bool) {
        if let (Some(headers), Some((first, rest))) = (self.0, path.split_first()) {
            if let Some(value) = headers.inner().get(&**first) {
                visit_amqp(value, rest, f);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_none_or(|headers| headers.inner().is_empty())
    }
}

/// Returns true once `f` has.
fn visit_amqp(value: &AMQPValue, path: &[Box<str>], f: &mut dyn FnMut(Scalar<'_>) -> bool) -> bool {
    match (value, path.split_first()) {
        (AMQPValue::FieldArray(items), _) => items
            .as_slice()
            .iter()
            .any(|item| visit_amqp(item, path, f)),
        (AMQPValue::FieldTable(table), Some((first, rest))) => table
            .inner()
            .get(&**first)
            .is_some_and(|inner| visit_amqp(inner, rest, f)),
        (_, Some(_)) => false,
        (_, None) => f(amqp_scalar(value)),
    }
}

fn amqp_scalar(value: &AMQPValue) -> Scalar<'_> {
    match value {
        AMQPValue::Boolean(b) => Scalar::Boolean(*b),
        AMQPValue::ShortShortInt(n) => Scalar::Number(f64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Scalar::Number(f64::from(*n)),
        AMQPValue::ShortInt(n) => Scalar::Number(f64::from(*n)),
        AMQPValue::ShortUInt(n) => Scalar::Number(f64::from(*n)),
        AMQPValue::LongInt(n) => Scalar::Number(f64::from(*n)),
        AMQPValue::LongUInt(n) => Scalar::Number(f64::from(*n)),
        // Beyond 2^53 the nearest double; policies only hold numbers up to 10^9.
        AMQPValue::LongLongInt(n) => Scalar::Number(*n as f64),
        AMQPValue::Timestamp(n) => Scalar::Number(*n as f64),
        AMQPValue::Float(x) => Scalar::Number(f64::from(*x)),
        AMQPValue::Double(x) => Scalar::Number(*x),
        AMQPValue::DecimalValue(d) => {
            Scalar::Number(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::Void => Scalar::Null,
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => Scalar::Other,
        other => match long_string(other) {
            Some(text) => Scalar::Text(text),
            None => Scalar::Other,
        },
    }
}

/// The text of a string value: long and short strings, and byte arrays that are UTF-8.
fn long_string(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str()),
        AMQPValue::ByteArray(bytes) => std::str::from_utf8(bytes.as_slice()).ok(),
        _ => None,
    }
}

struct BodyDocument<'m>(&'m Map<String, Value>);

impl Document for BodyDocument<'_> {
    fn visit(&self, path: &[Box<str>], f: &mut dyn FnMut(Scalar<'_>) -> bool) {
        if let Some((first, rest)) = path.split_first() {
            if let Some(value) = self.0.get(&**first) {
                visit_json(value, rest, f);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn visit_json(value: &Value, path: &[Box<str>], f: &mut dyn FnMut(Scalar<'_>) -> bool) -> bool {
    match (value, path.split_first()) {
        (Value::Array(items), _) => items.iter().any(|item| visit_json(item, path, f)),
        (Value::Object(object), Some((first, rest))) => object
            .get(&**first)
            .is_some_and(|inner| visit_json(inner, rest, f)),
        (_, Some(_)) => false,
        (Value::String(text), None) => f(Scalar::Text(text)),
        (Value::Number(n), None) => f(n.as_f64().map_or(Scalar::Other, Scalar::Number)),
        (Value::Bool(b), None) => f(Scalar::Boolean(*b)),
        (Value::Null, None) => f(Scalar::Null),
        (Value::Object(_), None) => f(Scalar::Other),
    }
}

/// A body parsed for body-scoped filters: `None` when it is not a JSON object.
fn parse_body(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    }
}

/// Where a binding sits in a `FilterSet`.
#[derive(Clone, Debug)]
enum Placement {
    /// Matched against every message.
    Scan,
    /// Under one header name, in the bucket of each value it lists.
    Indexed(Arc<str>, Arc<[Arc<str>]>),
    /// Under one header name, at the (width class, lower end) of each interval it lists.
    Numeric(Arc<str>, Arc<[(i32, Lower)]>),
}

type Bucket<K> = imbl::HashMap<K, Arc<Filter>>;

/// An interval's lower end, ordered (policy numbers are finite).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Lower(f64);

impl Eq for Lower {}

impl PartialOrd for Lower {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Lower {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The width class of exact numbers (intervals of width 0).
const POINT_CLASS: i32 = i32::MIN;

/// Intervals are grouped by width class: class `c` holds widths in (2^(c-1), 2^c], so an
/// interval of class `c` containing `v` starts in [v - 2^c, v], and a lookup per class
/// reads at most about twice the intervals that contain `v`.
fn width_class(width: f64) -> i32 {
    if width <= 0.0 {
        return POINT_CLASS;
    }
    // Policy numbers lie within ±10^9, so widths are within (0, 2·10^9]: the class fits.
    width.log2().ceil() as i32
}

fn class_width(class: i32) -> f64 {
    if class == POINT_CLASS {
        0.0
    } else {
        2f64.powi(class)
    }
}

/// Of a filter's numeric terms, the one whose intervals are narrowest in total.
fn narrowest(terms: Vec<(&str, Vec<(f64, f64)>)>) -> Option<(&str, Vec<(f64, f64)>)> {
    let span =
        |intervals: &[(f64, f64)]| -> f64 { intervals.iter().map(|(low, high)| high - low).sum() };
    terms
        .into_iter()
        .min_by(|a, b| span(&a.1).total_cmp(&span(&b.1)))
}

/// One header's numeric intervals: width class → lower end → filters.
type Intervals<K> = imbl::OrdMap<i32, imbl::OrdMap<Lower, Bucket<K>>>;

/// One exchange's filter bindings. A filter that requires a top-level header to equal one
/// of some strings sits in the buckets of those strings under that header's name (of its
/// candidate headers, the one whose buckets were smallest when it was bound, so a header
/// whose values are distinct per binding wins over one shared by many). Failing that, a
/// filter that requires a top-level header to lie in closed numeric intervals sits at those
/// intervals (`Intervals`, the narrowest such header). A message checks only the buckets of
/// its string values, the intervals that may contain its numbers, and the filters with
/// neither term (`scan`); every candidate is matched in full, so the indexes only preselect.
#[derive(Clone, Debug)]
pub struct FilterSet<K: Clone + Hash + Eq> {
    index: imbl::HashMap<Arc<str>, imbl::HashMap<Arc<str>, Bucket<K>>>,
    /// Filters without an exact-string term but with a closed numeric interval on a header.
    numeric: imbl::HashMap<Arc<str>, Intervals<K>>,
    scan: Bucket<K>,
    placed: imbl::HashMap<K, Placement>,
    /// Body-scoped filters in `scan`: when none, a body is never parsed.
    body_filters: usize,
}

impl<K: Clone + Hash + Eq> Default for FilterSet<K> {
    fn default() -> Self {
        FilterSet {
            index: imbl::HashMap::new(),
            numeric: imbl::HashMap::new(),
            scan: imbl::HashMap::new(),
            placed: imbl::HashMap::new(),
            body_filters: 0,
        }
    }
}

impl<K: Clone + Hash + Eq> FilterSet<K> {
    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.placed.len()
    }

    /// Adds a binding's filter; a key already present is left as it is.
    pub fn insert(&mut self, key: K, filter: Filter) {
        if self.placed.contains_key(&key) {
            return;
        }
        let filter = Arc::new(filter);
        let exact = filter
            .index_terms()
            .into_iter()
            .min_by_key(|(name, values)| (self.bucket_sizes(name, values), values.len()));
        let placement = match exact {
            Some((name, values)) => self.insert_exact(&key, &filter, name, values),
            None => match narrowest(filter.numeric_terms()) {
                Some((name, intervals)) => self.insert_numeric(&key, &filter, name, intervals),
                None => {
                    if filter.scope == Scope::Body {
                        self.body_filters += 1;
                    }
                    self.scan.insert(key.clone(), filter);
                    Placement::Scan
                }
            },
        };
        self.placed.insert(key, placement);
    }

    fn insert_exact(
        &mut self,
        key: &K,
        filter: &Arc<Filter>,
        name: &str,
        values: Vec<&str>,
    ) -> Placement {
        let name: Arc<str> = name.into();
        let values: Arc<[Arc<str>]> = values.into_iter().map(Arc::from).collect();
        let buckets = self.index.entry(name.clone()).or_default();
        for value in values.iter() {
            buckets
                .entry(value.clone())
                .or_default()
                .insert(key.clone(), filter.clone());
        }
        Placement::Indexed(name, values)
    }

    fn insert_numeric(
        &mut self,
        key: &K,
        filter: &Arc<Filter>,
        name: &str,
        intervals: Vec<(f64, f64)>,
    ) -> Placement {
        let name: Arc<str> = name.into();
        let by_class = self.numeric.entry(name.clone()).or_default();
        let mut places = Vec::with_capacity(intervals.len());
        for (low, high) in intervals {
            let place = (width_class(high - low), Lower(low));
            by_class
                .entry(place.0)
                .or_default()
                .entry(place.1)
                .or_default()
                .insert(key.clone(), filter.clone());
            places.push(place);
        }
        Placement::Numeric(name, places.into())
    }

    fn bucket_sizes(&self, name: &str, values: &[&str]) -> usize {
        let Some(buckets) = self.index.get(name) else {
            return 0;
        };
        values
            .iter()
            .map(|value| buckets.get(*value).map_or(0, imbl::HashMap::len))
            .sum()
    }

    pub fn remove(&mut self, key: &K) {
        match self.placed.remove(key) {
            None => {}
            Some(Placement::Scan) => {
                if let Some(filter) = self.scan.remove(key) {
                    if filter.scope == Scope::Body {
                        self.body_filters = self.body_filters.saturating_sub(1);
                    }
                }
            }
            Some(Placement::Indexed(name, values)) => {
                let Some(buckets) = self.index.get_mut(&name) else {
                    return;
                };
                for value in values.iter() {
                    let now_empty = buckets.get_mut(value).is_some_and(|bucket| {
                        bucket.remove(key);
                        bucket.is_empty()
                    });
                    if now_empty {
                        buckets.remove(value);
                    }
                }
                if buckets.is_empty() {
                    self.index.remove(&name);
                }
            }
            Some(Placement::Numeric(name, places)) => {
                let Some(by_class) = self.numeric.get_mut(&name) else {
                    return;
                };
                for (class, lower) in places.iter() {
                    let class_empty = by_class.get_mut(class).is_some_and(|by_lower| {
                        let bucket_empty = by_lower.get_mut(lower).is_some_and(|bucket| {
                            bucket.remove(key);
                            bucket.is_empty()
                        });
                        if bucket_empty {
                            by_lower.remove(lower);
                        }
                        by_lower.is_empty()
                    });
                    if class_empty {
                        by_class.remove(class);
                    }
                }
                if by_class.is_empty() {
                    self.numeric.remove(&name);
                }
            }
        }
    }

    /// Reports the filters among one header's intervals that match, looking only at the
    /// intervals that may contain a number of the header's `value`.
    fn route_numeric(
        &self,
        headers: Option<&FieldTable>,
        by_class: &Intervals<K>,
        value: &AMQPValue,
        out: &mut dyn FnMut(&K),
    ) {
        let mut lookup = |v: f64| {
            for (class, by_lower) in by_class {
                let from = Lower(v - class_width(*class));
                for (_, bucket) in by_lower.range(from..=Lower(v)) {
                    for (key, filter) in bucket {
                        if filter.matches_headers(headers) {
                            out(key);
                        }
                    }
                }
            }
        };
        match value {
            AMQPValue::FieldArray(items) => {
                for item in items.as_slice() {
                    if let Scalar::Number(v) = amqp_scalar(item) {
                        lookup(v);
                    }
                }
            }
            _ => {
                if let Scalar::Number(v) = amqp_scalar(value) {
                    lookup(v);
                }
            }
        }
    }

    /// Calls `out` with the key of every binding whose filter matches (a binding indexed
    /// under several values may be reported more than once for a header array holding
    /// several of them). The body is parsed at most once, and only if a body-scoped filter
    /// is bound.
    pub fn route(
        &self,
        headers: Option<&FieldTable>,
        body: Option<&[u8]>,
        out: &mut dyn FnMut(&K),
    ) {
        if let Some(table) = headers.filter(|_| !self.index.is_empty()) {
            let mut check = |name: &str, value: &AMQPValue| {
                let Some(buckets) = self.index.get(name) else {
                    return;
                };
                let mut lookup = |text: &str| {
                    for (key, filter) in buckets.get(text).into_iter().flatten() {
                        if filter.matches_headers(headers) {
                            out(key);
                        }
                    }
                };
                match value {
                    AMQPValue::FieldArray(items) => items
                        .as_slice()
                        .iter()
                        .filter_map(long_string)
                        .for_each(&mut lookup),
                    _ => long_string(value).into_iter().for_each(lookup),
                }
            };
            // Walk whichever is shorter: the message's headers or the indexed names.
            if table.inner().len() <= self.index.len() {
                for (name, value) in table {
                    check(name.as_str(), value);
                }
            } else {
                for name in self.index.keys() {
                    if let Some(value) = table.inner().get(&**name) {
                        check(name, value);
                    }
                }
            }
        }
        if let Some(table) = headers.filter(|_| !self.numeric.is_empty()) {
            for (name, by_class) in &self.numeric {
                if let Some(value) = table.inner().get(&**name) {
                    self.route_numeric(headers, by_class, value, out);
                }
            }
        }
        let parsed: OnceCell<Option<Map<String, Value>>> = OnceCell::new();
        for (key, filter) in &self.scan {
            let hit = match filter.scope {
                Scope::Headers => filter.matches_headers(headers),
                Scope::Body => parsed
                    .get_or_init(|| body.and_then(parse_body))
                    .as_ref()
                    .is_some_and(|object| filter.matches_body(object)),
            };
            if hit {
                out(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{DecimalValue, FieldArray, LongString, ShortString};

    fn s(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text))
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (key, value) in entries {
            t.insert(ShortString::from(*key), value.clone());
        }
        t
    }

    fn headers_match(policy: &str, headers: &[(&str, AMQPValue)]) -> bool {
        let filter = Filter::compile(policy, Scope::Headers).expect(policy);
        filter.matches_headers(Some(&table(headers)))
    }

    fn body_match(policy: &str, body: &str) -> bool {
        let filter = Filter::compile(policy, Scope::Body).expect(policy);
        parse_body(body.as_bytes()).is_some_and(|object| filter.matches_body(&object))
    }

    fn error(policy: &str) -> String {
        Filter::compile(policy, Scope::Headers).expect_err(policy)
    }

    #[test]
    fn exact_strings_and_numbers() {
        let p = r#"{"color": ["red", "blue"]}"#;
        assert!(headers_match(p, &[("color", s("red"))]));
        assert!(headers_match(p, &[("color", s("blue")), ("x", s("y"))]));
        assert!(!headers_match(p, &[("color", s("green"))]));
        assert!(!headers_match(p, &[("colour", s("red"))]));
        assert!(!headers_match(p, &[]));
        let p = r#"{"n": [301.5]}"#;
        assert!(headers_match(p, &[("n", AMQPValue::Double(301.5))]));
        assert!(!headers_match(p, &[("n", s("301.5"))]));
        let p = r#"{"n": [5]}"#;
        for five in [
            AMQPValue::ShortShortInt(5),
            AMQPValue::ShortShortUInt(5),
            AMQPValue::ShortInt(5),
            AMQPValue::ShortUInt(5),
            AMQPValue::LongInt(5),
            AMQPValue::LongUInt(5),
            AMQPValue::LongLongInt(5),
            AMQPValue::Float(5.0),
            AMQPValue::Double(5.0),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 500,
            }),
        ] {
            assert!(headers_match(p, &[("n", five.clone())]), "{five:?}");
        }
        assert!(headers_match(
            r#"{"b": [true]}"#,
            &[("b", AMQPValue::Boolean(true))]
        ));
        assert!(!headers_match(r#"{"b": [true]}"#, &[("b", s("true"))]));
        assert!(headers_match(r#"{"v": [null]}"#, &[("v", AMQPValue::Void)]));
        let bytes = AMQPValue::ByteArray(b"red".to_vec().into());
        assert!(headers_match(r#"{"color": ["red"]}"#, &[("color", bytes)]));
        let not_utf8 = AMQPValue::ByteArray(vec![0xff].into());
        assert!(!headers_match(
            r#"{"c": [{"prefix": ""}]}"#,
            &[("c", not_utf8)]
        ));
    }

    #[test]
    fn numeric_ranges() {
        let p = r#"{"fare": [{"numeric": [">=", 10, "<", 20]}]}"#;
        let fare = |n: f64| headers_match(p, &[("fare", AMQPValue::Double(n))]);
        assert!(fare(10.0) && fare(19.99));
        assert!(!fare(9.99) && !fare(20.0));
        assert!(!headers_match(p, &[("fare", s("15"))]));
        let p = r#"{"n": [{"numeric": ["=", 301.5]}]}"#;
        assert!(headers_match(p, &[("n", AMQPValue::Double(3.015e2))]));
        let p = r#"{"n": [{"numeric": ["<", 0]}, {"numeric": [">", 100]}]}"#;
        assert!(headers_match(p, &[("n", AMQPValue::LongInt(-1))]));
        assert!(headers_match(p, &[("n", AMQPValue::LongInt(101))]));
        assert!(!headers_match(p, &[("n", AMQPValue::LongInt(50))]));
    }

    #[test]
    fn string_operators() {
        let p = r#"{"k": [{"prefix": "bas"}]}"#;
        assert!(headers_match(p, &[("k", s("basketball"))]));
        assert!(!headers_match(p, &[("k", s("rugby"))]));
        let p = r#"{"k": [{"suffix": ".png"}]}"#;
        assert!(headers_match(p, &[("k", s("a.png"))]));
        assert!(!headers_match(p, &[("k", s("a.jpg"))]));
        let p = r#"{"k": [{"equals-ignore-case": "ÉTÉ"}]}"#;
        assert!(headers_match(p, &[("k", s("été"))]));
        assert!(!headers_match(p, &[("k", s("ete"))]));
    }

    #[test]
    fn anything_but() {
        let p = r#"{"k": [{"anything-but": ["rugby", "tennis"]}]}"#;
        assert!(headers_match(p, &[("k", s("baseball"))]));
        assert!(!headers_match(p, &[("k", s("rugby"))]));
        assert!(!headers_match(p, &[]), "the key must be present");
        let array = AMQPValue::FieldArray(FieldArray::from(vec![s("rugby"), s("golf")]));
        assert!(headers_match(p, &[("k", array)]));
        let p = r#"{"n": [{"anything-but": 100}]}"#;
        assert!(headers_match(p, &[("n", AMQPValue::LongInt(101))]));
        assert!(!headers_match(p, &[("n", AMQPValue::Double(100.0))]));
        let p = r#"{"k": [{"anything-but": {"prefix": "tmp-"}}]}"#;
        assert!(headers_match(p, &[("k", s("real"))]));
        assert!(!headers_match(p, &[("k", s("tmp-1"))]));
    }

    #[test]
    fn exists() {
        let yes = r#"{"store": [{"exists": true}]}"#;
        let no = r#"{"store": [{"exists": false}]}"#;
        assert!(headers_match(yes, &[("store", s("fans"))]));
        assert!(!headers_match(yes, &[("other", s("x"))]));
        assert!(!headers_match(yes, &[("store", AMQPValue::Void)]));
        assert!(headers_match(no, &[("other", s("x"))]));
        assert!(!headers_match(no, &[("store", s("fans"))]));
        // As SNS: `exists: false` does not match a message without any attribute.
        assert!(!headers_match(no, &[]));
        let filter = Filter::compile(no, Scope::Headers).expect("policy");
        assert!(!filter.matches_headers(None));
    }

    #[test]
    fn nested_keys_arrays_and_or() {
        let p = r#"{"customer": {"tier": ["gold"]}}"#;
        let gold = AMQPValue::FieldTable(table(&[("tier", s("gold"))]));
        let silver = AMQPValue::FieldTable(table(&[("tier", s("silver"))]));
        assert!(headers_match(p, &[("customer", gold)]));
        assert!(!headers_match(p, &[("customer", silver)]));
        assert!(!headers_match(p, &[("customer", s("gold"))]));
        let p = r#"{"tags": ["b"]}"#;
        let tags = AMQPValue::FieldArray(FieldArray::from(vec![s("a"), s("b")]));
        assert!(headers_match(p, &[("tags", tags)]));
        let p =
            r#"{"source": ["shop"], "$or": [{"n": [{"numeric": [">", 10]}]}, {"vip": [true]}]}"#;
        assert!(headers_match(
            p,
            &[("source", s("shop")), ("n", AMQPValue::LongInt(11))]
        ));
        assert!(headers_match(
            p,
            &[("source", s("shop")), ("vip", AMQPValue::Boolean(true))]
        ));
        assert!(!headers_match(
            p,
            &[("source", s("shop")), ("n", AMQPValue::LongInt(1))]
        ));
        assert!(!headers_match(
            p,
            &[("source", s("web")), ("vip", AMQPValue::Boolean(true))]
        ));
        let p = r#"{"a": {"$or": [{"b": ["x"]}, {"c": ["y"]}]}}"#;
        let nested = AMQPValue::FieldTable(table(&[("c", s("y"))]));
        assert!(headers_match(p, &[("a", nested)]));
    }

    #[test]
    fn body_scope() {
        let p = r#"{"order": {"total": [{"numeric": [">", 100]}]}, "tags": ["rush"]}"#;
        assert!(body_match(
            p,
            r#"{"order": {"total": 150}, "tags": ["a", "rush"]}"#
        ));
        assert!(!body_match(
            p,
            r#"{"order": {"total": 50}, "tags": ["rush"]}"#
        ));
        assert!(!body_match(p, "[1, 2]"));
        assert!(!body_match(p, "not json"));
        let p = r#"{"items": {"sku": [{"prefix": "A"}]}}"#;
        assert!(body_match(
            p,
            r#"{"items": [{"sku": "B1"}, {"sku": "A7"}]}"#
        ));
    }

    #[test]
    fn invalid_policies_name_the_problem() {
        assert_eq!(
            error(r#"{"fare": [{"numerc": [">", 1]}]}"#),
            r#"unknown operator "numerc" at key "fare""#
        );
        assert!(error("{").starts_with("bad JSON"));
        assert!(error("[]").contains("JSON object"));
        assert!(error("{}").contains("empty"));
        assert!(error(r#"{"a": "x"}"#).contains("array or an object"));
        assert!(error(r#"{"a": []}"#).contains("empty array"));
        assert!(error(r#"{"a": [["x"]]}"#).contains("nested array"));
        assert!(error(r#"{"a": [{"numeric": [">", "1"]}]}"#).contains("needs a number"));
        assert!(error(r#"{"a": [{"numeric": ["<", 1, ">", 0]}]}"#).contains("numeric"));
        assert!(error(r#"{"a": [{"numeric": [">", 5, "<", 1]}]}"#).contains("empty"));
        assert!(error(r#"{"a": [{"numeric": ["~", 5]}]}"#).contains("unknown numeric operator"));
        assert!(error(r#"{"a": [{"numeric": [">", 2e9]}]}"#).contains("outside"));
        assert!(error(r#"{"a": [{"prefix": 1}]}"#).contains("needs a string"));
        assert!(error(r#"{"a": [{"exists": 1}]}"#).contains("true or false"));
        assert!(error(r#"{"a": [{"prefix": "x", "suffix": "y"}]}"#).contains("exactly one"));
        assert!(error(r#"{"a": [{"anything-but": [true]}]}"#).contains("anything-but"));
        assert!(error(r#"{"$or": [{"a": ["x"]}]}"#).contains("at least 2"));
        assert!(error(r#"{"a": {"b": {"c": {"d": {"e": {"f": ["x"]}}}}}}"#)
            .contains(r#""a.b.c.d.e.f" is nested deeper than 5"#));
        assert!(Filter::compile(
            r#"{"a": {"b": {"c": {"d": {"e": ["x"]}}}}}"#,
            Scope::Headers
        )
        .is_ok());
        assert!(
            error(r#"{"a":["x"],"b":["x"],"c":["x"],"d":["x"],"e":["x"],"f":["x"]}"#)
                .contains("6 keys")
        );
        let values = |n: usize| {
            (0..n)
                .map(|i| format!("\"v{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let p = format!(r#"{{"a": [{}], "b": [{}]}}"#, values(10), values(15));
        assert!(
            Filter::compile(&p, Scope::Headers).is_ok(),
            "150 is allowed"
        );
        let p = format!(r#"{{"a": [{}], "b": [{}]}}"#, values(10), values(16));
        assert!(error(&p).contains("160 combinations"));
        let huge = format!(r#"{{"a": ["{}"]}}"#, "x".repeat(POLICY_BYTES_MAX));
        assert!(error(&huge).contains("bytes"));
    }

    #[test]
    fn binding_arguments() {
        let args = |entries: &[(&str, AMQPValue)]| {
            let mut all = vec![("x-match", s("filter"))];
            all.extend_from_slice(entries);
            table(&all)
        };
        assert!(is_filter_binding(&args(&[])));
        assert!(!is_filter_binding(&table(&[("x-match", s("all"))])));
        assert_eq!(
            Filter::from_binding_args(&args(&[])).err(),
            Some(FilterError::Missing)
        );
        assert_eq!(
            Filter::from_binding_args(&args(&[("x-filter", AMQPValue::LongInt(1))])).err(),
            Some(FilterError::PolicyType("signedint"))
        );
        let policy = ("x-filter", s(r#"{"a": ["x"]}"#));
        let scoped = |scope: AMQPValue| {
            Filter::from_binding_args(&args(&[policy.clone(), ("x-filter-scope", scope)]))
        };
        assert_eq!(scoped(s("body")).map(|f| f.scope()), Ok(Scope::Body));
        assert_eq!(scoped(s("headers")).map(|f| f.scope()), Ok(Scope::Headers));
        assert!(matches!(scoped(s("all")), Err(FilterError::Scope(_))));
        assert!(matches!(
            scoped(AMQPValue::Boolean(true)),
            Err(FilterError::Scope(_))
        ));
        let text =
            Filter::from_binding_args(&args(&[("x-filter", s(r#"{"fare": [{"numerc": 1}]}"#))]))
                .err()
                .map(|e| e.to_string());
        assert_eq!(
            text.as_deref(),
            Some(r#"invalid x-filter: unknown operator "numerc" at key "fare""#)
        );
    }

    fn routed(set: &FilterSet<u32>, headers: &FieldTable, body: Option<&[u8]>) -> Vec<u32> {
        let mut out = Vec::new();
        set.route(Some(headers), body, &mut |key| out.push(*key));
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn filter_set_indexes_and_scans_alike() {
        let policies = [
            r#"{"symbol": ["AAA"], "price": [{"numeric": [">", 10]}]}"#,
            r#"{"symbol": ["BBB", "AAA"]}"#,
            r#"{"region": ["eu"], "symbol": ["CCC"]}"#,
            r#"{"price": [{"numeric": ["<", 5]}]}"#,
            r#"{"$or": [{"symbol": ["AAA"]}, {"region": ["us"]}]}"#,
        ];
        let mut set = FilterSet::default();
        for (i, policy) in policies.iter().enumerate() {
            let filter = Filter::compile(policy, Scope::Headers).expect("policy");
            set.insert(i as u32, filter);
        }
        assert_eq!(set.len(), 5);
        let message = |symbol: &str, price: i32, region: &str| {
            table(&[
                ("symbol", s(symbol)),
                ("price", AMQPValue::LongInt(price)),
                ("region", s(region)),
            ])
        };
        // Each expectation is what matching every filter one by one gives.
        for (headers, expected) in [
            (message("AAA", 20, "eu"), vec![0, 1, 4]),
            (message("AAA", 1, "us"), vec![1, 3, 4]),
            (message("CCC", 7, "eu"), vec![2]),
            (message("CCC", 7, "us"), vec![4]),
        ] {
            let one_by_one: Vec<u32> = policies
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    let f = Filter::compile(p, Scope::Headers).expect("policy");
                    f.matches_headers(Some(&headers))
                })
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(one_by_one, expected);
            assert_eq!(routed(&set, &headers, None), expected);
        }
        let array = table(&[(
            "symbol",
            AMQPValue::FieldArray(FieldArray::from(vec![s("BBB"), s("CCC")])),
        )]);
        assert_eq!(routed(&set, &array, None), vec![1]);
        set.remove(&1);
        set.remove(&4);
        set.remove(&99);
        assert_eq!(routed(&set, &message("AAA", 20, "eu"), None), vec![0]);
        for key in [0, 2, 3] {
            set.remove(&key);
        }
        assert!(set.is_empty() && set.index.is_empty() && set.scan.is_empty());
    }

    /// The indexes only preselect: whatever they hold, routing reports exactly the filters
    /// that match one by one (random policies over a few keys and values, and removals).
    #[test]
    fn filter_set_agrees_with_matching_one_by_one() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut below = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let keys = ["a", "b", "n", "m"];
        let condition = |below: &mut dyn FnMut(usize) -> usize| -> String {
            let low = below(20) as i64 - 5;
            match below(7) {
                0 => format!(r#""v{}""#, below(4)),
                1 => format!(r#"["v{}", "v{}"]"#, below(4), below(4)),
                2 => format!(
                    r#"{{"numeric": [">=", {low}, "<", {}]}}"#,
                    low + 1 + below(8) as i64
                ),
                3 => format!(r#"{{"numeric": ["=", {low}]}}"#),
                4 => format!("{low}"),
                5 => format!(r#"{{"numeric": [">", {low}]}}"#),
                _ => format!(r#"{{"prefix": "v{}"}}"#, below(2)),
            }
        };
        let mut policies = Vec::new();
        for _ in 0..400 {
            let mut terms = Vec::new();
            for key in keys {
                if below(2) == 0 {
                    let c = condition(&mut below);
                    let list = if c.starts_with('[') {
                        c
                    } else {
                        format!("[{c}]")
                    };
                    terms.push(format!(r#""{key}": {list}"#));
                }
            }
            if below(4) == 0 {
                let (x, y) = (condition(&mut below), condition(&mut below));
                let (x, y) = (
                    x.trim_matches(['[', ']']).to_owned(),
                    y.trim_matches(['[', ']']).to_owned(),
                );
                terms.push(format!(r#""$or": [{{"a": [{x}]}}, {{"n": [{y}]}}]"#));
            }
            if terms.is_empty() {
                terms.push(r#""a": [{"exists": true}]"#.to_owned());
            }
            policies.push(format!("{{{}}}", terms.join(", ")));
        }
        let filters: Vec<Filter> = policies
            .iter()
            .map(|p| Filter::compile(p, Scope::Headers).expect(p))
            .collect();
        let mut set = FilterSet::default();
        for (i, filter) in filters.iter().enumerate() {
            set.insert(i as u32, filter.clone());
        }
        assert!(!set.index.is_empty() && !set.numeric.is_empty() && !set.scan.is_empty());
        let mut removed = std::collections::HashSet::new();
        for round in 0..400 {
            let mut entries = Vec::new();
            for key in keys {
                match below(5) {
                    0 => {}
                    1 => entries.push((key, s(&format!("v{}", below(4))))),
                    2 => entries.push((key, AMQPValue::LongInt(below(30) as i32 - 8))),
                    3 => entries.push((key, AMQPValue::Double(below(60) as f64 / 2.0 - 8.0))),
                    _ => entries.push((
                        key,
                        AMQPValue::FieldArray(FieldArray::from(vec![
                            AMQPValue::LongInt(below(30) as i32 - 8),
                            s(&format!("v{}", below(4))),
                        ])),
                    )),
                }
            }
            let headers = table(&entries);
            let expected: Vec<u32> = (0..filters.len())
                .filter(|i| !removed.contains(i) && filters[*i].matches_headers(Some(&headers)))
                .map(|i| i as u32)
                .collect();
            assert_eq!(routed(&set, &headers, None), expected, "{headers:?}");
            if round % 2 == 0 {
                let gone = below(filters.len());
                set.remove(&(gone as u32));
                removed.insert(gone);
            }
        }
        for i in 0..filters.len() {
            set.remove(&(i as u32));
        }
        assert!(set.is_empty() && set.index.is_empty() && set.numeric.is_empty());
        assert!(set.scan.is_empty());
    }

    #[test]
    fn width_classes_bound_the_interval_lookup() {
        assert_eq!(width_class(0.0), POINT_CLASS);
        for width in [1e-5, 0.3, 1.0, 1.5, 2.0, 3.0, 1000.0, 2e9] {
            let class = width_class(width);
            assert!(class_width(class) >= width, "{width}");
            assert!(class_width(class - 1) < width, "{width}");
        }
    }

    #[test]
    fn body_is_parsed_lazily_and_matches_only_objects() {
        let mut set = FilterSet::default();
        let body_filter =
            Filter::compile(r#"{"total": [{"numeric": [">", 1]}]}"#, Scope::Body).expect("policy");
        set.insert(7u32, body_filter);
        let empty = table(&[]);
        assert_eq!(routed(&set, &empty, Some(br#"{"total": 2}"#)), vec![7]);
        assert!(routed(&set, &empty, Some(b"\xff\x00 not json")).is_empty());
        assert!(routed(&set, &empty, Some(b"2")).is_empty());
        assert!(routed(&set, &empty, None).is_empty());
        set.remove(&7);
        assert_eq!(set.body_filters, 0);
    }
}
