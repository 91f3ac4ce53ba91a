//! `conversations`: a message thread, optionally attached to some content.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "conversations", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub church_id: String,
    pub content_type: Option<String>,
    pub content_id: Option<String>,
    pub title: Option<String>,
    pub date_created: i64,
    pub group_id: Option<String>,
    pub visibility: Option<String>,
    pub first_post_id: Option<String>,
    pub last_post_id: Option<String>,
    pub post_count: i32,
    pub allow_anonymous_posts: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
