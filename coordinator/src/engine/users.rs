//! `CREATE USER`, `ALTER USER`, `DROP USER`, `GRANT`, `SHOW USERS`, and the
//! first admin.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
use datafusion::common::Result;
use tessera_sql::UserRole;
use tessera_worker::ErrorKind;
use tessera_worker::membership::unix_now_ms;

use super::ddl::ready;
use super::{Coordinator, Planned, empty};
use crate::auth::{generate_password, hash_password};
use crate::catalog_state::UserRecord;

/// The first admin's name.
pub const FIRST_ADMIN: &str = "admin";

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(ErrorKind::InvalidArgument.error(format!(
            "'{name}' cannot be a user name: 1 to 255 bytes, no control characters"
        )));
    }
    Ok(())
}

fn no_such_user(name: &str) -> datafusion::common::DataFusionError {
    ErrorKind::NotFound.error(format!(
        "user '{name}' does not exist; SHOW USERS lists the users"
    ))
}

/// Refuses a change (to `name`) that leaves the cluster without an admin.
fn an_admin_remains(
    users: &std::collections::BTreeMap<String, UserRecord>,
    name: &str,
) -> Result<()> {
    if users.values().any(|u| u.role == UserRole::Admin) {
        return Ok(());
    }
    Err(ErrorKind::FailedPrecondition.error(format!(
        "'{name}' is the last admin; GRANT admin TO another user first"
    )))
}

impl Coordinator {
    pub(super) async fn create_user(
        &self,
        name: &str,
        password: &str,
        role: Option<UserRole>,
    ) -> Result<Planned> {
        check_name(name)?;
        let hash = hash_password(password)?;
        self.catalog
            .update(|s| {
                if s.users.contains_key(name) {
                    return Err(ErrorKind::AlreadyExists.error(format!(
                        "user '{name}' already exists; ALTER USER {name} PASSWORD '...' changes \
                         its password"
                    )));
                }
                s.users.insert(
                    name.to_string(),
                    UserRecord {
                        password_hash: hash.clone(),
                        role: role.unwrap_or_default(),
                        generation: 1,
                        created_ms: unix_now_ms(),
                    },
                );
                Ok(())
            })
            .await?;
        Ok(empty())
    }

    pub(super) async fn alter_user(&self, name: &str, password: &str) -> Result<Planned> {
        let hash = hash_password(password)?;
        self.catalog
            .update(|s| {
                let user = s.users.get_mut(name).ok_or_else(|| no_such_user(name))?;
                user.password_hash = hash.clone();
                user.generation += 1;
                Ok(())
            })
            .await?;
        Ok(empty())
    }

    pub(super) async fn drop_user(&self, name: &str, if_exists: bool) -> Result<Planned> {
        self.catalog
            .update(|s| {
                if s.users.remove(name).is_none() && !if_exists {
                    return Err(no_such_user(name));
                }
                an_admin_remains(&s.users, name)
            })
            .await?;
        Ok(empty())
    }

    pub(super) async fn grant(&self, role: UserRole, name: &str) -> Result<Planned> {
        self.catalog
            .update(|s| {
                let user = s.users.get_mut(name).ok_or_else(|| no_such_user(name))?;
                if user.role != role {
                    user.role = role;
                    user.generation += 1;
                }
                an_admin_remains(&s.users, name)
            })
            .await?;
        Ok(empty())
    }

    pub(super) fn show_users(&self) -> Result<Planned> {
        let state = self.catalog.state()?;
        let names: Vec<&str> = state.users.keys().map(String::as_str).collect();
        let roles: Vec<&str> = state.users.values().map(|u| u.role.as_str()).collect();
        let created: Vec<i64> = state
            .users
            .values()
            .map(|u| i64::try_from(u.created_ms).unwrap_or(i64::MAX))
            .collect();
        ready(vec![
            ("user_name", Arc::new(StringArray::from(names)) as ArrayRef),
            ("role", Arc::new(StringArray::from(roles))),
            (
                "created",
                Arc::new(TimestampMillisecondArray::from(created).with_timezone("UTC")),
            ),
        ])
    }

    /// Makes the first admin if there are no users: `admin`, with
    /// `password`, or a generated one (returned, to be shown once).
    pub async fn ensure_admin(&self, password: Option<&str>) -> Result<Option<String>> {
        if !self.catalog.state()?.users.is_empty() {
            return Ok(None);
        }
        let generated = password.is_none().then(generate_password);
        let password = password.or(generated.as_deref()).unwrap_or_default();
        let hash = hash_password(password)?;
        self.catalog
            .update(|s| {
                if s.users.is_empty() {
                    s.users.insert(
                        FIRST_ADMIN.to_string(),
                        UserRecord {
                            password_hash: hash.clone(),
                            role: UserRole::Admin,
                            generation: 1,
                            created_ms: unix_now_ms(),
                        },
                    );
                }
                Ok(())
            })
            .await?;
        Ok(generated)
    }
}
