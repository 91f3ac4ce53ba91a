//! `/messaging/connections…` (§10.2): JSON in, the `Connection` service, JSON out.
use serde::Serialize;

use super::api::{Body, SUCCESS, Success};
use super::input::{Batch, Obj};
use super::{Ctx, bodies};
use crate::error::AppResult;
use crate::service::model::Connection;
use crate::service::rooms::JoinInput;

/// The `Connection` object of §10.1, in its field order.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionJson {
    id: String,
    church_id: String,
    conversation_id: String,
    person_id: Option<String>,
    display_name: Option<String>,
    time_joined: String,
    socket_id: String,
    /// Only for Content Edit holders of the church.
    ip_address: Option<String>,
    /// Sockets with positions only (§5.6): the room's position when the socket joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<PositionJson>,
}

/// `{"epoch","seq"}` (§5.6).
#[derive(Serialize, schemars::JsonSchema)]
pub struct PositionJson {
    epoch: String,
    seq: u64,
}

/// The rows as the service returned them (it decides who sees `ipAddress`); `nodeId` never.
fn to_json(rows: Vec<Connection>) -> Vec<ConnectionJson> {
    rows.into_iter()
        .map(|r| ConnectionJson {
            id: r.id,
            church_id: r.church_id,
            conversation_id: r.conversation_id,
            person_id: r.person_id,
            display_name: r.display_name,
            time_joined: crate::time::format_ms(r.time_joined),
            socket_id: r.socket_id,
            ip_address: r.ip_address,
            position: r.position.map(|p| PositionJson {
                epoch: p.epoch,
                seq: p.seq,
            }),
        })
        .collect()
}

pub async fn list(ctx: &Ctx<'_>) -> AppResult<Vec<ConnectionJson>> {
    let rows = ctx
        .svc()
        .list_room(&ctx.caller, ctx.param(0), ctx.param(1))
        .await?;
    Ok(to_json(rows))
}

pub async fn join(
    ctx: &Ctx<'_>,
    Body(Batch(items)): Body<bodies::JoinBody>,
) -> AppResult<Vec<ConnectionJson>> {
    // Body `personId`, `ipAddress` and `id` were read for their type only: the server sets
    // them (§5.1).
    let parsed: Vec<JoinInput> = items
        .into_iter()
        .map(|Obj(item)| JoinInput {
            church_id: item.church_id.map(String::from).unwrap_or_default(),
            conversation_id: item.conversation_id.into(),
            socket_id: item.socket_id.into(),
            display_name: item.display_name.map(String::from),
            person_id: None,
            ip_address: None,
            since: item.since.map(|Obj(s)| crate::cluster::Position {
                epoch: s.epoch.into(),
                seq: s.seq.0,
            }),
        })
        .collect();
    if parsed.is_empty() {
        return Ok(Vec::new());
    }
    let rows = ctx
        .svc()
        .join(&ctx.caller, ctx.client_ip.as_deref(), parsed)
        .await?;
    Ok(to_json(rows))
}

pub async fn leave(ctx: &Ctx<'_>) -> AppResult<Success> {
    ctx.svc()
        .leave(&ctx.caller, ctx.param(0), ctx.param(1), ctx.param(2))
        .await?;
    Ok(SUCCESS)
}

pub async fn set_name(
    ctx: &Ctx<'_>,
    Body(Obj(body)): Body<bodies::SetNameBody>,
) -> AppResult<Vec<ConnectionJson>> {
    let rows = ctx
        .svc()
        .set_name(&ctx.caller, &body.socket_id, &body.name)
        .await?;
    Ok(to_json(rows))
}
