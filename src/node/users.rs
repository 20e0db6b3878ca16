//! `DIR/users`: the roles that may connect, one per line:
//! `name:attributes:verifier`, attributes a comma list of `superuser`,
//! `replication` and `nologin` (the role may not connect), the verifier PostgreSQL's SCRAM-SHA-256 form
//! (`SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey`) or empty.
//! Passwords themselves are never stored.
//!
//! The file is rewritten (atomically) by CREATE / ALTER / DROP ROLE, whose
//! ROLES record carries its whole text to standbys and to crash recovery,
//! so every node of a system has the primary's roles. An edit by hand
//! belongs on a primary, reloaded with SIGHUP, which logs the edited roles
//! as a role change (standbys and crash recovery keep them; an edit not
//! yet reloaded is lost to the next change in SQL). On a standby an edit
//! lasts until its replay of the primary's next change rewrites the file.

use std::path::Path;

use thiserror::Error;

use crate::durable::{self, FileError, IoContext};
use crate::protocol::scram::ScramVerifier;
use crate::wal::Lsn;

/// One role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub superuser: bool,
    pub replication: bool,
    /// Whether the role may connect (`nologin` in the file when not).
    pub login: bool,
    pub verifier: Option<ScramVerifier>,
}

impl User {
    /// A role with no attribute and no password, that may connect.
    pub fn new(name: &str) -> User {
        User {
            name: name.to_string(),
            superuser: false,
            replication: false,
            login: true,
            verifier: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum UserError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}:{line}: {why}")]
    Syntax {
        file: String,
        line: usize,
        why: String,
    },
}

/// All roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    pub users: Vec<User>,
}

impl Users {
    /// The first role of a new cluster: superuser, may replicate.
    pub fn first(name: &str) -> Users {
        Users {
            users: vec![User {
                superuser: true,
                replication: true,
                ..User::new(name)
            }],
        }
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn read(path: &Path) -> Result<Users, UserError> {
        let text = std::fs::read_to_string(path).at("read", path)?;
        Users::parse(&text, &path.display().to_string())
    }

    /// The roles a ROLES record at `lsn` carries.
    pub fn from_record(text: &[u8], lsn: Lsn) -> Result<Users, UserError> {
        let label = format!("ROLES record at {lsn}");
        let text = std::str::from_utf8(text).map_err(|_| UserError::Syntax {
            file: label.clone(),
            line: 0,
            why: "not UTF-8".into(),
        })?;
        Users::parse(text, &label)
    }

    /// The roles `text` lists; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Users, UserError> {
        let mut users = Users::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: &str| UserError::Syntax {
                file: file.to_string(),
                line: i + 1,
                why: why.to_string(),
            };
            let mut fields = line.splitn(3, ':');
            let name = fields.next().unwrap_or_default();
            let attrs = fields
                .next()
                .ok_or_else(|| err("expected name:attributes:verifier"))?;
            let verifier = fields.next().unwrap_or_default();
            if name.is_empty() {
                return Err(err("empty role name"));
            }
            if users.users.iter().any(|u| u.name == name) {
                return Err(err(&format!(
                    "role \"{name}\" is listed twice (keep one line per role)"
                )));
            }
            let mut user = User::new(name);
            for a in attrs.split(',').filter(|a| !a.is_empty()) {
                match a {
                    "superuser" => user.superuser = true,
                    "replication" => user.replication = true,
                    "nologin" => user.login = false,
                    _ => {
                        return Err(err(&format!(
                            "unknown attribute \"{a}\" (expected superuser, replication or nologin)"
                        )))
                    }
                }
            }
            if !verifier.is_empty() {
                user.verifier = Some(
                    ScramVerifier::parse(verifier)
                        .ok_or_else(|| err("invalid SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey; set a password with ALTER ROLE ... PASSWORD or walship init --pwfile rather than by hand)"))?,
                );
            }
            users.users.push(user);
        }
        Ok(users)
    }

    pub fn write(&self, path: &Path) -> Result<(), UserError> {
        durable::replace_file(path, self.to_text().as_bytes())?;
        Ok(())
    }

    /// The file's text: what [`Users::parse`] reads back as these roles.
    pub fn to_text(&self) -> String {
        let mut text =
            String::from("# name:attributes:SCRAM-SHA-256 verifier (see walship-init(1))\n");
        for u in &self.users {
            let mut attrs = Vec::new();
            if u.superuser {
                attrs.push("superuser");
            }
            if u.replication {
                attrs.push("replication");
            }
            if !u.login {
                attrs.push("nologin");
            }
            let verifier = u
                .verifier
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            text.push_str(&format!("{}:{}:{}\n", u.name, attrs.join(","), verifier));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        let mut u = Users::first("alice");
        u.users.push(User {
            verifier: Some(ScramVerifier::new("pw")),
            ..User::new("bob")
        });
        u.users.push(User {
            replication: true,
            login: false,
            ..User::new("carol")
        });
        u.write(&p).unwrap();
        assert_eq!(Users::read(&p).unwrap(), u);
        std::fs::write(&p, "carol:wizard:\n").unwrap();
        assert!(Users::read(&p)
            .unwrap_err()
            .to_string()
            .contains(":1: unknown attribute"));
        std::fs::write(&p, "carol:superuser:\n# again\ncarol::\n").unwrap();
        assert!(Users::read(&p)
            .unwrap_err()
            .to_string()
            .contains(":3: role \"carol\" is listed twice"));
    }
}
