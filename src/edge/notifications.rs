//! `/messaging/notifications…` (§10.6): JSON in, `service::notifications`, JSON out.
use axum::response::Response;
use serde_json::{Value, json};

use super::{Ctx, body, ok_json};
use crate::error::{AppError, AppResult};
use crate::service::limits::{MAX_BATCH, MAX_ID};
use crate::service::{self, notifications as ns};

/// Field limits of §9 for notifications.
const MAX_CONTENT_TYPE: usize = 45;
const MAX_CONTENT_ID: usize = 255;
const MAX_LINK: usize = 100;
/// The notification `message` is limited in UTF-8 bytes, not characters.
const MAX_MESSAGE_BYTES: usize = 65_535;

pub async fn unread_count(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    Ok(ok_json(&ns::unread_count(&ctx.svc, me).await?))
}

pub async fn my(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    Ok(ok_json(&ns::my(&ctx.svc, me).await?))
}

pub async fn create(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    let v = ctx.json()?;
    let input = parse_create(&v)?;
    Ok(ok_json(&ns::create(&ctx.svc, me, &input).await?))
}

/// `{"peopleIds":[…],"contentType","contentId","message","link"?}`, checked in that order.
fn parse_create(v: &Value) -> AppResult<ns::NewNotifications> {
    let o = body::Obj::new(v, String::new())?;
    // `null` is the same as absent (§0).
    let field = |key: &str| v.get(key).filter(|x| !x.is_null());
    let people = field("peopleIds")
        .and_then(Value::as_array)
        .ok_or_else(|| AppError::invalid_body("/peopleIds"))?;
    if people.len() > MAX_BATCH {
        return Err(AppError::TooManyItems);
    }
    let people_ids = people
        .iter()
        .enumerate()
        .map(|(i, p)| match p.as_str() {
            Some(s) if !s.is_empty() && s.chars().count() <= MAX_ID => Ok(s.to_string()),
            _ => Err(AppError::invalid_body(format!("/peopleIds/{i}"))),
        })
        .collect::<AppResult<Vec<_>>>()?;
    let content_type = o.req_str("contentType", MAX_CONTENT_TYPE)?;
    let content_id = o.req_str("contentId", MAX_CONTENT_ID)?;
    let message = match field("message") {
        Some(Value::String(s)) if s.len() <= MAX_MESSAGE_BYTES => s.clone(),
        _ => return Err(AppError::invalid_body("/message")),
    };
    let link = o.opt_str("link", MAX_LINK)?;
    Ok(ns::NewNotifications {
        people_ids,
        content_type,
        content_id,
        message,
        link,
    })
}

pub async fn mark_read(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    ns::mark_read(&ctx.svc, me, ctx.param(0), ctx.param(1)).await?;
    Ok(ok_json(&json!({"success": true})))
}

pub async fn delete_my(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    ns::delete_my(&ctx.svc, me).await?;
    Ok(ok_json(&json!({"success": true})))
}

pub async fn delete(ctx: &Ctx) -> AppResult<Response> {
    let me = service::person(&ctx.caller)?;
    ns::delete(&ctx.svc, me, ctx.param(0), ctx.param(1)).await?;
    Ok(ok_json(&json!({"success": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(v: Value) -> String {
        match parse_create(&v) {
            Err(AppError::InvalidBody { field }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_body_errors_point_at_the_field() {
        let ok = json!({"peopleIds": ["P1"], "contentType": "t", "contentId": "c", "message": "m"});
        assert!(parse_create(&ok).is_ok());
        assert_eq!(field_of(json!([])), "");
        assert_eq!(field_of(json!({"contentType": "t"})), "/peopleIds");
        assert_eq!(
            field_of(
                json!({"peopleIds": ["P1", 5], "contentType": "t", "contentId": "c", "message": "m"})
            ),
            "/peopleIds/1"
        );
        assert_eq!(
            field_of(json!({"peopleIds": [], "contentId": "c", "message": "m"})),
            "/contentType"
        );
        let long = "é".repeat(MAX_MESSAGE_BYTES / 2 + 1);
        assert_eq!(
            field_of(
                json!({"peopleIds": [], "contentType": "t", "contentId": "c", "message": long})
            ),
            "/message"
        );
        assert_eq!(
            field_of(
                json!({"peopleIds": [], "contentType": "t", "contentId": "c", "message": "m", "link": "x".repeat(101)})
            ),
            "/link"
        );
        let many: Vec<String> = (0..101).map(|i| format!("P{i}")).collect();
        assert!(matches!(
            parse_create(&json!({"peopleIds": many})),
            Err(AppError::TooManyItems)
        ));
    }
}
