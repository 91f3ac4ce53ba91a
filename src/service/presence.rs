//! Coalesced presence (§6). A trigger sets a pending flag for the room and, if no flush is
//! waiting, schedules one a window later; triggers meanwhile are absorbed. The flush reads
//! the committed rows (of every node) once and sends one `attendance` frame (and
//! `blockedIp` when a join asked for it) to this node's sockets in the room, serialized
//! once for the whole room.
//!
//! Each node coalesces for its own sockets: a change made on one node is announced to the
//! others through the delivery seam (`Seam::room_changed`), and each raises its own
//! trigger. So a socket gets at most one attendance frame per window, however many nodes
//! changed the room.
use std::collections::HashMap;

use parking_lot::Mutex;
use serde::Serialize;

use super::Services;
use super::model::ALERTS;
use crate::error::AppResult;
use crate::hub::{Action, Audience, encode_frame};
use crate::store::entities::connections;

/// A room: `(churchId, roomId)`.
pub(super) type RoomKey = (String, String);

#[derive(Default)]
pub struct Coalescer {
    /// Room → "a join asked for blockedIp" for each room with a flush waiting.
    pending: Mutex<HashMap<RoomKey, bool>>,
    /// Row count seen by the last flush of a room, to pick its window.
    last_total: Mutex<HashMap<RoomKey, usize>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Viewer {
    pub id: String,
    #[serde(rename = "displayName")]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttendanceData {
    pub conversation_id: String,
    pub viewers: Vec<Viewer>,
    pub total_viewers: usize,
}

/// The frame's data from a room's rows: sorted by stored `displayName` (null, then "",
/// then the rest case-insensitively; ties by row id), "" shown as "Anonymous", capped.
pub fn attendance_data(
    room: &str,
    mut rows: Vec<connections::Model>,
    cap: usize,
) -> AttendanceData {
    fn rank(name: &Option<String>) -> (u8, String) {
        match name.as_deref() {
            None => (0, String::new()),
            Some("") => (1, String::new()),
            Some(s) => (2, s.to_lowercase()),
        }
    }
    let total_viewers = rows.len();
    rows.sort_by_cached_key(|r| (rank(&r.display_name), r.id.clone()));
    let viewers = rows
        .into_iter()
        .take(cap)
        .map(|r| Viewer {
            id: r.id,
            display_name: r.display_name.map(|n| {
                if n.is_empty() {
                    "Anonymous".to_string()
                } else {
                    n
                }
            }),
        })
        .collect();
    AttendanceData {
        conversation_id: room.to_string(),
        viewers,
        total_viewers,
    }
}

impl Services {
    /// A room's rows changed (committed): raise attendance here and on every other node.
    /// `with_blocked_ip` asks the flush to send the room's `blockedIp` list too (a join).
    pub fn room_changed(&self, church: &str, room: &str, with_blocked_ip: bool) {
        if room == ALERTS {
            return;
        }
        self.raise_attendance(church, room, with_blocked_ip);
        self.seam.room_changed(church, room, with_blocked_ip);
    }

    /// Raises attendance for this node's sockets in a room (a change here, or one another
    /// node announced).
    pub fn raise_attendance(&self, church: &str, room: &str, with_blocked_ip: bool) {
        if room == ALERTS {
            return;
        }
        let key = (church.to_string(), room.to_string());
        {
            let mut pending = self.presence.pending.lock();
            if let Some(flag) = pending.get_mut(&key) {
                *flag |= with_blocked_ip;
                return;
            }
            pending.insert(key.clone(), with_blocked_ip);
        }
        if self.seam.socketless() {
            // No timer: the invocation sends it before it returns (`finish_invocation`).
            return;
        }
        let audience = Audience::room(church, room);
        let rows = self.seam.local_members(&audience).max(
            self.presence
                .last_total
                .lock()
                .get(&key)
                .copied()
                .unwrap_or(0),
        );
        let window = if rows > self.config.big_room_rows {
            self.config.attendance_window_big
        } else {
            self.config.attendance_window
        };
        let svc = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            svc.flush_attendance(key, audience).await;
        });
    }

    pub(super) async fn flush_attendance(&self, key: RoomKey, audience: Audience) {
        // Taking the flag first means a trigger from now on schedules a new flush.
        let with_blocked_ip = self.presence.pending.lock().remove(&key).unwrap_or(false);
        if self.seam.local_members(&audience) == 0 && !self.seam.socketless() {
            self.presence.last_total.lock().remove(&key);
            return;
        }
        let (church, room) = &key;
        let rows = match self.store().room_rows(church, room).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(%church, %room, error = %e, "attendance flush failed");
                return;
            }
        };
        // Both reads come before either frame: the two frames then go out back to back, so
        // a socket that reacts to the first (say, by leaving) has both already, and none
        // arrives after its leave took effect.
        let blocked = if with_blocked_ip {
            match self.store().blocked_ips(church, room).await {
                Ok(ips) => Some(ips),
                Err(e) => {
                    tracing::warn!(%church, %room, error = %e, "blockedIp flush failed");
                    None
                }
            }
        } else {
            None
        };
        self.presence
            .last_total
            .lock()
            .insert(key.clone(), rows.len());
        let data = attendance_data(room, rows, self.config.roster_cap);
        let frame = encode_frame(church, room, Action::Attendance, &data);
        self.seam.publish_local(&audience, &frame);
        metrics::counter!("messaging_attendance_flushes_total").increment(1);
        if let Some(ips) = blocked {
            let frame = encode_frame(church, room, Action::BlockedIp, &ips);
            self.seam.publish_local(&audience, &frame);
        }
    }

    /// Every room whose attendance is due, as flushes to run now (gateway mode, where no
    /// timer runs them).
    pub(super) fn due_attendance(&self) -> Vec<(RoomKey, Audience)> {
        self.presence
            .pending
            .lock()
            .keys()
            .map(|k| (k.clone(), Audience::room(&k.0, &k.1)))
            .collect()
    }

    /// The current attendance of a room, read now (the `Attendance` RPC).
    pub async fn attendance_now(&self, church: &str, room: &str) -> AppResult<AttendanceData> {
        let rows = self.store().room_rows(church, room).await?;
        Ok(attendance_data(room, rows, self.config.roster_cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: Option<&str>) -> connections::Model {
        connections::Model {
            id: id.into(),
            church_id: "C".into(),
            conversation_id: "R".into(),
            person_id: None,
            display_name: name.map(Into::into),
            time_joined: 0,
            socket_id: id.into(),
            ip_address: Some("1.2.3.4".into()),
            node_id: "N".into(),
            anonymous_number: None,
        }
    }

    #[test]
    fn roster_order_and_cap() {
        let rows = vec![
            row("5", Some("bob")),
            row("4", Some("")),
            row("3", Some("Alice")),
            row("2", None),
            row("1", Some("alice")),
        ];
        let d = attendance_data("R", rows.clone(), 100);
        let ids: Vec<_> = d.viewers.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["2", "4", "1", "3", "5"]);
        assert_eq!(d.viewers[1].display_name.as_deref(), Some("Anonymous"));
        assert_eq!(d.viewers[0].display_name, None);
        let d = attendance_data("R", rows, 2);
        assert_eq!((d.viewers.len(), d.total_viewers), (2, 5));
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("ipAddress"));
        assert!(
            json.starts_with(r#"{"conversationId":"R","viewers":[{"id":"2","displayName":null}"#)
        );
    }
}
