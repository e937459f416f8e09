//! Permissions as RabbitMQ's internal backend checks them: three regular expressions per user
//! and vhost (configure, write, read) matched, unanchored, against a resource's name, and
//! topic permissions (write and read expressions on routing keys, per topic exchange).
//!
//! An empty expression grants nothing (RabbitMQ's special case of `""`); the default
//! exchange's empty name is checked as `amq.default`.

use regex::Regex;

use crate::admin::AdminError;

/// Which permission an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// A regular expression from a permission, with its source kept for export.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    /// None for the empty expression, which matches nothing.
    regex: Option<Regex>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// Longest permission expression accepted.
pub const PATTERN_BYTES_MAX: usize = 4096;
/// Largest compiled expression (the `regex` crate's size limit), so an expression cannot make
/// the broker build a huge automaton.
const PATTERN_COMPILED_BYTES_MAX: usize = 1 << 20;

impl Pattern {
    /// Compiles `source`; `what` names the field in the error.
    pub fn new(source: &str, what: &str) -> Result<Pattern, AdminError> {
        if source.len() > PATTERN_BYTES_MAX {
            return Err(AdminError::bad_request(format!(
                "{what}: expression longer than {PATTERN_BYTES_MAX} bytes"
            )));
        }
        let regex = if source.is_empty() {
            None
        } else {
            Some(
                regex::RegexBuilder::new(source)
                    .size_limit(PATTERN_COMPILED_BYTES_MAX)
                    .build()
                    .map_err(|e| {
                        AdminError::bad_request(format!(
                            "{what}: invalid regular expression '{source}': {e}"
                        ))
                    })?,
            )
        };
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// Grants everything (`.*`).
    pub fn all() -> Pattern {
        Pattern {
            source: ".*".into(),
            regex: Regex::new(".*").ok(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A user's permissions in one vhost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl Permission {
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Permission, AdminError> {
        Ok(Permission {
            configure: Pattern::new(configure, "configure")?,
            write: Pattern::new(write, "write")?,
            read: Pattern::new(read, "read")?,
        })
    }

    /// `.*` for all three (what the default user gets on the default vhost).
    pub fn full() -> Permission {
        Permission {
            configure: Pattern::all(),
            write: Pattern::all(),
            read: Pattern::all(),
        }
    }

    /// Whether `access` is granted on a resource called `name`.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        let name = if name.is_empty() { "amq.default" } else { name };
        match access {
            Access::Configure => self.configure.is_match(name),
            Access::Write => self.write.is_match(name),
            Access::Read => self.read.is_match(name),
        }
    }
}

/// A user's topic permissions on one topic exchange of one vhost: expressions on routing
/// keys, in which `{username}`, `{vhost}` and `{client_id}` stand for the connection's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPermission {
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// The variables a topic permission expression may use.
#[derive(Clone, Debug, Default)]
pub struct TopicContext {
    pub username: String,
    pub vhost: String,
    pub client_id: String,
}

impl TopicPermission {
    pub fn new(exchange: &str, write: &str, read: &str) -> Result<TopicPermission, AdminError> {
        // Check that the expressions compile with any expansion (the variables are plain
        // text, escaped when expanded).
        let probe = TopicContext::default();
        for (what, source) in [("write", write), ("read", read)] {
            Pattern::new(&expand(source, &probe), what)?;
        }
        Ok(TopicPermission {
            exchange: exchange.to_owned(),
            write: write.to_owned(),
            read: read.to_owned(),
        })
    }

    /// Compiles the expression for `access` (write or read) for one connection.
    pub fn compile(&self, access: Access, ctx: &TopicContext) -> Pattern {
        let source = match access {
            Access::Write => &self.write,
            _ => &self.read,
        };
        // RabbitMQ: an empty topic expression matches only the empty routing key.
        if source.is_empty() {
            return Pattern::new("^$", access.as_str()).unwrap_or(Pattern {
                source: String::new(),
                regex: None,
            });
        }
        // Validated at creation; an expansion that fails to compile grants nothing.
        Pattern::new(&expand(source, ctx), access.as_str()).unwrap_or(Pattern {
            source: String::new(),
            regex: None,
        })
    }
}

/// Replaces `{username}`, `{vhost}` and `{client_id}` with the connection's values, escaped
/// so that they match literally.
fn expand(source: &str, ctx: &TopicContext) -> String {
    source
        .replace("{username}", &regex::escape(&ctx.username))
        .replace("{vhost}", &regex::escape(&ctx.vhost))
        .replace("{client_id}", &regex::escape(&ctx.client_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_unanchored_and_empty_grants_nothing() {
        let p = Permission::new("^app-", "", "q").unwrap();
        assert!(p.allows(Access::Configure, "app-1"));
        assert!(!p.allows(Access::Configure, "my-app-1"));
        assert!(!p.allows(Access::Write, "anything"));
        assert!(!p.allows(Access::Write, ""));
        assert!(p.allows(Access::Read, "myqueue"));
        let default = Permission::new("", "^amq\\.default$", "").unwrap();
        assert!(default.allows(Access::Write, ""));
        assert!(Permission::new("(", ".*", ".*").is_err());
    }

    #[test]
    fn topic_variables_expand_literally() {
        let t = TopicPermission::new("amq.topic", "^{username}\\.", "^x\\.{vhost}$").unwrap();
        let ctx = TopicContext {
            username: "a.b".into(),
            vhost: "/".into(),
            client_id: String::new(),
        };
        let w = t.compile(Access::Write, &ctx);
        assert!(w.is_match("a.b.orders"));
        assert!(!w.is_match("axb.orders"));
        assert!(t.compile(Access::Read, &ctx).is_match("x./"));
        assert!(TopicPermission::new("x", "[", ".*").is_err());
    }
}
