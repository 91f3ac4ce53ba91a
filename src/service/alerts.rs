//! The alerts flows of §7: counts, the private-message flow run inside a message's
//! transaction, and the `privateMessage` / `notification` frames after the commit.
use sea_orm::{DatabaseTransaction, DbErr};

use super::Services;
use crate::error::AppResult;
use crate::store::entities::conversations;

/// What the private-message flow decided inside the transaction, to deliver after commit.
#[derive(Debug, Clone)]
pub struct PendingPmAlert {
    pub church_id: String,
    pub recipient: String,
    pub conversation_id: String,
    pub notification_id: String,
}

/// Steps 1–4 of the private-message flow, for a message just **created** in `conv` (a
/// conversation with `contentType = "privateMessage"`), inside the message's transaction.
pub async fn on_message_created(
    _txn: &DatabaseTransaction,
    _conv: &conversations::Model,
    _sender_person: Option<&str>,
    _sender_name: &str,
    _now: i64,
) -> Result<Option<PendingPmAlert>, DbErr> {
    Ok(None)
}

/// Steps 5–6, after the commit: `privateMessage {counts}` to the recipient's alerts rows and
/// the notification's `deliveryMethod`.
pub async fn deliver_pm_alert(_svc: &Services, _alert: &PendingPmAlert) -> AppResult<()> {
    Ok(())
}
