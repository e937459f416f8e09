//! A vhost's policies and operator policies, and how they reach its queues and exchanges.
//!
//! Policies live in the vhost's `Definitions`, under the same lock as the queues and
//! exchanges they apply to, so a declare and a policy change never miss each other. Each
//! queue and exchange entry remembers the policies that apply to it; a policy change
//! re-resolves the entries it applied to or now matches (one pattern match for the others):
//! a queue whose settings changed gets them in a `QueueCommand::ApplySettings`, an exchange
//! whose alternate exchange changed gets a new route in the routing snapshot. Publishing
//! never sees a policy: it reads settings the actor already has and the snapshot.
//!
//! Policies are durable whatever the durability of what they match: every change is a
//! definitions-log record, group-committed before the call returns.

use std::collections::BTreeMap;
use std::sync::Arc;

use warren_protocol::{ProtocolError, ShortString};

use super::{Definitions, ExchangeEntry, VHost};
use crate::admin::AdminError;
use crate::durable::definitions::DefinitionOp;
use crate::policy::{self, Policy, PolicyDefinition, PolicyKind, QueueType};
use crate::queue::settings::QueueSettings;
use crate::queue::{QueueCommand, QueueDef};

/// The policies of one vhost, by kind and name.
#[derive(Default)]
pub(super) struct Policies {
    regular: BTreeMap<String, Arc<Policy>>,
    operator: BTreeMap<String, Arc<Policy>>,
    /// Bumped by every change; a queue applies settings only newer than those it has (the
    /// command may overtake an earlier one when a full inbox makes `send_now` spawn).
    version: u64,
}

impl Policies {
    fn of(&self, kind: PolicyKind) -> &BTreeMap<String, Arc<Policy>> {
        match kind {
            PolicyKind::Regular => &self.regular,
            PolicyKind::Operator => &self.operator,
        }
    }

    fn of_mut(&mut self, kind: PolicyKind) -> &mut BTreeMap<String, Arc<Policy>> {
        match kind {
            PolicyKind::Regular => &mut self.regular,
            PolicyKind::Operator => &mut self.operator,
        }
    }

    /// The policy of `kind` that applies among those `matches` accepts.
    fn best(&self, kind: PolicyKind, matches: impl Fn(&Policy) -> bool) -> Option<Arc<Policy>> {
        self.of(kind)
            .values()
            .filter(|p| matches(p))
            .fold(None, |best: Option<&Arc<Policy>>, p| match best {
                Some(b) if !p.outranks(b) => Some(b),
                _ => Some(p),
            })
            .cloned()
    }

    fn for_queue(&self, def: &QueueDef) -> AppliedPolicies {
        let queue_type = QueueType::of(&def.arguments);
        let matches = |p: &Policy| p.matches_queue(def.name.as_str(), queue_type);
        AppliedPolicies {
            policy: self.best(PolicyKind::Regular, matches),
            operator: self.best(PolicyKind::Operator, matches),
        }
    }

    fn for_exchange(&self, name: &str) -> AppliedPolicies {
        let matches = |p: &Policy| p.matches_exchange(name);
        AppliedPolicies {
            policy: self.best(PolicyKind::Regular, matches),
            operator: self.best(PolicyKind::Operator, matches),
        }
    }

    /// Every policy as a definitions-log operation (compaction).
    pub(super) fn ops(&self) -> impl Iterator<Item = DefinitionOp> + '_ {
        self.regular
            .values()
            .chain(self.operator.values())
            .map(|p| DefinitionOp::PolicySet(Policy::clone(p)))
    }
}

/// The policy and operator policy that apply to one queue or exchange.
#[derive(Clone, Default)]
pub(super) struct AppliedPolicies {
    policy: Option<Arc<Policy>>,
    operator: Option<Arc<Policy>>,
}

impl AppliedPolicies {
    fn get(&self, kind: PolicyKind) -> Option<&Arc<Policy>> {
        match kind {
            PolicyKind::Regular => self.policy.as_ref(),
            PolicyKind::Operator => self.operator.as_ref(),
        }
    }

    /// The two definitions merged as RabbitMQ merges them.
    fn definition(&self) -> PolicyDefinition {
        PolicyDefinition::merged(
            self.policy.as_ref().map(|p| &p.definition),
            self.operator.as_ref().map(|p| &p.definition),
        )
    }

    pub(super) fn names(&self) -> PolicyNames {
        PolicyNames {
            policy: self.policy.as_ref().map(|p| p.name.clone()),
            operator_policy: self.operator.as_ref().map(|p| p.name.clone()),
        }
    }
}

/// The names of the policy and operator policy applied to a queue or exchange (the
/// management API's `policy` and `operator_policy` fields).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyNames {
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
}

impl Definitions {
    /// A new queue's settings: its arguments resolved against the policies that match it.
    pub(super) fn resolve_queue(
        &self,
        def: &QueueDef,
        what: &str,
    ) -> Result<(QueueSettings, AppliedPolicies), ProtocolError> {
        let applied = self.policies.for_queue(def);
        let settings = policy::queue_settings(&def.arguments, what, &applied.definition())?;
        Ok((settings, applied))
    }

    /// Gives a new exchange entry the policies that match it (before it is published).
    pub(super) fn apply_exchange_policies(&self, entry: &mut ExchangeEntry) {
        let applied = self.policies.for_exchange(entry.def.name.as_str());
        set_alternate(entry, &applied);
        entry.policies = applied;
    }

    /// After the policy `name` of `kind` was set, replaced or cleared: re-resolves every
    /// queue and exchange it applied to or now matches. True if the routing snapshot changed.
    fn policy_changed(&mut self, vhost: &str, kind: PolicyKind, name: &str) -> bool {
        let Definitions {
            queues,
            exchanges,
            policies,
            table,
            visited,
            ..
        } = self;
        policies.version += 1;
        let version = policies.version;
        let changed = policies.of(kind).get(name).cloned();
        let was_applied =
            |applied: &AppliedPolicies| applied.get(kind).is_some_and(|p| p.name == name);
        for (queue, entry) in queues.iter_mut() {
            *visited += 1;
            let queue_type = QueueType::of(&entry.def.arguments);
            let now_matches = changed
                .as_ref()
                .is_some_and(|p| p.matches_queue(queue.as_str(), queue_type));
            if !now_matches && !was_applied(&entry.policies) {
                continue;
            }
            let applied = policies.for_queue(&entry.def);
            let what = format!("queue '{}' in vhost '{vhost}'", queue.as_str());
            match policy::queue_settings(&entry.def.arguments, &what, &applied.definition()) {
                Ok(settings) => {
                    if settings != entry.settings {
                        entry.handle.send_now(QueueCommand::ApplySettings {
                            settings: Box::new(settings.clone()),
                            version,
                        });
                        entry.settings = settings;
                    }
                    entry.policies = applied;
                }
                // Its arguments passed the same checks at declare: not expected.
                Err(e) => {
                    tracing::warn!(queue = %queue.as_str(), error = %e.text, "cannot apply policies")
                }
            }
        }
        let mut routing_changed = false;
        for (exchange, entry) in exchanges.iter_mut() {
            *visited += 1;
            let now_matches = changed
                .as_ref()
                .is_some_and(|p| p.matches_exchange(exchange.as_str()));
            if !now_matches && !was_applied(&entry.policies) {
                continue;
            }
            let applied = policies.for_exchange(exchange.as_str());
            if set_alternate(entry, &applied) {
                table
                    .exchanges
                    .insert(exchange.clone(), entry.route.clone());
                routing_changed = true;
            }
            entry.policies = applied;
        }
        routing_changed
    }
}

/// Sets an exchange's alternate exchange from its argument and `applied`; true if it changed.
fn set_alternate(entry: &mut ExchangeEntry, applied: &AppliedPolicies) -> bool {
    let alternate: Option<ShortString> =
        policy::alternate_exchange(&entry.def.arguments, &applied.definition());
    if entry.route.alternate == alternate {
        return false;
    }
    // The snapshot shares the route: this clones it (O(1): persistent maps).
    Arc::make_mut(&mut entry.route).alternate = alternate;
    true
}

impl VHost {
    /// Sets (or replaces: same kind and name) a policy and applies it at once to every
    /// queue and exchange of the vhost it matches, and to those declared later. Durable
    /// before it returns.
    pub fn set_policy(&self, policy: Policy) -> Result<(), AdminError> {
        self.durably(|| {
            let mut defs = self.lock();
            self.log_op(DefinitionOp::PolicySet(policy.clone()))?;
            let (kind, name) = (policy.kind, policy.name.clone());
            defs.policies
                .of_mut(kind)
                .insert(name.clone(), Arc::new(policy));
            if defs.policy_changed(&self.name, kind, &name) {
                self.publish(&mut defs);
            }
            Ok(())
        })
        .map_err(AdminError::from)
    }

    /// Removes a policy (404 if there is none of that kind and name): what it applied to
    /// falls back to the next matching policy, or to its arguments alone.
    pub fn clear_policy(&self, kind: PolicyKind, name: &str) -> Result<(), AdminError> {
        let found = self.durably(|| {
            let mut defs = self.lock();
            if !defs.policies.of(kind).contains_key(name) {
                return Ok(false);
            }
            self.log_op(DefinitionOp::PolicyCleared {
                kind,
                name: name.to_owned(),
            })?;
            defs.policies.of_mut(kind).remove(name);
            if defs.policy_changed(&self.name, kind, name) {
                self.publish(&mut defs);
            }
            Ok(true)
        })?;
        if !found {
            return Err(AdminError::not_found(format!(
                "no {} '{name}' in vhost '{}'",
                kind.noun(),
                self.name
            )));
        }
        Ok(())
    }

    /// The policies of `kind`, highest priority first (as RabbitMQ lists them).
    pub fn policies(&self, kind: PolicyKind) -> Vec<Policy> {
        let defs = self.lock();
        let mut all: Vec<Policy> = defs
            .policies
            .of(kind)
            .values()
            .map(|p| Policy::clone(p))
            .collect();
        drop(defs);
        all.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        all
    }

    /// One policy of `kind` by name.
    pub fn policy(&self, kind: PolicyKind, name: &str) -> Option<Policy> {
        self.lock()
            .policies
            .of(kind)
            .get(name)
            .map(|p| Policy::clone(p))
    }

    /// The policies applied to the queue `name` (None: no such queue).
    pub fn queue_policy(&self, name: &str) -> Option<PolicyNames> {
        self.lock().queues.get(name).map(|q| q.policies.names())
    }

    /// The policies applied to the exchange `name` (None: no such exchange).
    pub fn exchange_policy(&self, name: &str) -> Option<PolicyNames> {
        self.lock().exchanges.get(name).map(|x| x.policies.names())
    }

    /// Puts back a policy read from the definitions log (not logged again).
    pub(crate) fn restore_policy(&self, policy: Policy) {
        let mut defs = self.lock();
        let (kind, name) = (policy.kind, policy.name.clone());
        defs.policies
            .of_mut(kind)
            .insert(name.clone(), Arc::new(policy));
        if defs.policy_changed(&self.name, kind, &name) {
            self.publish(&mut defs);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use warren_protocol::FieldTable;

    use super::*;
    use crate::broker::{Broker, DEFAULT_VHOST};
    use crate::exchange::{ExchangeDef, ExchangeKind};

    fn open(dir: &std::path::Path) -> Arc<Broker> {
        crate::recovery::open(
            dir,
            warren_store::RealIo::shared(),
            warren_store::SyncMode::None,
            crate::broker::BrokerSettings::default(),
        )
        .expect("open")
    }

    fn policy(kind: PolicyKind, entry: serde_json::Value) -> Policy {
        Policy::from_json(kind, &entry).expect("valid policy")
    }

    fn durable_queue(name: &str) -> QueueDef {
        QueueDef {
            name: ShortString::from(name),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    /// Policies are in the definitions log: set, replaced and cleared ones replay as they
    /// were left, before queues and exchanges come back (which come back with them applied),
    /// and compaction keeps them. The broker is dropped without shutting down.
    #[tokio::test]
    async fn policies_survive_a_restart_and_apply_before_queues_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let broker = open(dir.path());
            let vhost = broker.vhost(DEFAULT_VHOST).expect("vhost");
            vhost
                .declare_queue(durable_queue("q1"), false)
                .expect("declare");
            vhost
                .declare_exchange(
                    ExchangeDef {
                        name: ShortString::from("x1"),
                        kind: ExchangeKind::Fanout,
                        durable: true,
                        auto_delete: false,
                        internal: false,
                        arguments: FieldTable::default(),
                    },
                    false,
                )
                .expect("declare exchange");
            let limits = |max_length: u64| {
                policy(
                    PolicyKind::Regular,
                    json!({"name": "limits", "pattern": "1$", "priority": 1,
                           "definition": {"max-length": max_length, "alternate-exchange": "ae"}}),
                )
            };
            vhost.set_policy(limits(5)).expect("set");
            vhost.set_policy(limits(2)).expect("replace");
            let op = json!({"name": "cap", "pattern": ".*", "definition": {"max-length": 1}});
            vhost
                .set_policy(policy(PolicyKind::Operator, op))
                .expect("set operator policy");
            vhost
                .clear_policy(PolicyKind::Operator, "cap")
                .expect("clear operator policy");
            assert_eq!(
                vhost.clear_policy(PolicyKind::Operator, "cap"),
                Err(AdminError::NotFound(
                    "no operator policy 'cap' in vhost '/'".into()
                ))
            );
        }
        for round in 0..2 {
            // Round 0 replays the log as written; round 1 the log compaction wrote.
            let broker = open(dir.path());
            let vhost = broker.vhost(DEFAULT_VHOST).expect("vhost");
            let policies = vhost.policies(PolicyKind::Regular);
            assert_eq!(policies.len(), 1, "round {round}");
            assert_eq!(policies[0].definition.max_length, Some(2));
            assert!(vhost.policies(PolicyKind::Operator).is_empty());
            let applied = PolicyNames {
                policy: Some("limits".into()),
                operator_policy: None,
            };
            assert_eq!(vhost.queue_policy("q1"), Some(applied.clone()));
            assert_eq!(vhost.exchange_policy("x1"), Some(applied));
            let defs = vhost.lock();
            assert_eq!(defs.queues["q1"].settings.max_length, Some(2));
            assert_eq!(
                defs.exchanges["x1"]
                    .route
                    .alternate
                    .as_ref()
                    .map(|a| a.as_str()),
                Some("ae")
            );
            drop(defs);
            assert_eq!(
                vhost.routing().exchanges["x1"]
                    .alternate
                    .as_ref()
                    .map(|a| a.as_str()),
                Some("ae")
            );
        }
    }

    /// A change touches what the policy applied to or now matches; the others keep theirs,
    /// and the next-best policy takes over when the best one goes.
    #[tokio::test]
    async fn the_best_match_applies_and_the_next_takes_over() {
        let vhost = VHost::new("/", Default::default(), None);
        for name in ["orders", "invoices"] {
            let mut def = durable_queue(name);
            def.durable = false;
            vhost.declare_queue(def, false).expect("declare");
        }
        let set = |name: &str, pattern: &str, priority: i64, max_length: u64| {
            vhost
                .set_policy(policy(
                    PolicyKind::Regular,
                    json!({"name": name, "pattern": pattern, "priority": priority,
                           "apply-to": "queues", "definition": {"max-length": max_length}}),
                ))
                .expect("set");
        };
        let max_length = |queue: &str| vhost.lock().queues[queue].settings.max_length;
        set("low", ".*", 0, 100);
        set("high", "^ord", 10, 10);
        assert_eq!(max_length("orders"), Some(10));
        assert_eq!(max_length("invoices"), Some(100));
        // Equal priorities: the name first in byte order.
        set("also-high", "ders$", 10, 20);
        assert_eq!(
            vhost
                .queue_policy("orders")
                .and_then(|n| n.policy)
                .as_deref(),
            Some("also-high")
        );
        assert_eq!(max_length("orders"), Some(20));
        vhost
            .clear_policy(PolicyKind::Regular, "also-high")
            .expect("clear");
        vhost
            .clear_policy(PolicyKind::Regular, "high")
            .expect("clear");
        assert_eq!(max_length("orders"), Some(100));
        vhost
            .clear_policy(PolicyKind::Regular, "low")
            .expect("clear");
        assert_eq!(max_length("orders"), None);
        assert_eq!(vhost.queue_policy("orders"), Some(PolicyNames::default()));
        // Policies with `apply-to: queues` never touched an exchange.
        assert_eq!(
            vhost.exchange_policy("amq.direct"),
            Some(PolicyNames::default())
        );
    }
}
