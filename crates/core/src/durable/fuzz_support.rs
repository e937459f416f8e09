//! The checks the fuzz targets in `fuzz/` run on each input, shared with the stable-Rust
//! replay test (`tests/fuzz_regressions.rs`). A record that passed the store's checksum can
//! still be anything (a bug, a newer version, a flipped bit the checksum missed): decoding it
//! must return an error, never panic, and whatever decodes must re-encode to the same thing.
//!
//! Not part of the core's API: nothing in the broker calls these.

use bytes::Bytes;

use super::{access, definitions, record};

/// Target `message_record`: a message record. One that decodes re-encodes to the same bytes
/// (except the flags octet's unused bits, which decoding ignores).
pub fn message_record(data: &[u8]) {
    let Ok((message, expires_at_ms, origin)) =
        record::decode_with_origin(Bytes::copy_from_slice(data))
    else {
        return;
    };
    let mut expected = data.to_vec();
    expected[1] &= record::FLAG_MOVED;
    let again = record::encode_with_origin(&message, expires_at_ms, origin);
    assert_eq!(&again[..], &expected[..]);
}

/// Target `definition_record`: a definitions record. One that decodes re-encodes to a record
/// that decodes and re-encodes to the same bytes.
pub fn definition_record(data: &[u8]) {
    // The same log holds access records (users, vhosts, permissions): one that decodes
    // re-encodes to a record that decodes to the same change, and applying it never panics.
    if let Some(Ok(op)) = access::decode(data) {
        let again = access::decode(&access::encode(&op))
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("a re-encoded access record does not decode: {op:?}"));
        assert_eq!(again, op);
        let _ = op.apply(&mut crate::access::AccessState::default());
        return;
    }
    let Ok((vhost, op)) = definitions::decode(data) else {
        return;
    };
    let encoded = definitions::encode(&vhost, &op);
    let (vhost_again, op_again) = definitions::decode(&encoded)
        .unwrap_or_else(|e| panic!("a re-encoded record does not decode: {e}"));
    // Compared as bytes: a NaN in the arguments is not equal to itself.
    assert_eq!(definitions::encode(&vhost_again, &op_again), encoded);
}
