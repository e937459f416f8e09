//! RabbitMQ's definitions JSON — what `rabbitmqctl export_definitions` and the management API's
//! `GET /api/definitions` write, and what `import_definitions` and `load_definitions` read — as
//! plain data. This module only reads and writes the document; it changes no broker state (the
//! importer in `admin` does, and decides what is unsupported).
//!
//! What real exports contain (checked against RabbitMQ 3.10.8, fixture in
//! `tests/fixtures/rabbitmq-definitions.json`, and RabbitMQ's import code):
//! - `users[].tags` is a list in current versions (3.10 writes one) and a comma-separated
//!   string in older ones; both are read, a list is written. `hashing_algorithm` is missing before 3.6.1: RabbitMQ then assumes MD5
//!   for exports of 3.0–3.5 (see [`default_hashing_algorithm`]). A user without a password has
//!   `"password_hash": ""`.
//! - `vhosts[]` carry `description`, `tags` and `default_queue_type` inside `metadata` (3.10
//!   writes nothing else, and `"tags": ""` for a vhost made without tags); management exports
//!   and hand-written files put them at the top of the entry. Both are read; the top wins, as
//!   in RabbitMQ's importer. Both places are written. `limits` is a list of `[name, value]`
//!   pairs there and is ignored by RabbitMQ's importer: the limits that count are the
//!   `vhost-limits` parameter.
//! - Operator policies are not a category of their own: they are `parameters` with component
//!   `operator_policy`, whose `value.definition` is a list of `[key, value]` pairs — which
//!   RabbitMQ's own importer then refuses. [`parse`] turns it into an object.
//! - Internal exchanges, `amq.*` exchanges, the default exchange and exclusive queues are never
//!   exported (bindings from an internal exchange still are).
//!
//! Unknown top-level fields and unknown fields of entries are kept (`extra`) and written back
//! unchanged, so a document passes through Warren without losing what it does not understand;
//! unknown keys inside a vhost's `metadata` are dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::access::password::{HashingAlgorithm, PasswordHash};
use crate::admin::AdminError;

mod read;

/// Fields of an entry that the model does not name, kept as read.
pub type Extra = BTreeMap<String, Value>;

/// Queue/exchange/binding arguments and policy definitions: a JSON object, keys as written.
pub type Table = Map<String, Value>;

/// User and vhost limits (`max-connections`, `max-channels`, `max-queues`); negative is "no
/// limit", as in RabbitMQ.
pub type Limits = BTreeMap<String, i64>;

/// The runtime-parameter component that holds a vhost's limits.
pub const COMPONENT_VHOST_LIMITS: &str = "vhost-limits";
/// The runtime-parameter component that holds operator policies.
pub const COMPONENT_OPERATOR_POLICY: &str = "operator_policy";
/// The one name a `vhost-limits` parameter has.
pub const VHOST_LIMITS_NAME: &str = "limits";

/// A whole definitions document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Definitions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rabbitmq_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_version: Option<String>,
    pub users: Vec<User>,
    pub vhosts: Vec<VHost>,
    pub permissions: Vec<Permission>,
    pub topic_permissions: Vec<TopicPermission>,
    pub parameters: Vec<Parameter>,
    pub global_parameters: Vec<GlobalParameter>,
    pub policies: Vec<Policy>,
    pub queues: Vec<Queue>,
    pub exchanges: Vec<Exchange>,
    pub bindings: Vec<Binding>,
    /// Top-level fields the model does not name.
    #[serde(skip)]
    pub extra: Extra,
}

const TOP_LEVEL_FIELDS: &[&str] = &[
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// base64 of salt ‖ digest; empty for a user who cannot log in with a password.
    pub password_hash: String,
    /// RabbitMQ's module name; missing in exports older than 3.6.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing_algorithm: Option<String>,
    #[serde(default, deserialize_with = "read::tags")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "read::limits")]
    pub limits: Limits,
    #[serde(skip)]
    pub extra: Extra,
}

impl User {
    /// The user's password hash, `None` for a passwordless user. `version` is the document's
    /// ([`Definitions::version`]): it decides the algorithm when the entry names none.
    pub fn password(&self, version: Option<&str>) -> Result<Option<PasswordHash>, String> {
        if self.password_hash.is_empty() {
            return Ok(None);
        }
        let algorithm = match &self.hashing_algorithm {
            Some(name) => name.as_str(),
            None => default_hashing_algorithm(version).name(),
        };
        PasswordHash::parse(&self.password_hash, algorithm).map(Some)
    }
}

/// The algorithm RabbitMQ assumes for a user entry without `hashing_algorithm`: MD5 for
/// exports of 3.0–3.5, SHA-256 otherwise (3.6.0's, and RabbitMQ's and Warren's default).
pub fn default_hashing_algorithm(version: Option<&str>) -> HashingAlgorithm {
    match version {
        Some(v)
            if ["3.0.", "3.1.", "3.2.", "3.3.", "3.4.", "3.5."]
                .iter()
                .any(|p| v.starts_with(p)) =>
        {
            HashingAlgorithm::Md5
        }
        _ => HashingAlgorithm::Sha256,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "VHostRepr", into = "VHostRepr")]
pub struct VHost {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// `classic`, `quorum` or `stream`; `None` leaves the broker's default.
    pub default_queue_type: Option<String>,
    pub tracing: Option<bool>,
    /// As exported; informational (RabbitMQ's importer reads the `vhost-limits` parameter).
    pub limits: Limits,
    pub extra: Extra,
}

/// A vhost entry as written: the fields may sit at the top or in `metadata`.
#[derive(Serialize, Deserialize)]
struct VHostRepr {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(
        default,
        deserialize_with = "read::optional_tags",
        skip_serializing_if = "Option::is_none"
    )]
    tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_queue_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<VHostMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracing: Option<bool>,
    #[serde(default, deserialize_with = "read::limits")]
    limits: Limits,
}

#[derive(Default, Serialize, Deserialize)]
struct VHostMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(
        default,
        deserialize_with = "read::optional_tags",
        skip_serializing_if = "Option::is_none"
    )]
    tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_queue_type: Option<String>,
}

impl From<VHostRepr> for VHost {
    fn from(r: VHostRepr) -> Self {
        let m = r.metadata.unwrap_or_default();
        VHost {
            name: r.name,
            description: r.description.or(m.description).unwrap_or_default(),
            tags: r.tags.or(m.tags).unwrap_or_default(),
            default_queue_type: r.default_queue_type.or(m.default_queue_type),
            tracing: r.tracing,
            limits: r.limits,
            extra: Extra::new(),
        }
    }
}

impl From<VHost> for VHostRepr {
    fn from(v: VHost) -> Self {
        VHostRepr {
            name: v.name,
            description: Some(v.description.clone()),
            tags: Some(v.tags.clone()),
            default_queue_type: v.default_queue_type.clone(),
            metadata: Some(VHostMetadata {
                description: Some(v.description),
                tags: Some(v.tags),
                default_queue_type: v.default_queue_type,
            }),
            tracing: v.tracing,
            limits: v.limits,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
    #[serde(skip)]
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicPermission {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
    #[serde(skip)]
    pub extra: Extra,
}

/// A vhost-scoped runtime parameter. Warren understands [`COMPONENT_VHOST_LIMITS`] and
/// [`COMPONENT_OPERATOR_POLICY`]; the rest (shovel, federation-upstream, ...) is kept as raw
/// JSON for the importer to report as unsupported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    pub vhost: String,
    pub component: String,
    pub name: String,
    pub value: Value,
    #[serde(skip)]
    pub extra: Extra,
}

impl Parameter {
    /// The vhost-limits parameter as RabbitMQ writes it.
    pub fn vhost_limits(vhost: &str, limits: &Limits) -> Parameter {
        Parameter {
            vhost: vhost.to_owned(),
            component: COMPONENT_VHOST_LIMITS.to_owned(),
            name: VHOST_LIMITS_NAME.to_owned(),
            value: serde_json::to_value(limits).unwrap_or_default(),
            extra: Extra::new(),
        }
    }

    /// An operator policy as RabbitMQ writes it: a parameter whose value holds the policy
    /// (its definition as an object, which RabbitMQ's importer also takes).
    pub fn operator_policy(policy: &Policy) -> Parameter {
        let mut value = Map::new();
        value.insert("pattern".into(), policy.pattern.clone().into());
        value.insert("apply-to".into(), policy.apply_to.as_str().into());
        value.insert("priority".into(), policy.priority.into());
        value.insert(
            "definition".into(),
            Value::Object(policy.definition.clone()),
        );
        Parameter {
            vhost: policy.vhost.clone(),
            component: COMPONENT_OPERATOR_POLICY.to_owned(),
            name: policy.name.clone(),
            value: Value::Object(value),
            extra: Extra::new(),
        }
    }

    /// The limits of a `vhost-limits` parameter.
    pub fn as_vhost_limits(&self) -> Result<Limits, String> {
        read::limits(&self.value).map_err(|e| e.to_string())
    }

    /// The policy of an `operator_policy` parameter (its definition may be an object or
    /// RabbitMQ's list of pairs).
    pub fn as_operator_policy(&self) -> Result<Policy, String> {
        #[derive(Deserialize)]
        struct OperatorPolicyValue {
            pattern: String,
            #[serde(rename = "apply-to", default)]
            apply_to: ApplyTo,
            #[serde(default)]
            priority: i64,
            #[serde(deserialize_with = "read::table")]
            definition: Table,
        }
        let v = serde_path_to_error::deserialize::<_, OperatorPolicyValue>(&self.value)
            .map_err(|e| read::at_path(e.path(), e.inner()))?;
        Ok(Policy {
            vhost: self.vhost.clone(),
            name: self.name.clone(),
            pattern: v.pattern,
            apply_to: v.apply_to,
            priority: v.priority,
            definition: v.definition,
            extra: Extra::new(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalParameter {
    pub name: String,
    pub value: Value,
    #[serde(skip)]
    pub extra: Extra,
}

/// What a policy applies to: the policy module's type (`classic_queues`, `quorum_queues` and
/// `streams` are 3.12's).
pub use crate::policy::ApplyTo;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default)]
    pub apply_to: ApplyTo,
    #[serde(default)]
    pub priority: i64,
    /// Keys as RabbitMQ names them (`message-ttl`, `max-length`, ...), values untyped.
    #[serde(deserialize_with = "read::table")]
    pub definition: Table,
    #[serde(skip)]
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub name: String,
    pub vhost: String,
    #[serde(default = "read::yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default, deserialize_with = "read::table")]
    pub arguments: Table,
    /// `classic`, `quorum` or `stream` (3.9+; older exports only have `x-queue-type`, if any).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub queue_type: Option<String>,
    #[serde(skip)]
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub name: String,
    pub vhost: String,
    #[serde(rename = "type")]
    pub exchange_type: String,
    #[serde(default = "read::yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// Written by the management API; `rabbitmqctl` leaves it out (it skips internal ones).
    #[serde(default)]
    pub internal: bool,
    #[serde(default, deserialize_with = "read::table")]
    pub arguments: Table,
    #[serde(skip)]
    pub extra: Extra,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationType {
    Queue,
    Exchange,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub source: String,
    pub vhost: String,
    pub destination: String,
    pub destination_type: DestinationType,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default, deserialize_with = "read::table")]
    pub arguments: Table,
    #[serde(skip)]
    pub extra: Extra,
}

impl Definitions {
    /// The RabbitMQ version that wrote the document (`rabbitmq_version`, else the older
    /// `rabbit_version`), which decides defaults such as a user's hashing algorithm.
    pub fn version(&self) -> Option<&str> {
        self.rabbitmq_version
            .as_deref()
            .or(self.rabbit_version.as_deref())
    }

    /// The operator policies, read from their `operator_policy` parameters.
    pub fn operator_policies(&self) -> Result<Vec<Policy>, AdminError> {
        self.parameters_of(COMPONENT_OPERATOR_POLICY, Parameter::as_operator_policy)
    }

    /// Each vhost's limits, read from its `vhost-limits` parameter.
    pub fn vhost_limits(&self) -> Result<Vec<(String, Limits)>, AdminError> {
        self.parameters_of(COMPONENT_VHOST_LIMITS, |p| {
            p.as_vhost_limits().map(|l| (p.vhost.clone(), l))
        })
    }

    /// Parameters of components Warren does not implement (shovels, federation, ...).
    pub fn unsupported_parameters(&self) -> impl Iterator<Item = &Parameter> {
        self.parameters.iter().filter(|p| {
            p.component != COMPONENT_VHOST_LIMITS && p.component != COMPONENT_OPERATOR_POLICY
        })
    }

    fn parameters_of<T>(
        &self,
        component: &str,
        read: impl Fn(&Parameter) -> Result<T, String>,
    ) -> Result<Vec<T>, AdminError> {
        self.parameters
            .iter()
            .enumerate()
            .filter(|(_, p)| p.component == component)
            .map(|(i, p)| {
                read(p).map_err(|e| {
                    AdminError::bad_request(format!(
                        "parameters[{i}] (\"{}\" in vhost \"{}\"): {e}",
                        p.name, p.vhost
                    ))
                })
            })
            .collect()
    }
}

/// Reads a definitions document. The error names the entry: `users[2] ("bob"): missing field
/// `password_hash``, `queues[0] ("q" in vhost "/").durable: invalid type: ...`, or the line and
/// column of malformed JSON.
pub fn parse(text: &str) -> Result<Definitions, AdminError> {
    let raw: Value = serde_json::from_str(text)
        .map_err(|e| AdminError::bad_request(format!("definitions are not valid JSON: {e}")))?;
    if !raw.is_object() {
        // serde would take a list as the struct's fields in order.
        return Err(AdminError::bad_request(
            "definitions: expected a JSON object".to_owned(),
        ));
    }
    let mut defs: Definitions = serde_path_to_error::deserialize(&raw)
        .map_err(|e| AdminError::bad_request(read::describe_error(&raw, e.path(), e.inner())))?;
    defs.collect_extras(&raw);
    for p in &mut defs.parameters {
        if p.component == COMPONENT_OPERATOR_POLICY {
            p.value = operator_policy_definition_as_object(std::mem::take(&mut p.value));
        }
    }
    Ok(defs)
}

/// Writes a definitions document (pretty-printed) that RabbitMQ's `import_definitions` reads.
pub fn to_json(defs: &Definitions) -> String {
    // Both cannot fail: every map in the model has string keys.
    let mut value = serde_json::to_value(defs).unwrap_or_default();
    defs.merge_extras(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

// ---- unknown fields -------------------------------------------------------------------------

/// An entry type: its JSON field names and its kept unknown fields.
trait Entry {
    const FIELDS: &'static [&'static str];
    fn extra(&self) -> &Extra;
    fn extra_mut(&mut self) -> &mut Extra;
}

macro_rules! entry {
    ($t:ty, [$($f:literal),*]) => {
        impl Entry for $t {
            const FIELDS: &'static [&'static str] = &[$($f),*];
            fn extra(&self) -> &Extra { &self.extra }
            fn extra_mut(&mut self) -> &mut Extra { &mut self.extra }
        }
    };
}

entry!(
    User,
    [
        "name",
        "password_hash",
        "hashing_algorithm",
        "tags",
        "limits"
    ]
);
entry!(
    VHost,
    [
        "name",
        "description",
        "tags",
        "default_queue_type",
        "metadata",
        "tracing",
        "limits"
    ]
);
entry!(Permission, ["user", "vhost", "configure", "write", "read"]);
entry!(
    TopicPermission,
    ["user", "vhost", "exchange", "write", "read"]
);
entry!(Parameter, ["vhost", "component", "name", "value"]);
entry!(GlobalParameter, ["name", "value"]);
entry!(
    Policy,
    [
        "vhost",
        "name",
        "pattern",
        "apply-to",
        "priority",
        "definition"
    ]
);
entry!(
    Queue,
    [
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "arguments",
        "type"
    ]
);
entry!(
    Exchange,
    [
        "name",
        "vhost",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments"
    ]
);
entry!(
    Binding,
    [
        "source",
        "vhost",
        "destination",
        "destination_type",
        "routing_key",
        "arguments"
    ]
);

impl Definitions {
    /// Fills each entry's `extra` from the document it was read from.
    fn collect_extras(&mut self, raw: &Value) {
        fn one<T: Entry>(category: &str, entries: &mut [T], raw: &Value) {
            let Some(Value::Array(items)) = raw.get(category) else {
                return;
            };
            for (entry, item) in entries.iter_mut().zip(items) {
                if let Value::Object(map) = item {
                    *entry.extra_mut() = unknown_fields(map, T::FIELDS);
                }
            }
        }
        if let Value::Object(top) = raw {
            self.extra = unknown_fields(top, TOP_LEVEL_FIELDS);
        }
        one("users", &mut self.users, raw);
        one("vhosts", &mut self.vhosts, raw);
        one("permissions", &mut self.permissions, raw);
        one("topic_permissions", &mut self.topic_permissions, raw);
        one("parameters", &mut self.parameters, raw);
        one("global_parameters", &mut self.global_parameters, raw);
        one("policies", &mut self.policies, raw);
        one("queues", &mut self.queues, raw);
        one("exchanges", &mut self.exchanges, raw);
        one("bindings", &mut self.bindings, raw);
    }

    /// Adds each entry's `extra` to the document written from it (named fields win).
    fn merge_extras(&self, out: &mut Value) {
        fn add(extra: &Extra, out: &mut Value) {
            if let Value::Object(map) = out {
                for (k, v) in extra {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        fn one<T: Entry>(category: &str, entries: &[T], out: &mut Value) {
            if let Some(Value::Array(items)) = out.get_mut(category) {
                for (entry, item) in entries.iter().zip(items) {
                    add(entry.extra(), item);
                }
            }
        }
        add(&self.extra, out);
        one("users", &self.users, out);
        one("vhosts", &self.vhosts, out);
        one("permissions", &self.permissions, out);
        one("topic_permissions", &self.topic_permissions, out);
        one("parameters", &self.parameters, out);
        one("global_parameters", &self.global_parameters, out);
        one("policies", &self.policies, out);
        one("queues", &self.queues, out);
        one("exchanges", &self.exchanges, out);
        one("bindings", &self.bindings, out);
    }
}

/// RabbitMQ (3.10) exports an operator policy's definition as a list of `[key, value]` pairs
/// and then refuses that list on import ("definition must be a dictionary"), so its own export
/// does not load. Turning the pairs into an object at read time makes Warren's exports load;
/// a definition that is neither is left for `as_operator_policy` to report.
fn operator_policy_definition_as_object(mut value: Value) -> Value {
    if let Some(definition) = value.get_mut("definition") {
        if let Ok(pairs) = serde_json::from_value::<Vec<(String, Value)>>(definition.clone()) {
            *definition = Value::Object(pairs.into_iter().collect());
        }
    }
    value
}

fn unknown_fields(map: &Map<String, Value>, known: &[&str]) -> Extra {
    map.iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
