//! The archive failing under the archiver: full, read-only, removed while a
//! daemon runs. Each failure is exit 1 with a message naming what and
//! where; nothing is lost, no partial file ever has a final name, and the
//! next run picks up where the last stopped. Needs root to mount a small
//! tmpfs (CI runs as root).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{archive, file_names, stderr, wait_until, Background, Node, Tmpfs};

/// The invariants after any failure: [`check_whole`], and a segment is
/// marked `.done` only when it is in the archive. Returns how many
/// segments are archived.
fn check_archive(adir: &Path, node: &Node) -> usize {
    let archived = check_whole(adir, node);
    for done in file_names(&node.dir.join("wal/archive_status"), "") {
        if let Some(seg) = done.strip_suffix(".done") {
            assert!(
                adir.join(seg).exists(),
                "{seg} marked done but not archived"
            );
        }
    }
    archived
}

/// Every segment under a final name in the archive is whole (identical to
/// the node's) and no temporary is left. Returns how many there are.
fn check_whole(adir: &Path, node: &Node) -> usize {
    let names = file_names(adir, "");
    assert!(
        names.iter().all(|n| !n.contains(".tmp.")),
        "a temporary file was left: {names:?}"
    );
    let archived: Vec<&String> = names.iter().filter(|n| n.len() == 24).collect();
    for seg in &archived {
        assert!(
            std::fs::read(adir.join(seg)).unwrap()
                == std::fs::read(node.dir.join("wal").join(seg)).unwrap(),
            "{seg} is in the archive, but not whole"
        );
    }
    archived.len()
}

#[test]
fn a_full_or_read_only_archive_fails_cleanly_and_the_next_run_finishes() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    node.complete_segments(6, "f");
    let root = tempfile::tempdir().unwrap();
    let adir = root.path().join("archive");
    std::fs::create_dir(&adir).unwrap();
    let Some(mount) = Tmpfs::mount(&adir, "2600k") else {
        eprintln!("skipping: cannot mount a tmpfs here (not root?)");
        return;
    };

    let out = archive(&adir, &node, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device")
            && stderr(&out).contains(adir.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    let stored = check_archive(&adir, &node);
    assert!(stored < 6, "{stored} segments fit in 2.6 MB?");
    assert_ne!(
        node.query_one("SELECT failed_count FROM pg_stat_archiver"),
        "0"
    );

    mount.remount("size=16m,ro");
    let out = archive(&adir, &node, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert_eq!(check_archive(&adir, &node), stored);

    mount.remount("rw");
    let out = archive(&adir, &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(check_archive(&adir, &node), 6);
    assert!(file_names(&node.dir.join("wal/archive_status"), "")
        .iter()
        .all(|n| !n.ends_with(".ready")));
}

/// `walship archive --follow` for `node` into `adir`, its log in `log`.
fn follow_daemon(node: &Node, adir: &Path, log: &Path) -> Background {
    Background::walship(
        &[
            "archive",
            "--archive",
            adir.to_str().unwrap(),
            "--follow",
            "-D",
            node.dir.to_str().unwrap(),
        ],
        std::fs::File::create(log).unwrap().into(),
    )
}

#[test]
fn an_archive_removed_under_a_running_archiver_is_reported_and_never_silently_recreated() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    let root = tempfile::tempdir().unwrap();
    let adir = root.path().join("archive");
    let log = root.path().join("archiver.log");
    let daemon = follow_daemon(&node, &adir, &log);
    node.complete_segments(2, "a");
    wait_until("two segments archived", || {
        file_names(&adir, "")
            .iter()
            .filter(|n| n.len() == 24)
            .count()
            == 2
    });
    std::fs::remove_dir_all(&adir).unwrap();
    node.complete_segments(2, "b");
    wait_until("the daemon to report the vanished archive", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("is gone")
    });
    assert!(!adir.exists(), "the daemon recreated the archive");
    assert_ne!(
        node.query_one("SELECT last_failed_wal FROM pg_stat_archiver"),
        ""
    );

    // A one-shot run refuses too, and says how to start over.
    let out = archive(&adir, &node, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--create"), "{}", stderr(&out));
    assert!(!adir.exists());
    let out = archive(&adir, &node, &["--create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The new archive holds what was waiting; what went with the old one
    // needs a new base backup, as the error said.
    assert_eq!(check_whole(&adir, &node), 2);
    // The daemon's lock was on the old archive's file: it keeps nobody out
    // of the new one, so the daemon stops rather than write beside another.
    wait_until("the daemon to see the archive made again", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("was made again under this archiver")
    });
    assert_eq!(daemon.terminate().code(), Some(1));
}

#[test]
fn a_running_archiver_stops_once_its_node_is_fenced_and_frees_the_archive() {
    let mut node = Node::init("archive_mode = on");
    node.start();
    let root = tempfile::tempdir().unwrap();
    let adir = root.path().join("archive");
    let log = root.path().join("archiver.log");
    let daemon = follow_daemon(&node, &adir, &log);
    node.complete_segments(1, "a");
    wait_until("a segment archived", || {
        file_names(&adir, "").iter().any(|n| n.len() == 24)
    });
    // Fenced, the node writes nothing more for the daemon to find; the
    // daemon stops anyway, and says why.
    node.client()
        .batch_execute("SELECT walship_fence(2)")
        .unwrap();
    assert_eq!(daemon.wait_exit().code(), Some(1));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("this node is fenced"), "{said}");
    // The lock went with it: another archiver is told of the fence, not
    // that the archive is in use.
    let out = archive(&adir, &node, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("this node is fenced"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_primary_says_when_its_archive_directory_goes_away_and_comes_back() {
    let root = tempfile::tempdir().unwrap();
    let adir = root.path().join("archive");
    let mut node = Node::init(&format!(
        "archive_mode = on\narchive_directory = '{}'",
        adir.display()
    ));
    node.start();
    node.complete_segments(1, "a");
    let out = archive(&adir, &node, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The node looks at the archive once a second: let it see it whole.
    std::thread::sleep(Duration::from_millis(1500));
    let moved = root.path().join("moved");
    std::fs::rename(&adir, &moved).unwrap();
    assert!(
        node.wait_log("cannot be read as an archive any more"),
        "{}",
        node.log()
    );
    std::fs::rename(&moved, &adir).unwrap();
    assert!(node.wait_log("readable again"), "{}", node.log());
}
