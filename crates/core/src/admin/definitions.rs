//! Definitions import and export in RabbitMQ's JSON format (`definitions_json`): users,
//! vhosts, permissions, topic permissions, vhost limits, policies, operator policies,
//! queues, exchanges and bindings.
//!
//! An import is all or nothing as far as validation goes: every entry is checked against the
//! state it will produce (names, hashes, regular expressions, policy keys, arguments, that a
//! binding's ends exist) before anything changes, and the first bad entry is the error, named
//! as `users[2] ("bob"): ...`. The access part (users, vhosts, permissions, limits) is then
//! written as one record, so it replays whole or not at all; exchanges, queues, bindings and
//! policies follow through the same operations clients use. What exists already is left as
//! it is (an import is idempotent, as RabbitMQ's `load_definitions`); runtime parameters of
//! components Warren does not have (shovels, federation) are skipped with a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map, Number, Value};
use warren_protocol::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use super::{check_name, AdminError};
use crate::access::{
    AccessState, Permission, TopicPermission, User, UserLimits, VHostInfo, VHostLimits,
};
use crate::broker::Broker;
use crate::definitions_json::{self as json, Definitions};
use crate::durable::access::AccessOp;
use crate::exchange::{ExchangeDef, ExchangeKind};
use crate::queue::settings::QueueSettings;
use crate::queue::QueueDef;
use crate::routing::{Binding, Destination};
use crate::vhost::VHost;

/// The RabbitMQ version whose export format Warren writes.
pub const EXPORT_RABBITMQ_VERSION: &str = "3.13.0";

/// What an import did besides succeeding.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Entries skipped, each with why (unsupported runtime parameters and the like).
    pub skipped: Vec<String>,
}

fn limit(map: &json::Limits, key: &str) -> Option<u64> {
    map.get(key).and_then(|v| u64::try_from(*v).ok())
}

fn limits_map(pairs: &[(&str, Option<u64>)]) -> json::Limits {
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v as i64)))
        .collect()
}

const USER_LIMIT_KEYS: &[&str] = &["max-connections", "max-channels"];
const VHOST_LIMIT_KEYS: &[&str] = &["max-connections", "max-queues"];

fn check_limit_keys(map: &json::Limits, known: &[&str], what: &str) -> Result<(), String> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown {what} limit '{k}' (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// A JSON argument value as an AMQP field value (as RabbitMQ's importer converts them).
pub fn json_to_amqp(value: &Value) -> Result<AMQPValue, String> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            _ => return Err(format!("number {n} is out of range")),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(json_to_amqp)
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(map) => AMQPValue::FieldTable(json_to_table(map)?),
    })
}

pub fn json_to_table(map: &Map<String, Value>) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (k, v) in map {
        let key = ShortString::try_new(k.as_str())
            .map_err(|_| format!("key '{k}' is longer than 255 bytes"))?;
        table.insert(key, json_to_amqp(v).map_err(|e| format!("'{k}': {e}"))?);
    }
    Ok(table)
}

/// An AMQP field value as JSON (for export).
pub fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AMQPValue::Double(f) => Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::DecimalValue(d) => {
            Number::from_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
        other => match (crate::args::as_i64(other), crate::args::as_str(other)) {
            (Some(i), _) => Value::from(i),
            (None, Some(s)) => Value::String(s),
            _ => Value::Null,
        },
    }
}

pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
        .collect()
}

fn entry<T>(
    list: &str,
    index: usize,
    name: &str,
    vhost: Option<&str>,
    r: Result<T, String>,
) -> Result<T, AdminError> {
    r.map_err(|e| {
        let vhost = vhost
            .map(|v| format!(" in vhost \"{v}\""))
            .unwrap_or_default();
        AdminError::bad_request(format!("{list}[{index}] (\"{name}\"{vhost}): {e}"))
    })
}

/// Everything an import will do, validated.
struct Plan {
    access_ops: Vec<AccessOp>,
    /// Vhosts that do not exist yet, with their limits.
    new_vhosts: Vec<VHostInfo>,
    limits: Vec<(String, VHostLimits)>,
    exchanges: Vec<(String, ExchangeDef)>,
    queues: Vec<(String, QueueDef)>,
    bindings: Vec<(String, String, Binding)>,
    policies: Vec<(String, crate::policy::Policy)>,
}

impl Broker {
    /// Imports a definitions document (RabbitMQ's JSON): validated whole first, then applied.
    pub async fn import_definitions(&self, defs: &Definitions) -> Result<ImportReport, AdminError> {
        let mut report = ImportReport::default();
        let plan = {
            let _admin = self.admin_lock();
            let plan = self.plan_import(defs, &mut report)?;
            if !plan.access_ops.is_empty() {
                self.commit_access(plan.access_ops.clone())?;
            }
            for info in &plan.new_vhosts {
                self.attach_vhost(info);
            }
            for (name, limits) in &plan.limits {
                if let Some(v) = self.vhost(name) {
                    v.set_limits(*limits);
                }
            }
            plan
        };
        for (vhost, policy) in plan.policies {
            self.vhost_or_404(&vhost)?.set_policy(policy)?;
        }
        for (vhost, def) in plan.exchanges {
            self.vhost_or_404(&vhost)?.declare_exchange(def, false)?;
        }
        for (vhost, def) in plan.queues {
            self.vhost_or_404(&vhost)?.declare_queue(def, false)?;
        }
        for (vhost, source, b) in plan.bindings {
            self.vhost_or_404(&vhost)?.bind(
                &source,
                b.destination,
                b.routing_key,
                b.arguments,
                0,
            )?;
        }
        for skipped in &report.skipped {
            tracing::warn!(entry = %skipped, "definitions import skipped an entry");
        }
        Ok(report)
    }

    fn vhost_or_404(&self, name: &str) -> Result<Arc<VHost>, AdminError> {
        self.vhost(name)
            .ok_or_else(|| AdminError::not_found(format!("vhost '{name}'")))
    }

    fn plan_import(
        &self,
        defs: &Definitions,
        report: &mut ImportReport,
    ) -> Result<Plan, AdminError> {
        let mut state: AccessState = (**self.access()).clone();
        let mut ops = Vec::new();
        let version = defs.version();
        let mut apply = |op: AccessOp, state: &mut AccessState| -> Result<(), String> {
            op.clone().apply(state)?;
            ops.push(op);
            Ok(())
        };
        for (i, u) in defs.users.iter().enumerate() {
            let r = (|| {
                check_name(&u.name, "user").map_err(|e| e.text().to_owned())?;
                check_limit_keys(&u.limits, USER_LIMIT_KEYS, "user")?;
                let user = User {
                    name: u.name.clone(),
                    password: u.password(version)?,
                    tags: u.tags.clone(),
                    limits: UserLimits {
                        max_connections: limit(&u.limits, "max-connections"),
                        max_channels: limit(&u.limits, "max-channels"),
                    },
                };
                apply(AccessOp::user_put(&user), &mut state)
            })();
            entry("users", i, &u.name, None, r)?;
        }
        let mut new_vhosts = Vec::new();
        for (i, v) in defs.vhosts.iter().enumerate() {
            let r = (|| {
                check_name(&v.name, "vhost").map_err(|e| e.text().to_owned())?;
                let limits = state
                    .vhosts
                    .get(&v.name)
                    .map(|o| o.limits)
                    .unwrap_or_default();
                let info = VHostInfo {
                    name: v.name.clone(),
                    description: v.description.clone(),
                    tags: v.tags.clone(),
                    default_queue_type: v.default_queue_type.clone(),
                    limits,
                };
                if self.vhost(&v.name).is_none() {
                    new_vhosts.push(info.clone());
                }
                apply(AccessOp::vhost_put(&info), &mut state)
            })();
            entry("vhosts", i, &v.name, None, r)?;
        }
        let mut limits = Vec::new();
        for (i, p) in defs.parameters.iter().enumerate() {
            if p.component != json::COMPONENT_VHOST_LIMITS {
                if p.component != json::COMPONENT_OPERATOR_POLICY {
                    report.skipped.push(format!(
                        "parameters[{i}] (\"{}\" in vhost \"{}\"): component '{}' is not supported",
                        p.name, p.vhost, p.component
                    ));
                }
                continue;
            }
            let r = (|| {
                let map = p.as_vhost_limits()?;
                check_limit_keys(&map, VHOST_LIMIT_KEYS, "vhost")?;
                let mut info = state
                    .vhosts
                    .get(&p.vhost)
                    .cloned()
                    .ok_or_else(|| format!("no vhost '{}'", p.vhost))?;
                info.limits = VHostLimits {
                    max_connections: limit(&map, "max-connections"),
                    max_queues: limit(&map, "max-queues"),
                };
                limits.push((p.vhost.clone(), info.limits));
                apply(AccessOp::vhost_put(&info), &mut state)
            })();
            entry("parameters", i, &p.name, Some(&p.vhost), r)?;
        }
        for (i, p) in defs.permissions.iter().enumerate() {
            let r = (|| {
                known(&state, &p.user, &p.vhost)?;
                Permission::new(&p.configure, &p.write, &p.read)
                    .map_err(|e| e.text().to_owned())?;
                apply(
                    AccessOp::PermissionSet {
                        user: p.user.clone(),
                        vhost: p.vhost.clone(),
                        configure: p.configure.clone(),
                        write: p.write.clone(),
                        read: p.read.clone(),
                    },
                    &mut state,
                )
            })();
            entry("permissions", i, &p.user, Some(&p.vhost), r)?;
        }
        for (i, p) in defs.topic_permissions.iter().enumerate() {
            let r = (|| {
                known(&state, &p.user, &p.vhost)?;
                TopicPermission::new(&p.exchange, &p.write, &p.read)
                    .map_err(|e| e.text().to_owned())?;
                apply(
                    AccessOp::TopicPermissionSet {
                        user: p.user.clone(),
                        vhost: p.vhost.clone(),
                        exchange: p.exchange.clone(),
                        write: p.write.clone(),
                        read: p.read.clone(),
                    },
                    &mut state,
                )
            })();
            entry("topic_permissions", i, &p.user, Some(&p.vhost), r)?;
        }
        let policies = self.plan_policies(defs, &state)?;
        let (exchanges, queues, bindings) = self.plan_entities(defs, &state, report)?;
        Ok(Plan {
            access_ops: ops,
            new_vhosts,
            limits,
            exchanges,
            queues,
            bindings,
            policies,
        })
    }

    fn plan_policies(
        &self,
        defs: &Definitions,
        state: &AccessState,
    ) -> Result<Vec<(String, crate::policy::Policy)>, AdminError> {
        use crate::policy::{Policy, PolicyKind};
        let mut out = Vec::new();
        let operator = defs.operator_policies()?;
        for (list, kind, policies) in [
            ("policies", PolicyKind::Regular, &defs.policies),
            ("operator_policies", PolicyKind::Operator, &operator),
        ] {
            for (i, p) in policies.iter().enumerate() {
                let r = (|| {
                    if !state.vhosts.contains_key(&p.vhost) {
                        return Err(format!("no vhost '{}'", p.vhost));
                    }
                    let value = serde_json::to_value(p).map_err(|e| e.to_string())?;
                    Policy::from_json(kind, &value).map_err(|e| e.text().to_owned())
                })();
                let policy = entry(list, i, &p.name, Some(&p.vhost), r)?;
                out.push((p.vhost.clone(), policy));
            }
        }
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    fn plan_entities(
        &self,
        defs: &Definitions,
        state: &AccessState,
        report: &mut ImportReport,
    ) -> Result<
        (
            Vec<(String, ExchangeDef)>,
            Vec<(String, QueueDef)>,
            Vec<(String, String, Binding)>,
        ),
        AdminError,
    > {
        let vhost_exists = |v: &str| -> Result<(), String> {
            match state.vhosts.contains_key(v) {
                true => Ok(()),
                false => Err(format!("no vhost '{v}'")),
            }
        };
        // What will exist after the import, per vhost: to check bindings' ends.
        let mut exchanges_after: BTreeSet<(String, String)> = BTreeSet::new();
        let mut queues_after: BTreeSet<(String, String)> = BTreeSet::new();
        for (name, vhost) in self.vhost_handles().iter() {
            let (xs, qs, _) = vhost.exportable();
            exchanges_after.extend(xs.into_iter().map(|x| (name.clone(), x.name.to_string())));
            exchanges_after.extend(
                crate::exchange::STANDARD_EXCHANGES
                    .iter()
                    .map(|(x, _)| (name.clone(), (*x).to_owned())),
            );
            queues_after.extend(qs.into_iter().map(|q| (name.clone(), q.name.to_string())));
        }
        let mut exchanges = Vec::new();
        for (i, x) in defs.exchanges.iter().enumerate() {
            if x.name.is_empty() || x.name.starts_with("amq.") {
                report.skipped.push(format!(
                    "exchanges[{i}] (\"{}\" in vhost \"{}\"): predeclared",
                    x.name, x.vhost
                ));
                continue;
            }
            let r = (|| {
                vhost_exists(&x.vhost)?;
                let name = ShortString::try_new(x.name.as_str())
                    .map_err(|_| "name longer than 255 bytes".to_owned())?;
                let kind = ExchangeKind::parse(&x.exchange_type).map_err(|e| e.text)?;
                let arguments = json_to_table(&x.arguments)?;
                Ok(ExchangeDef {
                    name,
                    kind,
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments,
                })
            })();
            let def = entry("exchanges", i, &x.name, Some(&x.vhost), r)?;
            exchanges_after.insert((x.vhost.clone(), x.name.clone()));
            exchanges.push((x.vhost.clone(), def));
        }
        let mut queues = Vec::new();
        for (i, q) in defs.queues.iter().enumerate() {
            let r = (|| {
                vhost_exists(&q.vhost)?;
                if q.name.starts_with("amq.") {
                    return Err("queue names starting with 'amq.' are reserved".to_owned());
                }
                let name = ShortString::try_new(q.name.as_str())
                    .map_err(|_| "name longer than 255 bytes".to_owned())?;
                let mut arguments = json_to_table(&q.arguments)?;
                if let Some(t) = &q.queue_type {
                    if !arguments.inner().contains_key("x-queue-type") {
                        arguments.insert(
                            "x-queue-type".into(),
                            json_to_amqp(&Value::String(t.clone()))?,
                        );
                    }
                }
                QueueSettings::from_arguments(
                    &arguments,
                    &format!("queue '{}' in vhost '{}'", q.name, q.vhost),
                )
                .map_err(|e| e.text)?;
                Ok(QueueDef {
                    name,
                    durable: q.durable,
                    exclusive_owner: None,
                    auto_delete: q.auto_delete,
                    arguments,
                })
            })();
            let def = entry("queues", i, &q.name, Some(&q.vhost), r)?;
            // One that exists (or came earlier in the document) is left as it is.
            if queues_after.insert((q.vhost.clone(), q.name.clone())) {
                queues.push((q.vhost.clone(), def));
            }
        }
        let mut bindings = Vec::new();
        for (i, b) in defs.bindings.iter().enumerate() {
            let r = (|| {
                vhost_exists(&b.vhost)?;
                if b.source.is_empty() {
                    return Err("bindings from the default exchange are implicit".to_owned());
                }
                if !exchanges_after.contains(&(b.vhost.clone(), b.source.clone())) {
                    // RabbitMQ never exports internal exchanges but does export their
                    // bindings: such a binding is reported and skipped, not an error.
                    return Ok(None);
                }
                let destination = ShortString::try_new(b.destination.as_str())
                    .map_err(|_| "destination longer than 255 bytes".to_owned())?;
                let destination = match b.destination_type {
                    json::DestinationType::Queue => {
                        if !queues_after.contains(&(b.vhost.clone(), b.destination.clone())) {
                            return Err(format!(
                                "destination queue '{}' does not exist",
                                b.destination
                            ));
                        }
                        Destination::Queue(destination)
                    }
                    json::DestinationType::Exchange => {
                        if !exchanges_after.contains(&(b.vhost.clone(), b.destination.clone())) {
                            return Err(format!(
                                "destination exchange '{}' does not exist",
                                b.destination
                            ));
                        }
                        Destination::Exchange(destination)
                    }
                };
                let routing_key = ShortString::try_new(b.routing_key.as_str())
                    .map_err(|_| "routing key longer than 255 bytes".to_owned())?;
                let arguments = json_to_table(&b.arguments)?;
                // A content filter is checked here, so a bad policy fails the whole import
                // instead of the bind after the exchanges and queues were declared.
                if crate::exchange::filter::is_filter_binding(&arguments) {
                    crate::exchange::filter::Filter::from_binding_args(&arguments)
                        .map_err(|error| error.to_string())?;
                }
                Ok(Some(Binding {
                    destination,
                    routing_key,
                    arguments,
                }))
            })();
            match entry("bindings", i, &b.source, Some(&b.vhost), r)? {
                Some(binding) => bindings.push((b.vhost.clone(), b.source.clone(), binding)),
                None => report.skipped.push(format!(
                    "bindings[{i}] (\"{}\" in vhost \"{}\"): source exchange '{}' does not exist (RabbitMQ does not export internal exchanges)",
                    b.source, b.vhost, b.source
                )),
            }
        }
        Ok((exchanges, queues, bindings))
    }

    /// Everything as a RabbitMQ definitions document.
    pub fn export_definitions(&self) -> Definitions {
        let access = self.access();
        let mut defs = Definitions {
            rabbit_version: Some(EXPORT_RABBITMQ_VERSION.into()),
            rabbitmq_version: Some(EXPORT_RABBITMQ_VERSION.into()),
            product_name: Some("Warren".into()),
            product_version: Some(env!("CARGO_PKG_VERSION").into()),
            ..Default::default()
        };
        for u in access.users.values() {
            defs.users.push(json::User {
                name: u.name.clone(),
                password_hash: u
                    .password
                    .as_ref()
                    .map(|p| p.to_base64())
                    .unwrap_or_default(),
                hashing_algorithm: Some(
                    u.password
                        .as_ref()
                        .map(|p| p.algorithm())
                        .unwrap_or(crate::access::password::HashingAlgorithm::Sha256)
                        .name()
                        .into(),
                ),
                tags: u.tags.clone(),
                limits: limits_map(&[
                    ("max-connections", u.limits.max_connections),
                    ("max-channels", u.limits.max_channels),
                ]),
                extra: Default::default(),
            });
        }
        for v in access.vhosts.values() {
            defs.vhosts.push(json::VHost {
                name: v.name.clone(),
                description: v.description.clone(),
                tags: v.tags.clone(),
                default_queue_type: v.default_queue_type.clone(),
                ..Default::default()
            });
            let limits = limits_map(&[
                ("max-connections", v.limits.max_connections),
                ("max-queues", v.limits.max_queues),
            ]);
            if !limits.is_empty() {
                defs.parameters
                    .push(json::Parameter::vhost_limits(&v.name, &limits));
            }
        }
        for ((user, vhost), p) in &access.permissions {
            defs.permissions.push(json::Permission {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: p.configure.source().into(),
                write: p.write.source().into(),
                read: p.read.source().into(),
                extra: Default::default(),
            });
        }
        for ((user, vhost, exchange), p) in &access.topic_permissions {
            defs.topic_permissions.push(json::TopicPermission {
                user: user.clone(),
                vhost: vhost.clone(),
                exchange: exchange.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
                extra: Default::default(),
            });
        }
        let vhosts = self.vhost_handles();
        let names: BTreeMap<&String, &Arc<VHost>> = vhosts.iter().collect();
        for (name, vhost) in names {
            self.export_vhost(name, vhost, &mut defs);
        }
        defs
    }

    fn export_vhost(&self, name: &str, vhost: &VHost, defs: &mut Definitions) {
        use crate::policy::PolicyKind;
        for kind in [PolicyKind::Regular, PolicyKind::Operator] {
            for p in vhost.policies(kind) {
                let Ok(model) = serde_json::from_value::<json::Policy>(p.to_json(Some(name)))
                else {
                    continue;
                };
                match kind {
                    PolicyKind::Regular => defs.policies.push(model),
                    PolicyKind::Operator => defs
                        .parameters
                        .push(json::Parameter::operator_policy(&model)),
                }
            }
        }
        let (exchanges, queues, bindings) = vhost.exportable();
        for x in exchanges {
            defs.exchanges.push(json::Exchange {
                name: x.name.to_string(),
                vhost: name.into(),
                exchange_type: x.kind.as_str().into(),
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: table_to_json(&x.arguments),
                extra: Default::default(),
            });
        }
        for q in queues {
            defs.queues.push(json::Queue {
                name: q.name.to_string(),
                vhost: name.into(),
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments: table_to_json(&q.arguments),
                queue_type: Some("classic".into()),
                extra: Default::default(),
            });
        }
        for (source, b) in bindings {
            let (destination_type, destination) = match &b.destination {
                Destination::Queue(q) => (json::DestinationType::Queue, q.to_string()),
                Destination::Exchange(x) => (json::DestinationType::Exchange, x.to_string()),
            };
            defs.bindings.push(json::Binding {
                source: source.to_string(),
                vhost: name.into(),
                destination,
                destination_type,
                routing_key: b.routing_key.to_string(),
                arguments: table_to_json(&b.arguments),
                extra: Default::default(),
            });
        }
    }

    /// Creates the in-memory vhost for a vhost already committed to the access state.
    pub(crate) fn attach_vhost(&self, info: &VHostInfo) {
        if self.vhost(&info.name).is_some() {
            return;
        }
        let vhost = VHost::new(
            &info.name,
            self.queue_defaults.clone(),
            self.persistence.clone(),
        );
        vhost.set_limits(info.limits);
        self.vhosts.rcu(|map| {
            let mut map = (**map).clone();
            map.insert(info.name.clone(), vhost.clone());
            map
        });
    }
}

fn known(state: &AccessState, user: &str, vhost: &str) -> Result<(), String> {
    if !state.users.contains_key(user) {
        return Err(format!("no user '{user}'"));
    }
    if !state.vhosts.contains_key(vhost) {
        return Err(format!("no vhost '{vhost}'"));
    }
    Ok(())
}
