//! Password hashes in RabbitMQ's formats, so users exported from RabbitMQ log in with their
//! old passwords and Warren's exports load into RabbitMQ.
//!
//! RabbitMQ stores `base64(salt ‖ H(salt ‖ utf8(password)))` with a 4-byte random salt and
//! names the function in `hashing_algorithm`: `rabbit_password_hashing_sha256` (its default
//! and Warren's), `rabbit_password_hashing_sha512` and `rabbit_password_hashing_md5` (legacy,
//! accepted on import only; Warren never creates one).

use base64::Engine;
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};

/// Bytes of random salt in front of every hash (RabbitMQ's).
pub const SALT_BYTES: usize = 4;

/// The hash functions RabbitMQ names in a definitions export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashingAlgorithm {
    Sha256,
    Sha512,
    Md5,
}

impl HashingAlgorithm {
    /// RabbitMQ's module name, as written in `hashing_algorithm`.
    pub fn name(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashingAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            HashingAlgorithm::Sha256,
            HashingAlgorithm::Sha512,
            HashingAlgorithm::Md5,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(salt: &[u8], password: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update(salt);
            d.update(password);
            d.finalize().to_vec()
        }
        match self {
            HashingAlgorithm::Sha256 => run::<Sha256>(salt, password),
            HashingAlgorithm::Sha512 => run::<Sha512>(salt, password),
            HashingAlgorithm::Md5 => run::<Md5>(salt, password),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            HashingAlgorithm::Sha256 => 32,
            HashingAlgorithm::Sha512 => 64,
            HashingAlgorithm::Md5 => 16,
        }
    }
}

/// A salted password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    algorithm: HashingAlgorithm,
    /// Salt followed by the digest.
    bytes: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({})", self.algorithm.name())
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt and SHA-256 (RabbitMQ's default).
    pub fn new(password: &str) -> Self {
        let mut salt = [0u8; SALT_BYTES];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::with_salt(HashingAlgorithm::Sha256, salt, password)
    }

    pub fn with_salt(algorithm: HashingAlgorithm, salt: [u8; SALT_BYTES], password: &str) -> Self {
        let mut bytes = salt.to_vec();
        bytes.extend(algorithm.digest(&salt, password.as_bytes()));
        PasswordHash { algorithm, bytes }
    }

    /// Reads `password_hash` and `hashing_algorithm` as a RabbitMQ export writes them.
    pub fn parse(base64_hash: &str, algorithm: &str) -> Result<Self, String> {
        let algorithm = HashingAlgorithm::parse(algorithm)
            .ok_or_else(|| format!("unknown hashing_algorithm '{algorithm}'"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_hash.trim())
            .map_err(|e| format!("password_hash is not base64: {e}"))?;
        if bytes.len() != SALT_BYTES + algorithm.digest_len() {
            return Err(format!(
                "password_hash has {} bytes; {} needs {}",
                bytes.len(),
                algorithm.name(),
                SALT_BYTES + algorithm.digest_len()
            ));
        }
        Ok(PasswordHash { algorithm, bytes })
    }

    pub fn algorithm(&self) -> HashingAlgorithm {
        self.algorithm
    }

    /// The hash as a RabbitMQ export writes `password_hash`.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// Whether `password` is the one hashed (compared in constant time).
    pub fn verify(&self, password: &str) -> bool {
        let (salt, digest) = self.bytes.split_at(SALT_BYTES);
        let candidate = self.algorithm.digest(salt, password.as_bytes());
        constant_time_eq(&candidate, digest)
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_hashes_verify_and_round_trip() {
        let h = PasswordHash::new("s3cret");
        assert!(h.verify("s3cret"));
        assert!(!h.verify("s3cret "));
        assert_eq!(h.algorithm(), HashingAlgorithm::Sha256);
        let back = PasswordHash::parse(&h.to_base64(), "rabbit_password_hashing_sha256").unwrap();
        assert_eq!(back, h);
        // A new salt each time.
        assert_ne!(PasswordHash::new("s3cret").to_base64(), h.to_base64());
    }

    #[test]
    fn every_algorithm_is_salt_then_digest_of_salt_and_password() {
        for alg in [
            HashingAlgorithm::Sha256,
            HashingAlgorithm::Sha512,
            HashingAlgorithm::Md5,
        ] {
            let h = PasswordHash::with_salt(alg, [1, 2, 3, 4], "pw");
            let b64 = h.to_base64();
            let parsed = PasswordHash::parse(&b64, alg.name()).unwrap();
            assert!(parsed.verify("pw"));
            assert!(!parsed.verify("pW"));
        }
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(PasswordHash::parse("!!", "rabbit_password_hashing_sha256").is_err());
        assert!(PasswordHash::parse("AAAA", "rabbit_password_hashing_sha256").is_err());
        assert!(PasswordHash::parse("AAAA", "rabbit_password_hashing_bcrypt").is_err());
    }
}
