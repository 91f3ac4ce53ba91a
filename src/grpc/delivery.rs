//! `messaging.v1.Delivery`: fan-out of one envelope to a room or to a person's alerts rows.
use std::sync::Arc;

use serde_json::value::RawValue;
use tonic::{Request, Response, Status};

use crate::error::{AppError, AppResult};
use crate::hub::{Audience, Hub, encode_frame};
use crate::pb;

/// The actions of §3.2 that a frame may carry; the server sends no other.
pub const ACTIONS: [&str; 10] = [
    "socketId",
    "message",
    "conversationActivity",
    "deleteMessage",
    "reaction",
    "callout",
    "attendance",
    "blockedIp",
    "privateMessage",
    "notification",
];

#[derive(Clone)]
pub struct DeliveryService {
    pub hub: Arc<Hub>,
}

/// Checks an envelope's parts; `data` must be JSON and is embedded as-is.
fn checked_data<'a>(action: &str, data: &'a str) -> AppResult<&'a RawValue> {
    if !ACTIONS.contains(&action) || action == "socketId" {
        return Err(AppError::invalid_body("/action"));
    }
    serde_json::from_str::<&RawValue>(data).map_err(|_| AppError::invalid_body("/data"))
}

fn required(value: &str, field: &str, max: usize) -> AppResult<()> {
    if value.is_empty() || value.chars().count() > max {
        return Err(AppError::invalid_body(format!("/{field}")));
    }
    Ok(())
}

impl DeliveryService {
    /// Fans one envelope out to the room `(church_id, room)`; returns the rows reached.
    pub fn send_to_room(
        &self,
        church_id: &str,
        room: &str,
        action: &str,
        data: &str,
    ) -> AppResult<usize> {
        required(church_id, "churchId", 64)?;
        required(room, "conversationId", 64)?;
        let data = checked_data(action, data)?;
        let frame = encode_frame(church_id, room, action, data);
        Ok(self.hub.deliver(&Audience::room(church_id, room), &frame))
    }

    /// Delivers one envelope to the `alerts` rows of `(church_id, person_id)`.
    pub fn send_to_person(
        &self,
        church_id: &str,
        person_id: &str,
        conversation_id: &str,
        action: &str,
        data: &str,
    ) -> AppResult<usize> {
        required(church_id, "churchId", 64)?;
        required(person_id, "personId", 64)?;
        let data = checked_data(action, data)?;
        let frame = encode_frame(church_id, conversation_id, action, data);
        Ok(self
            .hub
            .deliver(&Audience::person(church_id, person_id), &frame))
    }
}

#[tonic::async_trait]
impl pb::delivery_server::Delivery for DeliveryService {
    async fn send_conversation_messages(
        &self,
        request: Request<pb::SendConversationMessagesRequest>,
    ) -> Result<Response<pb::DeliveryReply>, Status> {
        let r = request.into_inner();
        let n = self.send_to_room(&r.church_id, &r.conversation_id, &r.action, &r.data)?;
        Ok(Response::new(pb::DeliveryReply {
            delivered: n as u32,
        }))
    }

    async fn send_to_person(
        &self,
        request: Request<pb::SendToPersonRequest>,
    ) -> Result<Response<pb::DeliveryReply>, Status> {
        let r = request.into_inner();
        let n = DeliveryService::send_to_person(
            self,
            &r.church_id,
            &r.person_id,
            &r.conversation_id,
            &r.action,
            &r.data,
        )?;
        Ok(Response::new(pb::DeliveryReply {
            delivered: n as u32,
        }))
    }
}
