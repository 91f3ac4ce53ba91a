//! `/messaging/notifications…` (§10.6): JSON in, `service::notifications`, JSON out.
use super::api::{Body, Person, SUCCESS, Success};
use super::input::Obj;
use super::{Ctx, bodies};
use crate::error::AppResult;
use crate::service::model::{Counts, Notification};
use crate::service::notifications as ns;

pub async fn unread_count(ctx: &Ctx<'_>) -> AppResult<Counts> {
    ns::unread_count(ctx.svc(), &ctx.caller).await
}

pub async fn my(ctx: &Ctx<'_>) -> AppResult<Vec<Notification>> {
    ns::my(ctx.svc(), &ctx.caller).await
}

pub async fn create(
    ctx: &Ctx<'_>,
    Person(Body(body)): Person<Body<bodies::NotificationsBody>>,
) -> AppResult<Vec<Notification>> {
    ns::create(ctx.svc(), &ctx.caller, &new_notifications(body)).await
}

fn new_notifications(Obj(body): bodies::NotificationsBody) -> ns::NewNotifications {
    ns::NewNotifications {
        people_ids: body.people_ids.0.into_iter().map(String::from).collect(),
        content_type: body.content_type.into(),
        content_id: body.content_id.into(),
        message: body.message.into(),
        link: body.link.map(String::from),
    }
}

pub async fn mark_read(ctx: &Ctx<'_>) -> AppResult<Success> {
    ns::mark_read(ctx.svc(), &ctx.caller, ctx.param(0), ctx.param(1)).await?;
    Ok(SUCCESS)
}

pub async fn delete_my(ctx: &Ctx<'_>) -> AppResult<Success> {
    ns::delete_my(ctx.svc(), &ctx.caller).await?;
    Ok(SUCCESS)
}

pub async fn delete(ctx: &Ctx<'_>) -> AppResult<Success> {
    ns::delete(ctx.svc(), &ctx.caller, ctx.param(0), ctx.param(1)).await?;
    Ok(SUCCESS)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::error::AppError;
    use crate::service::limits::MAX_CONTENT_BYTES;

    fn parse_create(v: &Value) -> AppResult<ns::NewNotifications> {
        super::super::input::typed(v).map(new_notifications)
    }

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
            field_of(json!({"peopleIds": null, "contentType": "t"})),
            "/peopleIds"
        );
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
        let long = "é".repeat(MAX_CONTENT_BYTES / 2 + 1);
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
