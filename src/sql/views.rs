//! The system views walship answers, with PostgreSQL 15's column names and
//! types (plus, where noted, columns of walship's own at the end): what an
//! operator's queries and monitoring already select.

use super::exec::oid;

/// A view `SELECT … FROM` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemView {
    /// On a primary (or a cascading standby): one row per walsender.
    StatReplication,
    /// On a standby: its walreceiver; no row on a primary.
    StatWalReceiver,
    /// Physical replication slots.
    ReplicationSlots,
    /// The archiver's counters and the backlog it has not taken yet.
    StatArchiver,
}

impl SystemView {
    /// The view a (possibly `pg_catalog.`-qualified) name refers to.
    pub fn from_name(parts: &[String]) -> Option<SystemView> {
        let name = match parts {
            [n] => n.as_str(),
            [s, n] if s == "pg_catalog" => n.as_str(),
            _ => return None,
        };
        Some(match name {
            "pg_stat_replication" => SystemView::StatReplication,
            "pg_stat_wal_receiver" => SystemView::StatWalReceiver,
            "pg_replication_slots" => SystemView::ReplicationSlots,
            "pg_stat_archiver" => SystemView::StatArchiver,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SystemView::StatReplication => "pg_stat_replication",
            SystemView::StatWalReceiver => "pg_stat_wal_receiver",
            SystemView::ReplicationSlots => "pg_replication_slots",
            SystemView::StatArchiver => "pg_stat_archiver",
        }
    }

    /// Column names and type OIDs, in order; rows carry values in this order.
    pub fn columns(self) -> &'static [(&'static str, u32)] {
        match self {
            SystemView::StatReplication => &[
                ("pid", oid::INT4),
                ("usesysid", oid::OID),
                ("usename", oid::TEXT),
                ("application_name", oid::TEXT),
                ("client_addr", oid::TEXT),
                ("client_hostname", oid::TEXT),
                ("client_port", oid::INT4),
                ("backend_start", oid::TIMESTAMPTZ),
                ("backend_xmin", oid::XID),
                ("state", oid::TEXT),
                ("sent_lsn", oid::PG_LSN),
                ("write_lsn", oid::PG_LSN),
                ("flush_lsn", oid::PG_LSN),
                ("replay_lsn", oid::PG_LSN),
                ("write_lag", oid::INTERVAL),
                ("flush_lag", oid::INTERVAL),
                ("replay_lag", oid::INTERVAL),
                ("sync_priority", oid::INT4),
                ("sync_state", oid::TEXT),
                ("reply_time", oid::TIMESTAMPTZ),
                // walship's own: the lag in bytes behind this node's flush.
                ("flush_lag_bytes", oid::INT8),
                ("replay_lag_bytes", oid::INT8),
            ],
            SystemView::StatWalReceiver => &[
                ("pid", oid::INT4),
                ("status", oid::TEXT),
                ("receive_start_lsn", oid::PG_LSN),
                ("receive_start_tli", oid::INT4),
                ("written_lsn", oid::PG_LSN),
                ("flushed_lsn", oid::PG_LSN),
                ("received_tli", oid::INT4),
                ("last_msg_send_time", oid::TIMESTAMPTZ),
                ("last_msg_receipt_time", oid::TIMESTAMPTZ),
                ("latest_end_lsn", oid::PG_LSN),
                ("latest_end_time", oid::TIMESTAMPTZ),
                ("slot_name", oid::TEXT),
                ("sender_host", oid::TEXT),
                ("sender_port", oid::INT4),
                ("conninfo", oid::TEXT),
            ],
            SystemView::ReplicationSlots => &[
                ("slot_name", oid::TEXT),
                ("plugin", oid::TEXT),
                ("slot_type", oid::TEXT),
                ("datoid", oid::OID),
                ("database", oid::TEXT),
                ("temporary", oid::BOOL),
                ("active", oid::BOOL),
                ("active_pid", oid::INT4),
                ("xmin", oid::XID),
                ("catalog_xmin", oid::XID),
                ("restart_lsn", oid::PG_LSN),
                ("confirmed_flush_lsn", oid::PG_LSN),
                ("wal_status", oid::TEXT),
                ("safe_wal_size", oid::INT8),
                ("two_phase", oid::BOOL),
            ],
            SystemView::StatArchiver => &[
                ("archived_count", oid::INT8),
                ("last_archived_wal", oid::TEXT),
                ("last_archived_time", oid::TIMESTAMPTZ),
                ("failed_count", oid::INT8),
                ("last_failed_wal", oid::TEXT),
                ("last_failed_time", oid::TIMESTAMPTZ),
                ("stats_reset", oid::TIMESTAMPTZ),
                // walship's own: what waits for the archiver, and any gap.
                ("backlog_segments", oid::INT8),
                ("backlog_bytes", oid::INT8),
                ("oldest_backlog_age", oid::INTERVAL),
                ("archive_gap_since", oid::TEXT),
                ("oldest_backlog_wal", oid::TEXT),
                // Why the archiver fails (its last failure, while no
                // success came after), and why writes are refused
                // (archive_backlog_policy = refuse_writes), if they are.
                ("current_failure", oid::TEXT),
                ("writes_refused", oid::TEXT),
            ],
        }
    }
}
