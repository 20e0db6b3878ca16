//! What CREATE, ALTER and DROP ROLE do to the roles, and who may do it:
//! decided here against the roles as they are, written by the caller.
//!
//! The rules are PostgreSQL's, for the attributes walship has: only a
//! superuser manages roles, except that any role may change its own
//! password; the current role cannot be dropped; names starting `pg_` are
//! reserved. One rule is walship's own: some superuser that may log in
//! stays, as nobody could manage roles without one.

use super::users::{User, Users};
use crate::protocol::scram::ScramVerifier;
use crate::sql::parse::{RoleOptions, RoleStatement, SESSION_ROLE_WORDS};
use crate::sqlstate::{code, PgError};

/// PostgreSQL's limit on a name (NAMEDATALEN - 1 bytes).
const MAX_NAME: usize = 63;

/// The roles after `statements` (a transaction's, in order), run by the
/// role `by`, and the notices for its client; or why one is refused, with
/// nothing changed.
pub fn apply(
    users: &Users,
    by: &str,
    statements: &[RoleStatement],
) -> Result<(Users, Vec<PgError>), PgError> {
    apply_hashing(users, by, statements, true)
}

/// Whether `statements` would succeed, as [`apply`] decides it, and their
/// notices, without hashing any password: the cheap check that comes
/// before [`with_verifier`], so a role that may not change a password
/// cannot make the server hash one.
pub fn check(
    users: &Users,
    by: &str,
    statements: &[RoleStatement],
) -> Result<Vec<PgError>, PgError> {
    Ok(apply_hashing(users, by, statements, false)?.1)
}

/// [`apply`]; with `hash` false a password is checked but not hashed (its
/// role gets a verifier nothing matches).
fn apply_hashing(
    users: &Users,
    by: &str,
    statements: &[RoleStatement],
    hash: bool,
) -> Result<(Users, Vec<PgError>), PgError> {
    let mut after = users.clone();
    let mut notices = Vec::new();
    for statement in statements {
        apply_one(&mut after, by, statement, &mut notices, hash)?;
    }
    // Checked once all are applied: a block's DROP may follow its ALTER.
    let can_manage = |u: &Users| u.users.iter().any(|u| u.superuser && u.login);
    if can_manage(users) && !can_manage(&after) {
        return Err(denied(
            "no superuser that may log in would be left: walship would have no role left to manage roles",
        )
        .with_hint("make another role a superuser (with LOGIN) first"));
    }
    Ok((after, notices))
}

fn apply_one(
    after: &mut Users,
    by: &str,
    statement: &RoleStatement,
    notices: &mut Vec<PgError>,
    hash: bool,
) -> Result<(), PgError> {
    let is_superuser = after.get(by).is_some_and(|u| u.superuser);
    match statement {
        RoleStatement::Create { name, options } => {
            if !is_superuser {
                return Err(denied("permission denied to create role"));
            }
            check_name(name)?;
            if after.get(name).is_some() {
                return Err(PgError::new(
                    code::DUPLICATE_OBJECT,
                    format!("role \"{name}\" already exists"),
                ));
            }
            // As PostgreSQL's CREATE ROLE: no LOGIN unless it says so
            // (CREATE USER says so).
            let mut user = User {
                login: false,
                ..User::new(name)
            };
            set(&mut user, options, notices, hash)?;
            after.users.push(user);
        }
        RoleStatement::Alter { name, options } => {
            let name = name.as_deref().unwrap_or(by);
            let Some(user) = after.users.iter_mut().find(|u| u.name == name) else {
                return Err(missing(name));
            };
            let own_password = name == by
                && options.superuser.is_none()
                && options.replication.is_none()
                && options.login.is_none()
                && options.password.is_some();
            if !(is_superuser || own_password) {
                return Err(denied(format!(
                    "permission denied to alter role \"{name}\""
                )));
            }
            set(user, options, notices, hash)?;
        }
        RoleStatement::Drop { names, if_exists } => {
            if !is_superuser {
                return Err(denied("permission denied to drop role"));
            }
            for name in names {
                if *name == by {
                    return Err(PgError::new(
                        code::OBJECT_IN_USE,
                        "current user cannot be dropped",
                    ));
                }
                match after.users.iter().position(|u| u.name == *name) {
                    Some(i) => {
                        after.users.remove(i);
                    }
                    None if *if_exists => notices.push(PgError::new(
                        code::SUCCESSFUL_COMPLETION,
                        format!("role \"{name}\" does not exist, skipping"),
                    )),
                    None => return Err(missing(name)),
                }
            }
        }
    }
    Ok(())
}

fn denied(message: impl Into<String>) -> PgError {
    PgError::new(code::INSUFFICIENT_PRIVILEGE, message)
        .with_hint("only a superuser manages roles; any role may change its own password")
}

fn missing(name: &str) -> PgError {
    PgError::new(
        code::UNDEFINED_OBJECT,
        format!("role \"{name}\" does not exist"),
    )
}

/// A new role's name must fit the users file (no `:`, no line breaks, not
/// a comment) and PostgreSQL's rules.
fn check_name(name: &str) -> Result<(), PgError> {
    if name.starts_with("pg_") {
        return Err(PgError::new(
            code::RESERVED_NAME,
            format!("role name \"{name}\" is reserved"),
        )
        .with_detail("Role names starting with \"pg_\" are reserved."));
    }
    // What PostgreSQL's role specifications mean by these.
    if ["public", "none"].contains(&name) || SESSION_ROLE_WORDS.contains(&name) {
        return Err(PgError::new(
            code::RESERVED_NAME,
            format!("role name \"{name}\" is reserved"),
        ));
    }
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME {
        Some("it is longer than 63 bytes")
    } else if name.contains(':') || name.chars().any(char::is_control) {
        Some("it holds a colon or a control character")
    } else if name.starts_with('#') || name.trim() != name {
        Some("it starts with # or with a space, or ends with a space")
    } else {
        None
    };
    match why {
        Some(why) => Err(PgError::new(
            code::INVALID_NAME,
            format!("\"{name}\" cannot name a role: {why}"),
        )),
        None => Ok(()),
    }
}

fn set(
    user: &mut User,
    options: &RoleOptions,
    notices: &mut Vec<PgError>,
    hash: bool,
) -> Result<(), PgError> {
    if let Some(on) = options.superuser {
        user.superuser = on;
    }
    if let Some(on) = options.replication {
        user.replication = on;
    }
    if let Some(on) = options.login {
        user.login = on;
    }
    if let Some(password) = &options.password {
        user.verifier = match password.as_deref() {
            None => None,
            Some("") => {
                notices.push(PgError::new(
                    code::SUCCESSFUL_COMPLETION,
                    "empty string is not a valid password, clearing password",
                ));
                None
            }
            Some(text) => Some(verifier(text, hash)?),
        };
    }
    Ok(())
}

/// `statement` with its PASSWORD clause's password hashed into the text of
/// its verifier. Applying that again costs no hashing (4096 rounds of
/// PBKDF2): a transaction block's statements are applied at each
/// statement's check and again at COMMIT, and a COMMIT holds the roles
/// guard, which checkpoints wait for.
pub fn with_verifier(statement: &RoleStatement) -> Result<RoleStatement, PgError> {
    let mut statement = statement.clone();
    if let RoleStatement::Create { options, .. } | RoleStatement::Alter { options, .. } =
        &mut statement
    {
        // An empty one stays: it clears the password, as in PostgreSQL.
        if let Some(Some(text)) = &mut options.password {
            if !text.is_empty() {
                *text = verifier(text, true)?.to_string();
            }
        }
    }
    Ok(statement)
}

/// The verifier a PASSWORD clause gives: a SCRAM-SHA-256 verifier as it
/// is (what psql's `\password` sends), a password hashed into one (with
/// `hash` false, checked only: a verifier nothing matches stands in).
fn verifier(text: &str, hash: bool) -> Result<ScramVerifier, PgError> {
    if text.starts_with("SCRAM-SHA-256$") {
        return ScramVerifier::parse(text).ok_or_else(|| {
            PgError::new(
                code::INVALID_PARAMETER_VALUE,
                "the password looks like a SCRAM-SHA-256 verifier but is not a valid one",
            )
            .with_hint(
                "give SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey, or the password itself",
            )
        });
    }
    let md5 = text.len() == 35
        && text.starts_with("md5")
        && text[3..].bytes().all(|b| b.is_ascii_hexdigit());
    if md5 {
        return Err(PgError::new(
            code::FEATURE_NOT_SUPPORTED,
            "MD5 password verifiers are not supported",
        )
        .with_hint("give the password itself, or a SCRAM-SHA-256 verifier (password_encryption = 'scram-sha-256')"));
    }
    if !hash {
        return Ok(ScramVerifier::mock("", &[0; 32]));
    }
    Ok(ScramVerifier::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One statement's effect.
    fn apply(
        users: &Users,
        by: &str,
        statement: &RoleStatement,
    ) -> Result<(Users, Vec<PgError>), PgError> {
        super::apply(users, by, std::slice::from_ref(statement))
    }

    #[test]
    fn a_transactions_statements_apply_in_order() {
        let admin = Users::first("admin");
        let create = RoleStatement::Create {
            name: "app".into(),
            options: RoleOptions::default(),
        };
        let recreate = [
            RoleStatement::Drop {
                names: vec!["app".into()],
                if_exists: true,
            },
            create.clone(),
            alter("app", password("pw")),
        ];
        let (users, notices) = super::apply(&admin, "admin", &recreate).unwrap();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(users.get("app").unwrap().verifier.is_some());
        // The second CREATE fails: nothing of the first is kept.
        let twice = [create.clone(), create];
        assert_eq!(
            super::apply(&admin, "admin", &twice).unwrap_err().code,
            code::DUPLICATE_OBJECT
        );
    }

    fn alter(name: &str, options: RoleOptions) -> RoleStatement {
        RoleStatement::Alter {
            name: Some(name.into()),
            options,
        }
    }

    fn password(text: &str) -> RoleOptions {
        RoleOptions {
            password: Some(Some(text.into())),
            ..Default::default()
        }
    }

    #[test]
    fn superusers_manage_roles_and_anyone_changes_their_own_password() {
        let admin = Users::first("admin");
        let create = RoleStatement::Create {
            name: "app".into(),
            options: password("secret"),
        };
        let (users, notices) = apply(&admin, "admin", &create).unwrap();
        assert!(notices.is_empty());
        let app = users.get("app").unwrap();
        assert!(!app.superuser && !app.replication);
        assert!(app.verifier.is_some());
        assert_eq!(
            apply(&users, "admin", &create).unwrap_err().code,
            code::DUPLICATE_OBJECT
        );
        // app changes its own password, and nothing else.
        let (changed, _) = apply(&users, "app", &alter("app", password("new"))).unwrap();
        assert_ne!(changed.get("app").unwrap().verifier, app.verifier);
        let promote_self = RoleOptions {
            superuser: Some(true),
            ..Default::default()
        };
        for refused in [
            alter("app", promote_self),
            alter("admin", password("x")),
            RoleStatement::Drop {
                names: vec!["admin".into()],
                if_exists: false,
            },
        ] {
            assert_eq!(
                apply(&users, "app", &refused).unwrap_err().code,
                code::INSUFFICIENT_PRIVILEGE
            );
        }
    }

    #[test]
    fn dropping_and_the_last_superuser() {
        let (users, _) = apply(
            &Users::first("admin"),
            "admin",
            &RoleStatement::Create {
                name: "app".into(),
                options: RoleOptions::default(),
            },
        )
        .unwrap();
        let drop = |names: &[&str], if_exists| RoleStatement::Drop {
            names: names.iter().map(|n| n.to_string()).collect(),
            if_exists,
        };
        assert_eq!(
            apply(&users, "admin", &drop(&["admin"], false))
                .unwrap_err()
                .code,
            code::OBJECT_IN_USE
        );
        assert_eq!(
            apply(&users, "admin", &drop(&["ghost"], false))
                .unwrap_err()
                .code,
            code::UNDEFINED_OBJECT
        );
        let (after, notices) = apply(&users, "admin", &drop(&["app", "ghost"], true)).unwrap();
        assert_eq!(after, Users::first("admin"));
        assert_eq!(
            notices[0].message,
            "role \"ghost\" does not exist, skipping"
        );
        let demote = RoleOptions {
            superuser: Some(false),
            ..Default::default()
        };
        let refused = apply(&users, "admin", &alter("admin", demote)).unwrap_err();
        assert!(
            refused.message.contains("no superuser that may log in"),
            "{refused}"
        );
        // Nor by a block: each statement alone leaves one.
        let mut two = Users::first("admin");
        two.users.push(User {
            superuser: true,
            ..User::new("other")
        });
        let nologin = RoleOptions {
            login: Some(false),
            ..Default::default()
        };
        let block = [alter("admin", nologin), drop(&["other"], false)];
        assert!(apply(&two, "admin", &block[0]).is_ok());
        assert!(apply(&two, "admin", &block[1]).is_ok());
        let refused = super::apply(&two, "admin", &block).unwrap_err();
        assert!(
            refused.message.contains("no superuser that may log in"),
            "{refused}"
        );
    }

    #[test]
    fn names_and_passwords_are_checked() {
        let admin = Users::first("admin");
        let create = |name: &str, options| RoleStatement::Create {
            name: name.into(),
            options,
        };
        for (name, code) in [
            ("pg_monitor", code::RESERVED_NAME),
            ("public", code::RESERVED_NAME),
            ("current_user", code::RESERVED_NAME),
            ("a:b", code::INVALID_NAME),
            ("#x", code::INVALID_NAME),
            ("", code::INVALID_NAME),
        ] {
            let e = apply(&admin, "admin", &create(name, RoleOptions::default())).unwrap_err();
            assert_eq!(e.code, code, "{name}: {e}");
        }
        let md5 = format!("md5{}", "0".repeat(32));
        assert_eq!(
            apply(&admin, "admin", &create("a", password(&md5)))
                .unwrap_err()
                .code,
            code::FEATURE_NOT_SUPPORTED
        );
        assert_eq!(
            apply(&admin, "admin", &create("a", password("SCRAM-SHA-256$x")))
                .unwrap_err()
                .code,
            code::INVALID_PARAMETER_VALUE
        );
        let given = ScramVerifier::with_salt("pw", b"0123456789abcdef", 4096);
        let (users, _) =
            apply(&admin, "admin", &create("a", password(&given.to_string()))).unwrap();
        assert_eq!(users.get("a").unwrap().verifier.as_ref(), Some(&given));
        let (users, notices) = apply(&users, "admin", &alter("a", password(""))).unwrap();
        assert_eq!(users.get("a").unwrap().verifier, None);
        assert_eq!(notices[0].code, code::SUCCESSFUL_COMPLETION);
        // Hashed ahead (as the server does), an empty password still
        // clears it rather than becoming one.
        let (with, _) = apply(&admin, "admin", &create("a", password("pw"))).unwrap();
        let empty = with_verifier(&alter("a", password(""))).unwrap();
        let (users, notices) = apply(&with, "admin", &empty).unwrap();
        assert_eq!(users.get("a").unwrap().verifier, None);
        assert_eq!(notices[0].code, code::SUCCESSFUL_COMPLETION);
        // The privilege is checked before the password is looked at.
        let e = super::check(&with, "a", &[alter("admin", password(&md5))]).unwrap_err();
        assert_eq!(e.code, code::INSUFFICIENT_PRIVILEGE);
    }
}
