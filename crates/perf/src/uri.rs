//! `amqp://user:pass@host:port/vhost` as RabbitMQ's URI spec reads it: percent-decoding,
//! guest/guest and port 5672 by default, an empty path meaning vhost `/`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
}

pub const DEFAULT_PORT: u16 = 5672;

impl AmqpUri {
    pub fn parse(text: &str) -> Result<AmqpUri, String> {
        let rest = text
            .strip_prefix("amqp://")
            .ok_or_else(|| format!("{text:?}: only amqp:// URIs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.find(':') {
                Some(i) => (decode(&info[..i])?, decode(&info[i + 1..])?),
                None => (decode(info)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or("unclosed [ in host")?;
            let port = v6[end + 1..].strip_prefix(':');
            (v6[..end].to_string(), port)
        } else {
            match hostport.rfind(':') {
                Some(i) => (hostport[..i].to_string(), Some(&hostport[i + 1..])),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => DEFAULT_PORT,
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let vhost = match path {
            None | Some("") => "/".to_string(),
            Some(p) => decode(p.split('?').next().unwrap_or(""))?,
        };
        Ok(AmqpUri {
            user,
            password,
            host,
            port,
            vhost,
        })
    }

    /// `host:port` for `TcpStream::connect`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Shows the URI without its password, for reports.
impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vhost = if self.vhost == "/" {
            "%2f"
        } else {
            &self.vhost
        };
        write!(f, "amqp://{}@{}/{}", self.user, self.address(), vhost)
    }
}

fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape in {s:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rabbitmq_style_uris() {
        let u = AmqpUri::parse("amqp://guest:guest@127.0.0.1:5680/%2f").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port, u.vhost.as_str()),
            ("guest", "127.0.0.1", 5680, "/")
        );
        let u = AmqpUri::parse("amqp://localhost").unwrap();
        assert_eq!(
            (u.port, u.vhost.as_str(), u.user.as_str()),
            (5672, "/", "guest")
        );
        let u = AmqpUri::parse("amqp://a%40b:p%3Aw@[::1]:1/my%2Fvh").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_str(),
                u.address(),
                u.vhost.as_str()
            ),
            ("a@b", "p:w", "[::1]:1".to_string(), "my/vh")
        );
        assert!(AmqpUri::parse("http://x").is_err());
        assert!(!u.to_string().contains("p:w"));
    }
}
