//! `/messaging/privatemessages…` (§10.5): JSON in, `service::private_messages`, JSON out.
use super::api::{Body, Person, SUCCESS, Success};
use super::input::{Batch, Obj};
use super::{Ctx, bodies};
use crate::error::AppResult;
use crate::service::model::{PrivateMessage, PrivateMessageView};
use crate::service::private_messages as pms;

pub async fn create(
    ctx: &Ctx<'_>,
    Person(Body(Batch(items))): Person<Body<bodies::PrivateMessagesBody>>,
) -> AppResult<Vec<PrivateMessage>> {
    let parsed: Vec<pms::NewPrivateMessage> = items
        .into_iter()
        .map(|Obj(item)| pms::NewPrivateMessage {
            to_person_id: item.to_person_id.into(),
            conversation_id: item.conversation_id.into(),
        })
        .collect();
    pms::create(ctx.svc(), &ctx.caller, &parsed).await
}

pub async fn list(ctx: &Ctx<'_>) -> AppResult<Vec<PrivateMessageView>> {
    pms::list(ctx.svc(), &ctx.caller).await
}

pub async fn get(ctx: &Ctx<'_>) -> AppResult<PrivateMessageView> {
    pms::get(ctx.svc(), &ctx.caller, ctx.param(0)).await
}

pub async fn delete(ctx: &Ctx<'_>) -> AppResult<Success> {
    pms::delete(ctx.svc(), &ctx.caller, ctx.param(0)).await?;
    Ok(SUCCESS)
}
