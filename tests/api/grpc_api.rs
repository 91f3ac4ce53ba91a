//! The gRPC surface (§12): both services, reflection, health, GRPC_TOKEN, status mapping.
use messaging::pb;
use serde_json::json;
use tonic::Code;

use crate::helpers::*;
use crate::server_test;

server_test!(
    connection_service_over_the_network,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        let mut conn = app.connection().await;
        let rows = conn
            .join(pb::JoinRequest {
                items: vec![pb::JoinItem {
                    church_id: "C1".into(),
                    conversation_id: room.clone(),
                    socket_id: a.id.clone(),
                    display_name: Some("grpc".into()),
                    person_id: Some("P7".into()),
                    ip_address: Some("10.1.2.3".into()),
                    since: None,
                }],
            })
            .await
            .unwrap()
            .into_inner()
            .connections;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].node_id, app.node_id);
        assert_eq!(rows[0].person_id.as_deref(), Some("P7"));
        assert_eq!(
            a.next_action("attendance").await["data"]["viewers"][0]["displayName"],
            "grpc"
        );
        let listed = conn
            .list_room(pb::RoomRequest {
                church_id: "C1".into(),
                room_id: room.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .connections;
        assert_eq!(listed, rows);
        let att = conn
            .attendance(pb::RoomRequest {
                church_id: "C1".into(),
                room_id: room.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (att.total_viewers, att.viewers[0].display_name.as_deref()),
            (1, Some("grpc"))
        );
        let renamed = conn
            .set_name(pb::SetNameRequest {
                socket_id: a.id.clone(),
                name: "renamed".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .connections;
        assert_eq!(renamed[0].display_name.as_deref(), Some("renamed"));
        let left = conn
            .leave(pb::LeaveRequest {
                church_id: "C1".into(),
                room_id: room.clone(),
                socket_id: a.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(left.success && left.removed);
        // Status mapping: 404 → NOT_FOUND, 400 → INVALID_ARGUMENT.
        let err = conn
            .join(pb::JoinRequest {
                items: vec![pb::JoinItem {
                    church_id: "C1".into(),
                    conversation_id: "NOPE0000000".into(),
                    socket_id: a.id.clone(),
                    ..Default::default()
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::NotFound, "Conversation not found")
        );
        let err = app
            .delivery()
            .await
            .send_conversation_messages(pb::SendConversationMessagesRequest {
                church_id: "C1".into(),
                conversation_id: room.clone(),
                action: "message".into(),
                data: "{not json".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
);

server_test!(health_and_reflection_are_served, |db: TestDb| async move {
    let app = TestApp::spawn(&db).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "messaging.v1.Delivery", "messaging.v1.Connection"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("no list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "messaging.v1.Delivery",
        "messaging.v1.Connection",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not listed in {names:?}"
        );
    }
});

server_test!(grpc_token_is_enforced_when_set, |db: TestDb| async move {
    let mut s = settings(&db);
    s.grpc_token = Some("backend-secret".into());
    let app = TestApp::spawn_with(s).await;
    let room = app.conversation("C1", "streamingLive", true).await;
    let req = || pb::SendConversationMessagesRequest {
        church_id: "C1".into(),
        conversation_id: room.clone(),
        action: "message".into(),
        data: json!({"x": 1}).to_string(),
    };
    let err = app
        .delivery()
        .await
        .send_conversation_messages(req())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(req());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        app.delivery()
            .await
            .send_conversation_messages(wrong)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(req());
    right
        .metadata_mut()
        .insert("authorization", "Bearer backend-secret".parse().unwrap());
    assert_eq!(
        app.delivery()
            .await
            .send_conversation_messages(right)
            .await
            .unwrap()
            .into_inner()
            .delivered,
        0
    );
});

// U+0000 in any string of a trusted backend's call is refused like on REST
// (INVALID_ARGUMENT), never an internal error from PostgreSQL, which cannot store it.
server_test!(
    u0000_is_an_invalid_argument_on_every_call,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let a = app.ws_with_id().await;
        let mut conn = app.connection().await;
        let item = |f: &dyn Fn(&mut pb::JoinItem)| {
            let mut it = pb::JoinItem {
                church_id: "C1".into(),
                conversation_id: room.clone(),
                socket_id: a.id.clone(),
                display_name: Some("n".into()),
                person_id: Some("P1".into()),
                ip_address: Some("10.0.0.1".into()),
                since: None,
            };
            f(&mut it);
            pb::JoinRequest { items: vec![it] }
        };
        let joins = [
            item(&|it| it.church_id = "C\0".into()),
            item(&|it| it.conversation_id = format!("{room}\0")),
            item(&|it| it.socket_id = "s\0".into()),
            item(&|it| it.display_name = Some("n\0".into())),
            item(&|it| it.person_id = Some("P\0".into())),
            item(&|it| it.ip_address = Some("10.0.0.1\0".into())),
        ];
        for (i, req) in joins.into_iter().enumerate() {
            let code = conn.join(req).await.map(drop).unwrap_err().code();
            assert_eq!(code, Code::InvalidArgument, "join {i}");
        }
        let rooms = [("C\0", room.as_str()), ("C1", "r\0")];
        for (church, r) in rooms {
            let req = || pb::RoomRequest {
                church_id: church.into(),
                room_id: r.into(),
            };
            assert_eq!(
                conn.list_room(req()).await.unwrap_err().code(),
                Code::InvalidArgument
            );
            assert_eq!(
                conn.attendance(req()).await.unwrap_err().code(),
                Code::InvalidArgument
            );
            let leave = pb::LeaveRequest {
                church_id: church.into(),
                room_id: r.into(),
                socket_id: a.id.clone(),
            };
            assert_eq!(
                conn.leave(leave).await.unwrap_err().code(),
                Code::InvalidArgument
            );
        }
        for (socket, name) in [("s\0", "n"), (a.id.as_str(), "n\0")] {
            let req = pb::SetNameRequest {
                socket_id: socket.into(),
                name: name.into(),
            };
            assert_eq!(
                conn.set_name(req).await.unwrap_err().code(),
                Code::InvalidArgument
            );
        }
        let mut delivery = app.delivery().await;
        let send = pb::SendConversationMessagesRequest {
            church_id: "C1".into(),
            conversation_id: format!("{room}\0"),
            action: "message".into(),
            data: "{}".into(),
        };
        let code = delivery
            .send_conversation_messages(send)
            .await
            .unwrap_err()
            .code();
        assert_eq!(code, Code::InvalidArgument);
        // Nothing was written: the socket joins cleanly afterwards.
        app.join_one(&room, &a.id, "fine").await;
    }
);
