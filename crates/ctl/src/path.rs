//! Percent-encoding of the names that go into the API's paths, as RabbitMQ's tools do it:
//! every byte outside the unreserved characters `A-Z a-z 0-9 - . _ ~` becomes `%XX`, so the
//! default vhost `/` is `%2F`, `%` is `%25` and a space is `%20`.
//!
//! Owns: turning names into path segments. Must not touch: query strings (no names go there).

/// One path segment: `name` with every byte outside the unreserved set percent-encoded.
pub fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `/api/` followed by the given parts, literal parts as they are and names encoded:
/// `api(&["queues", &segment(vhost), &segment(name)])`.
pub fn api(parts: &[&str]) -> String {
    let mut path = String::from("/api");
    for part in parts {
        path.push('/');
        path.push_str(part);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_vhost_is_percent_2f() {
        assert_eq!(segment("/"), "%2F");
    }

    #[test]
    fn percent_and_slash_inside_names_are_encoded() {
        assert_eq!(segment("a%b/c"), "a%25b%2Fc");
        assert_eq!(segment("%2F"), "%252F");
    }

    #[test]
    fn unreserved_characters_stay() {
        assert_eq!(segment("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn everything_else_is_encoded_byte_by_byte() {
        assert_eq!(segment("a b"), "a%20b");
        assert_eq!(segment("q+1?#&="), "q%2B1%3F%23%26%3D");
        assert_eq!(segment("127.0.0.1:5 -> #7"), "127.0.0.1%3A5%20-%3E%20%237");
        // UTF-8: each byte of a multi-byte character.
        assert_eq!(segment("é"), "%C3%A9");
        assert_eq!(segment(""), "");
    }

    #[test]
    fn api_paths_join_encoded_segments() {
        assert_eq!(
            api(&["queues", &segment("/"), &segment("jobs/1")]),
            "/api/queues/%2F/jobs%2F1"
        );
        assert_eq!(api(&["overview"]), "/api/overview");
    }
}
