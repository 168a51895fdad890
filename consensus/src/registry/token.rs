//! Join tokens: what a node presents to be admitted. Only the hash of the whole token is
//! stored (and travels in the log); a token is judged at the proposer's `now`.

use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Response};

/// A join token as stored: the secret never is, only the hash of the whole token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_hash: String,
    pub description: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
}

/// The state of a token at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenState {
    Valid,
    Expired,
    Used,
    Revoked,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::Expired => "expired",
            TokenState::Used => "used",
            TokenState::Revoked => "revoked",
        }
    }
}

impl TokenRecord {
    /// Judges the token at `now` (unix seconds). Revocation wins, then use count, then time.
    pub fn state(&self, now: i64) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if self.uses >= self.max_uses {
            TokenState::Used
        } else if now >= self.expires_at {
            TokenState::Expired
        } else {
            TokenState::Valid
        }
    }
}

pub(super) fn validate_token(token: &TokenRecord) -> Result<(), RegistryError> {
    if token.max_uses == 0 {
        return Err(RegistryError::InvalidToken(
            "a token must allow at least one use".into(),
        ));
    }
    if token.expires_at <= token.created_at {
        return Err(RegistryError::InvalidToken(
            "a token must expire after it is created".into(),
        ));
    }
    if token.secret_hash.len() != 64 || !token.secret_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RegistryError::InvalidToken(
            "the token hash must be 64 hex characters".into(),
        ));
    }
    Ok(())
}

impl Registry {
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    pub(super) fn create_token(&mut self, token: TokenRecord) -> Result<Response, RegistryError> {
        self.config()?;
        validate_token(&token)?;
        if self.tokens.contains_key(&token.id) {
            return Err(RegistryError::TokenExists { id: token.id });
        }
        self.tokens.insert(token.id.clone(), token);
        Ok(Response::Ok)
    }

    pub(super) fn revoke_token(&mut self, id: &str) -> Result<Response, RegistryError> {
        let token = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| RegistryError::TokenNotFound { id: id.to_string() })?;
        token.revoked = true;
        Ok(Response::Ok)
    }

    /// Whether `token_id` admits a node at `now` to one who presented `presented_hash`.
    /// Changes nothing: the use is counted by [`Registry::spend_token`] once the whole
    /// admission has passed. An unknown id and a wrong secret are the same
    /// [`RegistryError::JoinRefused`], and the hash is compared in constant time, so neither
    /// the answer nor its timing tells a guesser which part was wrong.
    pub(super) fn check_token(
        &self,
        token_id: &str,
        presented_hash: &str,
        now: i64,
    ) -> Result<(), RegistryError> {
        let token = self
            .tokens
            .get(token_id)
            .ok_or(RegistryError::JoinRefused)?;
        // Checked before the state so a wrong secret reveals nothing about the token.
        let stored = token.secret_hash.to_ascii_lowercase();
        if !membrane_crypto::token::hashes_equal(&stored, &presented_hash.to_ascii_lowercase()) {
            return Err(RegistryError::JoinRefused);
        }
        match token.state(now) {
            TokenState::Valid => Ok(()),
            TokenState::Expired => Err(RegistryError::TokenExpired {
                id: token_id.into(),
            }),
            TokenState::Revoked => Err(RegistryError::TokenRevoked {
                id: token_id.into(),
            }),
            TokenState::Used => Err(RegistryError::TokenUsedUp {
                id: token_id.into(),
                uses: token.uses,
            }),
        }
    }

    /// Counts one use of a token that [`Registry::check_token`] passed.
    pub(super) fn spend_token(&mut self, token_id: &str) {
        if let Some(token) = self.tokens.get_mut(token_id) {
            token.uses += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenState;
    use crate::registry::test_support::*;
    use crate::registry::{Command, RegistryError, Response};

    #[test]
    fn t21_token_faults_are_refused_with_their_reason_and_change_nothing() {
        let mut r = bootstrapped();
        let cmd = |id: &str, hash: &str, name: &str, now: i64| Command::AdmitNode {
            token_id: id.into(),
            presented_hash: hash.into(),
            node: new_node(name),
            now,
        };
        refused(&mut r, cmd("nosuch", HASH_A, "n2", T0), |e| {
            *e == RegistryError::JoinRefused
        });
        refused(&mut r, cmd("abcdef", HASH_B, "n2", T0), |e| {
            *e == RegistryError::JoinRefused
        });
        refused(&mut r, cmd("abcdef", HASH_A, "n2", T0 + 3600), |e| {
            matches!(e, RegistryError::TokenExpired { .. })
        });
        // Use it once; the single-use token is then used up.
        assert!(matches!(
            admit(&mut r, "abcdef", HASH_A, "n2", T0),
            Response::Node(_)
        ));
        refused(&mut r, cmd("abcdef", HASH_A, "n3", T0), |e| {
            matches!(e, RegistryError::TokenUsedUp { uses: 1, .. })
        });
        // Revoked.
        assert_eq!(
            r.apply(Command::CreateToken {
                token: token("ghijkl", HASH_B, 5)
            }),
            Response::Ok
        );
        assert_eq!(
            r.apply(Command::RevokeToken {
                id: "ghijkl".into()
            }),
            Response::Ok
        );
        refused(&mut r, cmd("ghijkl", HASH_B, "n3", T0), |e| {
            matches!(e, RegistryError::TokenRevoked { .. })
        });
        assert_eq!(r.token("ghijkl").unwrap().state(T0), TokenState::Revoked);
    }

    #[test]
    fn t30_token_validation() {
        let mut r = bootstrapped();
        let mut bad = token("tok001", HASH_B, 0);
        refused(&mut r, Command::CreateToken { token: bad.clone() }, |e| {
            matches!(e, RegistryError::InvalidToken(_))
        });
        bad.max_uses = 1;
        bad.expires_at = bad.created_at;
        refused(&mut r, Command::CreateToken { token: bad }, |e| {
            matches!(e, RegistryError::InvalidToken(_))
        });
        refused(
            &mut r,
            Command::CreateToken {
                token: token("abcdef", HASH_B, 1),
            },
            |e| matches!(e, RegistryError::TokenExists { .. }),
        );
        refused(
            &mut r,
            Command::RevokeToken {
                id: "nosuch".into(),
            },
            |e| matches!(e, RegistryError::TokenNotFound { .. }),
        );
    }
}
