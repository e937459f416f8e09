//! Access records: one per change to users, vhosts, permissions, topic permissions and
//! limits, in the same definitions log as the vhosts' records and replayed with them in
//! order. A record is a field table `{op: "access", json: <AccessOp as JSON>}`: the JSON
//! keeps the record self-describing and lets fields be added without a format change.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warren_protocol::{AMQPValue, FieldTable, LongString};

use crate::access::{
    AccessState, PasswordHash, Permission, TopicPermission, User, UserLimits, VHostInfo,
    VHostLimits,
};

/// The `op` of an access record.
pub const ACCESS_OP: &str = "access";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LimitsRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_channels: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u64>,
}

/// One change to access state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccessOp {
    UserPut {
        name: String,
        /// Base64 as RabbitMQ exports it; absent for a user without a password.
        #[serde(default)]
        password_hash: Option<String>,
        #[serde(default)]
        hashing_algorithm: Option<String>,
        tags: Vec<String>,
        #[serde(default)]
        limits: LimitsRecord,
    },
    UserDeleted {
        name: String,
    },
    VHostPut {
        name: String,
        description: String,
        tags: Vec<String>,
        #[serde(default)]
        default_queue_type: Option<String>,
        #[serde(default)]
        limits: LimitsRecord,
    },
    VHostDeleted {
        name: String,
    },
    PermissionSet {
        user: String,
        vhost: String,
        configure: String,
        write: String,
        read: String,
    },
    PermissionCleared {
        user: String,
        vhost: String,
    },
    TopicPermissionSet {
        user: String,
        vhost: String,
        exchange: String,
        write: String,
        read: String,
    },
    TopicPermissionCleared {
        user: String,
        vhost: String,
        exchange: String,
    },
    /// Several changes made together (an import): one record, so all or none replay.
    Batch {
        ops: Vec<AccessOp>,
    },
}

impl AccessOp {
    pub fn user_put(user: &User) -> AccessOp {
        AccessOp::UserPut {
            name: user.name.clone(),
            password_hash: user.password.as_ref().map(|p| p.to_base64()),
            hashing_algorithm: user
                .password
                .as_ref()
                .map(|p| p.algorithm().name().to_owned()),
            tags: user.tags.clone(),
            limits: LimitsRecord {
                max_connections: user.limits.max_connections,
                max_channels: user.limits.max_channels,
                max_queues: None,
            },
        }
    }

    pub fn vhost_put(info: &VHostInfo) -> AccessOp {
        AccessOp::VHostPut {
            name: info.name.clone(),
            description: info.description.clone(),
            tags: info.tags.clone(),
            default_queue_type: info.default_queue_type.clone(),
            limits: LimitsRecord {
                max_connections: info.limits.max_connections,
                max_channels: None,
                max_queues: info.limits.max_queues,
            },
        }
    }

    /// Applies the change to `state`. Records were validated before they were written; one
    /// that no longer parses (a damaged file) is an error the caller logs and skips.
    pub fn apply(self, state: &mut AccessState) -> Result<(), String> {
        use std::sync::Arc;
        match self {
            AccessOp::UserPut {
                name,
                password_hash,
                hashing_algorithm,
                tags,
                limits,
            } => {
                let password = match password_hash {
                    Some(h) if !h.is_empty() => Some(PasswordHash::parse(
                        &h,
                        hashing_algorithm
                            .as_deref()
                            .unwrap_or("rabbit_password_hashing_sha256"),
                    )?),
                    _ => None,
                };
                let user = User {
                    name: name.clone(),
                    password,
                    tags,
                    limits: UserLimits {
                        max_connections: limits.max_connections,
                        max_channels: limits.max_channels,
                    },
                };
                state.users.insert(name, Arc::new(user));
            }
            AccessOp::UserDeleted { name } => {
                state.users.remove(&name);
                state.permissions.retain(|(u, _), _| *u != name);
                state.topic_permissions.retain(|(u, _, _), _| *u != name);
            }
            AccessOp::VHostPut {
                name,
                description,
                tags,
                default_queue_type,
                limits,
            } => {
                let info = VHostInfo {
                    name: name.clone(),
                    description,
                    tags,
                    default_queue_type,
                    limits: VHostLimits {
                        max_connections: limits.max_connections,
                        max_queues: limits.max_queues,
                    },
                };
                state.vhosts.insert(name, info);
            }
            AccessOp::VHostDeleted { name } => {
                state.vhosts.remove(&name);
                state.permissions.retain(|(_, v), _| *v != name);
                state.topic_permissions.retain(|(_, v, _), _| *v != name);
            }
            AccessOp::PermissionSet {
                user,
                vhost,
                configure,
                write,
                read,
            } => {
                let p = Permission::new(&configure, &write, &read).map_err(|e| e.to_string())?;
                state.permissions.insert((user, vhost), Arc::new(p));
            }
            AccessOp::PermissionCleared { user, vhost } => {
                state.permissions.remove(&(user, vhost));
            }
            AccessOp::TopicPermissionSet {
                user,
                vhost,
                exchange,
                write,
                read,
            } => {
                let p =
                    TopicPermission::new(&exchange, &write, &read).map_err(|e| e.to_string())?;
                state
                    .topic_permissions
                    .insert((user, vhost, exchange), Arc::new(p));
            }
            AccessOp::TopicPermissionCleared {
                user,
                vhost,
                exchange,
            } => {
                state.topic_permissions.remove(&(user, vhost, exchange));
            }
            AccessOp::Batch { ops } => {
                for op in ops {
                    op.apply(state)?;
                }
            }
        }
        Ok(())
    }

    /// The records that recreate `state` (for compaction).
    pub fn snapshot(state: &AccessState) -> Vec<AccessOp> {
        let mut ops = Vec::new();
        ops.extend(state.vhosts.values().map(AccessOp::vhost_put));
        ops.extend(state.users.values().map(|u| AccessOp::user_put(u)));
        for ((user, vhost), p) in &state.permissions {
            ops.push(AccessOp::PermissionSet {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: p.configure.source().to_owned(),
                write: p.write.source().to_owned(),
                read: p.read.source().to_owned(),
            });
        }
        for ((user, vhost, exchange), p) in &state.topic_permissions {
            ops.push(AccessOp::TopicPermissionSet {
                user: user.clone(),
                vhost: vhost.clone(),
                exchange: exchange.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            });
        }
        ops
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Encodes an access record.
pub fn encode(op: &AccessOp) -> Bytes {
    let json = serde_json::to_string(op).unwrap_or_default();
    let mut t = FieldTable::default();
    t.insert("vhost".into(), long(""));
    t.insert("op".into(), long(ACCESS_OP));
    t.insert("json".into(), long(&json));
    Bytes::from(super::definitions::encode_table(&t))
}

/// Decodes a record if it is an access record: None if it is another kind.
pub fn decode(record: &[u8]) -> Option<Result<AccessOp, String>> {
    use amq_protocol::types::parsing::parse_field_table;
    warren_protocol::table::check_table(record).ok()?;
    let (_, t) = parse_field_table(record).ok()?;
    let op = t.inner().get("op").and_then(crate::args::as_str)?;
    if op != ACCESS_OP {
        return None;
    }
    let json = t.inner().get("json").and_then(crate::args::as_str);
    Some(match json {
        Some(json) => serde_json::from_str(&json).map_err(|e| format!("bad access record: {e}")),
        None => Err("access record without json".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_rebuild_the_state() {
        let mut state = AccessState::default();
        let user = User {
            name: "alice".into(),
            password: Some(PasswordHash::new("pw")),
            tags: vec!["administrator".into(), "x".into()],
            limits: UserLimits {
                max_connections: Some(3),
                max_channels: None,
            },
        };
        let ops = vec![
            AccessOp::vhost_put(&VHostInfo {
                name: "v".into(),
                description: "d".into(),
                tags: vec!["t".into()],
                default_queue_type: Some("classic".into()),
                limits: VHostLimits {
                    max_connections: None,
                    max_queues: Some(5),
                },
            }),
            AccessOp::user_put(&user),
            AccessOp::PermissionSet {
                user: "alice".into(),
                vhost: "v".into(),
                configure: "^a".into(),
                write: ".*".into(),
                read: "".into(),
            },
            AccessOp::TopicPermissionSet {
                user: "alice".into(),
                vhost: "v".into(),
                exchange: "amq.topic".into(),
                write: "^{username}".into(),
                read: ".*".into(),
            },
        ];
        for op in &ops {
            let back = decode(&encode(op)).unwrap().unwrap();
            assert_eq!(&back, op);
            back.apply(&mut state).unwrap();
        }
        assert!(state.users["alice"].password.as_ref().unwrap().verify("pw"));
        assert_eq!(AccessOp::snapshot(&state), ops);
        AccessOp::UserDeleted {
            name: "alice".into(),
        }
        .apply(&mut state)
        .unwrap();
        assert!(state.permissions.is_empty() && state.topic_permissions.is_empty());
        // Another kind of record is not an access record.
        let other = crate::durable::definitions::encode(
            "/",
            &crate::durable::definitions::DefinitionOp::QueueDeleted("q".into()),
        );
        assert!(decode(&other).is_none());
    }
}
