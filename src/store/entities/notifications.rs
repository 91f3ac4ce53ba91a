//! `notifications`: a notification for one person.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notifications", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub church_id: String,
    pub person_id: String,
    pub content_type: String,
    pub content_id: String,
    pub time_sent: i64,
    pub is_new: bool,
    #[sea_orm(column_type = "Text")]
    pub message: String,
    pub link: Option<String>,
    pub delivery_method: Option<String>,
    pub triggered_by_person_id: Option<String>,
    pub category: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
