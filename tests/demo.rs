//! `walship demo`, the README's first command: the whole tour runs, says
//! what it shows, and leaves nothing behind — no process, no directory.

mod common;

/// The processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn the_demo_tours_failover_and_leaves_nothing_running() {
    let out = common::walship(&["demo"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", common::stderr(&out));
    for expected in [
        "walship init",
        "walship basebackup",
        "walship archive --follow",
        "commits acknowledged",
        "The primary crashes",
        "is the primary, epoch 2 on timeline 2",
        "Every acknowledged commit survived the crash",
        "SQLSTATE 25006",
        "fenced primary",
        "FENCED:    by epoch 2",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
    let dir = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("Removed "))
        .and_then(|d| d.strip_suffix('.'))
        .unwrap_or_else(|| panic!("the demo did not say what it removed:\n{said}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
    assert_eq!(processes_mentioning(dir), Vec::<String>::new());
}

#[test]
fn a_demo_stopped_by_sigterm_or_sighup_stops_its_servers_too() {
    use std::io::{BufRead, BufReader};
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
            .arg("demo")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let dir = format!(
            "{}/walship-demo-{}",
            std::env::temp_dir().display(),
            demo.id()
        );
        // Once the archiver runs, a primary, a standby and it are up.
        let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
        let mut said = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            said.push_str(&line);
            said.push('\n');
            if line.contains("walship archive --follow") {
                break;
            }
        }
        assert!(!processes_mentioning(&dir).is_empty(), "{said}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(demo.id() as i32), signal).unwrap();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = demo.wait().unwrap();
        assert_eq!(status.code(), Some(128 + signal as i32), "{said}{rest:?}");
        assert!(
            rest.iter()
                .any(|l| l.contains("stopping the tour's servers")),
            "{rest:?}"
        );
        assert!(
            !std::path::Path::new(&dir).exists(),
            "{dir} was left behind"
        );
        assert_eq!(processes_mentioning(&dir), Vec::<String>::new(), "{signal}");
    }
}
