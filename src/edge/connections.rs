//! `/messaging/connections…` (§10.2): JSON in, the `Connection` service, JSON out.
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

use super::{Ctx, body, ok_json};
use crate::auth::access;
use crate::error::AppResult;
use crate::service::limits::{MAX_BATCH, MAX_DISPLAY_NAME, MAX_ID, MAX_ROOM_ID, MAX_SOCKET_ID};
use crate::service::rooms::JoinItem;
use crate::store::entities::connections;

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
}

/// `ipAddress` is shown only to Content Edit holders of the row's church; `nodeId` never.
fn to_json(ctx: &Ctx, rows: Vec<connections::Model>) -> Vec<ConnectionJson> {
    rows.into_iter()
        .map(|r| {
            let show_ip = access::sees_ip_addresses(&ctx.caller, &r.church_id);
            ConnectionJson {
                id: r.id,
                church_id: r.church_id,
                conversation_id: r.conversation_id,
                person_id: r.person_id,
                display_name: r.display_name,
                time_joined: crate::time::format_ms(r.time_joined),
                socket_id: r.socket_id,
                ip_address: if show_ip { r.ip_address } else { None },
            }
        })
        .collect()
}

pub async fn list(ctx: &Ctx) -> AppResult<Response> {
    let rows = ctx
        .svc
        .list_room(&ctx.caller, ctx.param(0), ctx.param(1))
        .await?;
    Ok(ok_json(&to_json(ctx, rows)))
}

pub async fn join(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let items = body::array(&v, MAX_BATCH)?;
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let o = body::Obj::new(item, format!("/{i}"))?;
        // Body `personId`, `ipAddress` and `id` are read for their type only: the server
        // sets them (§5.1).
        o.opt_str("personId", MAX_ID)?;
        o.opt_str("ipAddress", 45)?;
        o.opt_str("id", MAX_ID)?;
        parsed.push(JoinItem {
            church_id: o.opt_str("churchId", MAX_ID)?.unwrap_or_default(),
            conversation_id: o.req_str("conversationId", MAX_ROOM_ID)?,
            socket_id: o.req_str("socketId", MAX_SOCKET_ID)?,
            display_name: o.opt_str("displayName", MAX_DISPLAY_NAME)?,
            person_id: None,
            ip_address: None,
        });
    }
    if parsed.is_empty() {
        return Ok(ok_json(&json!([])));
    }
    let rows = ctx
        .svc
        .join(&ctx.caller, ctx.client_ip.as_deref(), parsed)
        .await?;
    Ok(ok_json(&to_json(ctx, rows)))
}

pub async fn leave(ctx: &Ctx) -> AppResult<Response> {
    ctx.svc
        .leave(&ctx.caller, ctx.param(0), ctx.param(1), ctx.param(2))
        .await?;
    Ok(ok_json(&json!({"success": true})))
}

pub async fn set_name(ctx: &Ctx) -> AppResult<Response> {
    let v = ctx.json()?;
    let o = body::Obj::new(&v, String::new())?;
    let socket = o.req_str("socketId", MAX_SOCKET_ID)?;
    let name = o.req_str_any("name", MAX_DISPLAY_NAME)?;
    let rows = ctx.svc.set_name(&ctx.caller, &socket, &name).await?;
    Ok(ok_json(&to_json(ctx, rows)))
}
