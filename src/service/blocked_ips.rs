//! Blocked IPs (§10.7): toggles and clears by Content Edit holders, the list for readers,
//! and the `blockedIp` frame (the full list) to each affected room after the commit.
use std::collections::BTreeSet;

use super::model::BlockedIp;
use super::{Services, holder};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult};
use crate::hub::Action;

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
                let tx = store.begin_write().await?;
                let mut out = Vec::with_capacity(items.len());
                for it in &items {
                    let t = tx
                        .toggle_blocked_ip(
                            &church,
                            &it.conversation_id,
                            &it.ip_address,
                            it.service_id.as_deref(),
                        )
                        .await?;
                    out.push(BlockedIp::from_row(t.row, t.added));
                }
                tx.commit().await?;
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
                let tx = store.begin_write().await?;
                let affected = tx.clear_blocked_ips(&church, service_ids.clone()).await?;
                tx.commit().await?;
                Ok::<_, AppError>(affected)
            })
            .await?;
        for conversation in affected {
            self.announce_blocked(&church, &conversation).await?;
        }
        Ok(())
    }
}
