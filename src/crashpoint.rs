//! Named crash points for crash tests: with `WALSHIP_CRASH_AT=NAME` in its
//! environment, a process that reaches the point `NAME` kills itself with
//! SIGKILL on the spot — exactly what `kill -9` at that moment would do,
//! but at a chosen step instead of a lucky one. Unset (always, outside
//! tests), reaching a point costs one comparison.

use std::sync::OnceLock;

/// The environment variable naming the point to die at.
pub const ENV: &str = "WALSHIP_CRASH_AT";

/// Dies here if `WALSHIP_CRASH_AT` names this point.
pub fn reach(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        eprintln!("{ENV}={name}: crash point reached, killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
