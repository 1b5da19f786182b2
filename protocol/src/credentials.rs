//! Proxy credentials: SOCKS5 username/password (RFC 1929) and HTTP
//! `Proxy-Authorization: Basic` (RFC 7617), compared in constant time.

use std::fmt;

use subtle::ConstantTimeEq;

/// Credentials for SOCKS5 username/password authentication (RFC 1929) and
/// for HTTP `Proxy-Authorization: Basic` (RFC 7617). RFC 1929 carries each
/// field in at most 255 bytes, so longer values can never match over SOCKS5.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name, compared byte for byte.
    pub username: String,
    /// The password, compared byte for byte.
    pub password: String,
}

impl fmt::Debug for Credentials {
    /// Shows the user name; the password is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Fresh random credentials: user `nws-` plus 8 hex characters, and a
    /// 32-character hex password (128 bits from the OS generator). An app
    /// starts its in-process proxy with these so that other apps on the
    /// device, which can reach loopback too, cannot use it.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut user = [0u8; 4];
        let mut pass = [0u8; 16];
        rand::rng().fill_bytes(&mut user);
        rand::rng().fill_bytes(&mut pass);
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        Self {
            username: format!("nws-{}", hex(&user)),
            password: hex(&pass),
        }
    }

    /// Whether `username` and `password` (raw bytes as received) equal these
    /// credentials. The comparison takes the same time wherever the first
    /// difference is, so it does not reveal how much of a guess was right
    /// (lengths may still leak).
    pub fn matches(&self, username: &[u8], password: &[u8]) -> bool {
        // Both fields are compared, without short-circuiting, so timing does
        // not reveal which one was wrong.
        let user_ok = self.username.as_bytes().ct_eq(username);
        let pass_ok = self.password.as_bytes().ct_eq(password);
        (user_ok & pass_ok).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_credentials_differ_and_have_the_documented_shape() {
        let a = Credentials::random();
        let b = Credentials::random();
        assert_ne!(a, b);
        assert!(a.username.starts_with("nws-") && a.username.len() == 12);
        assert_eq!(a.password.len(), 32);
        assert!(a.password.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn matches_only_both_fields_exactly() {
        let c = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        assert!(c.matches(b"alice", b"s3cret"));
        assert!(!c.matches(b"alice", b"s3cre"));
        assert!(!c.matches(b"alic", b"s3cret"));
        assert!(!c.matches(b"", b""));
    }
}
