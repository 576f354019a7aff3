//! Who may call a coordinator: every call is checked by an interceptor
//! before the Flight SQL service sees it. Another process of the cluster
//! presents the cluster's secret; a client presents the bearer token its
//! sign-in (Handshake with basic credentials) got, or basic credentials on
//! the call itself. With `--insecure`, anyone may call, as anything.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::alphabet::STANDARD as ALPHABET;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use tonic::{Request, Status};

use crate::auth::{Principal, Tokens, sign_in};
use crate::catalog_state::UserRecord;
use crate::flight_common::Serving;

/// How a coordinator lets clients in.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// Users sign in; tokens last this long.
    SignIn { token_ttl: Duration },
    /// Anyone who reaches the port may do anything.
    Insecure,
}

pub struct Auth {
    access: Access,
    tokens: Tokens,
    serving: Serving,
}

const HOW_TO_SIGN_IN: &str = "sign in with a user and password: ADBC's username and password \
                              options, JDBC's user and password properties, or `tessera shell \
                              --user NAME` (password from TESSERA_PASSWORD or a prompt)";

impl Auth {
    pub fn new(access: Access, serving: Serving) -> Arc<Self> {
        let ttl = match access {
            Access::SignIn { token_ttl } => token_ttl,
            Access::Insecure => Duration::ZERO,
        };
        Arc::new(Self {
            access,
            tokens: Tokens::new(ttl),
            serving,
        })
    }

    fn users(&self) -> std::collections::BTreeMap<String, UserRecord> {
        crate::flight_common::current(&self.serving)
            .catalog()
            .users()
            .unwrap_or_default()
    }

    /// Who makes the call `request`, or why it is refused.
    fn identify<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let metadata = request.metadata();
        if tessera_worker::secret::presents_secret(metadata) {
            return Ok(Principal::Member);
        }
        if matches!(self.access, Access::Insecure) {
            return Ok(Principal::Anyone);
        }
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
        let Some(auth) = metadata.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(Status::unauthenticated(format!(
                "this server requires signing in; {HOW_TO_SIGN_IN}"
            )));
        };
        if let Some(token) = auth.strip_prefix("Bearer ") {
            return self
                .tokens
                .check(token.trim(), &self.users())
                .map_err(|why| {
                    tracing::info!(%peer, why, "refused a token");
                    Status::unauthenticated(format!("{why}; {HOW_TO_SIGN_IN}"))
                });
        }
        if let Some(basic) = auth.strip_prefix("Basic ") {
            // Clients differ on padding (Go's ADBC leaves it out).
            let base64 = GeneralPurpose::new(
                &ALPHABET,
                GeneralPurposeConfig::new()
                    .with_decode_padding_mode(DecodePaddingMode::Indifferent),
            );
            let decoded = base64
                .decode(basic.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Status::unauthenticated("the basic credentials are malformed"))?;
            let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
            return sign_in(&self.users(), user, password).ok_or_else(|| {
                tracing::warn!(%peer, user, "refused a sign-in");
                Status::unauthenticated(format!(
                    "wrong user name or password for '{user}'; check them (an admin can reset \
                     a password with ALTER USER {user} PASSWORD '...')"
                ))
            });
        }
        Err(Status::unauthenticated(format!(
            "unknown kind of authorization; {HOW_TO_SIGN_IN}"
        )))
    }

    /// The interceptor that admits calls, and tells the service who makes
    /// them (a [`Principal`] in the request's extensions).
    pub fn admit(self: &Arc<Self>, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.identify(&request)?;
        let with_password = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.starts_with("Basic "));
        if with_password && matches!(principal, Principal::User { .. }) {
            request.extensions_mut().insert(PasswordChecked);
        }
        request.extensions_mut().insert(principal);
        Ok(request)
    }

    /// A bearer token for a user who signed in; `None` for anyone else.
    pub fn issue(&self, principal: &Principal) -> Option<String> {
        let Principal::User { name, .. } = principal else {
            return None;
        };
        let users = self.users();
        users
            .get(name)
            .map(|record| self.tokens.issue(name, record))
    }
}

/// Who makes the call `request`; a call nobody admitted is refused.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated(format!("not signed in; {HOW_TO_SIGN_IN}")))
}

/// Who makes the call, for the query log: the user, the client's address,
/// and whether it sees every query.
pub fn caller<T>(who: &Principal, request: &Request<T>) -> crate::query_log::Caller {
    crate::query_log::Caller {
        user: match who {
            Principal::User { name, .. } => Some(name.clone()),
            Principal::Member | Principal::Anyone => None,
        },
        client: request.remote_addr().map(|a| a.to_string()),
        admin: !who.reads_only(),
        run: 0,
        tag: request
            .metadata()
            .get(crate::progress::TAG_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|t| t.chars().take(crate::progress::MAX_TAG).collect()),
    }
}

/// Whether the call was signed in with a password (not a token): only
/// such a sign-in gets a new token.
#[derive(Debug, Clone, Copy)]
pub struct PasswordChecked;

/// Refuses `sql` to a user who may only read, unless it only reads (as
/// the session it runs in plans it: call inside that session).
pub async fn allow(
    coordinator: &crate::engine::Coordinator,
    principal: &Principal,
    sql: &str,
) -> Result<(), Status> {
    if principal.reads_only() && !coordinator.reader_may_run(sql).await {
        return Err(Status::permission_denied(format!(
            "user '{}' may only read tables (role reader), and this statement changes data or \
             the server, or reads files on it; an admin can GRANT admin TO {}",
            principal.name(),
            principal.name()
        )));
    }
    Ok(())
}
