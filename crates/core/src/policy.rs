//! Policies and operator policies: what they are, how one is validated from RabbitMQ's JSON
//! shape (a definitions export's `policies` / `operator_policies` entries), which queues and
//! exchanges it matches, and how a queue's arguments, its policy and its operator policy
//! resolve into the settings its actor runs with (RabbitMQ's per-key rules).
//!
//! It owns no state: a vhost keeps its policies and re-resolves its queues and exchanges
//! when they change (`vhost/policies.rs`). Nothing here runs on the publish path.

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};
use warren_protocol::{FieldTable, ProtocolError, ShortString};

use crate::admin::AdminError;
use crate::args::as_str;
use crate::queue::settings::{Overflow, QueueSettings};

/// Longest policy name, in bytes (RabbitMQ's limit for names).
pub const POLICY_NAME_BYTES_MAX: usize = 255;
/// Largest compiled form of a policy's pattern (the `regex` crate's size limit): a pattern is
/// matched against every queue and exchange name of its vhost when policies change.
pub const POLICY_PATTERN_COMPILED_BYTES_MAX: usize = 1 << 20;

/// A regular policy (anyone with the policymaker tag) or an operator policy (guardrails the
/// operator sets, limited to a few keys, merged with the regular one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    Regular,
    Operator,
}

impl PolicyKind {
    /// RabbitMQ's runtime-parameter component: `policy` or `operator_policy`.
    pub fn component(self) -> &'static str {
        match self {
            PolicyKind::Regular => "policy",
            PolicyKind::Operator => "operator_policy",
        }
    }

    pub fn from_component(component: &str) -> Option<PolicyKind> {
        match component {
            "policy" => Some(PolicyKind::Regular),
            "operator_policy" => Some(PolicyKind::Operator),
            _ => None,
        }
    }

    /// How error texts name it.
    pub fn noun(self) -> &'static str {
        match self {
            PolicyKind::Regular => "policy",
            PolicyKind::Operator => "operator policy",
        }
    }
}

/// What a policy applies to (`apply-to`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTo {
    #[default]
    All,
    Exchanges,
    Queues,
    ClassicQueues,
    QuorumQueues,
    Streams,
}

impl ApplyTo {
    pub fn parse(text: &str) -> Option<ApplyTo> {
        Some(match text {
            "all" => ApplyTo::All,
            "exchanges" => ApplyTo::Exchanges,
            "queues" => ApplyTo::Queues,
            "classic_queues" => ApplyTo::ClassicQueues,
            "quorum_queues" => ApplyTo::QuorumQueues,
            "streams" => ApplyTo::Streams,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::Queues => "queues",
            ApplyTo::ClassicQueues => "classic_queues",
            ApplyTo::QuorumQueues => "quorum_queues",
            ApplyTo::Streams => "streams",
        }
    }

    fn matches_queue(self, queue_type: QueueType) -> bool {
        match self {
            ApplyTo::All | ApplyTo::Queues => true,
            ApplyTo::ClassicQueues => queue_type == QueueType::Classic,
            ApplyTo::QuorumQueues => queue_type == QueueType::Quorum,
            // Warren refuses `x-queue-type: stream`: no queue is a stream.
            ApplyTo::Exchanges | ApplyTo::Streams => false,
        }
    }

    fn matches_exchange(self) -> bool {
        matches!(self, ApplyTo::All | ApplyTo::Exchanges)
    }
}

/// The type a queue was declared with, as `apply-to` sees it. Warren serves both with one
/// queue implementation; the declared type decides which policies match (docs/compat.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    /// From the queue's `x-queue-type` argument (absent: classic).
    pub fn of(arguments: &FieldTable) -> QueueType {
        match arguments.inner().get("x-queue-type").and_then(as_str) {
            Some(t) if t == "quorum" => QueueType::Quorum,
            _ => QueueType::Classic,
        }
    }
}

/// The keys of a policy's definition that Warren understands, validated. `None`: not set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDefinition {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<Overflow>,
    pub dead_letter_exchange: Option<ShortString>,
    pub dead_letter_routing_key: Option<ShortString>,
    pub delivery_limit: Option<u64>,
    pub alternate_exchange: Option<ShortString>,
    pub consumer_timeout_ms: Option<u64>,
}

/// The keys a policy may set: those Warren's queues and exchanges understand.
pub const POLICY_KEYS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
    "alternate-exchange",
    "consumer-timeout",
];

/// The keys an operator policy may set (RabbitMQ's list, less those of features Warren
/// does not have).
pub const OPERATOR_POLICY_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "overflow",
    "delivery-limit",
];

/// RabbitMQ policy keys for features Warren does not have: refused with a text that says so.
const RABBITMQ_ONLY_KEYS: &[&str] = &[
    "dead-letter-strategy",
    "federation-upstream",
    "federation-upstream-set",
    "ha-mode",
    "ha-params",
    "ha-promote-on-failure",
    "ha-promote-on-shutdown",
    "ha-sync-batch-size",
    "ha-sync-mode",
    "initial-cluster-size",
    "max-age",
    "max-in-memory-bytes",
    "max-in-memory-length",
    "queue-leader-locator",
    "queue-master-locator",
    "queue-mode",
    "queue-version",
    "stream-max-segment-size-bytes",
    "target-group-size",
];

/// A non-negative integer of at least `min` (JSON integers only: `1.0` is refused, as by
/// RabbitMQ, whose validators require an Erlang integer).
fn integer(value: &Value, min: u64, invalid: &str) -> Result<u64, String> {
    match value.as_u64() {
        Some(v) if v >= min => Ok(v),
        _ => Err(format!("{value} {invalid}")),
    }
}

fn name(value: &Value, invalid: &str) -> Result<ShortString, String> {
    let Some(text) = value.as_str() else {
        return Err(format!("{value} {invalid}"));
    };
    ShortString::try_new(text).map_err(|_| format!("{value} {invalid} (longer than 255 bytes)"))
}

impl PolicyDefinition {
    /// Validates a definition object for a policy of `kind`; the error names the key.
    pub fn parse(kind: PolicyKind, definition: &Map<String, Value>) -> Result<Self, String> {
        if definition.is_empty() {
            return Err("the definition is empty".to_owned());
        }
        let mut d = PolicyDefinition::default();
        for (key, value) in definition {
            let key = key.as_str();
            if kind == PolicyKind::Operator
                && POLICY_KEYS.contains(&key)
                && !OPERATOR_POLICY_KEYS.contains(&key)
            {
                return Err(format!(
                    "'{key}' is not an operator policy setting (operator policies may set {})",
                    OPERATOR_POLICY_KEYS.join(", ")
                ));
            }
            let detail = |e: String| format!("'{key}': {e}");
            match key {
                "message-ttl" => {
                    d.message_ttl_ms = Some(integer(value, 0, "is not a valid message TTL").map_err(detail)?)
                }
                "expires" => {
                    d.expires_ms = Some(integer(value, 1, "is not a valid queue expiry").map_err(detail)?)
                }
                "max-length" => {
                    d.max_length = Some(integer(value, 0, "is not a valid maximum length").map_err(detail)?)
                }
                "max-length-bytes" => {
                    d.max_length_bytes = Some(
                        integer(value, 0, "is not a valid maximum length in bytes").map_err(detail)?,
                    )
                }
                "delivery-limit" => {
                    d.delivery_limit =
                        Some(integer(value, 0, "is not a valid delivery limit").map_err(detail)?)
                }
                "consumer-timeout" => {
                    d.consumer_timeout_ms =
                        Some(integer(value, 0, "is not a valid consumer timeout").map_err(detail)?)
                }
                "overflow" => {
                    d.overflow = Some(match value.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => return Err(detail(format!("{value} is not a valid overflow value"))),
                    })
                }
                "dead-letter-exchange" => {
                    d.dead_letter_exchange =
                        Some(name(value, "is not a valid dead letter exchange name").map_err(detail)?)
                }
                "dead-letter-routing-key" => {
                    d.dead_letter_routing_key =
                        Some(name(value, "is not a valid dead letter routing key").map_err(detail)?)
                }
                "alternate-exchange" => {
                    d.alternate_exchange =
                        Some(name(value, "is not a valid alternate exchange name").map_err(detail)?)
                }
                "single-active-consumer" => {
                    return Err(
                        "'single-active-consumer' is not a policy setting: it is a queue argument only (x-single-active-consumer), as in RabbitMQ"
                            .to_owned(),
                    )
                }
                other if RABBITMQ_ONLY_KEYS.contains(&other) => {
                    return Err(format!(
                        "'{other}' is a RabbitMQ policy setting that Warren does not support"
                    ))
                }
                other => return Err(format!("'{other}' is not a recognised policy setting")),
            }
        }
        Ok(d)
    }

    /// The definition a queue or exchange gets from its policy and its operator policy,
    /// merged key by key as RabbitMQ merges them: the smaller value for TTLs, expiry,
    /// lengths and the delivery limit; the operator policy's `overflow`; every other key
    /// only a regular policy can set.
    pub fn merged(
        regular: Option<&PolicyDefinition>,
        operator: Option<&PolicyDefinition>,
    ) -> PolicyDefinition {
        let (r, o) = match (regular, operator) {
            (None, None) => return PolicyDefinition::default(),
            (Some(r), None) => return r.clone(),
            (None, Some(o)) => return o.clone(),
            (Some(r), Some(o)) => (r, o),
        };
        PolicyDefinition {
            message_ttl_ms: smaller(r.message_ttl_ms, o.message_ttl_ms),
            expires_ms: smaller(r.expires_ms, o.expires_ms),
            max_length: smaller(r.max_length, o.max_length),
            max_length_bytes: smaller(r.max_length_bytes, o.max_length_bytes),
            overflow: o.overflow.or(r.overflow),
            dead_letter_exchange: r.dead_letter_exchange.clone(),
            dead_letter_routing_key: r.dead_letter_routing_key.clone(),
            delivery_limit: smaller(r.delivery_limit, o.delivery_limit),
            alternate_exchange: r.alternate_exchange.clone(),
            consumer_timeout_ms: r.consumer_timeout_ms,
        }
    }
}

/// The smaller of two optional limits; a limit set on one side only applies as it is.
fn smaller(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A validated policy. Two policies are equal when they were given the same way.
#[derive(Clone, Debug)]
pub struct Policy {
    pub kind: PolicyKind,
    pub name: String,
    /// The pattern as given; matched unanchored against queue and exchange names.
    pub pattern: String,
    regex: Regex,
    pub apply_to: ApplyTo,
    pub priority: i64,
    pub definition: PolicyDefinition,
    /// The definition object as given, for export.
    pub definition_json: Map<String, Value>,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.kind == other.kind
            && self.name == other.name
            && self.pattern == other.pattern
            && self.apply_to == other.apply_to
            && self.priority == other.priority
            && self.definition_json == other.definition_json
    }
}

/// The top-level keys of a policy entry in a definitions export.
const ENTRY_KEYS: &[&str] = &[
    "vhost",
    "name",
    "pattern",
    "apply-to",
    "priority",
    "definition",
];

impl Policy {
    /// Validates a policy; the error (400) names the policy and what is wrong with it.
    pub fn new(
        kind: PolicyKind,
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i64,
        definition: Map<String, Value>,
    ) -> Result<Policy, AdminError> {
        let refuse = |why: String| {
            AdminError::bad_request(format!("invalid {} '{name}': {why}", kind.noun()))
        };
        if name.is_empty() {
            return Err(AdminError::bad_request(format!(
                "invalid {}: the name is empty",
                kind.noun()
            )));
        }
        if name.len() > POLICY_NAME_BYTES_MAX {
            return Err(refuse(format!(
                "the name is longer than {POLICY_NAME_BYTES_MAX} bytes"
            )));
        }
        let regex = RegexBuilder::new(pattern)
            .size_limit(POLICY_PATTERN_COMPILED_BYTES_MAX)
            .build()
            .map_err(|e| {
                refuse(format!(
                    "pattern {}: not a valid regular expression: {e}",
                    Value::from(pattern)
                ))
            })?;
        let apply_to = ApplyTo::parse(apply_to).ok_or_else(|| {
            refuse(format!(
                "apply-to '{apply_to}' unrecognised; should be one of: 'queues', 'classic_queues', 'quorum_queues', 'streams', 'exchanges', or 'all'"
            ))
        })?;
        let parsed = PolicyDefinition::parse(kind, &definition)
            .map_err(|e| refuse(format!("definition: {e}")))?;
        Ok(Policy {
            kind,
            name: name.to_owned(),
            pattern: pattern.to_owned(),
            regex,
            apply_to,
            priority,
            definition: parsed,
            definition_json: definition,
        })
    }

    /// Validates an entry of a definitions export's `policies` (or `operator_policies`)
    /// array: `{"name", "pattern", "apply-to", "priority", "definition"}` (and `vhost`,
    /// which the caller routes by). `apply-to` defaults to `all`, `priority` to 0.
    pub fn from_json(kind: PolicyKind, entry: &Value) -> Result<Policy, AdminError> {
        let noun = kind.noun();
        let Some(object) = entry.as_object() else {
            return Err(AdminError::bad_request(format!(
                "invalid {noun}: expected a JSON object, got {entry}"
            )));
        };
        let name = match object.get("name") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                return Err(AdminError::bad_request(format!(
                    "invalid {noun}: 'name' must be a string, got {other}"
                )))
            }
            None => {
                return Err(AdminError::bad_request(format!(
                    "invalid {noun}: 'name' is missing"
                )))
            }
        };
        let refuse =
            |why: String| AdminError::bad_request(format!("invalid {noun} '{name}': {why}"));
        if let Some(key) = object.keys().find(|k| !ENTRY_KEYS.contains(&k.as_str())) {
            return Err(refuse(format!(
                "unknown key '{key}' (a policy has {})",
                ENTRY_KEYS.join(", ")
            )));
        }
        let text = |key: &str, default: Option<&'static str>| match (object.get(key), default) {
            (Some(Value::String(s)), _) => Ok(s.as_str()),
            (Some(other), _) => Err(refuse(format!("'{key}' must be a string, got {other}"))),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(refuse(format!("'{key}' is missing"))),
        };
        let pattern = text("pattern", None)?;
        let apply_to = text("apply-to", Some("all"))?;
        if let Some(vhost) = object.get("vhost") {
            if !vhost.is_string() {
                return Err(refuse(format!("'vhost' must be a string, got {vhost}")));
            }
        }
        let priority = match object.get("priority") {
            None => 0,
            Some(value) => value
                .as_i64()
                .ok_or_else(|| refuse(format!("'priority' must be an integer, got {value}")))?,
        };
        let definition = match object.get("definition") {
            Some(Value::Object(d)) => d.clone(),
            Some(other) => {
                return Err(refuse(format!(
                    "'definition' must be a JSON object, got {other}"
                )))
            }
            None => return Err(refuse("'definition' is missing".to_owned())),
        };
        Policy::new(kind, name, pattern, apply_to, priority, definition)
    }

    /// The policy as an entry of a definitions export (with `vhost` when given).
    pub fn to_json(&self, vhost: Option<&str>) -> Value {
        let mut entry = Map::new();
        if let Some(vhost) = vhost {
            entry.insert("vhost".into(), vhost.into());
        }
        entry.insert("name".into(), self.name.as_str().into());
        entry.insert("pattern".into(), self.pattern.as_str().into());
        entry.insert("apply-to".into(), self.apply_to.as_str().into());
        entry.insert(
            "definition".into(),
            Value::Object(self.definition_json.clone()),
        );
        entry.insert("priority".into(), self.priority.into());
        Value::Object(entry)
    }

    /// Whether this policy applies to the queue `name` of `queue_type` (if nothing outranks
    /// it). Exclusive and server-named (`amq.gen-*`) queues are matched like any other, as
    /// in RabbitMQ.
    pub fn matches_queue(&self, name: &str, queue_type: QueueType) -> bool {
        self.apply_to.matches_queue(queue_type) && self.regex.is_match(name)
    }

    /// Whether this policy applies to the exchange `name` (`amq.*` ones included).
    pub fn matches_exchange(&self, name: &str) -> bool {
        self.apply_to.matches_exchange() && self.regex.is_match(name)
    }

    /// Whether this policy wins over `other` when both match: the higher priority; between
    /// equal priorities (RabbitMQ leaves the choice undefined) the name first in byte order.
    pub fn outranks(&self, other: &Policy) -> bool {
        (self.priority, std::cmp::Reverse(&self.name))
            > (other.priority, std::cmp::Reverse(&other.name))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}'", self.kind.noun(), self.name)
    }
}

/// A queue's settings: its arguments (validated as at declare; `what` names the queue in
/// errors) resolved key by key against the merged definition of its policies, as RabbitMQ's
/// classic queues resolve them: TTL, expiry, lengths, delivery limit and consumer timeout
/// take the smaller value; `overflow` and the dead-letter exchange and routing key take the
/// argument when there is one. Priorities and single active consumer are arguments only.
pub fn queue_settings(
    arguments: &FieldTable,
    what: &str,
    policy: &PolicyDefinition,
) -> Result<QueueSettings, ProtocolError> {
    let mut s = QueueSettings::from_arguments(arguments, what)?;
    s.message_ttl_ms = smaller(s.message_ttl_ms, policy.message_ttl_ms);
    s.expires_ms = smaller(s.expires_ms, policy.expires_ms);
    s.max_length = smaller(s.max_length, policy.max_length);
    s.max_length_bytes = smaller(s.max_length_bytes, policy.max_length_bytes);
    s.delivery_limit = smaller(s.delivery_limit, policy.delivery_limit);
    s.consumer_timeout_ms = smaller(s.consumer_timeout_ms, policy.consumer_timeout_ms);
    if !arguments.inner().contains_key("x-overflow") {
        if let Some(overflow) = policy.overflow {
            s.overflow = overflow;
        }
    }
    if s.dead_letter_exchange.is_none() {
        s.dead_letter_exchange = policy.dead_letter_exchange.clone();
    }
    if s.dead_letter_routing_key.is_none() {
        s.dead_letter_routing_key = policy.dead_letter_routing_key.clone();
    }
    Ok(s)
}

/// An exchange's alternate exchange: its `alternate-exchange` argument when it has one (as
/// in RabbitMQ, even one naming no exchange), else its policy's.
pub fn alternate_exchange(
    arguments: &FieldTable,
    policy: &PolicyDefinition,
) -> Option<ShortString> {
    match arguments.inner().get("alternate-exchange") {
        // A name over 255 bytes names no exchange (and `ShortString::from` would panic).
        Some(value) => as_str(value).and_then(|name| ShortString::try_new(name).ok()),
        None => policy.alternate_exchange.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use warren_protocol::AMQPValue;

    fn policy(kind: PolicyKind, entry: Value) -> Result<Policy, String> {
        Policy::from_json(kind, &entry).map_err(|e| e.text().to_owned())
    }

    fn regular(entry: Value) -> Result<Policy, String> {
        policy(PolicyKind::Regular, entry)
    }

    fn definition(kind: PolicyKind, d: Value) -> PolicyDefinition {
        policy(kind, json!({"name": "p", "pattern": ".*", "definition": d}))
            .expect("valid")
            .definition
    }

    #[test]
    fn every_key_parses_to_its_setting() {
        let d = definition(
            PolicyKind::Regular,
            json!({
                "message-ttl": 0, "expires": 1, "max-length": 10, "max-length-bytes": 2048,
                "overflow": "reject-publish-dlx", "dead-letter-exchange": "dlx",
                "dead-letter-routing-key": "dead", "delivery-limit": 3,
                "alternate-exchange": "ae", "consumer-timeout": 5000
            }),
        );
        assert_eq!(
            d,
            PolicyDefinition {
                message_ttl_ms: Some(0),
                expires_ms: Some(1),
                max_length: Some(10),
                max_length_bytes: Some(2048),
                overflow: Some(Overflow::RejectPublishDlx),
                dead_letter_exchange: Some("dlx".into()),
                dead_letter_routing_key: Some("dead".into()),
                delivery_limit: Some(3),
                alternate_exchange: Some("ae".into()),
                consumer_timeout_ms: Some(5000),
            }
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_the_policy_and_the_key() {
        let cases = [
            (
                json!({"name": "p", "pattern": "(", "definition": {"max-length": 1}}),
                "invalid policy 'p': pattern \"(\": not a valid regular expression",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"max-lenght": 1}}),
                "invalid policy 'p': definition: 'max-lenght' is not a recognised policy setting",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"message-ttl": "abc"}}),
                "invalid policy 'p': definition: 'message-ttl': \"abc\" is not a valid message TTL",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"message-ttl": -1}}),
                "invalid policy 'p': definition: 'message-ttl': -1 is not a valid message TTL",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"max-length": 1.5}}),
                "invalid policy 'p': definition: 'max-length': 1.5 is not a valid maximum length",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"expires": 0}}),
                "invalid policy 'p': definition: 'expires': 0 is not a valid queue expiry",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"overflow": "drop-tail"}}),
                "invalid policy 'p': definition: 'overflow': \"drop-tail\" is not a valid overflow value",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"dead-letter-exchange": 1}}),
                "invalid policy 'p': definition: 'dead-letter-exchange': 1 is not a valid dead letter exchange name",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"alternate-exchange": "a".repeat(256)}}),
                "is not a valid alternate exchange name (longer than 255 bytes)",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"single-active-consumer": true}}),
                "invalid policy 'p': definition: 'single-active-consumer' is not a policy setting",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {"ha-mode": "all"}}),
                "invalid policy 'p': definition: 'ha-mode' is a RabbitMQ policy setting that Warren does not support",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": {}}),
                "invalid policy 'p': definition: the definition is empty",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definition": [1]}),
                "invalid policy 'p': 'definition' must be a JSON object, got [1]",
            ),
            (
                json!({"name": "p", "pattern": ".*", "apply-to": "topics", "definition": {"max-length": 1}}),
                "invalid policy 'p': apply-to 'topics' unrecognised; should be one of: 'queues', 'classic_queues', 'quorum_queues', 'streams', 'exchanges', or 'all'",
            ),
            (
                json!({"name": "p", "pattern": ".*", "priority": "high", "definition": {"max-length": 1}}),
                "invalid policy 'p': 'priority' must be an integer, got \"high\"",
            ),
            (
                json!({"name": "p", "pattern": 7, "definition": {"max-length": 1}}),
                "invalid policy 'p': 'pattern' must be a string, got 7",
            ),
            (
                json!({"name": "p", "pattern": ".*", "definitions": {"max-length": 1}}),
                "invalid policy 'p': unknown key 'definitions'",
            ),
            (
                json!({"pattern": ".*", "definition": {"max-length": 1}}),
                "invalid policy: 'name' is missing",
            ),
            (
                json!({"name": "", "pattern": ".*", "definition": {"max-length": 1}}),
                "invalid policy: the name is empty",
            ),
        ];
        for (entry, expected) in cases {
            let text = regular(entry.clone()).expect_err(&entry.to_string());
            assert!(
                text.contains(expected),
                "{entry}: got {text:?}, expected {expected:?}"
            );
        }
        let text = policy(
            PolicyKind::Operator,
            json!({"name": "op", "pattern": ".*", "definition": {"dead-letter-exchange": "x"}}),
        )
        .expect_err("operator DLX");
        assert!(
            text.starts_with("invalid operator policy 'op': definition: 'dead-letter-exchange' is not an operator policy setting"),
            "{text}"
        );
    }

    #[test]
    fn an_entry_round_trips_through_export() {
        let entry = json!({
            "vhost": "/", "name": "p", "pattern": "^q\\.", "apply-to": "queues",
            "definition": {"max-length": 5, "overflow": "reject-publish"}, "priority": 7
        });
        let p = regular(entry.clone()).expect("valid");
        assert_eq!(p.to_json(Some("/")), entry);
        assert_eq!(regular(p.to_json(None)).expect("again"), p);
        let defaults = regular(json!({"name": "d", "pattern": "", "definition": {"expires": 9}}))
            .expect("defaults");
        assert_eq!((defaults.apply_to, defaults.priority), (ApplyTo::All, 0));
    }

    #[test]
    fn matching_is_unanchored_and_follows_apply_to() {
        let p = |apply_to: &str| {
            regular(json!({"name": "p", "pattern": "ord", "apply-to": apply_to, "definition": {"max-length": 1}}))
                .expect("valid")
        };
        assert!(p("all").matches_queue("orders", QueueType::Classic));
        assert!(p("all").matches_queue("big.ord.q", QueueType::Quorum));
        assert!(p("all").matches_exchange("orders"));
        assert!(!p("queues").matches_exchange("orders"));
        assert!(!p("exchanges").matches_queue("orders", QueueType::Classic));
        assert!(p("classic_queues").matches_queue("orders", QueueType::Classic));
        assert!(!p("classic_queues").matches_queue("orders", QueueType::Quorum));
        assert!(p("quorum_queues").matches_queue("orders", QueueType::Quorum));
        assert!(!p("streams").matches_queue("orders", QueueType::Classic));
        assert!(!p("all").matches_queue("invoices", QueueType::Classic));
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        assert_eq!(QueueType::of(&quorum), QueueType::Quorum);
        assert_eq!(QueueType::of(&FieldTable::default()), QueueType::Classic);
    }

    #[test]
    fn the_higher_priority_wins_and_ties_go_to_the_first_name() {
        let p = |name: &str, priority: i64| {
            regular(json!({"name": name, "pattern": ".*", "priority": priority, "definition": {"max-length": 1}}))
                .expect("valid")
        };
        assert!(p("b", 2).outranks(&p("a", 1)));
        assert!(!p("a", 1).outranks(&p("b", 2)));
        assert!(p("a", 1).outranks(&p("b", 1)));
        assert!(!p("b", 1).outranks(&p("a", 1)));
        assert!(p("a", -1).outranks(&p("b", -2)));
    }

    fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    /// RabbitMQ's resolution, key by key: policy vs operator policy (`merged`), then the
    /// merged value vs the queue's `x-` argument (`queue_settings`).
    #[test]
    fn the_resolution_table() {
        let regular = definition(
            PolicyKind::Regular,
            json!({
                "message-ttl": 1000, "expires": 60000, "max-length": 100,
                "max-length-bytes": 4096, "overflow": "reject-publish",
                "dead-letter-exchange": "policy-dlx", "dead-letter-routing-key": "policy-rk",
                "delivery-limit": 5, "alternate-exchange": "policy-ae", "consumer-timeout": 9000
            }),
        );
        let operator = definition(
            PolicyKind::Operator,
            json!({
                "message-ttl": 2000, "expires": 30000, "max-length": 50,
                "max-length-bytes": 8192, "overflow": "drop-head", "delivery-limit": 10
            }),
        );
        // Policy vs operator policy: the smaller limit, the operator's overflow, the rest
        // from the regular policy.
        let merged = PolicyDefinition::merged(Some(&regular), Some(&operator));
        assert_eq!(
            merged,
            PolicyDefinition {
                message_ttl_ms: Some(1000),
                expires_ms: Some(30000),
                max_length: Some(50),
                max_length_bytes: Some(4096),
                overflow: Some(Overflow::DropHead),
                delivery_limit: Some(5),
                ..regular.clone()
            }
        );
        assert_eq!(PolicyDefinition::merged(None, Some(&operator)), operator);
        assert_eq!(PolicyDefinition::merged(Some(&regular), None), regular);

        // No arguments: the merged policy values.
        let s = queue_settings(&FieldTable::default(), "q", &merged).expect("settings");
        assert_eq!(s.max_length, Some(50));
        assert_eq!(s.overflow, Overflow::DropHead);
        assert_eq!(
            s.dead_letter_exchange.as_ref().map(|x| x.as_str()),
            Some("policy-dlx")
        );
        assert_eq!(s.consumer_timeout_ms, Some(9000));

        // Arguments: the smaller of argument and policy for limits, the argument for
        // overflow and dead-lettering; priorities and single active consumer stay arguments.
        let a = args(&[
            ("x-message-ttl", AMQPValue::LongInt(500)),
            ("x-expires", AMQPValue::LongInt(90000)),
            ("x-max-length", AMQPValue::LongInt(70)),
            ("x-max-length-bytes", AMQPValue::LongInt(1024)),
            ("x-overflow", long("reject-publish-dlx")),
            ("x-dead-letter-exchange", long("arg-dlx")),
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-consumer-timeout", AMQPValue::LongInt(20000)),
            ("x-max-priority", AMQPValue::LongInt(3)),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ]);
        let s = queue_settings(&a, "q", &merged).expect("settings");
        assert_eq!(
            s,
            QueueSettings {
                message_ttl_ms: Some(500),
                expires_ms: Some(30000),
                max_length: Some(50),
                max_length_bytes: Some(1024),
                overflow: Overflow::RejectPublishDlx,
                dead_letter_exchange: Some("arg-dlx".into()),
                // Resolved on its own: no argument, so the policy's.
                dead_letter_routing_key: Some("policy-rk".into()),
                delivery_limit: Some(2),
                max_priority: Some(3),
                single_active_consumer: true,
                consumer_timeout_ms: Some(9000),
                message_deduplication: false,
                message_group_header: None,
            }
        );

        // The alternate exchange: the argument wins (even one naming nothing).
        let ae = args(&[("alternate-exchange", long("arg-ae"))]);
        assert_eq!(alternate_exchange(&ae, &merged), Some("arg-ae".into()));
        assert_eq!(
            alternate_exchange(&FieldTable::default(), &merged),
            Some("policy-ae".into())
        );
        assert_eq!(alternate_exchange(&FieldTable::default(), &operator), None);
    }
}
