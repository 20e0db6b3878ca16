//! Where a client's password comes from when the connection string has
//! none, as libpq does it: `PGPASSWORD`, then the password file (the
//! connection string's `passfile`, else `PGPASSFILE`, else `~/.pgpass`). A password in a connection string
//! given on the command line shows in `ps`; these do not.
//!
//! The file's lines are `host:port:database:user:password`, `*` matching
//! anything and `\` escaping `:` or `\`; the first matching line wins. As
//! libpq does, a file that others may read is not used (with a warning),
//! and a replication connection matches the database `replication`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tracing::warn;

/// The socket directory libpq treats as `localhost` in the file.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// What a connection is matched by.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
    /// The connection string's `passfile`, if it has one.
    pub passfile: Option<&'a str>,
}

/// The password for `target` from `PGPASSWORD` or the password file.
pub fn lookup(target: &Target<'_>) -> Option<String> {
    if let Some(pw) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Some(pw);
    }
    let path = password_file(target.passfile)?;
    let meta = fs::metadata(&path).ok()?;
    if !meta.is_file() {
        warn!(
            "password file {} is not a plain file; not using it",
            path.display()
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(
            "password file {} has group or world access; not using it (permissions should be u=rw (0600) or less: chmod 0600 {})",
            path.display(),
            path.display()
        );
        return None;
    }
    match fs::read(&path) {
        Ok(bytes) => find(&String::from_utf8_lossy(&bytes), target),
        Err(e) => {
            warn!(
                "could not read password file {}: {}",
                path.display(),
                crate::durable::io_cause(&e)
            );
            None
        }
    }
}

/// The password file a lookup reads: the connection string's `passfile`,
/// else `PGPASSFILE`, else `~/.pgpass`.
pub fn password_file(passfile: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = passfile.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| super::conninfo::os_user().map(|u| u.dir))?;
    Some(home.join(".pgpass"))
}

/// The password of the first line of `text` that matches `target` and
/// has one.
fn find(text: &str, target: &Target<'_>) -> Option<String> {
    let host = if target.host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        target.host
    };
    let port = target.port.to_string();
    let wanted = [host, port.as_str(), target.database, target.user];
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let fields = split(line);
            let password = &fields.get(4)?.text;
            let matches = fields
                .iter()
                .zip(wanted)
                .all(|(field, want)| field.any || field.text == want);
            (matches && !password.is_empty()).then(|| password.clone())
        })
}

/// One field of a line: its text with escapes removed, and whether it was
/// a bare `*` (an escaped one is a literal star).
struct Field {
    text: String,
    any: bool,
}

/// Splits a line at unescaped `:` into at most five fields (libpq ends
/// the password at the next one).
fn split(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut text = String::new();
    let mut escaped = false;
    let mut chars = line.chars();
    while fields.len() < 5 {
        let next = chars.next();
        match next {
            Some('\\') => match chars.next() {
                Some(c) => {
                    text.push(c);
                    escaped = true;
                }
                None => text.push('\\'),
            },
            Some(':') | None => {
                let any = text == "*" && !escaped;
                fields.push(Field {
                    text: std::mem::take(&mut text),
                    any,
                });
                escaped = false;
                if next.is_none() {
                    break;
                }
            }
            Some(c) => text.push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(host: &'a str, database: &'a str) -> Target<'a> {
        Target {
            host,
            port: 5433,
            database,
            user: "rep",
            passfile: None,
        }
    }

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    \n\
                    10.0.0.9:5433:*:rep:other\n\
                    10.0.0.5:5433:replication:rep:p\\:w\\\\d\n\
                    *:*:*:rep:fallback\n";
        assert_eq!(
            find(text, &target("10.0.0.5", "replication")).as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            find(text, &target("10.0.0.5", "walship")).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            find("10.0.0.5:5433:*:someone:x\n", &target("10.0.0.5", "db")),
            None
        );
    }

    #[test]
    fn an_escaped_star_is_a_star_and_the_password_ends_at_a_colon() {
        let text = "\\*:5433:*:rep:first\n*:5433:*:rep:pw:extra\n";
        assert_eq!(find(text, &target("h", "db")).as_deref(), Some("pw"));
        assert_eq!(find(text, &target("*", "db")).as_deref(), Some("first"));
        assert_eq!(
            find("*:*:*:rep:\n", &target("h", "db")),
            None,
            "no password"
        );
    }

    #[test]
    fn the_default_socket_directory_is_localhost_and_short_lines_never_match() {
        let text = "localhost:5433:*:rep:sock\n";
        assert_eq!(
            find(text, &target(DEFAULT_SOCKET_DIR, "db")).as_deref(),
            Some("sock")
        );
        assert_eq!(find(text, &target("/tmp", "db")), None);
        assert_eq!(find("*:*:*:rep\n", &target("h", "db")), None);
    }
}
