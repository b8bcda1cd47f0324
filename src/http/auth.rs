//! Access control: bearer tokens with roles.
//!
//! `admin` may do everything; `client` may reserve, cart, confirm, release, extend and read.
//! `/healthz` and `/readyz` need no token, nor `/metrics` when configured public, nor the live
//! feed and a deal's availability unless configured otherwise (`feed_public`). A missing or
//! unknown token is 401, a token of the wrong role 403. Tokens are compared in constant time
//! (every configured token is compared in full, whatever matches), and never logged.
//!
//! With no tokens configured, every request is allowed: that is the embedded default on a
//! loopback listener (like Redis's protected mode, a non-loopback listener without tokens is
//! refused at start unless `--insecure`; see `config.rs`).

use crate::config::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Client,
    Admin,
}

/// Who may call an endpoint (a column of the endpoint table, `http/endpoints.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nobody needs a token.
    Public,
    /// At least this role.
    Role(Role),
    /// `/metrics`: public when configured so (`metrics_public`), else admin.
    AdminUnlessPublic,
    /// The live feed and availability: public unless configured otherwise (`feed_public`), then
    /// client. A viewer's app holds no token; an operator who wants the feed behind the
    /// commerce backend turns it off.
    ClientUnlessFeedPublic,
}

impl Access {
    /// The access as configured: `AdminUnlessPublic` and `ClientUnlessFeedPublic` become one of
    /// the other two.
    pub fn resolve(self, metrics_public: bool, feed_public: bool) -> Access {
        match self {
            Access::AdminUnlessPublic if metrics_public => Access::Public,
            Access::AdminUnlessPublic => Access::Role(Role::Admin),
            Access::ClientUnlessFeedPublic if feed_public => Access::Public,
            Access::ClientUnlessFeedPublic => Access::Role(Role::Client),
            other => other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed header, or an unknown token: 401.
    Unauthenticated,
    /// A valid token without the role: 403.
    Forbidden,
}

pub struct Tokens {
    tokens: Vec<(Vec<u8>, Role)>,
}

/// Equal lengths compare every byte; the time depends on the lengths only, not the contents.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Tokens {
    pub fn new(admin: &[Secret], client: &[Secret]) -> Self {
        let role = |secrets: &[Secret], role| {
            secrets.iter().map(move |s| (s.expose().as_bytes().to_vec(), role)).collect::<Vec<_>>()
        };
        let mut tokens = role(admin, Role::Admin);
        tokens.extend(role(client, Role::Client));
        Tokens { tokens }
    }

    /// Whether any token is configured (if not, access control is off).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks an `Authorization` header value against the access an endpoint needs (resolved:
    /// see [`Access::resolve`]).
    pub fn check(&self, access: Access, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let needed = match access {
            Access::Public => return Ok(()),
            Access::Role(role) => role,
            Access::AdminUnlessPublic => Role::Admin,
            Access::ClientUnlessFeedPublic => Role::Client,
        };
        if !self.enabled() {
            return Ok(());
        }
        let presented = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .ok_or(Denied::Unauthenticated)?;
        // Compare against every token, without stopping at a match, so the time taken does not
        // tell which token (or how much of one) matched.
        let mut found: Option<Role> = None;
        for (token, role) in &self.tokens {
            if constant_time_eq(token, presented) {
                found = Some(*role);
            }
        }
        match found {
            None => Err(Denied::Unauthenticated),
            Some(role) if role >= needed => Ok(()),
            Some(_) => Err(Denied::Forbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            &[Secret::new("admin-token-0123456789")],
            &[Secret::new("client-token-0123456789")],
        )
    }

    #[test]
    fn roles_and_statuses() {
        let t = tokens();
        let admin = Some(b"Bearer admin-token-0123456789".as_slice());
        let client = Some(b"Bearer client-token-0123456789".as_slice());
        let needs_admin = Access::Role(Role::Admin);
        let needs_client = Access::Role(Role::Client);
        assert_eq!(t.check(needs_admin, admin), Ok(()));
        assert_eq!(t.check(needs_client, admin), Ok(()));
        assert_eq!(t.check(needs_client, client), Ok(()));
        assert_eq!(t.check(needs_admin, client), Err(Denied::Forbidden));
        assert_eq!(t.check(needs_client, None), Err(Denied::Unauthenticated));
        assert_eq!(
            t.check(needs_client, Some(b"Bearer nope".as_slice())),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            t.check(needs_client, Some(b"admin-token-0123456789".as_slice())),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(t.check(Access::Public, None), Ok(()));
        assert_eq!(t.check(Access::AdminUnlessPublic, client), Err(Denied::Forbidden));
        assert_eq!(Access::AdminUnlessPublic.resolve(true, false), Access::Public);
        assert_eq!(Access::AdminUnlessPublic.resolve(false, true), needs_admin);
        assert_eq!(Access::ClientUnlessFeedPublic.resolve(false, true), Access::Public);
        assert_eq!(Access::ClientUnlessFeedPublic.resolve(true, false), needs_client);
        assert_eq!(t.check(Access::ClientUnlessFeedPublic, None), Err(Denied::Unauthenticated));
        assert_eq!(Tokens::new(&[], &[]).check(needs_admin, None), Ok(()));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
