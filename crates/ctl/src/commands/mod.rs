//! The commands: each turns its arguments into requests on RabbitMQ's API paths and prints
//! the answer. One file per group of commands, named after what they act on.
//!
//! Owns: `Ctx` (the client, the output format, the vhost) and the dispatch from `cli::Command`.
//! Must not touch: the exit-code table (`error`), HTTP details (`client`).

mod admin;
mod declare;
mod definitions;
mod delete;
mod list;
mod messages;

use std::io::Write;

use serde_json::{Map, Value};

use crate::cli::{Args, Command, Format, DEFAULT_VHOST};
use crate::client::Client;
use crate::error::CtlError;

/// What every command gets.
pub struct Ctx {
    pub client: Client,
    pub format: Format,
    /// `--vhost` / `WARREN_VHOST` as given: `None` lets `list`, `export` and `import` cover
    /// every vhost.
    pub vhost: Option<String>,
}

impl Ctx {
    /// The vhost of commands on one object.
    pub fn vhost(&self) -> &str {
        self.vhost.as_deref().unwrap_or(DEFAULT_VHOST)
    }

    /// After a change: the sentence in table format, the API's JSON answer (if any) in json.
    pub fn done(&self, message: &str, answer: Option<&Value>) {
        match self.format {
            Format::Table => out(&format!("{message}\n")),
            Format::Json => {
                if let Some(value) = answer {
                    print_json(value);
                }
            }
        }
    }
}

/// Writes to stdout; a closed stdout (`| head`) is not an error worth a panic.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

pub fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    out(&format!("{text}\n"));
}

/// A flag holding a JSON object (`--arguments`, `--definition`, `--properties`); absent is `{}`.
pub fn json_object(flag: &str, text: Option<&str>) -> Result<Value, CtlError> {
    let Some(text) = text else {
        return Ok(Value::Object(Map::new()));
    };
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(CtlError::usage(format!("--{flag} must be a JSON object"))),
        Err(e) => Err(CtlError::usage(format!("--{flag} is not JSON: {e}"))),
    }
}

pub fn run(args: Args) -> Result<(), CtlError> {
    let ctx = Ctx {
        client: Client::new(&args.url, &args.user, &args.password)?,
        format: args.format,
        vhost: args.vhost,
    };
    match args.command {
        Command::List { kind } => list::list(&ctx, kind),
        Command::Overview => list::overview(&ctx),
        Command::Declare(what) => declare::declare(&ctx, what),
        Command::Delete(what) => delete::delete(&ctx, what),
        Command::Purge(what) => delete::purge(&ctx, what),
        Command::Publish(publish) => messages::publish(&ctx, publish),
        Command::Get(get) => messages::get(&ctx, get),
        Command::Move(moving) => messages::move_messages(&ctx, moving),
        Command::Close(what) => admin::close(&ctx, what),
        Command::Set(what) => admin::set(&ctx, what),
        Command::Trace { switch } => admin::trace(&ctx, switch),
        Command::Export { file } => definitions::export(&ctx, &file),
        Command::Import { file } => definitions::import(&ctx, &file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_flags_must_be_objects() {
        assert_eq!(json_object("arguments", None).unwrap(), json!({}));
        assert_eq!(
            json_object("arguments", Some(r#"{"x-max-length": 5}"#)).unwrap(),
            json!({"x-max-length": 5})
        );
        assert!(matches!(
            json_object("arguments", Some("[1]")),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            json_object("arguments", Some("{nope")),
            Err(CtlError::Usage(_))
        ));
    }
}
