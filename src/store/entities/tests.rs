//! Every entity round-trips through the schema created by the migrations, so
//! entity and migration cannot drift apart (column names, types, nullability).

use migrations::Migrator;
use migrations::sea_orm_migration::MigratorTrait;
use sea_orm::{ActiveModelTrait, ConnectOptions, Database, DatabaseConnection, EntityTrait};

use super::*;

async fn db() -> DatabaseConnection {
    // One connection: every connection to `sqlite::memory:` is its own database.
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1).min_connections(1);
    let db = Database::connect(options).await.expect("connect");
    Migrator::up(&db, None).await.expect("migrate");
    db
}

async fn round_trip<E>(db: &DatabaseConnection, model: E::Model)
where
    E: EntityTrait,
    E::Model: sea_orm::IntoActiveModel<E::ActiveModel> + Clone + PartialEq + std::fmt::Debug,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
{
    let inserted = E::insert(sea_orm::IntoActiveModel::into_active_model(model.clone()))
        .exec_without_returning(db)
        .await;
    inserted.expect("insert");
    let all = E::find().all(db).await.expect("select");
    assert_eq!(all, vec![model]);
}

#[tokio::test]
async fn entities_match_migrations() {
    let db = db().await;
    let ms = 1_764_201_600_123_i64;
    let some = |s: &str| Some(s.to_owned());

    round_trip::<connections::Entity>(
        &db,
        connections::Model {
            id: "Conn0000001".into(),
            church_id: "church".into(),
            conversation_id: "conversation".into(),
            person_id: some("person"),
            display_name: some("Jane"),
            time_joined: ms,
            socket_id: "socket".into(),
            ip_address: some("2001:db8::1"),
            node_id: "Node0000001".into(),
            anonymous_number: Some(7),
        },
    )
    .await;
    round_trip::<conversations::Entity>(
        &db,
        conversations::Model {
            id: "Conv0000001".into(),
            church_id: "church".into(),
            content_type: some("sermon"),
            content_id: some("content"),
            title: some("Title"),
            date_created: ms,
            group_id: some("group"),
            visibility: some("public"),
            first_post_id: some("Msg00000001"),
            last_post_id: None,
            post_count: 7,
            allow_anonymous_posts: true,
        },
    )
    .await;
    round_trip::<messages::Entity>(
        &db,
        messages::Model {
            id: "Msg00000001".into(),
            church_id: "church".into(),
            conversation_id: "Conv0000001".into(),
            person_id: None,
            display_name: some("Anonymous"),
            time_sent: ms,
            time_updated: Some(ms + 1),
            message_type: "message".into(),
            content: "Hello 👋".into(),
        },
    )
    .await;
    round_trip::<message_reactions::Entity>(
        &db,
        message_reactions::Model {
            id: "React000001".into(),
            church_id: "church".into(),
            message_id: "Msg00000001".into(),
            conversation_id: "Conv0000001".into(),
            person_id: "person".into(),
            emoji: "👍🏽".into(),
            time_added: ms,
        },
    )
    .await;
    round_trip::<private_messages::Entity>(
        &db,
        private_messages::Model {
            id: "Priv0000001".into(),
            church_id: "church".into(),
            from_person_id: "from".into(),
            to_person_id: "to".into(),
            conversation_id: "Conv0000001".into(),
            notify_person_id: some("to"),
        },
    )
    .await;
    round_trip::<notifications::Entity>(
        &db,
        notifications::Model {
            id: "Notif000001".into(),
            church_id: "church".into(),
            person_id: "person".into(),
            content_type: "privateMessage".into(),
            content_id: "Priv0000001".into(),
            time_sent: ms,
            is_new: true,
            message: "New message".into(),
            link: some("/messages"),
            delivery_method: some("socket"),
            triggered_by_person_id: some("from"),
            category: None,
        },
    )
    .await;
    round_trip::<blocked_ips::Entity>(
        &db,
        blocked_ips::Model {
            id: "Block000001".into(),
            church_id: "church".into(),
            conversation_id: "Conv0000001".into(),
            service_id: None,
            ip_address: "192.0.2.1".into(),
        },
    )
    .await;
    round_trip::<nodes::Entity>(
        &db,
        nodes::Model {
            id: "Node0000001".into(),
            grpc_address: some("http://10.0.0.1:50051"),
            started_at: ms,
            lease_until: ms + 30_000,
        },
    )
    .await;
}

#[test]
fn column_names_are_camel_case() {
    use sea_orm::{EntityName, IdenStatic, Iterable};
    let columns: Vec<String> = notifications::Column::iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        columns.join(","),
        "id,churchId,personId,contentType,contentId,timeSent,isNew,message,link,\
         deliveryMethod,triggeredByPersonId,category"
    );
    assert_eq!(prelude::MessageReactions.table_name(), "messageReactions");
    assert_eq!(blocked_ips::Column::IpAddress.as_str(), "ipAddress");
}
