//! The operator's shell commands (`restore_command`, `--fence-command`):
//! how one ended, said as a shell user would.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// `exit 1`, `exit 127 (command not found)`, `killed by signal 9`.
pub fn ended(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(127), _) => "exit 127 (command not found)".into(),
        // Also what walship restore exits with for a damaged archive.
        (Some(126), _) => "exit 126 (a real failure, or not executable)".into(),
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}
