//! Blocked IPs (§10.7): toggles and clears by Content Edit holders, the list for readers,
//! and the `blockedIp` frame (the full list) to each affected room after the commit.
use std::collections::BTreeSet;

use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use super::model::BlockedIp;
use super::{Services, holder};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult};
use crate::hub::Action;
use crate::store::entities::blocked_ips;

#[derive(Debug, Clone)]
pub struct ToggleInput {
    pub conversation_id: String,
    pub ip_address: String,
    pub service_id: Option<String>,
}

impl Services {
    /// Sends the room's current list (`blockedIp`) to a conversation room.
    async fn announce_blocked(&self, church: &str, conversation: &str) -> AppResult<()> {
        self.post_cache.forget_blocked(church, conversation);
        let ips = self.store().blocked_ips(church, conversation).await?;
        self.send_to_room(church, conversation, Action::BlockedIp, &ips);
        Ok(())
    }

    /// `POST /blockedips`: items toggle in order, in one transaction.
    pub async fn toggle_blocked_ips(
        &self,
        caller: &Caller,
        items: Vec<ToggleInput>,
    ) -> AppResult<Vec<BlockedIp>> {
        let church = holder(caller, Permission::ContentEdit)?.church_id.clone();
        for it in &items {
            self.load_conversation_in(&church, &it.conversation_id)
                .await?;
        }
        let store = self.store();
        let results = store
            .write(|| async {
                let txn = store.begin_write().await?;
                let mut out = Vec::with_capacity(items.len());
                for it in &items {
                    let key = blocked_ips::Entity::find()
                        .filter(blocked_ips::Column::ChurchId.eq(&church))
                        .filter(blocked_ips::Column::ConversationId.eq(&it.conversation_id))
                        .filter(blocked_ips::Column::IpAddress.eq(&it.ip_address));
                    match key.one(&txn).await? {
                        Some(row) => {
                            blocked_ips::Entity::delete_by_id(row.id.clone())
                                .exec(&txn)
                                .await?;
                            out.push(BlockedIp::from_row(row, false));
                        }
                        None => {
                            let row = blocked_ips::Model {
                                id: crate::ids::new_id(),
                                church_id: church.clone(),
                                conversation_id: it.conversation_id.clone(),
                                service_id: it.service_id.clone(),
                                ip_address: it.ip_address.clone(),
                            };
                            blocked_ips::Entity::insert(blocked_ips::ActiveModel {
                                id: Set(row.id.clone()),
                                church_id: Set(row.church_id.clone()),
                                conversation_id: Set(row.conversation_id.clone()),
                                service_id: Set(row.service_id.clone()),
                                ip_address: Set(row.ip_address.clone()),
                            })
                            .exec_without_returning(&txn)
                            .await?;
                            out.push(BlockedIp::from_row(row, true));
                        }
                    }
                }
                txn.commit().await?;
                Ok::<_, AppError>(out)
            })
            .await?;
        let rooms: BTreeSet<&str> = items.iter().map(|i| i.conversation_id.as_str()).collect();
        for room in rooms {
            self.announce_blocked(&church, room).await?;
        }
        Ok(results)
    }

    /// `GET /blockedips/{churchId}/{conversationId}`: what the frame carries, to readers.
    pub async fn list_blocked_ips(
        &self,
        caller: &Caller,
        church: &str,
        conversation: &str,
    ) -> AppResult<Vec<String>> {
        let c = self.load_conversation_in(church, conversation).await?;
        if !c.can_read(caller) {
            return Err(AppError::Unauthorized);
        }
        Ok(self.store().blocked_ips(church, conversation).await?)
    }

    /// `POST /blockedips/clear`: every entry of the caller's church with these service ids.
    pub async fn clear_blocked_ips(
        &self,
        caller: &Caller,
        service_ids: Vec<String>,
    ) -> AppResult<()> {
        let church = holder(caller, Permission::ContentEdit)?.church_id.clone();
        if service_ids.is_empty() {
            return Ok(());
        }
        let store = self.store();
        let affected = store
            .write(|| async {
                let txn = store.begin_write().await?;
                let rows = blocked_ips::Entity::find()
                    .filter(blocked_ips::Column::ChurchId.eq(&church))
                    .filter(blocked_ips::Column::ServiceId.is_in(service_ids.clone()))
                    .all(&txn)
                    .await?;
                blocked_ips::Entity::delete_many()
                    .filter(blocked_ips::Column::ChurchId.eq(&church))
                    .filter(blocked_ips::Column::ServiceId.is_in(service_ids.clone()))
                    .exec(&txn)
                    .await?;
                txn.commit().await?;
                Ok::<_, AppError>(
                    rows.into_iter()
                        .map(|r| r.conversation_id)
                        .collect::<BTreeSet<_>>(),
                )
            })
            .await?;
        for conversation in affected {
            self.announce_blocked(&church, &conversation).await?;
        }
        Ok(())
    }
}
