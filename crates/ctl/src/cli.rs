//! The command line: global options, commands and their flags (clap derive). Nothing here
//! talks to the broker.
//!
//! Owns: the names, defaults and help of every flag. Must not touch: the HTTP API
//! (`commands`), output.

use clap::{ArgAction, ArgGroup, Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_CODES_HELP;

/// The default vhost of commands that act on one vhost.
pub const DEFAULT_VHOST: &str = "/";

/// warrenctl: manage a Warren (or RabbitMQ) broker through its management HTTP API.
///
/// --url, --user and --password go before the command (the commands have flags of the same
/// names for the objects they act on); --vhost and --format may go anywhere.
#[derive(Debug, Parser)]
#[command(name = "warrenctl", version, after_help = after_help())]
pub struct Args {
    /// Base URL of the management HTTP API (plain http://)
    #[arg(long, env = "WARREN_URL", default_value = "http://localhost:15672")]
    pub url: String,
    /// User to log in as
    #[arg(long, env = "WARREN_USER", default_value = "guest")]
    pub user: String,
    /// Password of --user
    #[arg(
        long,
        env = "WARREN_PASSWORD",
        default_value = "guest",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub password: String,
    /// Virtual host the command acts on [default: /]. `list`, `export` and `import` cover
    /// every vhost unless it is given
    #[arg(long, env = "WARREN_VHOST", global = true)]
    pub vhost: Option<String>,
    /// Output: an aligned table, or the API's JSON as it answered
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

fn after_help() -> String {
    format!("{EXIT_CODES_HELP}\n\nSee docs/cli.md for every command with an example.")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List objects of one kind
    List {
        #[arg(value_enum)]
        kind: ListKind,
    },
    /// Create (or update) an object
    #[command(subcommand)]
    Declare(Declare),
    /// Delete an object
    #[command(subcommand)]
    Delete(Delete),
    /// Remove every ready message of a queue
    #[command(subcommand)]
    Purge(Purge),
    /// Publish one message through an exchange; prints whether it was routed to a queue
    Publish(Publish),
    /// Fetch messages from a queue (by default they are requeued)
    Get(Get),
    /// Move the messages of a queue to another queue or through an exchange
    Move(Move),
    /// Close a client connection
    #[command(subcommand)]
    Close(Close),
    /// Write the definitions (users, vhosts, permissions, policies, queues, exchanges,
    /// bindings) as JSON to FILE (`-`: stdout); with --vhost, that vhost's only
    Export {
        /// Where to write (`-` for stdout)
        file: String,
    },
    /// Load definitions from FILE (`-`: stdin), merged into what exists; with --vhost, into
    /// that vhost
    Import {
        /// What to read (`-` for stdin)
        file: String,
    },
    /// Set vhost or user limits
    #[command(subcommand)]
    Set(Set),
    /// The broker's name, version and object totals
    Overview,
    /// Switch the firehose tracer of --vhost: copies of every message published and
    /// delivered in it go to the exchange `amq.rabbitmq.trace`
    Trace {
        #[arg(value_enum)]
        switch: TraceSwitch,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceSwitch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListKind {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Channels,
    Consumers,
    Users,
    Vhosts,
    Permissions,
    Policies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DestinationType {
    Queue,
    Exchange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

#[derive(Debug, Subcommand)]
pub enum Declare {
    /// A queue in --vhost
    Queue {
        name: String,
        /// Survives a broker restart
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        durable: bool,
        /// Deleted when its last consumer goes
        #[arg(long)]
        auto_delete: bool,
        /// Optional arguments as a JSON object, e.g. '{"x-max-length": 1000}'
        #[arg(long)]
        arguments: Option<String>,
    },
    /// An exchange in --vhost
    Exchange {
        name: String,
        /// direct, fanout, topic, headers (or another type the broker has)
        #[arg(long = "type")]
        kind: String,
        /// Survives a broker restart
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        durable: bool,
        /// Deleted when its last binding goes
        #[arg(long)]
        auto_delete: bool,
        /// Clients cannot publish to it, only other exchanges
        #[arg(long)]
        internal: bool,
        /// Optional arguments as a JSON object, e.g. '{"alternate-exchange": "ae"}'
        #[arg(long)]
        arguments: Option<String>,
    },
    /// A binding from an exchange to a queue or exchange in --vhost
    Binding(BindingArgs),
    /// A user (updating an existing one replaces its password and tags)
    #[command(group(ArgGroup::new("secret").required(true).args(["password", "password_hash"])))]
    User {
        name: String,
        /// The user's password
        #[arg(long)]
        password: Option<String>,
        /// Instead of --password: a hash as `export` writes it (SHA-256, RabbitMQ's format)
        #[arg(long)]
        password_hash: Option<String>,
        /// Comma-separated tags: administrator, monitoring, policymaker, management
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// A virtual host
    Vhost {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Comma-separated tags
        #[arg(long)]
        tags: Option<String>,
        /// classic, quorum or stream
        #[arg(long)]
        default_queue_type: Option<String>,
    },
    /// The permissions of a user in --vhost (regular expressions over resource names)
    Permission {
        /// The user whose permissions these are
        #[arg(long)]
        user: String,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    /// A policy in --vhost
    Policy {
        name: String,
        /// Regular expression over the names of queues/exchanges it applies to
        #[arg(long)]
        pattern: String,
        /// The policy's keys as a JSON object, e.g. '{"max-length": 100}'
        #[arg(long)]
        definition: String,
        #[arg(long, value_enum, default_value_t = ApplyTo::All)]
        apply_to: ApplyTo,
        /// The highest priority among matching policies wins
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
    },
}

#[derive(Debug, ClapArgs)]
pub struct BindingArgs {
    /// The exchange messages come from
    #[arg(long)]
    pub source: String,
    /// The queue (or exchange) they go to
    #[arg(long)]
    pub destination: String,
    #[arg(long, value_enum, default_value_t = DestinationType::Queue)]
    pub destination_type: DestinationType,
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// Binding arguments as a JSON object (headers exchanges match on them)
    #[arg(long)]
    pub arguments: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Delete {
    /// A queue in --vhost
    Queue {
        name: String,
        /// Only if it holds no messages (else exit code 5)
        #[arg(long)]
        if_empty: bool,
        /// Only if it has no consumers (else exit code 5)
        #[arg(long)]
        if_unused: bool,
    },
    /// An exchange in --vhost
    Exchange {
        name: String,
        /// Only if no bindings have it as their source (else exit code 5)
        #[arg(long)]
        if_unused: bool,
    },
    /// The binding with this source, destination, routing key and arguments in --vhost
    Binding {
        #[command(flatten)]
        binding: BindingArgs,
        /// The binding's `properties_key` (as `list bindings --format json` shows it); found
        /// from --routing-key and --arguments when not given
        #[arg(long)]
        properties_key: Option<String>,
    },
    /// A user (its connections are closed)
    User { name: String },
    /// A virtual host and everything in it
    Vhost { name: String },
    /// The permissions of a user in --vhost
    Permission {
        #[arg(long)]
        user: String,
    },
    /// A policy in --vhost
    Policy { name: String },
}

#[derive(Debug, Subcommand)]
pub enum Purge {
    /// A queue in --vhost
    Queue { name: String },
}

#[derive(Debug, ClapArgs)]
pub struct Publish {
    /// The exchange (empty: the default exchange, which routes to the queue named by the key)
    #[arg(long, default_value = "")]
    pub exchange: String,
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// The message body; read from stdin when not given
    #[arg(long)]
    pub payload: Option<String>,
    /// Message properties as a JSON object, e.g. '{"delivery_mode": 2, "headers": {"a": 1}}'
    #[arg(long)]
    pub properties: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum AckMode {
    AckRequeueTrue,
    AckRequeueFalse,
    RejectRequeueTrue,
    RejectRequeueFalse,
}

impl AckMode {
    pub fn api_name(self) -> &'static str {
        match self {
            AckMode::AckRequeueTrue => "ack_requeue_true",
            AckMode::AckRequeueFalse => "ack_requeue_false",
            AckMode::RejectRequeueTrue => "reject_requeue_true",
            AckMode::RejectRequeueFalse => "reject_requeue_false",
        }
    }
}

#[derive(Debug, ClapArgs)]
pub struct Get {
    #[arg(long)]
    pub queue: String,
    /// How many messages at most
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// What happens to the messages fetched: requeued (the default) or removed
    #[arg(long, value_enum, default_value_t = AckMode::AckRequeueTrue)]
    pub ackmode: AckMode,
    /// Payloads longer than this are cut (bytes)
    #[arg(long)]
    pub truncate: Option<u64>,
}

#[derive(Debug, ClapArgs)]
#[command(group(ArgGroup::new("to").required(true).args(["to_queue", "to_exchange"])))]
pub struct Move {
    /// The queue to take messages from
    #[arg(long)]
    pub queue: String,
    /// The queue to put them in
    #[arg(long)]
    pub to_queue: Option<String>,
    /// The exchange to publish them through
    #[arg(long)]
    pub to_exchange: Option<String>,
    /// The routing key for --to-exchange [default: each message's own]
    #[arg(long, conflicts_with = "to_queue")]
    pub routing_key: Option<String>,
    /// How many messages at most [default: all]
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Close {
    /// A client connection, by the name `list connections` shows (or its id)
    Connection {
        name: String,
        /// Told to the client in the connection.close
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Set {
    /// Limits of --vhost; a negative value removes the limit
    #[command(group(ArgGroup::new("limit").required(true).multiple(true)
        .args(["max_connections", "max_queues"])))]
    Limits {
        #[arg(long, allow_negative_numbers = true)]
        max_connections: Option<i64>,
        #[arg(long, allow_negative_numbers = true)]
        max_queues: Option<i64>,
    },
    /// Limits of a user; a negative value removes the limit
    #[command(group(ArgGroup::new("limit").required(true).multiple(true)
        .args(["max_connections", "max_channels"])))]
    UserLimits {
        #[arg(long)]
        user: String,
        #[arg(long, allow_negative_numbers = true)]
        max_connections: Option<i64>,
        #[arg(long, allow_negative_numbers = true)]
        max_channels: Option<i64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn object_flags_named_like_global_ones_do_not_clash() {
        let args = Args::try_parse_from([
            "warrenctl",
            "--user",
            "admin",
            "--password",
            "pw",
            "declare",
            "user",
            "bob",
            "--password",
            "bobs",
            "--vhost",
            "v",
        ])
        .unwrap();
        assert_eq!(args.user, "admin");
        assert_eq!(args.password, "pw");
        assert_eq!(args.vhost.as_deref(), Some("v"));
        match args.command {
            Command::Declare(Declare::User { password, .. }) => {
                assert_eq!(password.as_deref(), Some("bobs"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn move_needs_exactly_one_destination() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["warrenctl", "move", "--queue", "q"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
        };
        assert!(parse(&[]).is_err());
        assert!(parse(&["--to-queue", "a", "--to-exchange", "x"]).is_err());
        assert!(parse(&["--to-queue", "a", "--routing-key", "k"]).is_err());
        assert!(parse(&["--to-exchange", "x", "--routing-key", "k"]).is_ok());
    }

    #[test]
    fn negative_limits_parse() {
        let args = Args::try_parse_from([
            "warrenctl",
            "set",
            "limits",
            "--vhost",
            "v",
            "--max-queues",
            "-1",
        ])
        .unwrap();
        assert!(matches!(
            args.command,
            Command::Set(Set::Limits {
                max_queues: Some(-1),
                max_connections: None
            })
        ));
    }
}
