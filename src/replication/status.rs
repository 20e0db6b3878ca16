//! `walship status`: what an operator asks first — is this node a primary
//! or a standby, on which timeline and epoch, where is its WAL, and how far
//! behind is each standby — from one SQL connection.

use serde_json::{json, Value};

use super::client::{Client, ClientError, Rows};
use super::conninfo::ConnInfo;

/// A node's status, as `walship status` prints it.
#[derive(Debug)]
pub struct Status {
    pub json: Value,
}

fn text(rows: &Rows, col: &str) -> Option<String> {
    rows.text(0, col)
}

/// The rows of a result set as JSON objects, every value text or null.
fn objects(rows: &Rows) -> Vec<Value> {
    rows.rows
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for (c, v) in rows.columns.iter().zip(r) {
                let v = v
                    .as_ref()
                    .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                    .unwrap_or(Value::Null);
                o.insert(c.clone(), v);
            }
            Value::Object(o)
        })
        .collect()
}

/// Asks the node at `from`.
pub fn fetch(from: &ConnInfo) -> Result<Status, ClientError> {
    let mut client = Client::connect(from, None)?;
    let standby = client.in_recovery()?;
    let fenced_by = client.walship_fenced_by(
        "walship status reads a walship node's views (ask PostgreSQL with psql)",
    )?;
    let role = match (standby, &fenced_by) {
        (true, _) => "standby",
        (false, None) => "primary",
        (false, Some(_)) => "fenced primary",
    };
    let mut json = json!({
        "node": client.show("node_name")?,
        "role": role,
        "fenced_by": fenced_by,
        "system_identifier": client.show("system_identifier")?,
        "timeline": client.show("timeline")?,
        "epoch": client.show("epoch")?,
    });
    if standby {
        let lsns = client.query("SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()")?;
        json["receive_lsn"] = json!(text(&lsns, "pg_last_wal_receive_lsn"));
        json["replay_lsn"] = json!(text(&lsns, "pg_last_wal_replay_lsn"));
        let receiver = client.query(
            "SELECT status, sender_host, sender_port, slot_name, latest_end_lsn, last_msg_receipt_time FROM pg_stat_wal_receiver",
        )?;
        json["upstream"] = objects(&receiver).into_iter().next().unwrap_or(Value::Null);
    } else {
        let lsns = client.query("SELECT pg_current_wal_lsn(), pg_current_wal_flush_lsn()")?;
        json["insert_lsn"] = json!(text(&lsns, "pg_current_wal_lsn"));
        json["flush_lsn"] = json!(text(&lsns, "pg_current_wal_flush_lsn"));
    }
    let standbys = client.query(
        "SELECT application_name, client_addr, state, sync_state, sent_lsn, flush_lsn, replay_lsn, flush_lag_bytes, replay_lag_bytes, flush_lag, replay_lag FROM pg_stat_replication",
    )?;
    json["standbys"] = Value::Array(objects(&standbys));
    let archiver = client.query(
        "SELECT archived_count, last_archived_wal, failed_count, last_failed_wal, backlog_segments, backlog_bytes, oldest_backlog_age, oldest_backlog_wal, archive_gap_since, current_failure, writes_refused FROM pg_stat_archiver",
    )?;
    json["archiver"] = objects(&archiver).into_iter().next().unwrap_or(Value::Null);
    client.close();
    Ok(Status { json })
}

impl Status {
    /// The human form: one line per fact, one per standby.
    pub fn to_text(&self) -> String {
        let j = &self.json;
        let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
        let mut out = format!(
            "node:      {} ({})\nsystem:    {}\ntimeline:  {}\nepoch:     {}\n",
            s(&j["node"]),
            s(&j["role"]),
            s(&j["system_identifier"]),
            s(&j["timeline"]),
            s(&j["epoch"])
        );
        if let Some(by) = j["fenced_by"].as_str() {
            out.push_str(&format!(
                "FENCED:    by epoch {by}: a standby was promoted; this node takes no writes; stop it and make it a standby of the new primary (walship rejoin)\n"
            ));
        }
        if j["role"] == "standby" {
            out.push_str(&format!(
                "received:  {}\nreplayed:  {}\n",
                s(&j["receive_lsn"]),
                s(&j["replay_lsn"])
            ));
            let u = &j["upstream"];
            if u.is_null() {
                out.push_str("upstream:  none\n");
            } else if u["sender_host"].is_null() {
                // No primary_conninfo: it restores from the archive alone.
                out.push_str(&format!("upstream:  none ({})\n", s(&u["status"])));
            } else {
                out.push_str(&format!(
                    "upstream:  {}:{} ({}{})\n",
                    s(&u["sender_host"]),
                    s(&u["sender_port"]),
                    s(&u["status"]),
                    u["slot_name"]
                        .as_str()
                        .map(|n| format!(", slot {n}"))
                        .unwrap_or_default()
                ));
            }
        } else {
            out.push_str(&format!(
                "wal:       inserted to {}, flushed to {}\n",
                s(&j["insert_lsn"]),
                s(&j["flush_lsn"])
            ));
        }
        let a = &j["archiver"];
        // Shown on a primary (fenced or not) once there is anything to
        // say: something archived, failed or waiting (a backup history
        // file waits too, with no segment). A standby archives nothing:
        // its counters are from a time it was a primary, if any, and
        // would mislead.
        let active = j["role"] != "standby"
            && (a["archived_count"] != "0"
                || a["failed_count"] != "0"
                || a["backlog_segments"] != "0"
                || !a["oldest_backlog_age"].is_null());
        if !a.is_null() && active {
            let backlog = if a["oldest_backlog_age"].is_null() {
                "nothing waiting".to_string()
            } else {
                format!(
                    "backlog {} segments ({} bytes, oldest waiting {}: {})",
                    s(&a["backlog_segments"]),
                    s(&a["backlog_bytes"]),
                    s(&a["oldest_backlog_age"]),
                    s(&a["oldest_backlog_wal"])
                )
            };
            out.push_str(&format!(
                "archiver:  {} archived (last {}), {} failed; {backlog}\n",
                s(&a["archived_count"]),
                s(&a["last_archived_wal"]),
                s(&a["failed_count"]),
            ));
            if let Some(gap) = a["archive_gap_since"].as_str() {
                out.push_str(&format!("archiver:  ARCHIVE CONTINUITY LOST since {gap}\n"));
            }
            if let Some(why) = a["current_failure"].as_str() {
                out.push_str(&format!("archiver:  FAILING: {why}\n"));
            }
            if let Some(why) = a["writes_refused"].as_str() {
                out.push_str(&format!("archiver:  WRITES REFUSED: {why}\n"));
            }
        }
        let standbys = j["standbys"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!("standbys:  {}\n", standbys.len()));
        for st in &standbys {
            out.push_str(&format!(
                "  {:<12} {:<15} {:<9} {:<9} flushed {:<12} replayed {:<12} lag {} B / {}\n",
                s(&st["application_name"]),
                s(&st["client_addr"]),
                s(&st["state"]),
                s(&st["sync_state"]),
                s(&st["flush_lsn"]),
                s(&st["replay_lsn"]),
                s(&st["replay_lag_bytes"]),
                s(&st["replay_lag"])
            ));
        }
        out
    }
}
