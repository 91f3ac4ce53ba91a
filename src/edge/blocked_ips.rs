//! `/messaging/blockedips…` (§10.7).
use super::api::{Body, NoContent};
use super::input::{Batch, Obj};
use super::{Ctx, bodies};
use crate::error::AppResult;
use crate::service::blocked_ips::ToggleInput;
use crate::service::model::BlockedIp;

pub async fn toggle(
    ctx: &Ctx<'_>,
    Body(Batch(items)): Body<bodies::BlockedIpsBody>,
) -> AppResult<Vec<BlockedIp>> {
    let items: Vec<ToggleInput> = items
        .into_iter()
        .map(|Obj(item)| ToggleInput {
            conversation_id: item.conversation_id.into(),
            ip_address: item.ip_address.into(),
            service_id: item.service_id.map(String::from),
        })
        .collect();
    if items.is_empty() {
        return Ok(Vec::new());
    }
    ctx.svc().toggle_blocked_ips(&ctx.caller, items).await
}

pub async fn list(ctx: &Ctx<'_>) -> AppResult<Vec<String>> {
    ctx.svc()
        .list_blocked_ips(&ctx.caller, ctx.param(0), ctx.param(1))
        .await
}

pub async fn clear(
    ctx: &Ctx<'_>,
    Body(Batch(items)): Body<bodies::ClearBody>,
) -> AppResult<NoContent> {
    let service_ids = items
        .into_iter()
        .map(|Obj(item)| item.service_id.into())
        .collect();
    ctx.svc()
        .clear_blocked_ips(&ctx.caller, service_ids)
        .await?;
    Ok(NoContent)
}
