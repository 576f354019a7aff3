//! Users, passwords and bearer tokens. Passwords are kept as salted argon2
//! hashes (PHC strings) in the catalog; a client signs in once (Flight SQL
//! Handshake with basic credentials) and presents the bearer token it got
//! on every call after. A token expires, and dies with a change of its
//! user (password, role, drop).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use datafusion::common::{DataFusionError, Result};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tessera_sql::UserRole;

use crate::catalog_state::UserRecord;

/// How long a token is good for unless `--token-ttl` says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Who makes a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A signed-in user.
    User { name: String, role: UserRole },
    /// Another process of the cluster (it checked its caller).
    Member,
    /// Anyone: the server runs with `--insecure`.
    Anyone,
}

impl Principal {
    /// Whether it may only read.
    pub fn reads_only(&self) -> bool {
        matches!(
            self,
            Principal::User {
                role: UserRole::Reader,
                ..
            }
        )
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::User { name, .. } => name,
            Principal::Member => "(cluster member)",
            Principal::Anyone => "(anyone)",
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A salted argon2 hash of `password`.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| DataFusionError::Internal(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DataFusionError::Internal(format!("password hash: {e}")))
}

/// Whether `password` is the one `hash` was made from.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A password for the first admin, when none is given.
pub fn generate_password() -> String {
    hex(&random_bytes::<12>())
}

struct Issued {
    secret: String,
    user: String,
    /// The user's generation and creation: a user dropped and made again
    /// is another user, whose tokens these are not.
    generation: u64,
    created_ms: u64,
    expires: Instant,
}

/// The bearer tokens this coordinator handed out.
pub struct Tokens {
    ttl: Duration,
    issued: Mutex<HashMap<String, Issued>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// A new token for `user` (at `record`'s generation): `<id>.<secret>`.
    pub fn issue(&self, user: &str, record: &UserRecord) -> String {
        let id = hex(&random_bytes::<8>());
        let secret = hex(&random_bytes::<24>());
        if let Ok(mut issued) = self.issued.lock() {
            issued.retain(|_, t| t.expires > Instant::now());
            issued.insert(
                id.clone(),
                Issued {
                    secret: secret.clone(),
                    user: user.to_string(),
                    generation: record.generation,
                    created_ms: record.created_ms,
                    expires: Instant::now() + self.ttl,
                },
            );
        }
        format!("{id}.{secret}")
    }

    /// The user a token signs in, if it is one this coordinator issued, it
    /// has not expired, and its user has not changed since.
    pub fn check(
        &self,
        token: &str,
        users: &BTreeMap<String, UserRecord>,
    ) -> std::result::Result<Principal, &'static str> {
        let (id, secret) = token.split_once('.').ok_or("the token is malformed")?;
        let issued = self.issued.lock().map_err(|_| "token store poisoned")?;
        let t = issued
            .get(id)
            .ok_or("the token is unknown to this coordinator")?;
        if !bool::from(t.secret.as_bytes().ct_eq(secret.as_bytes())) {
            return Err("the token is unknown to this coordinator");
        }
        if t.expires <= Instant::now() {
            return Err("the token expired");
        }
        match users.get(&t.user) {
            Some(u) if u.generation == t.generation && u.created_ms == t.created_ms => {
                Ok(Principal::User {
                    name: t.user.clone(),
                    role: u.role,
                })
            }
            _ => Err("the token was revoked (its user changed or was dropped)"),
        }
    }
}

/// The user `name` with `password`, if they match.
pub fn sign_in(
    users: &BTreeMap<String, UserRecord>,
    name: &str,
    password: &str,
) -> Option<Principal> {
    let user = users.get(name)?;
    verify_password(password, &user.password_hash).then(|| Principal::User {
        name: name.to_string(),
        role: user.role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(password: &str, generation: u64) -> UserRecord {
        UserRecord {
            password_hash: hash_password(password).unwrap(),
            role: UserRole::Reader,
            generation,
            created_ms: 0,
        }
    }

    #[test]
    fn passwords_hash_with_a_salt_and_verify() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &a));
        assert!(!verify_password("s3cret ", &a));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn tokens_expire_and_die_with_their_user() {
        let mut users = BTreeMap::from([("ana".to_string(), record("pw", 1))]);
        let tokens = Tokens::new(Duration::from_secs(60));
        let t = tokens.issue("ana", &users["ana"]);
        assert!(matches!(
            tokens.check(&t, &users),
            Ok(Principal::User { .. })
        ));
        let (id, _) = t.split_once('.').unwrap();
        assert!(tokens.check(&format!("{id}.forged"), &users).is_err());
        assert!(tokens.check("garbage", &users).is_err());
        // Dropped and made again: another user.
        let mut again = users.clone();
        again.get_mut("ana").unwrap().created_ms = 5;
        assert!(tokens.check(&t, &again).is_err());
        users.get_mut("ana").unwrap().generation = 2;
        assert_eq!(
            tokens.check(&t, &users),
            Err("the token was revoked (its user changed or was dropped)")
        );
        let short = Tokens::new(Duration::ZERO);
        let t = short.issue("ana", &users["ana"]);
        assert_eq!(short.check(&t, &users), Err("the token expired"));
    }
}
