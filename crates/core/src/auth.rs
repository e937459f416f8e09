//! Users and SASL credential checks. Passwords are compared in constant time; a
//! loopback-only user (RabbitMQ's `loopback_users`, which holds `guest` by default) is refused
//! from any other address.

use std::collections::HashMap;
use std::net::IpAddr;

use warren_protocol::ProtocolError;

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    password: String,
    pub loopback_only: bool,
}

impl User {
    pub fn new(name: impl Into<String>, password: impl Into<String>, loopback_only: bool) -> Self {
        User {
            name: name.into(),
            password: password.into(),
            loopback_only,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    pub fn new(users: impl IntoIterator<Item = User>) -> Self {
        Users {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        }
    }

    /// Checks a username and password from `peer`; the error is the 403 to send.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<&User, ProtocolError> {
        let refused = || {
            ProtocolError::access_refused(
                "Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
            )
        };
        let user = self.users.get(name).ok_or_else(refused)?;
        if !constant_time_eq(user.password.as_bytes(), password.as_bytes()) {
            return Err(refused());
        }
        if user.loopback_only && !peer.is_loopback() && !is_mapped_loopback(peer) {
            return Err(ProtocolError::access_refused(format!(
                "user '{name}' can only connect via localhost"
            )));
        }
        Ok(user)
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_only_from_loopback() {
        let users = Users::new([User::new("guest", "guest", true)]);
        assert!(users
            .authenticate("guest", "guest", [127, 0, 0, 1].into())
            .is_ok());
        assert!(users
            .authenticate("guest", "guest", "::1".parse().unwrap())
            .is_ok());
        assert!(users
            .authenticate("guest", "guest", "::ffff:127.0.0.1".parse().unwrap())
            .is_ok());
        let err = users
            .authenticate("guest", "guest", [10, 0, 0, 1].into())
            .unwrap_err();
        assert_eq!(err.code.code(), 403);
        assert!(users
            .authenticate("guest", "nope", [127, 0, 0, 1].into())
            .is_err());
        assert!(users
            .authenticate("nobody", "guest", [127, 0, 0, 1].into())
            .is_err());
    }
}
