//! Access is decided in the service, whatever the door (issue 25, item 1): the operations the
//! edge's route table gates by a permission refuse a caller without it when called directly,
//! write nothing and send nothing; who sees `ipAddress` and whose alerts a call touches are
//! decided there too.
use std::sync::Arc;

use messaging::auth::Caller;
use messaging::error::AppError;
use messaging::service::blocked_ips::ToggleInput;
use messaging::service::model::Callout;
use messaging::service::{notifications, private_messages};
use messaging::store::entities::{blocked_ips, notifications as notification_rows};
use sea_orm::{Database, EntityTrait, PaginatorTrait};
use serde_json::json;

use crate::helpers::*;
use crate::server_test;

fn user(church: &str, person: &str, perms: &[&str]) -> Caller {
    Caller::User(Arc::new(claims(church, person, perms)))
}

fn unauthorized<T: std::fmt::Debug>(what: &str, r: Result<T, AppError>) {
    match r {
        Err(AppError::Unauthorized) => {}
        other => panic!("{what}: expected 401 Unauthorized, got {other:?}"),
    }
}

server_test!(
    permission_gated_operations_refuse_direct_callers_without_it,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let svc = &app.svc;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut watcher = app.ws_with_id().await;
        app.join_one(&room, &watcher.id, "w").await;
        watcher.next_action("attendance").await;

        // A member of the church without the permission, a holder of the *other* permission,
        // and an anonymous caller: each refused by every gated operation.
        let callers = [
            ("member", user("C1", "P1", &[])),
            ("admin, not editor", user("C1", "P2", &["Messaging__Admin"])),
            ("anonymous", Caller::Anonymous),
        ];
        for (who, caller) in &callers {
            let callout = Callout {
                conversation_id: Some(room.clone()),
                content: Some("denied".into()),
                ..Default::default()
            };
            unauthorized(
                &format!("set_callout, {who}"),
                svc.set_callout(caller, callout).await,
            );
            let toggle = vec![ToggleInput {
                conversation_id: room.clone(),
                ip_address: "203.0.113.9".into(),
                service_id: Some("S1".into()),
            }];
            unauthorized(
                &format!("toggle_blocked_ips, {who}"),
                svc.toggle_blocked_ips(caller, toggle).await,
            );
            unauthorized(
                &format!("clear_blocked_ips, {who}"),
                svc.clear_blocked_ips(caller, vec!["S1".into()]).await,
            );
        }
        let create = notifications::NewNotifications {
            people_ids: vec!["P9".into()],
            content_type: "sermon".into(),
            content_id: "S1".into(),
            message: "hello".into(),
            link: None,
        };
        for (who, caller) in [
            ("member", user("C1", "P1", &[])),
            ("editor, not admin", user("C1", "P3", &["Content__Edit"])),
            ("anonymous", Caller::Anonymous),
        ] {
            unauthorized(
                &format!("notifications::create, {who}"),
                notifications::create(svc, &caller, &create).await,
            );
        }
        // Nothing was written...
        let conn = Database::connect(&app.db_url).await.unwrap();
        assert_eq!(blocked_ips::Entity::find().count(&conn).await.unwrap(), 0);
        assert_eq!(
            notification_rows::Entity::find()
                .count(&conn)
                .await
                .unwrap(),
            0
        );
        // ...and nothing sent: the first callout the watcher sees is the permitted one.
        let editor = user("C1", "P4", &["Content__Edit"]);
        let allowed = Callout {
            conversation_id: Some(room.clone()),
            content: Some("allowed".into()),
            ..Default::default()
        };
        svc.set_callout(&editor, allowed)
            .await
            .expect("editor's callout");
        let f = watcher.next_action("callout").await;
        assert_eq!(f["data"]["content"], "allowed");
        // The holders are let through by the service itself.
        let admin = user("C1", "P2", &["Messaging__Admin"]);
        let made = notifications::create(svc, &admin, &create).await.unwrap();
        assert_eq!(made.len(), 1);
    }
);

server_test!(
    the_service_decides_who_sees_ip_addresses_and_whose_alerts,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let svc = &app.svc;
        let room = app.conversation("C1", "streamingLive", true).await;
        let ws = app.ws_with_id().await;
        app.join_one(&room, &ws.id, "w").await;

        let member = user("C1", "P1", &[]);
        let editor = user("C1", "P4", &["Content__Edit"]);
        let other_church_editor = user("C2", "P5", &["Content__Edit"]);
        let rows = svc.list_room(&member, "C1", &room).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].ip_address, None, "a member sees no ipAddress");
        let rows = svc.list_room(&editor, "C1", &room).await.unwrap();
        assert_eq!(rows[0].ip_address.as_deref(), Some("127.0.0.1"));
        let rows = svc
            .list_room(&other_church_editor, "C1", &room)
            .await
            .unwrap();
        assert_eq!(
            rows[0].ip_address, None,
            "Content Edit of another church sees no ipAddress"
        );
        let rows = svc.set_name(&member, &ws.id, "renamed").await.unwrap();
        assert_eq!(rows[0].ip_address, None);
        let rows = svc.set_name(&editor, &ws.id, "again").await.unwrap();
        assert_eq!(rows[0].ip_address.as_deref(), Some("127.0.0.1"));

        // Alerts calls resolve the caller's person themselves: no token, or a token without
        // a person, is refused at the service.
        let no_person = user("C1", "", &["Messaging__Admin"]);
        for (who, caller) in [("anonymous", Caller::Anonymous), ("no person", no_person)] {
            unauthorized(
                &format!("private_messages::list, {who}"),
                private_messages::list(svc, &caller).await,
            );
            unauthorized(
                &format!("notifications::unread_count, {who}"),
                notifications::unread_count(svc, &caller).await,
            );
            unauthorized(
                &format!("notifications::my, {who}"),
                notifications::my(svc, &caller).await,
            );
        }
        let counts = notifications::unread_count(svc, &member).await.unwrap();
        assert_eq!(
            serde_json::to_value(counts).unwrap(),
            json!({"notificationCount": 0, "pmCount": 0})
        );
    }
);
