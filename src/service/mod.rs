//! The REST surfaces beyond rooms: messages, conversations, private messages, notifications
//! and blocked IPs. Each function takes the caller and typed input, decides access through
//! `auth::access`, writes in one transaction and fans frames out through the hub after the
//! commit.
pub mod alerts;
pub mod blocked_ips;
pub mod conversations;
pub mod hot;
pub mod limits;
pub mod messages;
pub mod model;
pub mod notifications;
pub mod private_messages;
pub mod writer;

use std::sync::Arc;

use crate::auth::{Caller, Claims, access};
use crate::error::{AppError, AppResult};
use crate::hub::Hub;
use crate::store::Store;
use crate::store::entities::{conversations as conv, private_messages as pm};

/// Turns the opaque `contentId` of another service (encrypted, longer than 11 characters)
/// into a plain id. The default returns it unchanged.
pub type ContentDecryptor = Arc<dyn Fn(&str) -> String + Send + Sync>;

#[derive(Clone)]
pub struct Services {
    pub hub: Arc<Hub>,
    pub decrypt: ContentDecryptor,
    /// The group-commit writer of new messages; `None` inside the writer itself.
    writer: Option<writer::Writer>,
    pub(crate) hot: Arc<hot::HotCache>,
}

impl Services {
    /// Must be called inside a Tokio runtime: it starts the message writer, which stops
    /// when the last clone of these services is dropped.
    pub fn new(hub: Arc<Hub>) -> Self {
        let inner = Self {
            hub,
            decrypt: Arc::new(|s: &str| s.to_string()),
            writer: None,
            hot: Arc::default(),
        };
        let writer = writer::Writer::spawn(inner.clone());
        Self {
            writer: Some(writer),
            ..inner
        }
    }

    pub fn store(&self) -> &Store {
        &self.hub.store
    }

    /// A conversation with the private-message row the access rules need.
    pub async fn conversation_access(&self, conversation: conv::Model) -> AppResult<ConvAccess> {
        let pm = if conversation.content_type.as_deref() == Some("privateMessage") {
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

impl ConvAccess {
    fn rules(&self) -> access::Conv<'_> {
        access::Conv {
            conv: &self.conv,
            pm: self.pm.as_ref(),
        }
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
