//! The headers exchange's matching: does a message's `headers` table satisfy a binding's
//! arguments, and are a binding's arguments acceptable at bind time.
//!
//! Owns only these two pure functions (and the Erlang-style value printing their error text
//! needs); it keeps no binding state and knows nothing of queues or routing snapshots.
//!
//! Semantics are RabbitMQ's (`rabbit_exchange_type_headers`), checked against RabbitMQ 3.10
//! (the cases in the tests, plus 25,600 random value pairs run through a real headers exchange):
//! - `x-match` is `all` (the default when absent), `any`, `all-with-x` or `any-with-x`. The
//!   `x-match` argument itself never takes part; other arguments whose key starts with `x-`
//!   (case-sensitive) take part only in the `*-with-x` modes.
//! - `all` with no participating arguments matches every message, even one without headers;
//!   `any` with none matches nothing.
//! - An argument whose value is void matches when the header is present, whatever its value.
//! - Otherwise values compare as RabbitMQ's Erlang `==` does on the decoded terms, which drops
//!   the wire type at the top level: every integer type (and timestamp) is one integer, so
//!   `I 1 == l 1 == T 1`; integers equal floats of the same exact value (`l 1 == d 1.0`, but
//!   `l 2^53+1 != d 2^53`); `f` widens exactly to `d` (`f 1.5 == d 1.5`, `f 0.1 != d 0.1`);
//!   long strings equal byte arrays with the same bytes; booleans equal only booleans, decimals
//!   only decimals with the same scale and digits; an empty array equals an empty table.
//!   Inside arrays and tables the wire type is kept (`[I 1] != [l 1]`, `[S "a"] != [x "a"]`).
//!
//! Known divergences, both from `FieldTable` being a sorted map: a nested table compares
//! equal regardless of its entries' wire order (RabbitMQ compares in wire order), and duplicate
//! keys are already collapsed by the codec. `AMQPValue::ShortString` never comes off the wire
//! in a table; it is treated as a long string.

use crate::args::type_name;
use crate::exchange::filter;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};

/// The binding argument that selects the match mode; it never takes part in matching.
const X_MATCH: &str = "x-match";
/// Binding arguments with this prefix take part only in the `*-with-x` modes.
const X_PREFIX: &str = "x-";
/// Doubles at or beyond this magnitude are always printed in scientific notation by Erlang.
const ERLANG_FLOAT_PLAIN_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchMode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl MatchMode {
    fn parse(value: &[u8]) -> Option<MatchMode> {
        match value {
            b"all" => Some(MatchMode::All),
            b"any" => Some(MatchMode::Any),
            b"all-with-x" => Some(MatchMode::AllWithX),
            b"any-with-x" => Some(MatchMode::AnyWithX),
            _ => None,
        }
    }

    /// The mode a stored binding routes with. Anything unparseable routes as `all`, as in
    /// RabbitMQ, whose bindings from before validation existed may hold such values.
    fn of(args: &FieldTable) -> MatchMode {
        args.inner()
            .get(X_MATCH)
            .and_then(long_string_bytes)
            .and_then(MatchMode::parse)
            .unwrap_or(MatchMode::All)
    }
}

/// Checks a binding's arguments at bind time; `Err(text)` becomes 406 PRECONDITION_FAILED.
/// The text is RabbitMQ's, without the `"PRECONDITION_FAILED - "` prefix and untruncated (the
/// caller owns both, since the reply text as a whole is limited to 255 bytes).
pub fn validate_binding_args(args: &FieldTable) -> Result<(), String> {
    let Some(value) = args.inner().get(X_MATCH) else {
        return Ok(());
    };
    if filter::is_filter_binding(args) {
        return filter::Filter::from_binding_args(args)
            .map(drop)
            .map_err(|error| error.to_string());
    }
    let mut text = Vec::new();
    match long_string_bytes(value) {
        Some(bytes) if MatchMode::parse(bytes).is_some() => return Ok(()),
        Some(bytes) => {
            text.extend_from_slice(b"Invalid x-match field value ");
            write_binary(bytes, &mut text);
            text.extend_from_slice(b"; expected all, any, all-with-x, or any-with-x");
        }
        None => {
            text.extend_from_slice(b"Invalid x-match field type ");
            text.extend_from_slice(type_name(value).as_bytes());
            text.extend_from_slice(b" (value ");
            write_value(value, &mut text);
            text.extend_from_slice(b"); expected longstr");
        }
    }
    // Erlang prints latin-1 bytes raw; that is UTF-8 whenever the client's value was.
    Err(match String::from_utf8(text) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

/// True if a message with `headers` matches a binding with `args`.
pub fn headers_match(args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = MatchMode::of(args);
    let with_x = matches!(mode, MatchMode::AllWithX | MatchMode::AnyWithX);
    let any = matches!(mode, MatchMode::Any | MatchMode::AnyWithX);
    for (key, wanted) in args {
        let key = key.as_str();
        if key == X_MATCH || (!with_x && key.starts_with(X_PREFIX)) {
            continue;
        }
        let hit = match headers.and_then(|headers| headers.inner().get(key)) {
            None => false,
            Some(_) if matches!(wanted, AMQPValue::Void) => true,
            Some(got) => erlang_equal(wanted, got),
        };
        if hit == any {
            // The first hit decides `any`, the first miss decides `all`.
            return hit;
        }
    }
    !any
}

fn long_string_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(text) => Some(text.as_bytes()),
        AMQPValue::ShortString(text) => Some(text.as_str().as_bytes()),
        _ => None,
    }
}

/// A field value as RabbitMQ holds it in Erlang once the wire type is set aside.
enum Term<'v> {
    Integer(i128),
    Float(f64),
    Boolean(bool),
    Decimal(u8, u32),
    Binary(&'v [u8]),
    Array(&'v FieldArray),
    Table(&'v FieldTable),
    Undefined,
}

fn term(value: &AMQPValue) -> Term<'_> {
    match value {
        AMQPValue::Boolean(b) => Term::Boolean(*b),
        AMQPValue::ShortShortInt(n) => Term::Integer((*n).into()),
        AMQPValue::ShortShortUInt(n) => Term::Integer((*n).into()),
        AMQPValue::ShortInt(n) => Term::Integer((*n).into()),
        AMQPValue::ShortUInt(n) => Term::Integer((*n).into()),
        AMQPValue::LongInt(n) => Term::Integer((*n).into()),
        AMQPValue::LongUInt(n) => Term::Integer((*n).into()),
        AMQPValue::LongLongInt(n) => Term::Integer((*n).into()),
        AMQPValue::Timestamp(n) => Term::Integer((*n).into()),
        AMQPValue::Float(x) => Term::Float((*x).into()),
        AMQPValue::Double(x) => Term::Float(*x),
        AMQPValue::DecimalValue(d) => Term::Decimal(d.scale, d.value),
        AMQPValue::ShortString(s) => Term::Binary(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Term::Binary(s.as_bytes()),
        AMQPValue::ByteArray(b) => Term::Binary(b.as_slice()),
        AMQPValue::FieldArray(a) => Term::Array(a),
        AMQPValue::FieldTable(t) => Term::Table(t),
        AMQPValue::Void => Term::Undefined,
    }
}

/// Erlang's `==` on the two values' terms.
fn erlang_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (term(a), term(b)) {
        (Term::Integer(x), Term::Integer(y)) => x == y,
        (Term::Float(x), Term::Float(y)) => x == y,
        (Term::Integer(i), Term::Float(f)) | (Term::Float(f), Term::Integer(i)) => {
            integer_equals_float(i, f)
        }
        (Term::Boolean(x), Term::Boolean(y)) => x == y,
        (Term::Decimal(s1, v1), Term::Decimal(s2, v2)) => s1 == s2 && v1 == v2,
        (Term::Binary(x), Term::Binary(y)) => x == y,
        (Term::Array(x), Term::Array(y)) => {
            let (x, y) = (x.as_slice(), y.as_slice());
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| typed_equal(a, b))
        }
        (Term::Table(x), Term::Table(y)) => {
            x.inner().len() == y.inner().len()
                && x.into_iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && typed_equal(v1, v2))
        }
        // Both are Erlang lists; only the empty ones are equal.
        (Term::Array(a), Term::Table(t)) | (Term::Table(t), Term::Array(a)) => {
            a.as_slice().is_empty() && t.inner().is_empty()
        }
        (Term::Undefined, Term::Undefined) => true,
        _ => false,
    }
}

/// Equality of values nested in an array or table, where RabbitMQ keeps the wire type.
fn typed_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    type_name(a) == type_name(b) && erlang_equal(a, b)
}

/// Erlang compares an integer and a float exactly (no rounding of either side).
fn integer_equals_float(integer: i128, float: f64) -> bool {
    const LIMIT: f64 = 1.7e38; // below i128::MAX, far above any AMQP integer
    float.is_finite() && float.fract() == 0.0 && float.abs() < LIMIT && float as i128 == integer
}

/// Writes a value as Erlang's `~tp` prints RabbitMQ's term for it, on one line. (RabbitMQ
/// breaks tables and arrays wider than its 80-column line over several lines; we do not.)
fn write_value(value: &AMQPValue, out: &mut Vec<u8>) {
    match term(value) {
        Term::Integer(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Term::Float(x) => out.extend_from_slice(erlang_float(x).as_bytes()),
        Term::Boolean(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Term::Decimal(scale, digits) => {
            out.extend_from_slice(format!("{{{scale},{digits}}}").as_bytes());
        }
        Term::Binary(bytes) => write_binary(bytes, out),
        Term::Undefined => out.extend_from_slice(b"undefined"),
        Term::Array(array) => {
            out.push(b'[');
            for (i, element) in array.as_slice().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                out.extend_from_slice(type_name(element).as_bytes());
                out.push(b',');
                write_value(element, out);
                out.push(b'}');
            }
            out.push(b']');
        }
        Term::Table(table) => {
            out.push(b'[');
            for (i, (key, element)) in table.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                write_binary(key.as_str().as_bytes(), out);
                out.push(b',');
                out.extend_from_slice(type_name(element).as_bytes());
                out.push(b',');
                write_value(element, out);
                out.push(b'}');
            }
            out.push(b']');
        }
    }
}

/// Erlang's printing of a binary: `<<"text">>` when every byte is printable latin-1 (bytes
/// 0xA0..=0xFF are emitted raw), else `<<1,2,3>>`.
fn write_binary(bytes: &[u8], out: &mut Vec<u8>) {
    let printable = |b: u8| matches!(b, 8..=13 | 27 | 32..=126 | 160..=255);
    if bytes.is_empty() || !bytes.iter().copied().all(printable) {
        out.extend_from_slice(b"<<");
        for (i, byte) in bytes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(byte.to_string().as_bytes());
        }
        out.extend_from_slice(b">>");
        return;
    }
    out.extend_from_slice(b"<<\"");
    for &byte in bytes {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            11 => b"\\v",
            8 => b"\\b",
            12 => b"\\f",
            27 => b"\\e",
            _ => {
                out.push(byte);
                continue;
            }
        };
        out.extend_from_slice(escaped);
    }
    out.extend_from_slice(b"\">>");
}

/// Erlang's shortest round-trip float printing: plain notation (`123.0`, `0.0001`) unless
/// scientific (`1.0e20`) is strictly shorter or the magnitude is at least 2^53.
fn erlang_float(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    erlang_finite_float(x).unwrap_or_else(|| format!("{x:?}"))
}

fn erlang_finite_float(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    // Rust's `{:e}` gives shortest round-trip digits as Erlang does: "1.2345e14", "1e-7".
    let (digits, exponent) = scientific_digits(&format!("{:e}", x.abs()))?;
    let digits = round_tie_to_even(x.abs(), digits, exponent);
    let (first, rest) = digits.split_at(1);
    let scientific = format!(
        "{first}.{}e{exponent}",
        if rest.is_empty() { "0" } else { rest }
    );
    let plain = if exponent >= 0 {
        let whole_digits = usize::try_from(exponent).ok()? + 1;
        if digits.len() <= whole_digits {
            format!("{digits}{}.0", "0".repeat(whole_digits - digits.len()))
        } else {
            let (whole, fraction) = digits.split_at(whole_digits);
            format!("{whole}.{fraction}")
        }
    } else {
        let zeros = usize::try_from(-exponent - 1).ok()?;
        format!("0.{}{digits}", "0".repeat(zeros))
    };
    let chosen = if x.abs() >= ERLANG_FLOAT_PLAIN_LIMIT || scientific.len() < plain.len() {
        scientific
    } else {
        plain
    };
    Some(if x < 0.0 {
        format!("-{chosen}")
    } else {
        chosen
    })
}

/// Splits Rust's `{:e}` output ("1.25e-3") into significant digits ("125") and exponent.
fn scientific_digits(text: &str) -> Option<(String, i64)> {
    let (mantissa, exponent) = text.split_once('e')?;
    let digits = mantissa.chars().filter(|c| *c != '.').collect();
    Some((digits, exponent.parse().ok()?))
}

/// When two shortest digit strings are exactly as near to `x`, Erlang (Ryu) keeps the one
/// ending in an even digit; Rust rounds the tie up. `x` is positive and finite.
fn round_tie_to_even(x: f64, digits: String, exponent: i64) -> String {
    // 767 significant digits print any double exactly.
    let Some((exact, exact_exponent)) = scientific_digits(&format!("{x:.800e}")) else {
        return digits;
    };
    let exact = exact.trim_end_matches('0');
    if exact_exponent != exponent || exact.len() != digits.len() + 1 || !exact.ends_with('5') {
        return digits;
    }
    let below = &exact[..digits.len()];
    let Some(above) = increment_decimal(below) else {
        return digits;
    };
    let round_trips = |candidate: &str| {
        let (first, rest) = candidate.split_at(1);
        format!("{first}.{rest}e{exponent}").parse::<f64>() == Ok(x)
    };
    let even = |candidate: &str| candidate.bytes().last().is_some_and(|d| d % 2 == 0);
    [below.to_owned(), above]
        .into_iter()
        .find(|candidate| even(candidate) && round_trips(candidate))
        .unwrap_or(digits)
}

/// Adds one in the last place of a digit string; `None` if that would add a digit.
fn increment_decimal(digits: &str) -> Option<String> {
    let mut bytes = digits.as_bytes().to_vec();
    for byte in bytes.iter_mut().rev() {
        if *byte == b'9' {
            *byte = b'0';
        } else {
            *byte += 1;
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{DecimalValue, LongString};
    use proptest::prelude::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in entries {
            table.insert((*key).into(), value.clone());
        }
        table
    }

    fn s(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
    }

    fn bytes(data: &[u8]) -> AMQPValue {
        AMQPValue::ByteArray(data.into())
    }

    fn array(values: Vec<AMQPValue>) -> AMQPValue {
        AMQPValue::FieldArray(values.into())
    }

    fn decimal(scale: u8, value: u32) -> AMQPValue {
        AMQPValue::DecimalValue(DecimalValue { scale, value })
    }

    fn nested(entries: &[(&str, AMQPValue)]) -> AMQPValue {
        AMQPValue::FieldTable(table(entries))
    }

    fn single(wanted: AMQPValue, got: AMQPValue) -> bool {
        headers_match(&table(&[("k", wanted)]), Some(&table(&[("k", got)])))
    }

    /// Each row was observed on a real RabbitMQ 3.10 broker: a headers exchange, a binding with
    /// argument `k` = the first value, a message with header `k` = the second.
    #[test]
    fn value_equality_matches_rabbitmq() {
        use AMQPValue::*;
        let cases: Vec<(&str, AMQPValue, AMQPValue, bool)> = vec![
            ("I1 b1", LongInt(1), ShortShortInt(1), true),
            ("I1 B1", LongInt(1), ShortShortUInt(1), true),
            ("I1 s1", LongInt(1), ShortInt(1), true),
            ("I1 u1", LongInt(1), ShortUInt(1), true),
            ("I1 i1", LongInt(1), LongUInt(1), true),
            ("I1 l1", LongInt(1), LongLongInt(1), true),
            ("I1 T1", LongInt(1), Timestamp(1), true),
            ("l1 d1.0", LongLongInt(1), Double(1.0), true),
            ("I1 f1.0", LongInt(1), Float(1.0), true),
            ("d1.5 f1.5", Double(1.5), Float(1.5), true),
            ("d0.1 f0.1", Double(0.1), Float(0.1), false),
            ("d0.0 d-0.0", Double(0.0), Double(-0.0), true),
            (
                "l2^53+1 d2^53",
                LongLongInt((1 << 53) + 1),
                Double(9_007_199_254_740_992.0),
                false,
            ),
            (
                "l2^53 d2^53",
                LongLongInt(1 << 53),
                Double(9_007_199_254_740_992.0),
                true,
            ),
            ("b-1 B255", ShortShortInt(-1), ShortShortUInt(255), false),
            ("S x same bytes", s("abc"), bytes(b"abc"), true),
            ("S abc S abd", s("abc"), s("abd"), false),
            ("S\"1\" I1", s("1"), LongInt(1), false),
            ("t1 I1", Boolean(true), LongInt(1), false),
            ("t1 t1", Boolean(true), Boolean(true), true),
            ("t0 t0", Boolean(false), Boolean(false), true),
            ("t0 I0", Boolean(false), LongInt(0), false),
            ("D(1,10) D(0,1)", decimal(1, 10), decimal(0, 1), false),
            ("D(0,1) D(0,1)", decimal(0, 1), decimal(0, 1), true),
            ("D(0,1) I1", decimal(0, 1), LongInt(1), false),
            ("A[] F{}", array(vec![]), nested(&[]), true),
            ("A[] A[]", array(vec![]), array(vec![]), true),
            (
                "A[I1] A[l1]",
                array(vec![LongInt(1)]),
                array(vec![LongLongInt(1)]),
                false,
            ),
            (
                "A[I1] A[I1]",
                array(vec![LongInt(1)]),
                array(vec![LongInt(1)]),
                true,
            ),
            (
                "A[S a] A[x a]",
                array(vec![s("a")]),
                array(vec![bytes(b"a")]),
                false,
            ),
            (
                "F{a:I1} F{a:l1}",
                nested(&[("a", LongInt(1))]),
                nested(&[("a", LongLongInt(1))]),
                false,
            ),
            (
                "F{a:I1} F{a:I1}",
                nested(&[("a", LongInt(1))]),
                nested(&[("a", LongInt(1))]),
                true,
            ),
            (
                "F{a:d1} F{a:d1}",
                nested(&[("a", Double(1.0))]),
                nested(&[("a", Double(1.0))]),
                true,
            ),
            ("V S", Void, s("x"), true),
            ("V I0", Void, LongInt(0), true),
            ("V V", Void, Void, true),
            ("S\"\" V", s(""), Void, false),
            ("T5 l5", Timestamp(5), LongLongInt(5), true),
            ("d1.0 T1", Double(1.0), Timestamp(1), true),
        ];
        for (name, wanted, got, expected) in cases {
            assert_eq!(single(wanted, got), expected, "{name}");
        }
    }

    /// Each row was observed on a real RabbitMQ 3.10 broker, as above.
    #[test]
    fn match_modes_match_rabbitmq() {
        use AMQPValue::LongInt;
        let x = |mode: &str| ("x-match", s(mode));
        let cases: Vec<(&str, FieldTable, Option<FieldTable>, bool)> = vec![
            ("all, no args, no headers", table(&[]), None, true),
            (
                "explicit all, no args, no headers",
                table(&[x("all")]),
                None,
                true,
            ),
            (
                "any, no args",
                table(&[x("any")]),
                Some(table(&[("a", LongInt(1))])),
                false,
            ),
            (
                "any ignores x- args",
                table(&[x("any"), ("x-foo", LongInt(1))]),
                Some(table(&[("x-foo", LongInt(1))])),
                false,
            ),
            (
                "all ignores x- args",
                table(&[x("all"), ("x-foo", LongInt(1))]),
                Some(table(&[("x-foo", LongInt(2))])),
                true,
            ),
            (
                "all-with-x, x- arg differs",
                table(&[x("all-with-x"), ("x-foo", LongInt(1))]),
                Some(table(&[("x-foo", LongInt(2))])),
                false,
            ),
            (
                "all-with-x, x- arg equal",
                table(&[x("all-with-x"), ("x-foo", LongInt(1))]),
                Some(table(&[("x-foo", LongInt(1))])),
                true,
            ),
            (
                "any-with-x, x- arg equal",
                table(&[x("any-with-x"), ("x-foo", LongInt(1)), ("a", LongInt(9))]),
                Some(table(&[("x-foo", LongInt(1))])),
                true,
            ),
            (
                "any-with-x never compares x-match itself",
                table(&[x("any-with-x")]),
                Some(table(&[x("any-with-x")])),
                false,
            ),
            (
                "all-with-x, only x-match",
                table(&[x("all-with-x")]),
                None,
                true,
            ),
            (
                "X- is not x-",
                table(&[x("all"), ("X-foo", LongInt(1))]),
                Some(table(&[("X-foo", LongInt(2))])),
                false,
            ),
            (
                "all, one of two missing",
                table(&[("a", LongInt(1)), ("b", LongInt(2))]),
                Some(table(&[("a", LongInt(1))])),
                false,
            ),
            (
                "all, both present plus extra",
                table(&[("a", LongInt(1)), ("b", LongInt(2))]),
                Some(table(&[
                    ("a", LongInt(1)),
                    ("b", LongInt(2)),
                    ("c", LongInt(3)),
                ])),
                true,
            ),
            (
                "any, one of two",
                table(&[x("any"), ("a", LongInt(1)), ("b", LongInt(2))]),
                Some(table(&[("b", LongInt(2))])),
                true,
            ),
            (
                "any, none of two",
                table(&[x("any"), ("a", LongInt(1)), ("b", LongInt(2))]),
                Some(table(&[("b", LongInt(3))])),
                false,
            ),
            (
                "any, void arg present",
                table(&[x("any"), ("a", AMQPValue::Void), ("b", LongInt(2))]),
                Some(table(&[("a", s("q"))])),
                true,
            ),
            (
                "void arg, header absent",
                table(&[("k", AMQPValue::Void)]),
                Some(table(&[("o", s("x"))])),
                false,
            ),
            (
                "void arg, no headers",
                table(&[("k", AMQPValue::Void)]),
                None,
                false,
            ),
        ];
        for (name, args, headers, expected) in cases {
            assert_eq!(headers_match(&args, headers.as_ref()), expected, "{name}");
        }
    }

    #[test]
    fn invalid_stored_x_match_routes_as_all() {
        let args = table(&[("x-match", AMQPValue::LongInt(1)), ("a", s("1"))]);
        assert!(headers_match(&args, Some(&table(&[("a", s("1"))]))));
        assert!(!headers_match(&args, None));
        let args = table(&[("x-match", s("ANY")), ("a", s("1")), ("b", s("2"))]);
        assert!(!headers_match(&args, Some(&table(&[("a", s("1"))]))));
    }

    fn rejection(x_match: AMQPValue) -> String {
        match validate_binding_args(&table(&[("x-match", x_match)])) {
            Ok(()) => String::from("accepted"),
            Err(text) => text,
        }
    }

    #[test]
    fn valid_arguments_pass() {
        for mode in ["all", "any", "all-with-x", "any-with-x"] {
            assert_eq!(
                validate_binding_args(&table(&[("x-match", s(mode))])),
                Ok(())
            );
        }
        assert_eq!(validate_binding_args(&table(&[])), Ok(()));
        assert_eq!(
            validate_binding_args(&table(&[("a", AMQPValue::LongInt(1))])),
            Ok(())
        );
    }

    /// Each expected text is what RabbitMQ 3.10 sent after "PRECONDITION_FAILED - ".
    #[test]
    fn rejections_use_rabbitmq_text() {
        use AMQPValue::*;
        let expect_all = "; expected all, any, all-with-x, or any-with-x";
        let value_cases: Vec<(AMQPValue, &str)> = vec![
            (s("ALL"), r#"<<"ALL">>"#),
            (s(""), "<<>>"),
            (s("foo"), r#"<<"foo">>"#),
            (s("é"), r#"<<"é">>"#),
            (LongString(vec![1, 2].into()), "<<1,2>>"),
            (s("a\"b\\c"), r#"<<"a\"b\\c">>"#),
            (s("a\nb"), r#"<<"a\nb">>"#),
            (s("a\tb"), r#"<<"a\tb">>"#),
            (s("\u{1b}\u{8}\u{c}\u{b}\r"), r#"<<"\e\b\f\v\r">>"#),
            (LongString(vec![127].into()), "<<127>>"),
            (LongString(vec![97, 127].into()), "<<97,127>>"),
            (s("€"), "<<226,130,172>>"),
            (LongString(vec![0].into()), "<<0>>"),
        ];
        for (value, printed) in value_cases {
            let expected = format!("Invalid x-match field value {printed}{expect_all}");
            assert_eq!(rejection(value), expected);
        }
        let type_cases: Vec<(AMQPValue, &str)> = vec![
            (bytes(b"any"), r#"binary (value <<"any">>)"#),
            (bytes(&[128]), "binary (value <<128>>)"),
            (LongInt(1), "signedint (value 1)"),
            (LongLongInt(-5), "long (value -5)"),
            (Boolean(true), "bool (value true)"),
            (Void, "void (value undefined)"),
            (Double(1.5), "double (value 1.5)"),
            (
                nested(&[("a", LongInt(1))]),
                r#"table (value [{<<"a">>,signedint,1}])"#,
            ),
            (
                array(vec![s("any")]),
                r#"array (value [{longstr,<<"any">>}])"#,
            ),
            (array(vec![]), "array (value [])"),
            (nested(&[]), "table (value [])"),
            (decimal(2, 150), "decimal (value {2,150})"),
            (ShortInt(3), "short (value 3)"),
            (ShortShortInt(3), "byte (value 3)"),
            (ShortUInt(3), "unsignedshort (value 3)"),
            (LongUInt(3), "unsignedint (value 3)"),
            (Timestamp(3), "timestamp (value 3)"),
            (Float(1.5), "float (value 1.5)"),
            (Float(0.1), "float (value 0.10000000149011612)"),
            (ShortShortUInt(3), "unsignedbyte (value 3)"),
        ];
        for (value, printed) in type_cases {
            let expected = format!("Invalid x-match field type {printed}; expected longstr");
            assert_eq!(rejection(value), expected);
        }
    }

    /// Printed by RabbitMQ 3.10 (and cross-checked against `io_lib:format("~tp")` on OTP 25).
    #[test]
    fn floats_print_like_erlang() {
        let cases = [
            (1e20, "1.0e20"),
            (1e-7, "1.0e-7"),
            (123_456_789_012.0, "123456789012.0"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1e16, "1.0e16"),
            (1e15, "1.0e15"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (1e300, "1.0e300"),
            (5e-324, "5.0e-324"),
            (1.0 / 3.0, "0.3333333333333333"),
            (123.456, "123.456"),
            (9_007_199_254_740_992.0, "9.007199254740992e15"),
            (9_007_199_254_740_991.0, "9007199254740991.0"),
            (123_456_789_012_345.6, "123456789012345.6"),
            (1e22, "1.0e22"),
            (-1.5e-10, "-1.5e-10"),
            (1.2345e14, "1.2345e14"),
            (100.0, "100.0"),
            // Exact ties between two shortest candidates: Erlang keeps the even digit.
            (649_714_273_740_195.0 + 0.25, "649714273740195.2"),
            (-81_822_213_363_231.0 - 0.125, "-81822213363231.12"),
        ];
        for (x, printed) in cases {
            assert_eq!(erlang_float(x), printed, "{x:?}");
        }
    }

    fn scalar() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            (-3i8..3).prop_map(AMQPValue::ShortShortInt),
            (0u8..3).prop_map(AMQPValue::ShortShortUInt),
            (-3i64..3).prop_map(AMQPValue::LongLongInt),
            (0u64..3).prop_map(AMQPValue::Timestamp),
            (-3i8..3).prop_map(|n| AMQPValue::Double(f64::from(n) / 2.0)),
            (-3i8..3).prop_map(|n| AMQPValue::Float(f32::from(n) / 2.0)),
            (0u8..2, 0u32..3).prop_map(|(scale, value)| decimal(scale, value)),
            prop::sample::select(vec!["", "a", "1"]).prop_map(s),
            prop::sample::select(vec![&b""[..], b"a", b"1"]).prop_map(bytes),
            Just(AMQPValue::Void),
        ]
    }

    fn value() -> impl Strategy<Value = AMQPValue> {
        scalar().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(array),
                prop::collection::vec((prop::sample::select(vec!["a", "b"]), inner), 0..3)
                    .prop_map(|entries| nested(&entries)),
            ]
        })
    }

    proptest! {
        /// Erlang's `==` is an equivalence; a broken numeric or list case shows up as asymmetry.
        #[test]
        fn equality_is_symmetric_and_reflexive(a in value(), b in value()) {
            prop_assert_eq!(erlang_equal(&a, &b), erlang_equal(&b, &a));
            prop_assert!(erlang_equal(&a, &a));
        }

        #[test]
        fn any_is_the_disjunction_and_all_the_conjunction(
            args in prop::collection::vec((prop::sample::select(vec!["a", "b", "x-c"]), scalar()), 0..4),
            headers in prop::collection::vec((prop::sample::select(vec!["a", "b", "x-c"]), scalar()), 0..4),
        ) {
            let headers = table(&headers);
            let each: Vec<bool> = table(&args)
                .into_iter()
                .filter(|(key, _)| !key.as_str().starts_with("x-"))
                .map(|(key, wanted)| headers_match(&table(&[(key.as_str(), wanted.clone())]), Some(&headers)))
                .collect();
            let mut all = args.clone();
            all.push(("x-match", s("all")));
            let mut any = args;
            any.push(("x-match", s("any")));
            prop_assert_eq!(headers_match(&table(&all), Some(&headers)), each.iter().all(|hit| *hit));
            prop_assert_eq!(headers_match(&table(&any), Some(&headers)), each.iter().any(|hit| *hit));
        }
    }
}
