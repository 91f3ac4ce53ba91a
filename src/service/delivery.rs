//! Delivery on behalf of other backends (gRPC `Delivery`, §12): one envelope, built by the
//! caller, to a room or to a person's `alerts` rows, on every node.
use serde_json::value::RawValue;

use super::Services;
use super::limits::MAX_ID;
use super::model::ALERTS;
use crate::error::{AppError, AppResult};
use crate::hub::{Action, Audience};

/// Checks an envelope's parts; `data` must be JSON and is embedded as-is.
fn checked(action: &str, data: &str) -> AppResult<(Action, Box<RawValue>)> {
    let action = match Action::parse(action) {
        // Both go to one socket, from this server only.
        Some(Action::SocketId | Action::Gap) | None => {
            return Err(AppError::invalid_body("/action"));
        }
        Some(a) => a,
    };
    let data =
        serde_json::from_str::<Box<RawValue>>(data).map_err(|_| AppError::invalid_body("/data"))?;
    Ok((action, data))
}

fn required(value: &str, field: &str) -> AppResult<()> {
    if value.is_empty() || value.chars().count() > MAX_ID || value.contains('\0') {
        return Err(AppError::invalid_body(format!("/{field}")));
    }
    Ok(())
}

impl Services {
    /// Fans one envelope out to the room `(church, room)`; returns this node's sockets
    /// reached.
    pub fn deliver_to_room(
        &self,
        church: &str,
        room: &str,
        action: &str,
        data: &str,
    ) -> AppResult<usize> {
        required(church, "churchId")?;
        required(room, "conversationId")?;
        let (action, data) = checked(action, data)?;
        // `alerts` is per person (§4): a room delivery never selects its rows.
        if room == ALERTS {
            return Ok(0);
        }
        Ok(self.send(&Audience::room(church, room), room, action, &*data))
    }

    /// Delivers one envelope to the `alerts` rows of `(church, person)`.
    pub fn deliver_to_person(
        &self,
        church: &str,
        person: &str,
        conversation_id: &str,
        action: &str,
        data: &str,
    ) -> AppResult<usize> {
        required(church, "churchId")?;
        required(person, "personId")?;
        let (action, data) = checked(action, data)?;
        Ok(self.send(
            &Audience::person(church, person),
            conversation_id,
            action,
            &*data,
        ))
    }
}
