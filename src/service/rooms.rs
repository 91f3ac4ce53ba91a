//! Rooms (§4, §5.1, §10.2): join, leave, setName, listing and attendance, and what happens
//! to a socket's rows when it ends.
//!
//! Rows are written first; the hub's membership (who gets a room's frames here) and this
//! node's copy of its rows (`RowMirror`, for re-writing them after a lost lease) follow the
//! commit, under the socket's membership lock, so the three cannot diverge through
//! concurrent joins, leaves and closes of one socket.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::Services;
use super::limits::{
    MAX_BATCH, MAX_DISPLAY_NAME, MAX_EPOCH, MAX_ID, MAX_IP, MAX_ROOM_ID, MAX_SEQ, MAX_SOCKET_ID,
};
use super::model::Connection;
use super::presence::AttendanceData;
use crate::auth::access::ContentType;
use crate::auth::{Caller, access};
use crate::cluster::Position;
use crate::error::{AppError, AppResult};
use crate::hub::{Audience, SocketEvents, SocketHandle};
pub use crate::store::NewRow;
use crate::store::entities::{connections, conversations};

pub use super::model::ALERTS;

/// What a room id names (§4). The one parser of room ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomId<'a> {
    Alerts,
    /// `content-{type}-{id}`: type up to the first `-`, id the rest; both non-empty.
    Content {
        content_type: &'a str,
        content_id: &'a str,
    },
    /// Anything else names a conversation (which may not exist).
    Conversation(&'a str),
    /// Starts with `content-` but has no type or no id: never a room.
    Malformed,
}

impl<'a> RoomId<'a> {
    pub fn parse(room: &'a str) -> Self {
        if room == ALERTS {
            return RoomId::Alerts;
        }
        let Some(rest) = room.strip_prefix("content-") else {
            return RoomId::Conversation(room);
        };
        match rest.split_once('-') {
            Some((t, id)) if !t.is_empty() && !id.is_empty() => RoomId::Content {
                content_type: t,
                content_id: id,
            },
            _ => RoomId::Malformed,
        }
    }

    /// Alerts and content rooms need a token.
    fn needs_token(self) -> bool {
        !matches!(self, RoomId::Conversation(_))
    }
}

/// The content room of a content item.
pub fn content_room(content_type: &str, content_id: &str) -> String {
    format!("content-{content_type}-{content_id}")
}

/// The audience a `connections` row belongs to.
pub fn audience_of(row: &connections::Model) -> Audience {
    match (row.conversation_id.as_str(), row.person_id.as_deref()) {
        (ALERTS, Some(p)) => Audience::person(&row.church_id, p),
        _ => Audience::room(&row.church_id, &row.conversation_id),
    }
}

/// One item of a join. `church_id`, `person_id` and `ip_address` are read from trusted
/// callers only (gRPC): for a token's holder the server sets them (§5.1).
#[derive(Debug, Clone, Default)]
pub struct JoinInput {
    pub church_id: String,
    pub conversation_id: String,
    pub socket_id: String,
    pub display_name: Option<String>,
    pub person_id: Option<String>,
    pub ip_address: Option<String>,
    /// Resume from here (§5.6); ignored unless the socket has positions.
    pub since: Option<Position>,
}

/// Rows of one join by `(churchId, room, socketId)`, as a join's positions are keyed.
type RowKey = (String, String, String);

fn row_key(church: &str, room: &str, socket: &str) -> RowKey {
    (church.to_string(), room.to_string(), socket.to_string())
}

/// A room named by a request, resolved and authorized.
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

/// A string's shape: present when `required`, at most `max` characters, and no U+0000
/// (PostgreSQL cannot store it; the REST edge refuses it while parsing, gRPC callers reach
/// this check).
fn check_len(value: &str, max: usize, field: String, required: bool) -> AppResult<()> {
    if (required && value.is_empty()) || value.chars().count() > max || value.contains('\0') {
        return Err(AppError::InvalidBody { field });
    }
    Ok(())
}

/// Ids a gRPC caller names a room or a socket by: U+0000 names nothing, and PostgreSQL
/// could not even be asked.
fn no_nul(values: &[(&str, &str)]) -> AppResult<()> {
    match values.iter().find(|(v, _)| v.contains('\0')) {
        Some((_, field)) => Err(AppError::invalid_body(format!("/{field}"))),
        None => Ok(()),
    }
}

/// This node's copy of the rows of the sockets it holds, by socket id: what a node whose
/// lease ran out (and whose rows another node swept) writes back (§5.3).
#[derive(Default)]
pub struct RowMirror(Mutex<HashMap<Arc<str>, Vec<connections::Model>>>);

impl RowMirror {
    fn put(&self, socket: &Arc<str>, row: connections::Model) {
        let mut map = self.0.lock();
        let rows = map.entry(socket.clone()).or_default();
        rows.retain(|r| r.id != row.id);
        rows.push(row);
    }

    fn remove(&self, socket: &str, row_id: &str) {
        let mut map = self.0.lock();
        if let Some(rows) = map.get_mut(socket) {
            rows.retain(|r| r.id != row_id);
            if rows.is_empty() {
                map.remove(socket);
            }
        }
    }

    fn forget_socket(&self, socket: &str) {
        self.0.lock().remove(socket);
    }

    fn rename(&self, socket: &str, ids: &[String], name: &str) {
        if let Some(rows) = self.0.lock().get_mut(socket) {
            for r in rows.iter_mut().filter(|r| ids.contains(&r.id)) {
                r.display_name = Some(name.to_string());
                r.anonymous_number = crate::store::anonymous_number(name);
            }
        }
    }

    pub(super) fn socket_rows(&self, socket: &str) -> Vec<connections::Model> {
        self.0.lock().get(socket).cloned().unwrap_or_default()
    }
}

/// The hub's socket events, handled by the service layer on the runtime that built it.
/// The socket runtime stops at shutdown, and a database connection opened on it would
/// die with it.
pub(super) struct SocketEnds {
    pub svc: Services,
    pub runtime: tokio::runtime::Handle,
}

impl SocketEvents for SocketEnds {
    fn socket_ended(
        &self,
        socket: Arc<SocketHandle>,
        audiences: Vec<Audience>,
    ) -> BoxFuture<'static, ()> {
        let svc = self.svc.clone();
        let done = self
            .runtime
            .spawn(async move { svc.socket_ended(&socket, audiences).await });
        Box::pin(async move {
            let _ = done.await;
        })
    }
}

impl Services {
    /// Whether the caller may read a conversation (privateMessage needs its participants row).
    async fn can_read_conversation(
        &self,
        caller: &Caller,
        conv: &conversations::Model,
    ) -> AppResult<bool> {
        let pm = if super::content_type(conv) == ContentType::PrivateMessage && !caller.is_system()
        {
            self.store().private_message_of(&conv.id).await?
        } else {
            None
        };
        Ok(access::can_read(caller, &super::rules(conv, pm.as_ref())))
    }

    /// Resolves a room named in a path (`church`, `room`) for reading, listing or leaving:
    /// alerts and content rooms need a token; a conversation must be in `church`.
    async fn room_for_reading(&self, caller: &Caller, church: &str, room: &str) -> AppResult<Room> {
        no_nul(&[(church, "churchId"), (room, "roomId")])?;
        match RoomId::parse(room) {
            RoomId::Alerts => match caller {
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
            },
            RoomId::Content { .. } | RoomId::Malformed if matches!(caller, Caller::Anonymous) => {
                Err(AppError::Unauthorized)
            }
            RoomId::Malformed => Err(AppError::NotFound("Conversation not found")),
            RoomId::Content {
                content_type,
                content_id,
            } => {
                if !access::can_read_content(caller, church, content_type, content_id) {
                    return Err(AppError::Unauthorized);
                }
                Ok(Room::Content {
                    church: church.to_string(),
                })
            }
            RoomId::Conversation(id) => {
                let conv = self
                    .store()
                    .conversation(id)
                    .await?
                    .filter(|c| c.church_id == church)
                    .ok_or(AppError::NotFound("Conversation not found"))?;
                if !self.can_read_conversation(caller, &conv).await? {
                    return Err(AppError::Unauthorized);
                }
                Ok(Room::Conversation(conv))
            }
        }
    }

    /// Join (§5.1, §10.2): validate, resolve and authorize the whole batch, then upsert it
    /// in one transaction per node, mirror the rows and raise coalesced attendance. Nothing
    /// is written unless every item passes every check, in the contract's order (§9).
    pub async fn join(
        &self,
        caller: &Caller,
        client_ip: Option<&str>,
        items: Vec<JoinInput>,
    ) -> AppResult<Vec<Connection>> {
        check_join_items(caller, &items)?;
        let rooms = self.join_rooms(caller, &items).await?;
        let holders = self.socket_holders(&items).await?;
        self.authorize_join(caller, &items, &rooms).await?;
        let rows = rows_to_write(caller, client_ip, &items, &rooms);
        let since: HashMap<RowKey, Position> = items
            .iter()
            .zip(&rows)
            .filter_map(|(it, r)| {
                let s = it.since.clone()?;
                Some((row_key(&r.church_id, &r.room, &r.socket_id), s))
            })
            .collect();
        let joined = self.write_join(&rows, &holders, &since).await?;
        Ok(visible_to(caller, joined))
    }

    /// Existence: the room each item names (its conversation read once per batch).
    async fn join_rooms(&self, caller: &Caller, items: &[JoinInput]) -> AppResult<Vec<Room>> {
        let mut rooms = Vec::with_capacity(items.len());
        let mut convs: BTreeMap<String, Option<conversations::Model>> = BTreeMap::new();
        for it in items {
            let room = match RoomId::parse(&it.conversation_id) {
                RoomId::Alerts => match caller.claims() {
                    Some(c) => Room::Alerts {
                        church: c.church_id.clone(),
                        person: c.person_id.clone(),
                    },
                    None => Room::Alerts {
                        church: it.church_id.clone(),
                        person: it.person_id.clone().unwrap_or_default(),
                    },
                },
                RoomId::Malformed => return Err(AppError::NotFound("Conversation not found")),
                RoomId::Content { .. } => Room::Content {
                    church: caller
                        .claims()
                        .map_or_else(|| it.church_id.clone(), |c| c.church_id.clone()),
                },
                RoomId::Conversation(id) => {
                    if !convs.contains_key(id) {
                        let c = self.store().conversation(id).await?;
                        convs.insert(id.to_string(), c);
                    }
                    match convs.get(id).cloned().flatten() {
                        Some(c) => Room::Conversation(c),
                        None => return Err(AppError::NotFound("Conversation not found")),
                    }
                }
            };
            rooms.push(room);
        }
        Ok(rooms)
    }

    /// Each socket's holder: `None` for this node, or the other live node that holds it
    /// (and writes its rows).
    async fn socket_holders<'a>(
        &self,
        items: &'a [JoinInput],
    ) -> AppResult<HashMap<&'a str, Option<String>>> {
        let mut holders: HashMap<&str, Option<String>> = HashMap::new();
        for it in items {
            let socket = it.socket_id.as_str();
            if holders.contains_key(socket) {
                continue;
            }
            let holder = if self.hub.has_socket(socket) {
                None
            } else if self.seam.socketless() {
                // API Gateway holds it: this instance writes its rows, if it exists.
                self.seam
                    .locate(socket)
                    .await?
                    .ok_or(AppError::NotFound("Socket not found"))?;
                None
            } else {
                let node = self.seam.locate(socket).await?;
                Some(node.ok_or(AppError::NotFound("Socket not found"))?)
            };
            holders.insert(socket, holder);
        }
        Ok(holders)
    }

    /// Access to every item's room, before anything is written.
    async fn authorize_join(
        &self,
        caller: &Caller,
        items: &[JoinInput],
        rooms: &[Room],
    ) -> AppResult<()> {
        for (it, room) in items.iter().zip(rooms) {
            let allowed = match room {
                Room::Alerts { .. } => true,
                Room::Content { church } => match RoomId::parse(&it.conversation_id) {
                    RoomId::Content {
                        content_type,
                        content_id,
                    } => access::can_read_content(caller, church, content_type, content_id),
                    _ => false,
                },
                Room::Conversation(conv) => self.can_read_conversation(caller, conv).await?,
            };
            if !allowed {
                return Err(AppError::Unauthorized);
            }
        }
        Ok(())
    }

    /// Writes the rows, one transaction per holding node, and returns them as stored, in
    /// request order.
    async fn write_join(
        &self,
        rows: &[NewRow],
        holders: &HashMap<&str, Option<String>>,
        since: &HashMap<RowKey, Position>,
    ) -> AppResult<Vec<(connections::Model, Option<Position>)>> {
        let mut by_node: BTreeMap<Option<String>, Vec<NewRow>> = BTreeMap::new();
        for row in rows {
            let node = holders.get(row.socket_id.as_str()).cloned().flatten();
            by_node.entry(node).or_default().push(row.clone());
        }
        let mut stored = Vec::with_capacity(rows.len());
        for (node, part) in by_node {
            stored.extend(match node {
                None => self.join_here(part, since).await?,
                // Positions are kept by this node's seam only for sockets it holds.
                Some(node) => self
                    .seam
                    .remote_join(&node, part)
                    .await?
                    .into_iter()
                    .map(|r| (r, None))
                    .collect(),
            });
        }
        // In request order.
        let mut by_key: HashMap<_, _> = stored
            .into_iter()
            .map(|r| {
                (
                    row_key(&r.0.church_id, &r.0.conversation_id, &r.0.socket_id),
                    r,
                )
            })
            .collect();
        Ok(rows
            .iter()
            .filter_map(|r| by_key.remove(&row_key(&r.church_id, &r.room, &r.socket_id)))
            .collect())
    }

    /// The write of a join for sockets this node holds: upsert, membership, attendance.
    pub async fn join_local(&self, rows: Vec<NewRow>) -> AppResult<Vec<Connection>> {
        Ok(self
            .join_here(rows, &HashMap::new())
            .await?
            .into_iter()
            .map(|(r, _)| Connection::from(r))
            .collect())
    }

    /// With each row, for a socket with positions (when the seam keeps them), the
    /// audience's position at its join; `since` replays from there (§5.6).
    async fn join_here(
        &self,
        rows: Vec<NewRow>,
        since: &HashMap<RowKey, Position>,
    ) -> AppResult<Vec<(connections::Model, Option<Position>)>> {
        if self.seam.socketless() {
            // No socket here to lock or to add to an audience: the rows are the membership.
            let stored = self
                .store()
                .upsert_connections(&self.node_id, &rows)
                .await?;
            let rooms: BTreeSet<_> = stored
                .iter()
                .map(|r| (r.church_id.as_str(), r.conversation_id.as_str()))
                .collect();
            for (church, room) in rooms {
                self.room_changed(church, room, true);
            }
            return Ok(stored.into_iter().map(|r| (r, None)).collect());
        }
        let mut sockets = BTreeMap::new();
        for row in &rows {
            let h = self
                .hub
                .socket(&row.socket_id)
                .ok_or(AppError::NotFound("Socket not found"))?;
            sockets.insert(row.socket_id.clone(), h);
        }
        // Membership locks in a fixed order (BTreeMap) so batches cannot deadlock.
        let mut guards = Vec::with_capacity(sockets.len());
        for h in sockets.values() {
            guards.push(h.membership.lock().await);
        }
        if sockets.values().any(|h| !h.is_open()) {
            return Err(AppError::NotFound("Socket not found"));
        }
        let stored = self
            .store()
            .upsert_connections(&self.node_id, &rows)
            .await?;
        let mut audiences = BTreeSet::new();
        let mut positions = Vec::with_capacity(stored.len());
        for row in &stored {
            let mut position = None;
            if let Some(h) = sockets.get(&row.socket_id) {
                let audience = audience_of(row);
                match self.seam.history().filter(|_| h.positions) {
                    Some(history) => {
                        let key = row_key(&row.church_id, &row.conversation_id, &row.socket_id);
                        position = Some(history.join(
                            &self.hub,
                            h,
                            &audience,
                            &row.conversation_id,
                            since.get(&key),
                        ));
                    }
                    None => {
                        self.hub.add_member(h, audience.clone());
                    }
                }
                self.rows.put(&h.id, row.clone());
                audiences.insert(audience);
            }
            positions.push(position);
        }
        drop(guards);
        // Every audience, not only new ones: a concurrent join may have started the
        // subscription, and this one must not answer before it is in place.
        for audience in &audiences {
            self.seam.interest(audience, true).await;
        }
        let mut seen = BTreeSet::new();
        for row in &stored {
            if seen.insert((row.church_id.as_str(), row.conversation_id.as_str())) {
                self.room_changed(&row.church_id, &row.conversation_id, true);
            }
        }
        Ok(stored.into_iter().zip(positions).collect())
    }

    /// Leave (§10.2). Returns whether a row was removed. Once it returns, the socket gets
    /// no frame of the room: it leaves the hub's audience before the row is deleted.
    pub async fn leave(
        &self,
        caller: &Caller,
        church: &str,
        room: &str,
        socket: &str,
    ) -> AppResult<bool> {
        no_nul(&[(socket, "socketId")])?;
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
        if *row.node_id != *self.node_id {
            match self.seam.remote_leave(&row.node_id, row.clone()).await {
                Err(AppError::NotFound(_)) => {} // no live holder: the row is an orphan
                done => return done,
            }
        }
        self.leave_here(row).await
    }

    /// The write of a leave for a socket this node holds (or that no live node holds). The
    /// socket leaves the hub's audience before the row is deleted: once this returns, it
    /// gets no frame of the room.
    pub async fn leave_local(&self, row: Connection) -> AppResult<bool> {
        self.leave_here(row.into()).await
    }

    async fn leave_here(&self, row: connections::Model) -> AppResult<bool> {
        let audience = audience_of(&row);
        let removed = match self.hub.socket(&row.socket_id) {
            Some(h) => {
                let _guard = h.membership.lock().await;
                let emptied = self.hub.remove_member(&h.id, &audience);
                match self.store().delete_row(&row.id).await {
                    Ok(removed) => {
                        self.rows.remove(&h.id, &row.id);
                        if emptied {
                            self.seam.interest(&audience, false).await;
                        }
                        removed
                    }
                    Err(e) => {
                        // Nothing changed: the socket stays in the room.
                        self.hub.add_member(&h, audience);
                        return Err(e.into());
                    }
                }
            }
            None => self.store().delete_row(&row.id).await?,
        };
        if removed {
            self.room_changed(&row.church_id, &row.conversation_id, false);
        }
        Ok(removed)
    }

    /// Rows of a socket this node holds were renamed: keep the copy of them in step.
    pub fn renamed_local(&self, socket: &str, ids: &[String], name: &str) {
        self.rows.rename(socket, ids, name);
    }

    /// setName (§10.2): renames the socket's readable non-alerts rows.
    pub async fn set_name(
        &self,
        caller: &Caller,
        socket: &str,
        name: &str,
    ) -> AppResult<Vec<Connection>> {
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
        if self.seam.socketless() && self.seam.locate(socket).await?.is_none() {
            // API Gateway no longer knows it (§5.5): as for a join.
            return Err(AppError::NotFound("Socket not found"));
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
        match readable.first().map(|r| r.node_id.as_str()) {
            Some(node) if node != &*self.node_id => {
                if let Err(e) = self.seam.remote_renamed(node, socket, &ids, name).await {
                    tracing::warn!(%socket, error = %e, "holder not told of a rename");
                }
            }
            _ => self.renamed_local(socket, &ids, name),
        }
        let mut out = Vec::with_capacity(readable.len());
        for mut r in readable {
            r.display_name = Some(name.to_string());
            self.room_changed(&r.church_id, &r.conversation_id, false);
            out.push(r);
        }
        Ok(visible_to(
            caller,
            out.into_iter().map(|r| (r, None)).collect(),
        ))
    }

    /// The rows of a room by `timeJoined`; for `alerts`, only the caller's own rows.
    pub async fn list_room(
        &self,
        caller: &Caller,
        church: &str,
        room: &str,
    ) -> AppResult<Vec<Connection>> {
        let resolved = self.room_for_reading(caller, church, room).await?;
        let rows = match resolved {
            Room::Alerts { church, person } if !caller.is_system() => {
                self.store().person_rows(&church, ALERTS, &person).await?
            }
            r => self.store().room_rows(r.church(), room).await?,
        };
        Ok(visible_to(
            caller,
            rows.into_iter().map(|r| (r, None)).collect(),
        ))
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
        self.attendance_now(resolved.church(), room).await
    }

    /// A socket ended (§2.2): delete all its rows, raise attendance for every affected
    /// room but `alerts`, and drop interest in audiences it was the last local member of.
    async fn socket_ended(&self, h: &Arc<SocketHandle>, audiences: Vec<Audience>) {
        {
            // A join that got the lock first has finished; one that gets it later finds
            // the socket closed.
            let _guard = h.membership.lock().await;
            self.rows.forget_socket(&h.id);
        }
        match self.store().delete_socket_rows(&h.id).await {
            Ok(rooms) => {
                for (church, room) in rooms {
                    self.room_changed(&church, &room, false);
                }
            }
            Err(e) => {
                // The sweep removes the rows of sockets this node no longer holds.
                tracing::warn!(socket = %h.id, error = %e, "could not delete rows of ended socket");
                for a in &audiences {
                    if let Audience::Room { church, room } = a {
                        self.room_changed(church, room, false);
                    }
                }
            }
        }
        for a in &audiences {
            if self.hub.local_count(a) == 0 {
                self.seam.interest(a, false).await;
            }
        }
    }
}

/// Shape and tokens (checks 3 and 4 of §9) of a join batch: its size, each field's
/// length, and a token for the rooms that need one. Trusted backends (`System`) also name
/// the church, person and IP of each row.
fn check_join_items(caller: &Caller, items: &[JoinInput]) -> AppResult<()> {
    if items.len() > MAX_BATCH {
        return Err(AppError::TooManyItems);
    }
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
        if let Some(s) = &it.since {
            check_len(&s.epoch, MAX_EPOCH, format!("/{i}/since/epoch"), true)?;
            if s.seq > MAX_SEQ {
                return Err(AppError::invalid_body(format!("/{i}/since/seq")));
            }
        }
        if caller.is_system() {
            let room = RoomId::parse(&it.conversation_id);
            check_len(
                &it.church_id,
                MAX_ID,
                format!("/{i}/churchId"),
                room.needs_token(),
            )?;
            let person = it.person_id.as_deref().unwrap_or("");
            check_len(
                person,
                MAX_ID,
                format!("/{i}/personId"),
                room == RoomId::Alerts,
            )?;
            check_len(
                it.ip_address.as_deref().unwrap_or(""),
                MAX_IP,
                format!("/{i}/ipAddress"),
                false,
            )?;
        }
    }
    for it in items {
        let room = RoomId::parse(&it.conversation_id);
        match caller {
            Caller::Anonymous if room.needs_token() => return Err(AppError::Unauthorized),
            Caller::User(c) if room == RoomId::Alerts && c.person_id.is_empty() => {
                return Err(AppError::Unauthorized);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The rows as they will be written: the person and IP come from the caller (from the item
/// only for trusted backends), never from a browser's body.
fn rows_to_write(
    caller: &Caller,
    client_ip: Option<&str>,
    items: &[JoinInput],
    rooms: &[Room],
) -> Vec<NewRow> {
    items
        .iter()
        .zip(rooms)
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
        .collect()
}

/// Rows as `caller` may see them: `ipAddress` only for Content Edit holders of the row's
/// church (and trusted backends), whatever the door the rows leave by.
fn visible_to(
    caller: &Caller,
    rows: Vec<(connections::Model, Option<Position>)>,
) -> Vec<Connection> {
    rows.into_iter()
        .map(|(r, position)| {
            let mut c = Connection::from(r);
            c.position = position;
            if !access::sees_ip_addresses(caller, &c.church_id) {
                c.ip_address = None;
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert_eq!(RoomId::parse("alerts"), RoomId::Alerts);
        assert_eq!(
            RoomId::parse("content-person-PER-1"),
            RoomId::Content {
                content_type: "person",
                content_id: "PER-1"
            }
        );
        assert_eq!(RoomId::parse("content--x"), RoomId::Malformed);
        assert_eq!(RoomId::parse("content-x-"), RoomId::Malformed);
        assert_eq!(RoomId::parse("content-x"), RoomId::Malformed);
        assert_eq!(RoomId::parse("Alerts"), RoomId::Conversation("Alerts"));
        assert_eq!(
            RoomId::parse("CONV0000001"),
            RoomId::Conversation("CONV0000001")
        );
    }
}
