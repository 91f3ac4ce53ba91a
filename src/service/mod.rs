//! The one domain layer. Every decision lives here: access (through `auth::access`),
//! validation limits (`limits`), writes (through `store`) and what to deliver (through the
//! `cluster::Seam`). The gRPC services and the REST edge are thin doors onto it; the
//! hub below is transport only.
//!
//! Each function takes the caller and typed input, decides access, writes in one
//! transaction and sends its frames after the commit.
pub mod alerts;
pub mod blocked_ips;
pub mod conversations;
pub mod delivery;
pub mod gateway;
pub mod limits;
pub mod messages;
pub mod model;
pub mod nodes;
pub mod notifications;
pub mod post_cache;
pub mod presence;
pub mod private_messages;
pub mod rooms;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::auth::{Caller, Claims, Permission, access};
use crate::cluster::{HeldFrame, Seam};
use crate::error::{AppError, AppResult};
use crate::hub::{Action, Audience, Hub, encode_frame};
use crate::store::Store;
use crate::store::entities::{conversations as conv, private_messages as pm};

/// Turns the opaque `contentId` of another service (encrypted, longer than 11 characters)
/// into a plain id. The default returns it unchanged.
pub type ContentDecryptor = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Tunables of the domain: presence (§6) and the node lease (§5.3).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Attendance windows: `attendance_window` up to `big_room_rows` rows, `_big` above.
    pub attendance_window: Duration,
    pub attendance_window_big: Duration,
    pub big_room_rows: usize,
    pub roster_cap: usize,
    /// Lease renewal and sweep period; a lease lasts three.
    pub sweep_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            attendance_window: Duration::from_millis(100),
            attendance_window_big: Duration::from_secs(1),
            big_room_rows: 100,
            roster_cap: 100,
            sweep_interval: Duration::from_secs(7),
        }
    }
}

impl ServiceConfig {
    pub fn lease(&self) -> Duration {
        self.sweep_interval * 3
    }
}

#[derive(Clone)]
pub struct Services {
    /// This node's id, written into the rows of the sockets it holds.
    pub node_id: Arc<str>,
    store: Store,
    /// Live sockets and their membership (transport). Frames never go to it directly.
    pub hub: Arc<Hub>,
    seam: Arc<dyn Seam>,
    pub config: Arc<ServiceConfig>,
    pub decrypt: ContentDecryptor,
    /// The group-commit writer of new messages; `None` inside the writer itself.
    writer: Option<writer::Writer>,
    pub(crate) post_cache: Arc<post_cache::PostCache>,
    presence: Arc<presence::Coalescer>,
    rows: Arc<rooms::RowMirror>,
    /// Other live nodes seen by the last sweep without a broker (for its warning).
    others_seen: Arc<std::sync::atomic::AtomicUsize>,
}

impl Services {
    /// Must be called inside a Tokio runtime: it starts the message writer, which stops
    /// when the last clone of these services is dropped. Registers itself with the hub for
    /// socket ends (the hub lets go of it at shutdown).
    pub fn new(
        node_id: String,
        store: Store,
        hub: Arc<Hub>,
        seam: Arc<dyn Seam>,
        config: ServiceConfig,
    ) -> Self {
        let inner = Self {
            node_id: node_id.into(),
            store,
            hub,
            seam,
            config: Arc::new(config),
            decrypt: Arc::new(|s: &str| s.to_string()),
            writer: None,
            post_cache: Arc::default(),
            presence: Arc::default(),
            rows: Arc::default(),
            others_seen: Arc::default(),
        };
        let writer = writer::Writer::spawn(inner.clone());
        let svc = Self {
            writer: Some(writer),
            ..inner
        };
        svc.hub.set_events(Arc::new(rooms::SocketEnds {
            svc: svc.clone(),
            runtime: tokio::runtime::Handle::current(),
        }));
        svc
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Why this node cannot deliver across nodes right now, if it cannot (`/ready`).
    pub fn unready(&self) -> Option<String> {
        self.seam.unready()
    }

    /// Why the database does not answer, if it does not (`/ready`).
    pub async fn database_unready(&self) -> Option<String> {
        self.store
            .ping()
            .await
            .err()
            .map(|e| format!("database: {e}"))
    }

    /// Waits until the frames this node published so far are ordered for every node (see
    /// `Seam::settled`). Calls that publish await it before they reply, so that the next
    /// call of their caller, to whichever node, cannot overtake them. Free on one node.
    pub async fn settle(&self) {
        // A publisher that outruns this node's socket writers waits for them here, so that
        // it is slowed by its reply instead of by a growing queue (see `Hub::backlog`).
        if let Some(backlog) = self.hub.backlog() {
            let started = std::time::Instant::now();
            backlog.await;
            metrics::histogram!("messaging_backlog_wait_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if let Some(settled) = self.seam.settled() {
            let started = std::time::Instant::now();
            settled.await;
            // What a reply waits for the broker: the price of order across nodes.
            metrics::histogram!("messaging_broker_settle_seconds")
                .record(started.elapsed().as_secs_f64());
        }
    }

    /// Serializes once, then delivers to every socket of the audience on every node.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        audience: &Audience,
        conversation_id: &str,
        action: Action,
        data: &T,
    ) -> usize {
        self.seam.publish(
            audience,
            &frame_for(audience, conversation_id, action, data),
        )
    }

    /// Like [`Services::send`], for a write that has not committed yet: the frame is
    /// ordered now and delivered on release (see `Seam::publish_held`).
    pub fn send_held<T: Serialize + ?Sized>(
        &self,
        audience: &Audience,
        conversation_id: &str,
        action: Action,
        data: &T,
    ) -> Box<dyn HeldFrame> {
        self.seam
            .publish_held(audience, frame_for(audience, conversation_id, action, data))
    }

    /// A frame to a room (`conversationId` of the envelope = the room).
    pub fn send_to_room<T: Serialize + ?Sized>(
        &self,
        church: &str,
        room: &str,
        action: Action,
        data: &T,
    ) -> usize {
        self.send(&Audience::room(church, room), room, action, data)
    }

    /// A frame to a person's `alerts` rows.
    pub fn send_to_person<T: Serialize + ?Sized>(
        &self,
        church: &str,
        person: &str,
        conversation_id: &str,
        action: Action,
        data: &T,
    ) -> usize {
        self.send(
            &Audience::person(church, person),
            conversation_id,
            action,
            data,
        )
    }

    /// A conversation with the private-message row the access rules need.
    pub async fn conversation_access(&self, conversation: conv::Model) -> AppResult<ConvAccess> {
        let pm = if content_type(&conversation) == access::ContentType::PrivateMessage {
            self.store().private_message_of(&conversation.id).await?
        } else {
            None
        };
        Ok(ConvAccess {
            conv: conversation,
            pm,
        })
    }

    /// Loads a conversation by id alone, or 404.
    pub async fn load_conversation(&self, id: &str) -> AppResult<ConvAccess> {
        let c = self
            .store()
            .conversation(id)
            .await?
            .ok_or(AppError::NotFound("Conversation not found"))?;
        self.conversation_access(c).await
    }

    /// Loads a conversation that must belong to `church`, or 404.
    pub async fn load_conversation_in(&self, church: &str, id: &str) -> AppResult<ConvAccess> {
        let c = self
            .store()
            .conversation(id)
            .await?
            .filter(|c| c.church_id == church)
            .ok_or(AppError::NotFound("Conversation not found"))?;
        self.conversation_access(c).await
    }
}

/// A conversation and its participants row, ready for the access rules.
#[derive(Debug, Clone)]
pub struct ConvAccess {
    pub conv: conv::Model,
    pub pm: Option<pm::Model>,
}

/// A conversation as the access rules see it.
pub(crate) fn rules<'a>(c: &'a conv::Model, pm: Option<&'a pm::Model>) -> access::Conv<'a> {
    access::Conv {
        church_id: &c.church_id,
        content_type: content_type(c),
        content_id: c.content_id.as_deref(),
        allow_anonymous_posts: c.allow_anonymous_posts,
        visibility: c.visibility.as_deref(),
        participants: pm.map(|pm| (pm.from_person_id.as_str(), pm.to_person_id.as_str())),
    }
}

/// A conversation's type.
pub(crate) fn content_type(c: &conv::Model) -> access::ContentType {
    access::ContentType::of(c.content_type.as_deref())
}

/// Whether anyone may read and post in a conversation without a token (§8.3).
pub(crate) fn is_anonymous_public(c: &conv::Model) -> bool {
    access::is_anonymous_public(&rules(c, None))
}

impl ConvAccess {
    fn rules(&self) -> access::Conv<'_> {
        rules(&self.conv, self.pm.as_ref())
    }

    pub fn can_read(&self, caller: &Caller) -> bool {
        access::can_read(caller, &self.rules())
    }

    pub fn can_participate(&self, caller: &Caller) -> bool {
        access::can_participate(caller, &self.rules())
    }

    pub fn can_moderate(&self, caller: &Caller) -> bool {
        access::can_moderate(caller, &self.rules())
    }
}

/// The claims of a caller who must act as a person (non-empty `personId`), or 401.
pub fn person(caller: &Caller) -> AppResult<&Claims> {
    caller
        .claims()
        .filter(|c| !c.person_id.is_empty())
        .ok_or(AppError::Unauthorized)
}

/// The claims of an authenticated caller, or 401.
pub fn member(caller: &Caller) -> AppResult<&Claims> {
    caller.claims().ok_or(AppError::Unauthorized)
}

/// The claims of a caller holding `permission`, or 401. Every operation the contract gates
/// by a permission checks it here, whatever the door: the edge's route table checks it too,
/// but only to answer before reading the body.
pub fn holder(caller: &Caller, permission: Permission) -> AppResult<&Claims> {
    let claims = member(caller)?;
    if claims.has_permission(permission) {
        Ok(claims)
    } else {
        Err(AppError::Unauthorized)
    }
}

/// The frame of one envelope to `audience`, encoded once.
fn frame_for<T: Serialize + ?Sized>(
    audience: &Audience,
    conversation_id: &str,
    action: Action,
    data: &T,
) -> bytes::Bytes {
    let church = match audience {
        Audience::Room { church, .. } | Audience::Person { church, .. } => church,
    };
    encode_frame(church, conversation_id, action, data)
}
