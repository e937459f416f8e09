//! Access control: users and their password hashes, permissions per user and vhost, topic
//! permissions, and per-user limits.
pub mod password;
