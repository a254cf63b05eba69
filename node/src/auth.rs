//! Who is connecting: the identity rules of `docs/protocol.md`.
//!
//! With a signing key configured, `?token=` must carry a JWT signed with HS256 whose `sub` is
//! the user name and whose `exp` lies in the future. Without one (development, benchmarks),
//! `?user=` names the user. A connection without a usable identity is closed with 1008.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use crate::error::Error;

/// Longest user name we accept, in bytes; names are echoed to every room member.
pub const MAX_USER_BYTES: usize = 64;

/// Decides the user of a connection from its query parameters.
#[derive(Clone)]
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens_required", &self.key.is_some())
            .finish()
    }
}

/// The query parameters that carry an identity.
#[derive(Debug, Default, Deserialize)]
pub struct IdentityParams {
    /// A signed token (authentication on).
    pub token: Option<String>,
    /// A plain user name (authentication off).
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Authenticator {
    /// Authentication off: `?user=` is trusted.
    pub fn open() -> Authenticator {
        Authenticator {
            key: None,
            validation: Validation::new(Algorithm::HS256),
        }
    }

    /// Authentication on with an HS256 signing key.
    pub fn with_hs256_key(secret: &[u8]) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Authenticator {
            key: Some(DecodingKey::from_secret(secret)),
            validation,
        }
    }

    /// Whether tokens are required.
    pub fn requires_token(&self) -> bool {
        self.key.is_some()
    }

    /// The user name for a connection.
    ///
    /// # Errors
    /// [`Error`] (its message fits a 1008 close frame) when no usable identity was given.
    pub fn identify(&self, params: &IdentityParams) -> Result<String, Error> {
        let user = match &self.key {
            Some(key) => {
                let token = params.token.as_deref().ok_or(Error::TokenRequired)?;
                decode::<Claims>(token, key, &self.validation)
                    .map_err(Error::InvalidToken)?
                    .claims
                    .sub
            }
            None => params.user.clone().ok_or(Error::UserRequired)?,
        };
        validate_user(&user)?;
        Ok(user)
    }
}

fn validate_user(user: &str) -> Result<(), Error> {
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(Error::UserLength);
    }
    if user.chars().any(char::is_control) {
        return Err(Error::UserControl);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde::Serialize;

    #[derive(Serialize)]
    struct TestClaims<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn token(secret: &[u8], sub: &str, exp: u64) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &TestClaims { sub, exp },
            &EncodingKey::from_secret(secret),
        )
        .expect("encode")
    }

    fn params(token: Option<String>, user: Option<&str>) -> IdentityParams {
        IdentityParams {
            token,
            user: user.map(str::to_owned),
        }
    }

    fn in_an_hour() -> u64 {
        crate::snowflake::unix_ms() / 1000 + 3600
    }

    #[test]
    fn without_a_key_the_user_parameter_is_the_identity() {
        let auth = Authenticator::open();
        assert_eq!(
            auth.identify(&params(None, Some("ann"))).ok(),
            Some("ann".into())
        );
        assert!(auth.identify(&params(None, None)).is_err());
        assert!(auth.identify(&params(None, Some(""))).is_err());
        assert!(auth.identify(&params(None, Some("a\nb"))).is_err());
    }

    #[test]
    fn with_a_key_a_valid_token_names_the_user_and_user_is_ignored() {
        let auth = Authenticator::with_hs256_key(b"k1");
        let good = token(b"k1", "bob", in_an_hour());
        assert_eq!(
            auth.identify(&params(Some(good), Some("mallory"))).ok(),
            Some("bob".into())
        );
    }

    #[test]
    fn with_a_key_missing_forged_and_expired_tokens_are_refused() {
        let auth = Authenticator::with_hs256_key(b"k1");
        let missing = auth
            .identify(&params(None, Some("ann")))
            .expect_err("no token");
        assert!(missing.to_string().contains("authentication required"));
        let forged = token(b"other", "bob", in_an_hour());
        assert!(auth.identify(&params(Some(forged), None)).is_err());
        let expired = token(b"k1", "bob", 1_000);
        let reason = auth
            .identify(&params(Some(expired), None))
            .expect_err("expired");
        assert!(reason.to_string().contains("invalid token"), "{reason}");
        assert!(
            auth.identify(&params(Some("garbage".into()), None))
                .is_err()
        );
    }
}
