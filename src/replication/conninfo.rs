//! Connection strings, as libpq reads them: `key=value` pairs (values may
//! be single-quoted, with `\'` and `\\` escapes) or a
//! `postgresql://user:password@host:port/dbname?key=value` URI.
//!
//! Only what a replication client needs is kept; unknown keys are refused
//! with their name, so a typo never silently connects somewhere else.

use std::fmt;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid connection string: {0}")]
pub struct ConnInfoError(String);

/// Where and as whom to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    /// Seconds to wait for the TCP connection (libpq's `connect_timeout`).
    pub connect_timeout: Option<u64>,
    /// The password file to read instead of `PGPASSFILE` or `~/.pgpass`
    /// (libpq's `passfile`).
    pub passfile: Option<String>,
}

impl Default for ConnInfo {
    fn default() -> Self {
        ConnInfo {
            host: "127.0.0.1".into(),
            port: 5432,
            user: None,
            password: None,
            dbname: None,
            application_name: None,
            connect_timeout: None,
            passfile: None,
        }
    }
}

/// Shows the connection string without its password.
impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The `key=value` form, with the password left out: safe for logs.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host={} port={}", self.host, self.port)?;
        if let Some(u) = &self.user {
            write!(f, " user={}", quote(u))?;
        }
        if let Some(a) = &self.application_name {
            write!(f, " application_name={}", quote(a))?;
        }
        if let Some(p) = &self.passfile {
            write!(f, " passfile={}", quote(p))?;
        }
        if let Some(t) = self.connect_timeout {
            write!(f, " connect_timeout={t}")?;
        }
        Ok(())
    }
}

/// The account this process runs as: libpq's default role, initdb's first
/// role, and the home of `~/.pgpass` when `HOME` is unset.
pub fn os_user() -> Option<nix::unistd::User> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
}

/// Whether `host` names the machine it is read on: loopback or a socket.
pub fn is_local_host(host: &str) -> bool {
    host.starts_with('/')
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

impl ConnInfo {
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            return parse_uri(rest);
        }
        let mut info = ConnInfo::default();
        for (k, v) in parse_pairs(s)? {
            info.set(&k, v)?;
        }
        Ok(info)
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        match key {
            "host" | "hostaddr" => self.host = value,
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| ConnInfoError(format!("port \"{value}\" is not a port number")))?
            }
            "user" => self.user = Some(value),
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "application_name" => self.application_name = Some(value),
            "passfile" => self.passfile = Some(value),
            "connect_timeout" => {
                self.connect_timeout = Some(value.parse().map_err(|_| {
                    ConnInfoError(format!("connect_timeout \"{value}\" is not a number of seconds"))
                })?)
            }
            // walship connects without TLS: modes that would use it when
            // offered are fine, modes that demand it are refused rather
            // than silently sending the password in the clear.
            "sslmode" | "gssencmode" => match value.as_str() {
                "disable" | "allow" | "prefer" => {}
                _ => {
                    return Err(ConnInfoError(format!(
                        "{key}={value} is not supported: walship connects without encryption (use it on loopback or a trusted network, or a tunnel such as stunnel or WireGuard, with {key}=prefer or disable)"
                    )))
                }
            },
            // Accepted for compatibility with libpq strings.
            "options" | "keepalives" | "replication" => {}
            other => {
                return Err(ConnInfoError(format!(
                    "unknown keyword \"{other}\" (walship understands host, port, user, password, passfile, dbname, application_name, connect_timeout)"
                )))
            }
        }
        Ok(())
    }

    /// The full `key=value` string, password included (for files that
    /// store it, such as `primary_conninfo`).
    pub fn to_conninfo_string(&self) -> String {
        let mut s = self.to_string();
        if let Some(p) = &self.password {
            s.push_str(&format!(" password={}", quote(p)));
        }
        if let Some(d) = &self.dbname {
            s.push_str(&format!(" dbname={}", quote(d)));
        }
        s
    }
}

/// Quotes a value when it needs it.
fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\', '=']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError(format!(
                "missing \"=\" after \"{key}\" (expected key=value pairs)"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(ConnInfoError(format!(
                            "unterminated quoted value for \"{key}\""
                        )))
                    }
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(ConnInfoError(format!(
                                "unterminated quoted value for \"{key}\""
                            )))
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(c) = chars.next() {
                        value.push(c);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

fn parse_uri(rest: &str) -> Result<ConnInfo, ConnInfoError> {
    let mut info = ConnInfo::default();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(u) = userinfo {
        let (user, password) = u.split_once(':').unwrap_or((u, ""));
        if !user.is_empty() {
            info.user = Some(user.to_string());
        }
        if !password.is_empty() {
            info.password = Some(password.to_string());
        }
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || p.is_empty() => (h, Some(p)),
        _ => (hostport, None),
    };
    if !host.is_empty() {
        info.host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        info.set("port", p.to_string())?;
    }
    if !db.is_empty() {
        info.dbname = Some(db.to_string());
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConnInfoError(format!("URI parameter \"{pair}\" has no value")))?;
        info.set(k, v.to_string())?;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs() {
        let c = ConnInfo::parse(
            "host=127.0.0.1 port=5433 user=rep application_name='s 1' password='it\\'s' passfile='/etc/walship/pg pass'",
        )
        .unwrap();
        assert_eq!(c.passfile.as_deref(), Some("/etc/walship/pg pass"));
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 5433);
        assert_eq!(c.user.as_deref(), Some("rep"));
        assert_eq!(c.application_name.as_deref(), Some("s 1"));
        assert_eq!(c.password.as_deref(), Some("it's"));
        let again = ConnInfo::parse(&c.to_conninfo_string()).unwrap();
        assert_eq!(again, c);
        assert!(
            !c.to_string().contains("it's"),
            "Display hides the password"
        );
    }

    #[test]
    fn uris() {
        let c =
            ConnInfo::parse("postgresql://rep:pw@localhost:6000/db?application_name=s1").unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.user.as_deref(),
                c.password.as_deref()
            ),
            ("localhost", 6000, Some("rep"), Some("pw"))
        );
        assert_eq!(c.dbname.as_deref(), Some("db"));
        assert_eq!(c.application_name.as_deref(), Some("s1"));
        assert_eq!(ConnInfo::parse("postgres://h").unwrap().port, 5432);
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        for (s, what) in [
            ("host", "missing \"=\""),
            ("port=x", "not a port"),
            ("hots=a", "unknown keyword \"hots\""),
            ("password='abc", "unterminated"),
            ("host=a sslmode=require", "sslmode=require is not supported"),
            ("host=a sslmode=verify-full", "without encryption"),
            (
                "host=a gssencmode=require",
                "gssencmode=require is not supported",
            ),
        ] {
            let e = ConnInfo::parse(s).unwrap_err().to_string();
            assert!(e.contains(what), "{s}: {e}");
        }
        for ok in [
            "host=a sslmode=prefer",
            "host=a sslmode=disable",
            "host=a sslmode=allow",
        ] {
            assert!(ConnInfo::parse(ok).is_ok(), "{ok}");
        }
    }
}
