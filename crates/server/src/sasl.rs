//! SASL mechanisms offered in connection.start: PLAIN (RFC 4616), AMQPLAIN (a field table
//! without its length prefix, holding LOGIN and PASSWORD) and, on an amqps connection whose
//! client presented a verified certificate, EXTERNAL (RFC 4422 appendix A: the identity is
//! the certificate's, RabbitMQ's `rabbitmq_auth_mechanism_ssl`; the response is ignored).

use amq_protocol::types::parsing::parse_field_table;
use warren_protocol::{AMQPValue, ProtocolError};

/// The mechanisms we offer, space-separated as connection.start wants them.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";
/// The mechanisms offered to a client that presented a verified certificate.
pub const MECHANISMS_WITH_EXTERNAL: &str = "PLAIN AMQPLAIN EXTERNAL";

/// The mechanisms for connection.start.
pub fn mechanisms(external: bool) -> &'static str {
    if external {
        MECHANISMS_WITH_EXTERNAL
    } else {
        MECHANISMS
    }
}

/// What a start-ok asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// PLAIN or AMQPLAIN.
    Password { user: String, password: String },
    /// EXTERNAL: the user is named by the client certificate.
    External,
}

/// Reads a start-ok's mechanism and response. EXTERNAL is known only where it was offered.
pub fn login(mechanism: &str, response: &[u8], external: bool) -> Result<Login, ProtocolError> {
    match mechanism {
        "EXTERNAL" if external => Ok(Login::External),
        _ => credentials(mechanism, response)
            .map(|(user, password)| Login::Password { user, password }),
    }
}

/// Extracts (user, password) from a start-ok response.
pub fn credentials(mechanism: &str, response: &[u8]) -> Result<(String, String), ProtocolError> {
    match mechanism {
        "PLAIN" => plain(response),
        "AMQPLAIN" => amqplain(response),
        other => Err(ProtocolError::command_invalid(format!(
            "unknown authentication mechanism '{other}'"
        ))),
    }
}

/// The 403 for a failed login, in RabbitMQ's words.
pub fn refused(mechanism: &str) -> ProtocolError {
    ProtocolError::access_refused(format!(
        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
    ))
}

fn plain(response: &[u8]) -> Result<(String, String), ProtocolError> {
    // authzid \0 authcid \0 passwd
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authzid), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused("PLAIN"));
    };
    Ok((
        String::from_utf8_lossy(user).into_owned(),
        String::from_utf8_lossy(pass).into_owned(),
    ))
}

fn amqplain(response: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
    framed.extend_from_slice(response);
    // Checked first: the parser recurses without limit on nested tables.
    if warren_protocol::table::check_table(&framed).is_err() {
        return Err(refused("AMQPLAIN"));
    }
    let Ok((_, table)) = parse_field_table(&framed[..]) else {
        return Err(refused("AMQPLAIN"));
    };
    let field = |k: &str| match table.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    match (field("LOGIN"), field("PASSWORD")) {
        (Some(u), Some(p)) => Ok((u, p)),
        _ => Err(refused("AMQPLAIN")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_amqplain() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret").unwrap(),
            ("guest".into(), "secret".into())
        );
        assert!(credentials("PLAIN", b"guest").is_err());
        // LOGIN: S "guest", PASSWORD: S "pw"
        let mut t = Vec::new();
        t.push(5);
        t.extend_from_slice(b"LOGIN");
        t.push(b'S');
        t.extend_from_slice(&5u32.to_be_bytes());
        t.extend_from_slice(b"guest");
        t.push(8);
        t.extend_from_slice(b"PASSWORD");
        t.push(b'S');
        t.extend_from_slice(&2u32.to_be_bytes());
        t.extend_from_slice(b"pw");
        assert_eq!(
            credentials("AMQPLAIN", &t).unwrap(),
            ("guest".into(), "pw".into())
        );
        assert_eq!(credentials("SCRAM", b"").unwrap_err().code.code(), 503);
    }

    #[test]
    fn external_only_where_offered() {
        assert_eq!(mechanisms(false), "PLAIN AMQPLAIN");
        assert!(mechanisms(true).split(' ').any(|m| m == "EXTERNAL"));
        assert_eq!(login("EXTERNAL", b"", true).unwrap(), Login::External);
        // The response (an authorization identity some clients send) is not read.
        assert_eq!(login("EXTERNAL", b"bob", true).unwrap(), Login::External);
        assert_eq!(login("EXTERNAL", b"", false).unwrap_err().code.code(), 503);
        assert_eq!(
            login("PLAIN", b"\0guest\0guest", true).unwrap(),
            Login::Password {
                user: "guest".into(),
                password: "guest".into()
            }
        );
    }
}
