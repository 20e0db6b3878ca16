//! A full disk under wal/: writes fail with SQLSTATE 53100 and a log line,
//! reads go on, nothing acknowledged is lost, and writes resume once there
//! is room again. Needs root to mount a small tmpfs (CI runs as root).

mod common;

use common::{Node, Tmpfs};

#[test]
fn full_disk_fails_writes_cleanly_and_they_resume() {
    let mut node = Node::init("");
    // Move the WAL onto a 4 MiB tmpfs.
    let wal = node.dir.join("wal");
    let saved = node.root.path().join("wal-saved");
    std::fs::rename(&wal, &saved).unwrap();
    std::fs::create_dir(&wal).unwrap();
    let Some(mount) = Tmpfs::mount(&wal, "4m") else {
        eprintln!("skipping: cannot mount a tmpfs here (not root?)");
        return;
    };
    for entry in std::fs::read_dir(&saved).unwrap() {
        let entry = entry.unwrap();
        let to = wal.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    node.start();
    let mut c = node.client();
    let value = "x".repeat(2000);
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..5000 {
        let key = format!("k{i:05}");
        match c.execute("INSERT INTO kv VALUES ($1, $2)", &[&key, &value]) {
            Ok(_) => acked.push(key),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("the 4 MiB file system never filled up");
    assert_eq!(e.code().map(|c| c.code()), Some("53100"), "{e}");
    assert!(node.wait_log("disk is full"), "{e:?}\n{}", node.log());
    // Reads go on.
    let n: i64 = c.query_one("SELECT count(*) FROM kv", &[]).unwrap().get(0);
    assert_eq!(n as usize, acked.len());
    // Make room.
    mount.remount("size=16m");
    c.execute("INSERT INTO kv VALUES ('after', 'room')", &[])
        .expect("writes resume when space returns");
    acked.push("after".into());
    drop(c);
    node.kill9();
    node.start();
    let mut c = node.client();
    let n: i64 = c.query_one("SELECT count(*) FROM kv", &[]).unwrap().get(0);
    assert_eq!(
        n as usize,
        acked.len(),
        "acknowledged writes lost across the full disk and a crash"
    );
    drop(c);
    node.kill9();
}
