//! The `blockedIps` table: addresses barred from posting in a conversation (§10.7).
use std::collections::BTreeSet;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
};

use super::entities::blocked_ips;
use super::{Store, Tx};

/// One toggle's outcome: the row, and whether it was added (or removed).
#[derive(Debug, Clone)]
pub struct BlockedIpToggle {
    pub row: blocked_ips::Model,
    pub added: bool,
}

impl Store {
    /// The blocked addresses of a conversation, in order.
    pub async fn blocked_ips(
        &self,
        church: &str,
        conversation: &str,
    ) -> Result<Vec<String>, DbErr> {
        let rows = blocked_ips::Entity::find()
            .filter(blocked_ips::Column::ChurchId.eq(church))
            .filter(blocked_ips::Column::ConversationId.eq(conversation))
            .order_by_asc(blocked_ips::Column::IpAddress)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.ip_address).collect())
    }
}

impl Tx {
    /// Removes the entry `(church, conversation, ip)` if there is one, else adds it.
    pub async fn toggle_blocked_ip(
        &self,
        church: &str,
        conversation: &str,
        ip: &str,
        service_id: Option<&str>,
    ) -> Result<BlockedIpToggle, DbErr> {
        let existing = blocked_ips::Entity::find()
            .filter(blocked_ips::Column::ChurchId.eq(church))
            .filter(blocked_ips::Column::ConversationId.eq(conversation))
            .filter(blocked_ips::Column::IpAddress.eq(ip))
            .one(&self.0)
            .await?;
        if let Some(row) = existing {
            blocked_ips::Entity::delete_by_id(row.id.clone())
                .exec(&self.0)
                .await?;
            return Ok(BlockedIpToggle { row, added: false });
        }
        let row = blocked_ips::Model {
            id: crate::ids::new_id(),
            church_id: church.to_string(),
            conversation_id: conversation.to_string(),
            service_id: service_id.map(str::to_string),
            ip_address: ip.to_string(),
        };
        blocked_ips::Entity::insert(row.clone().into_active_model().reset_all())
            .exec_without_returning(&self.0)
            .await?;
        Ok(BlockedIpToggle { row, added: true })
    }

    /// Deletes every entry of `church` with one of these service ids; returns the
    /// conversations that had one.
    pub async fn clear_blocked_ips(
        &self,
        church: &str,
        service_ids: Vec<String>,
    ) -> Result<BTreeSet<String>, DbErr> {
        let rows = blocked_ips::Entity::find()
            .filter(blocked_ips::Column::ChurchId.eq(church))
            .filter(blocked_ips::Column::ServiceId.is_in(service_ids.clone()))
            .all(&self.0)
            .await?;
        blocked_ips::Entity::delete_many()
            .filter(blocked_ips::Column::ChurchId.eq(church))
            .filter(blocked_ips::Column::ServiceId.is_in(service_ids))
            .exec(&self.0)
            .await?;
        Ok(rows.into_iter().map(|r| r.conversation_id).collect())
    }
}
