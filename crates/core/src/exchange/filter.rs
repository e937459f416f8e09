//! Content filters on headers-exchange bindings (`x-match: filter`): the grammar of AWS SNS
//! filter policies, their compiler, the matcher, and the per-exchange index of compiled
//! filters that the routing snapshot holds.
//!
//! Owns: checking a filter binding's arguments (`x-filter`, `x-filter-scope`), compiling the
//! policy once at bind time into a `Filter`, matching a `Filter` against a message's
//! `headers` table (never converted to JSON) or its body parsed as a JSON object, and
//! `FilterSet`, a persistent (O(1) clone, O(log n) change) collection of one exchange's
//! filter bindings, each indexed by one required term of any condition kind. It knows
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// A number as an ordered map key (policy numbers are finite; a message's NaN is never
/// looked up), with -0 folded into 0 so that both sort where `==` puts them.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Lower(f64);

impl Lower {
    fn new(n: f64) -> Lower {
        Lower(n + 0.0)
    }
}

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

type Bucket<K> = imbl::HashMap<K, Arc<Filter>>;

/// One path's closed numeric intervals: width class → lower end → filters.
type Intervals<K> = imbl::OrdMap<i32, imbl::OrdMap<Lower, Bucket<K>>>;

/// Where one condition of a filter's indexing leaf sits in its path's `PathIndex`. The
/// order of the variants is the order of preference when a filter is bound (`Slot::rank`).
#[derive(Clone, Debug)]
enum Slot {
    /// An exact string, in the bucket of that string.
    Exact(Arc<str>),
    /// `equals-ignore-case`, in the bucket of the lower-cased string.
    IgnoreCase(Arc<str>),
    /// A closed numeric interval (or an exact number): at (width class, lower end).
    Interval(i32, Lower),
    /// `prefix`, in the bucket of the prefix.
    Prefix(Arc<str>),
    /// `suffix`, in the bucket of the suffix.
    Suffix(Arc<str>),
    /// A numeric range with only a lower bound, at that bound.
    Above(Lower),
    /// A numeric range with only an upper bound, at that bound.
    Below(Lower),
    /// `exists: true`, `anything-but`, booleans, null: a candidate when the path is present.
    Present,
    /// `exists: false`: a candidate when the path is absent.
    Absent,
}

impl Slot {
    fn of(condition: &Condition) -> Slot {
        match condition {
            Condition::Equals(text) => Slot::Exact(Arc::from(&**text)),
            Condition::EqualsIgnoreCase(lower) => Slot::IgnoreCase(Arc::from(&**lower)),
            Condition::Prefix(text) => Slot::Prefix(Arc::from(&**text)),
            Condition::Suffix(text) => Slot::Suffix(Arc::from(&**text)),
            Condition::Range { lower, upper } => match (lower.value(), upper.value()) {
                (Some(low), Some(high)) => Slot::Interval(width_class(high - low), Lower::new(low)),
                (Some(low), None) => Slot::Above(Lower::new(low)),
                (None, Some(high)) => Slot::Below(Lower::new(high)),
                (None, None) => Slot::Present,
            },
            Condition::Exists(false) => Slot::Absent,
            Condition::Exists(true)
            | Condition::Boolean(_)
            | Condition::Null
            | Condition::AnythingBut { .. }
            | Condition::AnythingButPrefix(_)
            | Condition::AnythingButSuffix(_) => Slot::Present,
        }
    }

    /// Lower is more selective: exact and ignore-case strings, closed intervals, prefixes
    /// and suffixes, open ranges, presence, absence.
    fn rank(&self) -> u8 {
        match self {
            Slot::Exact(_) | Slot::IgnoreCase(_) => 0,
            Slot::Interval(..) => 1,
            Slot::Prefix(_) | Slot::Suffix(_) => 2,
            Slot::Above(_) | Slot::Below(_) => 3,
            Slot::Present => 4,
            Slot::Absent => 5,
        }
    }
}

/// One condition of a bound filter in the index: its key path (first key, the rest) and slot.
#[derive(Clone, Debug)]
struct Term {
    first: Arc<str>,
    rest: Arc<[Box<str>]>,
    slot: Slot,
}

/// Where a binding sits in a `FilterSet`.
#[derive(Clone, Debug)]
enum Placement {
    /// Matched against every message (a filter with no term to index).
    Scan(Scope),
    /// At each of these terms; the filter can only match a message that one of them draws.
    Terms(Scope, Arc<[Term]>),
}

/// Prefixes (or suffixes) of one path: the text → filters, and how many distinct texts of
/// each length are in use, so a message value is looked up once per length.
#[derive(Clone, Debug)]
struct Affixes<K: Clone + Hash + Eq> {
    by_text: imbl::HashMap<Arc<str>, Bucket<K>>,
    lengths: imbl::OrdMap<usize, usize>,
}

impl<K: Clone + Hash + Eq> Default for Affixes<K> {
    fn default() -> Self {
        Affixes {
            by_text: imbl::HashMap::new(),
            lengths: imbl::OrdMap::new(),
        }
    }
}

impl<K: Clone + Hash + Eq> Affixes<K> {
    fn insert(&mut self, text: &Arc<str>, key: &K, filter: &Arc<Filter>) {
        if put(&mut self.by_text, text, key, filter) {
            *self.lengths.entry(text.len()).or_default() += 1;
        }
    }

    fn remove(&mut self, text: &Arc<str>, key: &K) {
        if take(&mut self.by_text, text, key) {
            let unused = self.lengths.get_mut(&text.len()).is_some_and(|count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
            if unused {
                self.lengths.remove(&text.len());
            }
        }
    }

    /// The buckets of the prefixes (`head`) or suffixes of `text` in use.
    fn lookup(&self, text: &str, head: bool, emit: &mut dyn FnMut(&K, &Arc<Filter>)) {
        for (&len, _) in self.lengths.range(..=text.len()) {
            let part = match head {
                true => text.get(..len),
                false => text.get(text.len() - len..),
            };
            if let Some(bucket) = part.and_then(|part| self.by_text.get(part)) {
                bucket.iter().for_each(|(key, filter)| emit(key, filter));
            }
        }
    }
}

/// Adds `key` to the bucket at `at`; true if the bucket is new.
fn put<Q: Clone + Hash + Eq, K: Clone + Hash + Eq>(
    map: &mut imbl::HashMap<Q, Bucket<K>>,
    at: &Q,
    key: &K,
    filter: &Arc<Filter>,
) -> bool {
    let bucket = map.entry(at.clone()).or_default();
    bucket.insert(key.clone(), filter.clone());
    bucket.len() == 1
}

/// Removes `key` from the bucket at `at`; true if the bucket was emptied (and dropped).
fn take<Q: Clone + Hash + Eq, K: Clone + Hash + Eq>(
    map: &mut imbl::HashMap<Q, Bucket<K>>,
    at: &Q,
    key: &K,
) -> bool {
    let now_empty = map.get_mut(at).is_some_and(|bucket| {
        bucket.remove(key);
        bucket.is_empty()
    });
    if now_empty {
        map.remove(at);
    }
    now_empty
}

/// `take` for an ordered map.
fn take_ord<Q: Clone + Ord, K: Clone + Hash + Eq>(
    map: &mut imbl::OrdMap<Q, Bucket<K>>,
    at: &Q,
    key: &K,
) {
    let now_empty = map.get_mut(at).is_some_and(|bucket| {
        bucket.remove(key);
        bucket.is_empty()
    });
    if now_empty {
        map.remove(at);
    }
}

/// The filters indexed at one key path, one sub-index per kind of condition.
#[derive(Clone, Debug)]
struct PathIndex<K: Clone + Hash + Eq> {
    exact: imbl::HashMap<Arc<str>, Bucket<K>>,
    ignore_case: imbl::HashMap<Arc<str>, Bucket<K>>,
    intervals: Intervals<K>,
    prefix: Affixes<K>,
    suffix: Affixes<K>,
    above: imbl::OrdMap<Lower, Bucket<K>>,
    below: imbl::OrdMap<Lower, Bucket<K>>,
    present: Bucket<K>,
}

impl<K: Clone + Hash + Eq> Default for PathIndex<K> {
    fn default() -> Self {
        PathIndex {
            exact: imbl::HashMap::new(),
            ignore_case: imbl::HashMap::new(),
            intervals: imbl::OrdMap::new(),
            prefix: Affixes::default(),
            suffix: Affixes::default(),
            above: imbl::OrdMap::new(),
            below: imbl::OrdMap::new(),
            present: imbl::HashMap::new(),
        }
    }
}

impl<K: Clone + Hash + Eq> PathIndex<K> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.ignore_case.is_empty()
            && self.intervals.is_empty()
            && self.prefix.by_text.is_empty()
            && self.suffix.by_text.is_empty()
            && self.above.is_empty()
            && self.below.is_empty()
            && self.present.is_empty()
    }

    /// How many filters already share `slot` (the tie-break between terms of one rank).
    fn load(&self, slot: &Slot) -> usize {
        let size = |bucket: Option<&Bucket<K>>| bucket.map_or(0, imbl::HashMap::len);
        match slot {
            Slot::Exact(text) => size(self.exact.get(text)),
            Slot::IgnoreCase(text) => size(self.ignore_case.get(text)),
            Slot::Interval(class, lower) => {
                size(self.intervals.get(class).and_then(|by| by.get(lower)))
            }
            Slot::Prefix(text) => size(self.prefix.by_text.get(text)),
            Slot::Suffix(text) => size(self.suffix.by_text.get(text)),
            Slot::Above(bound) => size(self.above.get(bound)),
            Slot::Below(bound) => size(self.below.get(bound)),
            Slot::Present => self.present.len(),
            Slot::Absent => 0,
        }
    }

    fn insert(&mut self, slot: &Slot, key: &K, filter: &Arc<Filter>) {
        let add = |bucket: &mut Bucket<K>| {
            bucket.insert(key.clone(), filter.clone());
        };
        match slot {
            Slot::Exact(text) => add(self.exact.entry(text.clone()).or_default()),
            Slot::IgnoreCase(text) => add(self.ignore_case.entry(text.clone()).or_default()),
            Slot::Interval(class, lower) => add(self
                .intervals
                .entry(*class)
                .or_default()
                .entry(*lower)
                .or_default()),
            Slot::Prefix(text) => self.prefix.insert(text, key, filter),
            Slot::Suffix(text) => self.suffix.insert(text, key, filter),
            Slot::Above(bound) => add(self.above.entry(*bound).or_default()),
            Slot::Below(bound) => add(self.below.entry(*bound).or_default()),
            Slot::Present => add(&mut self.present),
            Slot::Absent => {}
        }
    }

    fn remove(&mut self, slot: &Slot, key: &K) {
        match slot {
            Slot::Exact(text) => {
                take(&mut self.exact, text, key);
            }
            Slot::IgnoreCase(text) => {
                take(&mut self.ignore_case, text, key);
            }
            Slot::Interval(class, lower) => {
                let class_empty = self.intervals.get_mut(class).is_some_and(|by_lower| {
                    take_ord(by_lower, lower, key);
                    by_lower.is_empty()
                });
                if class_empty {
                    self.intervals.remove(class);
                }
            }
            Slot::Prefix(text) => self.prefix.remove(text, key),
            Slot::Suffix(text) => self.suffix.remove(text, key),
            Slot::Above(bound) => take_ord(&mut self.above, bound, key),
            Slot::Below(bound) => take_ord(&mut self.below, bound, key),
            Slot::Present => {
                self.present.remove(key);
            }
            Slot::Absent => {}
        }
    }

    /// Calls `emit` with the filters whose slot here may match `value` (not `present`).
    fn lookup(&self, value: Scalar<'_>, emit: &mut dyn FnMut(&K, &Arc<Filter>)) {
        let mut bucket = |bucket: &Bucket<K>| {
            bucket.iter().for_each(|(key, filter)| emit(key, filter));
        };
        match value {
            Scalar::Text(text) => {
                if let Some(found) = self.exact.get(text) {
                    bucket(found);
                }
                if !self.ignore_case.is_empty() {
                    let lower: String = text.chars().flat_map(char::to_lowercase).collect();
                    if let Some(found) = self.ignore_case.get(lower.as_str()) {
                        bucket(found);
                    }
                }
                self.prefix.lookup(text, true, emit);
                self.suffix.lookup(text, false, emit);
            }
            // NaN matches no range (and must not reach `range` with reversed ends).
            Scalar::Number(v) if !v.is_nan() => {
                let v = v + 0.0;
                for (class, by_lower) in &self.intervals {
                    let from = Lower(v - class_width(*class));
                    by_lower
                        .range(from..=Lower(v))
                        .for_each(|(_, found)| bucket(found));
                }
                self.above
                    .range(..=Lower(v))
                    .for_each(|(_, found)| bucket(found));
                self.below
                    .range(Lower(v)..)
                    .for_each(|(_, found)| bucket(found));
            }
            _ => {}
        }
    }
}

/// Where `exists: false` terms sit: (scope, first key, rest of the path).
type AbsentAt = (Scope, Arc<str>, Arc<[Box<str>]>);

/// Indexed paths of one scope: first key → the rest of the path → that path's index.
type Paths<K> = imbl::HashMap<Arc<str>, imbl::HashMap<Arc<[Box<str>]>, PathIndex<K>>>;

/// A choice of leaves of a filter such that the filter can only match a message where one
/// of them does, with its cost: (worst `Slot::rank`, then a score, lower is better).
type Cover<'f> = (Vec<&'f Node>, (u8, f64));

/// One exchange's filter bindings, indexed so that a message draws (roughly) only the
/// filters that may match it. At bind time each filter is placed by one of its required
/// (AND-level) leaves, anywhere in the policy, nested keys and body scope included: each
/// condition the leaf lists sits in the sub-index of its kind (`Slot`) under the leaf's key
/// path. Of the required leaves, the one whose worst condition kind ranks best wins
/// (`Slot::rank`: exact or ignore-case strings, closed intervals, prefixes/suffixes, open
/// ranges, presence, absence); ties go to the fewest filters already sharing the slots
/// (for intervals the narrowest, for affixes also the longest). A policy that is only an
/// `"$or"` sits under one leaf of each alternative. Only a filter with no term at all would
/// be matched against every message (`scan`). A message visits the values at each indexed
/// path (iterating its own headers or the indexed first keys, whichever is fewer), and the
/// few paths holding `exists: false`; every candidate is matched in full, so the indexes
/// only preselect.
#[derive(Clone, Debug)]
pub struct FilterSet<K: Clone + Hash + Eq> {
    headers: Paths<K>,
    body: Paths<K>,
    /// `exists: false` terms: (scope, first key, rest of the path) → filters.
    absent: imbl::HashMap<AbsentAt, Bucket<K>>,
    scan: Bucket<K>,
    placed: imbl::HashMap<K, Placement>,
    /// Body-scoped filters, wherever placed: when none, a body is never parsed.
    body_filters: usize,
}

impl<K: Clone + Hash + Eq> Default for FilterSet<K> {
    fn default() -> Self {
        FilterSet {
            headers: imbl::HashMap::new(),
            body: imbl::HashMap::new(),
            absent: imbl::HashMap::new(),
            scan: imbl::HashMap::new(),
            placed: imbl::HashMap::new(),
            body_filters: 0,
        }
    }
}

fn better(a: (u8, f64), b: (u8, f64)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then(a.1.total_cmp(&b.1))
}

impl<K: Clone + Hash + Eq> FilterSet<K> {
    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.placed.len()
    }

    fn paths(&self, scope: Scope) -> &Paths<K> {
        match scope {
            Scope::Headers => &self.headers,
            Scope::Body => &self.body,
        }
    }

    fn paths_mut(&mut self, scope: Scope) -> &mut Paths<K> {
        match scope {
            Scope::Headers => &mut self.headers,
            Scope::Body => &mut self.body,
        }
    }

    /// Adds a binding's filter; a key already present is left as it is.
    pub fn insert(&mut self, key: K, filter: Filter) {
        if self.placed.contains_key(&key) {
            return;
        }
        let filter = Arc::new(filter);
        let scope = filter.scope;
        if scope == Scope::Body {
            self.body_filters += 1;
        }
        let terms: Option<Vec<Term>> = self.cover(scope, &filter.root).map(|(leaves, _)| {
            leaves
                .into_iter()
                .filter_map(|leaf| match leaf {
                    Node::Leaf { path, conditions } => {
                        let (first, rest) = path.split_first()?;
                        let (first, rest): (Arc<str>, Arc<[Box<str>]>) =
                            (Arc::from(&**first), rest.into());
                        Some(conditions.iter().map(move |condition| Term {
                            first: first.clone(),
                            rest: rest.clone(),
                            slot: Slot::of(condition),
                        }))
                    }
                    _ => None,
                })
                .flatten()
                .collect()
        });
        let placement = match terms {
            Some(terms) if !terms.is_empty() => {
                for term in &terms {
                    self.insert_term(scope, term, &key, &filter);
                }
                Placement::Terms(scope, terms.into())
            }
            _ => {
                self.scan.insert(key.clone(), filter);
                Placement::Scan(scope)
            }
        };
        self.placed.insert(key, placement);
    }

    /// The cheapest cover of `node`: a required leaf, or for an `"$or"` one of each
    /// alternative; `None` when some alternative has none.
    fn cover<'f>(&self, scope: Scope, node: &'f Node) -> Option<Cover<'f>> {
        match node {
            Node::Leaf { path, conditions } => {
                let (first, rest) = path.split_first()?;
                let index = self
                    .paths(scope)
                    .get(&**first)
                    .and_then(|by_rest| by_rest.get(rest));
                let mut rank = 0;
                let mut score = 0.0;
                for condition in conditions.iter() {
                    let slot = Slot::of(condition);
                    rank = rank.max(slot.rank());
                    let load = index.map_or(0, |index| index.load(&slot)) as f64;
                    score += match (&slot, condition) {
                        (Slot::Interval(..), Condition::Range { lower, upper }) => {
                            upper.value().unwrap_or(0.0) - lower.value().unwrap_or(0.0)
                        }
                        (Slot::Prefix(text) | Slot::Suffix(text), _) => {
                            load + 1.0 / (2.0 + text.len() as f64)
                        }
                        _ => load,
                    };
                }
                Some((vec![node], (rank, score)))
            }
            Node::All(children) => children
                .iter()
                .filter_map(|child| self.cover(scope, child))
                .min_by(|a, b| better(a.1, b.1)),
            Node::Any(children) => {
                let mut leaves = Vec::new();
                let (mut rank, mut score) = (0, 0.0);
                for child in children.iter() {
                    let (more, cost) = self.cover(scope, child)?;
                    leaves.extend(more);
                    rank = rank.max(cost.0);
                    score += cost.1;
                }
                Some((leaves, (rank, score)))
            }
        }
    }

    fn insert_term(&mut self, scope: Scope, term: &Term, key: &K, filter: &Arc<Filter>) {
        if let Slot::Absent = term.slot {
            let at = (scope, term.first.clone(), term.rest.clone());
            put(&mut self.absent, &at, key, filter);
            return;
        }
        self.paths_mut(scope)
            .entry(term.first.clone())
            .or_default()
            .entry(term.rest.clone())
            .or_default()
            .insert(&term.slot, key, filter);
    }

    fn remove_term(&mut self, scope: Scope, term: &Term, key: &K) {
        if let Slot::Absent = term.slot {
            let at = (scope, term.first.clone(), term.rest.clone());
            take(&mut self.absent, &at, key);
            return;
        }
        let paths = self.paths_mut(scope);
        let Some(by_rest) = paths.get_mut(&term.first) else {
            return;
        };
        let now_empty = by_rest.get_mut(&term.rest).is_some_and(|index| {
            index.remove(&term.slot, key);
            index.is_empty()
        });
        if now_empty {
            by_rest.remove(&term.rest);
        }
        if by_rest.is_empty() {
            paths.remove(&term.first);
        }
    }

    pub fn remove(&mut self, key: &K) {
        let scope = match self.placed.remove(key) {
            None => return,
            Some(Placement::Scan(scope)) => {
                self.scan.remove(key);
                scope
            }
            Some(Placement::Terms(scope, terms)) => {
                for term in terms.iter() {
                    self.remove_term(scope, term, key);
                }
                scope
            }
        };
        if scope == Scope::Body {
            self.body_filters = self.body_filters.saturating_sub(1);
        }
    }

    /// Calls `out` with the key of every binding whose filter matches (a binding may be
    /// reported more than once, e.g. for a header array holding several of its values). The
    /// body is parsed at most once, and only if a body-scoped filter is bound.
    pub fn route(
        &self,
        headers: Option<&FieldTable>,
        body: Option<&[u8]>,
        out: &mut dyn FnMut(&K),
    ) {
        let parsed: OnceCell<Option<Map<String, Value>>> = OnceCell::new();
        let object = || match self.body_filters {
            0 => None,
            _ => parsed.get_or_init(|| body.and_then(parse_body)).as_ref(),
        };
        let matches = |filter: &Filter| match filter.scope {
            Scope::Headers => filter.matches_headers(headers),
            Scope::Body => object().is_some_and(|object| filter.matches_body(object)),
        };
        let mut emit = |key: &K, filter: &Arc<Filter>| {
            if matches(filter) {
                out(key);
            }
        };
        if let Some(table) = headers.filter(|_| !self.headers.is_empty()) {
            let mut check = |first: &str, value: &AMQPValue| {
                let Some(by_rest) = self.headers.get(first) else {
                    return;
                };
                for (rest, index) in by_rest {
                    let mut present = false;
                    visit_amqp(value, rest, &mut |scalar| {
                        present = true;
                        index.lookup(scalar, &mut emit);
                        false
                    });
                    if present {
                        index.present.iter().for_each(|(k, f)| emit(k, f));
                    }
                }
            };
            // Walk whichever is shorter: the message's headers or the indexed first keys.
            if table.inner().len() <= self.headers.len() {
                for (name, value) in table {
                    check(name.as_str(), value);
                }
            } else {
                for name in self.headers.keys() {
                    if let Some(value) = table.inner().get(&**name) {
                        check(name, value);
                    }
                }
            }
        }
        if let Some(document) = object().filter(|_| !self.body.is_empty()) {
            let mut check = |first: &str, value: &Value| {
                let Some(by_rest) = self.body.get(first) else {
                    return;
                };
                for (rest, index) in by_rest {
                    let mut present = false;
                    visit_json(value, rest, &mut |scalar| {
                        present = true;
                        index.lookup(scalar, &mut emit);
                        false
                    });
                    if present {
                        index.present.iter().for_each(|(k, f)| emit(k, f));
                    }
                }
            };
            if document.len() <= self.body.len() {
                for (name, value) in document {
                    check(name, value);
                }
            } else {
                for name in self.body.keys() {
                    if let Some(value) = document.get(&**name) {
                        check(name, value);
                    }
                }
            }
        }
        for ((scope, first, rest), bucket) in &self.absent {
            let present = match scope {
                Scope::Headers => headers
                    .and_then(|table| table.inner().get(&**first))
                    .is_some_and(|value| visit_amqp(value, rest, &mut |_| true)),
                Scope::Body => match object() {
                    // Not a JSON object: no body-scoped filter matches.
                    None => true,
                    Some(document) => document
                        .get(&**first)
                        .is_some_and(|value| visit_json(value, rest, &mut |_| true)),
                },
            };
            if !present {
                bucket.iter().for_each(|(k, f)| emit(k, f));
            }
        }
        for (key, filter) in &self.scan {
            emit(key, filter);
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
        assert!(is_bare(&set));
    }

    /// True when nothing is left behind in any index after every binding is removed.
    fn is_bare(set: &FilterSet<u32>) -> bool {
        set.is_empty()
            && set.headers.is_empty()
            && set.body.is_empty()
            && set.absent.is_empty()
            && set.scan.is_empty()
            && set.body_filters == 0
    }

    /// Each index kind alone: a matching message is found, a non-matching one is not, and
    /// after removal nothing is found and no empty map is left.
    #[test]
    fn every_condition_kind_is_indexed() {
        let nested = |v: AMQPValue| AMQPValue::FieldTable(table(&[("d", v)]));
        type Headers<'a> = Vec<(&'a str, AMQPValue)>;
        let cases: Vec<(&str, Headers, Headers)> = vec![
            (
                r#"{"k": ["abc"]}"#,
                vec![("k", s("abc"))],
                vec![("k", s("abd"))],
            ),
            (
                r#"{"k": [{"equals-ignore-case": "AbC"}]}"#,
                vec![("k", s("aBc"))],
                vec![("k", s("abd"))],
            ),
            (
                r#"{"k": [{"prefix": "ab"}]}"#,
                vec![("k", s("abz"))],
                vec![("k", s("a"))],
            ),
            (
                r#"{"k": [{"prefix": "é"}]}"#,
                vec![("k", s("été"))],
                vec![("k", s("e\u{301}"))],
            ),
            (
                r#"{"k": [{"suffix": ".png"}]}"#,
                vec![("k", s("a.png"))],
                vec![("k", s("png"))],
            ),
            (
                r#"{"k": [{"numeric": [">=", 1, "<", 3]}]}"#,
                vec![("k", AMQPValue::Double(2.5))],
                vec![("k", AMQPValue::LongInt(3))],
            ),
            (
                r#"{"k": [{"numeric": [">", 10]}]}"#,
                vec![("k", AMQPValue::LongInt(11))],
                vec![("k", AMQPValue::LongInt(10))],
            ),
            (
                r#"{"k": [{"numeric": [">=", 0]}]}"#,
                vec![("k", AMQPValue::Double(-0.0))],
                vec![("k", AMQPValue::Double(-0.5))],
            ),
            (
                r#"{"k": [{"numeric": ["<=", 10]}]}"#,
                vec![("k", AMQPValue::LongInt(10))],
                vec![("k", AMQPValue::Double(10.5))],
            ),
            (
                r#"{"k": [{"anything-but": ["x"]}]}"#,
                vec![("k", s("y"))],
                vec![("k", s("x"))],
            ),
            (
                r#"{"k": [{"exists": true}]}"#,
                vec![("k", s("y"))],
                vec![("j", s("y"))],
            ),
            (
                r#"{"k": [{"exists": false}]}"#,
                vec![("j", s("y"))],
                vec![("k", s("y"))],
            ),
            (
                r#"{"c": {"d": [{"prefix": "v"}]}}"#,
                vec![("c", nested(s("v1")))],
                vec![("c", nested(s("w1")))],
            ),
            (
                r#"{"$or": [{"k": [{"suffix": "z"}]}, {"j": [{"numeric": ["<", 0]}]}]}"#,
                vec![("j", AMQPValue::LongInt(-1))],
                vec![("k", s("za")), ("j", AMQPValue::LongInt(0))],
            ),
        ];
        for (policy, hit, miss) in cases {
            let mut set = FilterSet::default();
            set.insert(1u32, Filter::compile(policy, Scope::Headers).expect(policy));
            assert!(set.scan.is_empty(), "{policy} is indexed");
            assert_eq!(
                routed(&set, &table(&hit), None),
                vec![1],
                "{policy} {hit:?}"
            );
            assert!(routed(&set, &table(&miss), None).is_empty(), "{policy}");
            set.remove(&1);
            assert!(routed(&set, &table(&hit), None).is_empty(), "{policy}");
            assert!(is_bare(&set), "{policy}");
        }
    }

    /// Odd numbers from a client (NaN of either sign, infinities, -0) neither panic the range
    /// look-ups nor change what matches.
    #[test]
    fn odd_numbers_are_looked_up_safely() {
        let policies = [
            r#"{"n": [{"numeric": [">=", -1, "<", 1]}]}"#,
            r#"{"n": [0]}"#,
            r#"{"n": [{"numeric": [">", -5]}]}"#,
            r#"{"n": [{"numeric": ["<=", 0]}]}"#,
        ];
        let mut set = FilterSet::default();
        let filters: Vec<Filter> = policies
            .iter()
            .map(|p| Filter::compile(p, Scope::Headers).expect(p))
            .collect();
        for (i, filter) in filters.iter().enumerate() {
            set.insert(i as u32, filter.clone());
        }
        let negative_nan = f64::from_bits(f64::NAN.to_bits() | (1 << 63));
        for v in [
            f64::NAN,
            negative_nan,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
        ] {
            for value in [AMQPValue::Double(v), AMQPValue::Float(v as f32)] {
                let headers = table(&[("n", value)]);
                let expected: Vec<u32> = (0..filters.len())
                    .filter(|i| filters[*i].matches_headers(Some(&headers)))
                    .map(|i| i as u32)
                    .collect();
                assert_eq!(routed(&set, &headers, None), expected, "{v}");
            }
        }
        let zero = table(&[("n", AMQPValue::Double(-0.0))]);
        assert_eq!(routed(&set, &zero, None), vec![0, 1, 2, 3]);
    }

    /// A filter bound by a selective term is not drawn by a message that lacks it: the
    /// preference order puts the exact string before the prefix and the `exists`.
    #[test]
    fn the_most_selective_term_is_chosen() {
        let mut set = FilterSet::default();
        let policy = r#"{"a": [{"exists": true}], "b": [{"prefix": "x"}], "c": ["only"]}"#;
        set.insert(1u32, Filter::compile(policy, Scope::Headers).expect(policy));
        let Some(Placement::Terms(_, terms)) = set.placed.get(&1) else {
            panic!("indexed");
        };
        assert!(matches!(&terms[..], [Term { slot: Slot::Exact(text), .. }] if &**text == "only"));
        let policy = r#"{"a": [{"exists": true}], "b": [{"numeric": [">", 1]}]}"#;
        set.insert(2u32, Filter::compile(policy, Scope::Headers).expect(policy));
        let Some(Placement::Terms(_, terms)) = set.placed.get(&2) else {
            panic!("indexed");
        };
        assert!(matches!(
            &terms[..],
            [Term {
                slot: Slot::Above(_),
                ..
            }]
        ));
    }

    fn json_to_amqp(value: &Value) -> AMQPValue {
        match value {
            Value::Null => AMQPValue::Void,
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(text) => s(text),
            Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
                items.iter().map(json_to_amqp).collect::<Vec<_>>(),
            )),
            Value::Object(object) => AMQPValue::FieldTable(json_table(object)),
        }
    }

    fn json_table(object: &Map<String, Value>) -> FieldTable {
        let mut t = FieldTable::default();
        for (key, value) in object {
            t.insert(ShortString::from(key.as_str()), json_to_amqp(value));
        }
        t
    }

    /// The indexes only preselect: whatever they hold, routing reports exactly the filters
    /// that match one by one (random policies of every condition kind over a few keys,
    /// nested ones and `"$or"`, in both scopes, random messages, and removals).
    #[test]
    fn filter_set_agrees_with_matching_one_by_one() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut below = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        // Leaf keys: top-level ones and a nested one ("c": {"d": ...}).
        let keys = ["a", "b", "n", "c.d"];
        let condition = |below: &mut dyn FnMut(usize) -> usize| -> String {
            let low = below(20) as i64 - 5;
            match below(17) {
                0 => format!(r#""v{}""#, below(4)),
                1 => format!(r#""v{}", "w{}""#, below(4), below(4)),
                2 => format!(
                    r#"{{"numeric": [">=", {low}, "<", {}]}}"#,
                    low + 1 + below(8) as i64
                ),
                3 => format!(r#"{{"numeric": ["=", {low}]}}"#),
                4 => format!("{low}"),
                5 => format!(r#"{{"numeric": [">", {low}]}}"#),
                6 => format!(r#"{{"numeric": ["<=", {low}]}}"#),
                7 => format!(r#"{{"prefix": "{}"}}"#, ["", "v", "v1", "W"][below(4)]),
                8 => format!(r#"{{"suffix": "{}"}}"#, ["1", "v2", "É"][below(3)]),
                9 => format!(
                    r#"{{"equals-ignore-case": "{}"}}"#,
                    ["V1", "w2", "é"][below(3)]
                ),
                10 => format!(r#"{{"anything-but": ["v{}", {low}]}}"#, below(4)),
                11 => r#"{"anything-but": {"prefix": "v"}}"#.to_owned(),
                12 => r#"{"exists": true}"#.to_owned(),
                13 => r#"{"exists": false}"#.to_owned(),
                14 => ["true", "false", "null"][below(3)].to_owned(),
                15 => format!(r#"{{"numeric": [">", {low}, "<=", {}]}}"#, low + 3),
                _ => format!(
                    r#""v{}", {{"prefix": "w"}}, {{"numeric": ["<", {low}]}}"#,
                    below(4)
                ),
            }
        };
        let term = |below: &mut dyn FnMut(usize) -> usize, key: &str| -> String {
            let list = format!("[{}]", condition(&mut *below));
            match key.split_once('.') {
                Some((outer, inner)) => format!(r#""{outer}": {{"{inner}": {list}}}"#),
                None => format!(r#""{key}": {list}"#),
            }
        };
        let mut policies = Vec::new();
        for _ in 0..600 {
            let mut terms = Vec::new();
            for key in keys {
                if below(3) == 0 {
                    terms.push(term(&mut below, key));
                }
            }
            if terms.is_empty() || below(4) == 0 {
                let (x, y) = (keys[below(4)], keys[below(4)]);
                let (x, y) = (term(&mut below, x), term(&mut below, y));
                terms.push(format!(r#""$or": [{{{x}}}, {{{y}}}]"#));
            }
            policies.push(format!("{{{}}}", terms.join(", ")));
        }
        let scope = |i: usize| {
            if i % 3 == 2 {
                Scope::Body
            } else {
                Scope::Headers
            }
        };
        let filters: Vec<Filter> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| Filter::compile(p, scope(i)).expect(p))
            .collect();
        let mut set = FilterSet::default();
        for (i, filter) in filters.iter().enumerate() {
            set.insert(i as u32, filter.clone());
        }
        assert!(!set.headers.is_empty() && !set.body.is_empty() && !set.absent.is_empty());
        let texts = ["v0", "v1", "v2", "V1", "w2", "W2", "É", "é", "x", "v", ""];
        let mut removed = std::collections::HashSet::new();
        for round in 0..600 {
            let value = |below: &mut dyn FnMut(usize) -> usize| -> Value {
                match below(6) {
                    0 => Value::from(texts[below(texts.len())]),
                    1 => Value::from(below(30) as i64 - 8),
                    2 => Value::from(below(60) as f64 / 2.0 - 8.0),
                    3 => [Value::Bool(true), Value::Bool(false), Value::Null][below(3)].clone(),
                    4 => Value::Array(vec![
                        Value::from(below(30) as i64 - 8),
                        Value::from(texts[below(texts.len())]),
                    ]),
                    _ => Value::Array(vec![]),
                }
            };
            let mut object = Map::new();
            for key in ["a", "b", "n"] {
                if below(4) != 0 {
                    object.insert(key.to_owned(), value(&mut below));
                }
            }
            match below(4) {
                0 => {}
                1 => {
                    object.insert("c".to_owned(), value(&mut below));
                }
                _ => {
                    let mut inner = Map::new();
                    if below(4) != 0 {
                        inner.insert("d".to_owned(), value(&mut below));
                    }
                    object.insert("c".to_owned(), Value::Object(inner));
                }
            }
            let headers = json_table(&object);
            let body = serde_json::to_vec(&object).expect("json");
            let expected: Vec<u32> = (0..filters.len())
                .filter(|i| {
                    !removed.contains(i)
                        && match filters[*i].scope() {
                            Scope::Headers => filters[*i].matches_headers(Some(&headers)),
                            Scope::Body => filters[*i].matches_body(&object),
                        }
                })
                .map(|i| i as u32)
                .collect();
            assert_eq!(routed(&set, &headers, Some(&body)), expected, "{object:?}");
            if round % 2 == 0 {
                let gone = below(filters.len());
                set.remove(&(gone as u32));
                removed.insert(gone);
            }
        }
        for i in 0..filters.len() {
            set.remove(&(i as u32));
        }
        assert!(is_bare(&set));
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
