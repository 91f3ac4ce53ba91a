//! `connections`: one WebSocket joined to one room (church + conversation).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connections", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub church_id: String,
    pub conversation_id: String,
    pub person_id: Option<String>,
    pub display_name: Option<String>,
    pub time_joined: i64,
    pub socket_id: String,
    pub ip_address: Option<String>,
    pub node_id: String,
    /// The N of a `displayName` of the form `Anonymous_<N>`, else null: indexed per room
    /// so that numbering the next anonymous viewer is one lookup (§5.1).
    pub anonymous_number: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
