//! The rows of the system views (`pg_stat_replication`,
//! `pg_stat_wal_receiver`, `pg_replication_slots`) for a running node.

use super::server::Node;
use crate::archive::archiver::ArchiverStats;
use crate::replication::walsender::WalSenderHost;
use crate::sql::exec::Value;
use crate::sql::views::SystemView;
use crate::wal::Lsn;

fn lsn(l: Lsn) -> Option<Value> {
    (l != Lsn::INVALID).then_some(Value::Lsn(l))
}

fn text(s: impl Into<String>) -> Option<Value> {
    Some(Value::Text(s.into()))
}

impl Node {
    /// A view's rows, values in [`SystemView::columns`] order.
    pub(crate) fn rows_of(&self, view: SystemView) -> Vec<Vec<Option<Value>>> {
        match view {
            SystemView::StatReplication => {
                let flushed = self.wal().flushed_lsn();
                self.senders()
                    .status(&self.sync_names_in_effect())
                    .into_iter()
                    .map(|s| {
                        let behind = |pos: Lsn| {
                            (pos != Lsn::INVALID)
                                .then(|| Value::Int(flushed.0.saturating_sub(pos.0) as i64))
                        };
                        vec![
                            Some(Value::Int(i64::from(s.peer.pid))),
                            // walship's roles have no OIDs, nor its
                            // standbys an xmin to hold back.
                            None,
                            text(s.peer.usename),
                            text(s.peer.application_name),
                            text(s.peer.client_addr),
                            None,
                            Some(Value::Int(i64::from(s.peer.client_port))),
                            Some(Value::Timestamp(s.peer.backend_start)),
                            None,
                            text(s.state),
                            lsn(s.sent),
                            lsn(s.write),
                            lsn(s.flush),
                            lsn(s.replay),
                            Some(Value::Interval(s.write_lag)),
                            Some(Value::Interval(s.flush_lag)),
                            Some(Value::Interval(s.replay_lag)),
                            Some(Value::Int(s.sync_priority as i64)),
                            text(s.sync_state),
                            s.reply_time.map(Value::Timestamp),
                            behind(s.flush),
                            behind(s.replay),
                        ]
                    })
                    .collect()
            }
            SystemView::StatWalReceiver => {
                // No row on a primary, a promoted standby included, as
                // PostgreSQL shows none.
                let Some(r) = self
                    .receiver_snapshot()
                    .filter(|_| self.standby().is_some())
                else {
                    return Vec::new();
                };
                let tli = Some(Value::Int(i64::from(self.timeline().get())));
                let time = |t: i64| (t != 0).then_some(Value::Timestamp(t));
                vec![vec![
                    Some(Value::Int(i64::from(std::process::id() as i32))),
                    text(r.status),
                    lsn(r.receive_start_lsn),
                    tli.clone(),
                    lsn(r.flushed_lsn),
                    lsn(r.flushed_lsn),
                    tli,
                    time(r.last_msg_send_time),
                    time(r.last_msg_receipt_time),
                    lsn(r.latest_end_lsn),
                    time(r.latest_end_time),
                    r.slot_name.map(Value::Text),
                    r.sender_host.map(Value::Text),
                    r.sender_port.map(|p| Value::Int(i64::from(p))),
                    r.conninfo.map(Value::Text),
                ]]
            }
            SystemView::StatArchiver => {
                let stats = ArchiverStats::read(&self.data_dir());
                let backlog = self.archive_backlog();
                // Why archiving fails, while no success came after.
                let current_failure = stats
                    .last_failure
                    .clone()
                    .filter(|_| stats.last_failed_time >= stats.last_archived_time);
                vec![vec![
                    Some(Value::Int(stats.archived_count as i64)),
                    stats.last_archived_wal.map(Value::Text),
                    stats.last_archived_time.map(Value::Timestamp),
                    Some(Value::Int(stats.failed_count as i64)),
                    stats.last_failed_wal.map(Value::Text),
                    stats.last_failed_time.map(Value::Timestamp),
                    None,
                    Some(Value::Int(backlog.segments as i64)),
                    Some(Value::Int(backlog.bytes as i64)),
                    backlog.oldest_age.map(Value::Interval),
                    self.archive_gap().map(Value::Text),
                    backlog.oldest.map(Value::Text),
                    current_failure.map(Value::Text),
                    self.archive_refusal().map(Value::Text),
                ]]
            }
            SystemView::ReplicationSlots => {
                // What may still be written before the slot is lost: NULL
                // without a limit, and for a lost slot (as PostgreSQL's).
                let keep = self.settings().max_slot_wal_keep_size;
                let insert = self.wal().insert_lsn();
                let safe_wal_size = |restart: Option<Lsn>| {
                    let (keep, restart) = (keep?, restart?);
                    let held = insert.0.saturating_sub(restart.0);
                    Some(Value::Int(keep as i64 - held as i64))
                };
                self.slots()
                    .list()
                    .map(|(name, slot)| {
                        vec![
                            text(name.clone()),
                            None,
                            text("physical"),
                            None,
                            None,
                            Some(Value::Bool(false)),
                            Some(Value::Bool(slot.active)),
                            self.senders
                                .pid_of_slot(name)
                                .map(|pid| Value::Int(i64::from(pid))),
                            // Physical slots hold no xmin, confirm no flush
                            // (logical decoding's), and know no two-phase.
                            None,
                            None,
                            slot.restart_lsn.and_then(lsn),
                            None,
                            if slot.lost {
                                text("lost")
                            } else {
                                slot.restart_lsn.map(|_| Value::Text("reserved".into()))
                            },
                            safe_wal_size(slot.restart_lsn.filter(|_| !slot.lost)),
                            Some(Value::Bool(false)),
                        ]
                    })
                    .collect()
            }
        }
    }
}
