//! `messaging.v1.Connection`: room membership (§5.1, §10.2) and presence (§6).
//!
//! Every method takes the caller: the REST edge passes the token's claims, network callers
//! act as `Caller::System`. Access decisions go through `auth::access`.
use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::{Caller, access};
use crate::error::{AppError, AppResult};
use crate::hub::attendance::AttendanceData;
use crate::hub::{ALERTS, Audience, Hub};
use crate::pb;
use crate::store::entities::{connections, conversations};
use crate::store::{NewRow, Store};

pub use crate::service::limits::{MAX_BATCH, MAX_DISPLAY_NAME, MAX_ID, MAX_ROOM_ID, MAX_SOCKET_ID};

#[derive(Clone)]
pub struct ConnectionService {
    pub hub: Arc<Hub>,
}

/// What a room id names, resolved and authorized.
enum Room {
    Alerts { church: String, person: String },
    Content { church: String },
    Conversation(conversations::Model),
}

impl Room {
    fn church(&self) -> &str {
        match self {
            Room::Alerts { church, .. } | Room::Content { church } => church,
            Room::Conversation(c) => &c.church_id,
        }
    }
}

/// `content-{type}-{id}`: type up to the first `-`, id the rest; both non-empty.
pub fn parse_content_room(room: &str) -> Option<(&str, &str)> {
    let (t, id) = room.strip_prefix("content-")?.split_once('-')?;
    (!t.is_empty() && !id.is_empty()).then_some((t, id))
}

fn check_len(value: &str, max: usize, field: String, required: bool) -> AppResult<()> {
    if (required && value.is_empty()) || value.chars().count() > max {
        return Err(AppError::InvalidBody { field });
    }
    Ok(())
}

impl ConnectionService {
    fn store(&self) -> &Store {
        &self.hub.store
    }

    /// Whether the caller may read a conversation (privateMessage needs its participants row).
    async fn can_read_conversation(
        &self,
        caller: &Caller,
        conv: &conversations::Model,
    ) -> AppResult<bool> {
        let pm = if conv.content_type.as_deref() == Some("privateMessage") && !caller.is_system() {
            self.store().private_message_of(&conv.id).await?
        } else {
            None
        };
        Ok(access::can_read(
            caller,
            &access::Conv {
                conv,
                pm: pm.as_ref(),
            },
        ))
    }

    /// Resolves a room named in a path (`church`, `room`) for reading, listing or leaving:
    /// alerts and content rooms need a token; a conversation must be in `church`.
    async fn room_for_reading(&self, caller: &Caller, church: &str, room: &str) -> AppResult<Room> {
        if room == ALERTS {
            return match caller {
                Caller::System => Ok(Room::Alerts {
                    church: church.to_string(),
                    person: String::new(),
                }),
                Caller::User(c) if !c.person_id.is_empty() && c.church_id == church => {
                    Ok(Room::Alerts {
                        church: c.church_id.clone(),
                        person: c.person_id.clone(),
                    })
                }
                _ => Err(AppError::Unauthorized),
            };
        }
        if room.starts_with("content-") {
            if matches!(caller, Caller::Anonymous) {
                return Err(AppError::Unauthorized);
            }
            let Some((t, id)) = parse_content_room(room) else {
                return Err(AppError::NotFound("Conversation not found"));
            };
            if !access::can_read_content(caller, church, t, id) {
                return Err(AppError::Unauthorized);
            }
            return Ok(Room::Content {
                church: church.to_string(),
            });
        }
        let conv = self
            .store()
            .conversation(room)
            .await?
            .filter(|c| c.church_id == church)
            .ok_or(AppError::NotFound("Conversation not found"))?;
        if !self.can_read_conversation(caller, &conv).await? {
            return Err(AppError::Unauthorized);
        }
        Ok(Room::Conversation(conv))
    }

    /// Join (§5.1, §10.2): validate, resolve and authorize the whole batch, then upsert it
    /// in one transaction, mirror the rows into the hub and raise coalesced attendance.
    pub async fn join(
        &self,
        caller: &Caller,
        client_ip: Option<&str>,
        items: Vec<pb::JoinItem>,
    ) -> AppResult<Vec<connections::Model>> {
        if items.len() > MAX_BATCH {
            return Err(AppError::TooManyItems);
        }
        // Shape.
        for (i, it) in items.iter().enumerate() {
            check_len(
                &it.conversation_id,
                MAX_ROOM_ID,
                format!("/{i}/conversationId"),
                true,
            )?;
            check_len(&it.socket_id, MAX_SOCKET_ID, format!("/{i}/socketId"), true)?;
            let name = it.display_name.as_deref().unwrap_or("");
            check_len(name, MAX_DISPLAY_NAME, format!("/{i}/displayName"), false)?;
            if caller.is_system() {
                check_len(
                    &it.church_id,
                    MAX_ID,
                    format!("/{i}/churchId"),
                    it.conversation_id == ALERTS || it.conversation_id.starts_with("content-"),
                )?;
                let person = it.person_id.as_deref().unwrap_or("");
                check_len(
                    person,
                    MAX_ID,
                    format!("/{i}/personId"),
                    it.conversation_id == ALERTS,
                )?;
                check_len(
                    it.ip_address.as_deref().unwrap_or(""),
                    45,
                    format!("/{i}/ipAddress"),
                    false,
                )?;
            }
        }
        // Rooms that need a token.
        let needs_token = |room: &str| room == ALERTS || room.starts_with("content-");
        for it in &items {
            match caller {
                Caller::Anonymous if needs_token(&it.conversation_id) => {
                    return Err(AppError::Unauthorized);
                }
                Caller::User(c) if it.conversation_id == ALERTS && c.person_id.is_empty() => {
                    return Err(AppError::Unauthorized);
                }
                _ => {}
            }
        }
        // Existence: rooms and sockets.
        let mut rooms = Vec::with_capacity(items.len());
        let mut convs: BTreeMap<String, Option<conversations::Model>> = BTreeMap::new();
        for it in &items {
            let room = if it.conversation_id == ALERTS {
                match caller.claims() {
                    Some(c) => Room::Alerts {
                        church: c.church_id.clone(),
                        person: c.person_id.clone(),
                    },
                    None => Room::Alerts {
                        church: it.church_id.clone(),
                        person: it.person_id.clone().unwrap_or_default(),
                    },
                }
            } else if it.conversation_id.starts_with("content-") {
                if parse_content_room(&it.conversation_id).is_none() {
                    return Err(AppError::NotFound("Conversation not found"));
                }
                Room::Content {
                    church: caller
                        .claims()
                        .map_or_else(|| it.church_id.clone(), |c| c.church_id.clone()),
                }
            } else {
                if !convs.contains_key(&it.conversation_id) {
                    let c = self.store().conversation(&it.conversation_id).await?;
                    convs.insert(it.conversation_id.clone(), c);
                }
                match convs.get(&it.conversation_id).cloned().flatten() {
                    Some(c) => Room::Conversation(c),
                    None => return Err(AppError::NotFound("Conversation not found")),
                }
            };
            rooms.push(room);
        }
        let mut sockets = BTreeMap::new();
        for it in &items {
            let h = self
                .hub
                .socket(&it.socket_id)
                .ok_or(AppError::NotFound("Socket not found"))?;
            sockets.insert(it.socket_id.clone(), h);
        }
        // Access.
        for (it, room) in items.iter().zip(&rooms) {
            let allowed = match room {
                Room::Alerts { .. } => true,
                Room::Content { church } => {
                    let (t, id) = parse_content_room(&it.conversation_id).unwrap_or_default();
                    access::can_read_content(caller, church, t, id)
                }
                Room::Conversation(conv) => self.can_read_conversation(caller, conv).await?,
            };
            if !allowed {
                return Err(AppError::Unauthorized);
            }
        }
        // Rows as they will be written.
        let rows: Vec<NewRow> = items
            .iter()
            .zip(&rooms)
            .map(|(it, room)| {
                let person_id = match (room, caller) {
                    (Room::Alerts { person, .. }, _) => Some(person.clone()),
                    (_, Caller::User(c)) if !c.person_id.is_empty() => Some(c.person_id.clone()),
                    (_, Caller::System) => it.person_id.clone().filter(|p| !p.is_empty()),
                    _ => None,
                };
                let ip_address = match caller {
                    Caller::System => it.ip_address.clone().filter(|p| !p.is_empty()),
                    _ => client_ip.map(str::to_string),
                };
                NewRow {
                    church_id: room.church().to_string(),
                    room: it.conversation_id.clone(),
                    socket_id: it.socket_id.clone(),
                    person_id,
                    display_name: it.display_name.clone().unwrap_or_default(),
                    ip_address,
                }
            })
            .collect();

        // Pass 2. Membership locks in a fixed order (BTreeMap) so batches cannot deadlock.
        let mut guards = Vec::with_capacity(sockets.len());
        for h in sockets.values() {
            guards.push(h.membership.lock().await);
        }
        if sockets.values().any(|h| !h.is_open()) {
            return Err(AppError::NotFound("Socket not found"));
        }
        let node_id = self.hub.node_id.clone();
        let stored = self
            .store()
            .write(|| async {
                let now = crate::time::now_ms();
                if self.store().is_sqlite() {
                    return Ok(self
                        .store()
                        .upsert_rows_sqlite(&node_id, &rows, now)
                        .await?);
                }
                let txn = self.store().begin_write().await?;
                let stored = Store::upsert_rows(&txn, &node_id, &rows, now).await?;
                txn.commit().await?;
                Ok::<_, AppError>(stored)
            })
            .await?;
        for row in &stored {
            if let Some(h) = sockets.get(&row.socket_id) {
                let audience = Audience::of_row(
                    &row.church_id,
                    &row.conversation_id,
                    row.person_id.as_deref(),
                );
                self.hub.add_member(h, audience);
            }
        }
        drop(guards);
        let mut seen = std::collections::BTreeSet::new();
        for row in &stored {
            if seen.insert((row.church_id.clone(), row.conversation_id.clone())) {
                self.hub
                    .trigger_attendance(&row.church_id, &row.conversation_id, true);
            }
        }
        Ok(stored)
    }

    /// Leave (§10.2). Returns whether a row was removed.
    pub async fn leave(
        &self,
        caller: &Caller,
        church: &str,
        room: &str,
        socket: &str,
    ) -> AppResult<bool> {
        let resolved = self.room_for_reading(caller, church, room).await?;
        let church = resolved.church().to_string();
        let Some(row) = self.store().row(&church, room, socket).await? else {
            return Ok(false);
        };
        if let Room::Alerts { person, .. } = &resolved
            && !caller.is_system()
            && row.person_id.as_deref() != Some(person.as_str())
        {
            return Ok(false);
        }
        let removed = match self.hub.socket(socket) {
            Some(h) => {
                let _guard = h.membership.lock().await;
                let removed = self.store().delete_row(&row.id).await?;
                self.hub.remove_member(
                    socket,
                    &Audience::of_row(
                        &row.church_id,
                        &row.conversation_id,
                        row.person_id.as_deref(),
                    ),
                );
                removed
            }
            None => self.store().delete_row(&row.id).await?,
        };
        if removed {
            self.hub.trigger_attendance(&church, room, false);
        }
        Ok(removed)
    }

    /// setName (§10.2): renames the socket's readable non-alerts rows.
    pub async fn set_name(
        &self,
        caller: &Caller,
        socket: &str,
        name: &str,
    ) -> AppResult<Vec<connections::Model>> {
        check_len(socket, MAX_SOCKET_ID, "/socketId".into(), true)?;
        check_len(name, MAX_DISPLAY_NAME, "/name".into(), false)?;
        let rows: Vec<_> = self
            .store()
            .socket_rows(socket)
            .await?
            .into_iter()
            .filter(|r| r.conversation_id != ALERTS)
            .collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut readable = Vec::new();
        for r in rows {
            if self
                .room_for_reading(caller, &r.church_id, &r.conversation_id)
                .await
                .is_ok()
            {
                readable.push(r);
            }
        }
        if readable.is_empty() {
            return Err(AppError::Unauthorized);
        }
        let ids: Vec<String> = readable.iter().map(|r| r.id.clone()).collect();
        self.store().rename_rows(&ids, name).await?;
        let mut out = Vec::with_capacity(readable.len());
        for mut r in readable {
            r.display_name = Some(name.to_string());
            self.hub
                .trigger_attendance(&r.church_id, &r.conversation_id, false);
            out.push(r);
        }
        Ok(out)
    }

    /// The rows of a room by `timeJoined`; for `alerts`, only the caller's own rows.
    pub async fn list_room(
        &self,
        caller: &Caller,
        church: &str,
        room: &str,
    ) -> AppResult<Vec<connections::Model>> {
        let resolved = self.room_for_reading(caller, church, room).await?;
        Ok(match resolved {
            Room::Alerts { church, person } if !caller.is_system() => {
                self.store().person_rows(&church, ALERTS, &person).await?
            }
            r => self.store().room_rows(r.church(), room).await?,
        })
    }

    /// The current attendance of a room, as the `attendance` frame would carry it.
    pub async fn attendance(
        &self,
        caller: &Caller,
        church: &str,
        room: &str,
    ) -> AppResult<AttendanceData> {
        if room == ALERTS {
            return Err(AppError::BadRequest("Attendance is not kept for alerts"));
        }
        let resolved = self.room_for_reading(caller, church, room).await?;
        Ok(self.hub.attendance_now(resolved.church(), room).await?)
    }
}

pub fn row_to_pb(r: connections::Model) -> pb::ConnectionRow {
    pb::ConnectionRow {
        id: r.id,
        church_id: r.church_id,
        conversation_id: r.conversation_id,
        person_id: r.person_id,
        display_name: r.display_name,
        time_joined: crate::time::format_ms(r.time_joined),
        socket_id: r.socket_id,
        ip_address: r.ip_address,
        node_id: r.node_id,
    }
}

fn list(rows: Vec<connections::Model>) -> Response<pb::ConnectionList> {
    Response::new(pb::ConnectionList {
        connections: rows.into_iter().map(row_to_pb).collect(),
    })
}

#[tonic::async_trait]
impl pb::connection_server::Connection for ConnectionService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::ConnectionList>, Status> {
        let items = request.into_inner().items;
        Ok(list(
            ConnectionService::join(self, &Caller::System, None, items).await?,
        ))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let r = request.into_inner();
        let removed = ConnectionService::leave(
            self,
            &Caller::System,
            &r.church_id,
            &r.room_id,
            &r.socket_id,
        )
        .await?;
        Ok(Response::new(pb::LeaveReply {
            success: true,
            removed,
        }))
    }

    async fn set_name(
        &self,
        request: Request<pb::SetNameRequest>,
    ) -> Result<Response<pb::ConnectionList>, Status> {
        let r = request.into_inner();
        Ok(list(
            ConnectionService::set_name(self, &Caller::System, &r.socket_id, &r.name).await?,
        ))
    }

    async fn list_room(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ConnectionList>, Status> {
        let r = request.into_inner();
        Ok(list(
            ConnectionService::list_room(self, &Caller::System, &r.church_id, &r.room_id).await?,
        ))
    }

    async fn attendance(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::AttendanceReply>, Status> {
        let r = request.into_inner();
        let a =
            ConnectionService::attendance(self, &Caller::System, &r.church_id, &r.room_id).await?;
        Ok(Response::new(pb::AttendanceReply {
            conversation_id: a.conversation_id,
            viewers: a
                .viewers
                .into_iter()
                .map(|v| pb::Viewer {
                    id: v.id,
                    display_name: v.display_name,
                })
                .collect(),
            total_viewers: a.total_viewers as u32,
        }))
    }
}
