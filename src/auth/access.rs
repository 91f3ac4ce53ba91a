//! The access table of §8.3, one function per column. Every join, read, post and moderation
//! decision in the service goes through here, so this file can be checked against the
//! contract line by line.
use super::{Caller, Claims, Permission};
use crate::store::entities::{conversations, private_messages};

/// The content types the access rules tell apart (§8.3). Any other type is `Other`. This
/// is the one parser of a `contentType`; the rest of the code compares these, not strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    StreamingLive,
    Freeshow,
    StreamingLiveHost,
    Group,
    GroupAnnouncement,
    PrivateMessage,
    Person,
    PersonConfidential,
    Other,
}

impl ContentType {
    pub fn parse(s: &str) -> Self {
        match s {
            "streamingLive" => Self::StreamingLive,
            "freeshow" => Self::Freeshow,
            "streamingLiveHost" => Self::StreamingLiveHost,
            "group" => Self::Group,
            "groupAnnouncement" => Self::GroupAnnouncement,
            "privateMessage" => Self::PrivateMessage,
            "person" => Self::Person,
            "personConfidential" => Self::PersonConfidential,
            _ => Self::Other,
        }
    }

    /// A conversation's type (`None` for a conversation without one).
    pub fn of(c: &conversations::Model) -> Self {
        c.content_type.as_deref().map_or(Self::Other, Self::parse)
    }

    /// The stored name; `Other` has none of its own.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StreamingLive => "streamingLive",
            Self::Freeshow => "freeshow",
            Self::StreamingLiveHost => "streamingLiveHost",
            Self::Group => "group",
            Self::GroupAnnouncement => "groupAnnouncement",
            Self::PrivateMessage => "privateMessage",
            Self::Person => "person",
            Self::PersonConfidential => "personConfidential",
            Self::Other => "",
        }
    }
}

use ContentType as T;

/// What the rules need to know about a conversation.
pub struct Conv<'a> {
    pub conv: &'a conversations::Model,
    /// The `privateMessages` row whose `conversationId` is this conversation, if any.
    pub pm: Option<&'a private_messages::Model>,
}

/// `contentType` is `streamingLive` or `freeshow`, `allowAnonymousPosts`, and `visibility = "public"`.
pub fn is_anonymous_public(c: &conversations::Model) -> bool {
    matches!(ContentType::of(c), T::StreamingLive | T::Freeshow)
        && c.allow_anonymous_posts
        && c.visibility.as_deref() == Some("public")
}

fn ce(c: &Claims) -> bool {
    c.has_permission(Permission::ContentEdit)
}

fn in_groups(c: &Claims, group: Option<&str>) -> bool {
    group.is_some_and(|g| {
        c.group_ids.iter().any(|x| x == g) || c.leader_group_ids.iter().any(|x| x == g)
    })
}

fn leads(c: &Claims, group: Option<&str>) -> bool {
    group.is_some_and(|g| c.leader_group_ids.iter().any(|x| x == g))
}

fn pm_participant(c: &Claims, pm: Option<&private_messages::Model>) -> bool {
    !c.person_id.is_empty()
        && pm.is_some_and(|pm| pm.from_person_id == c.person_id || pm.to_person_id == c.person_id)
}

/// The "read" column.
pub fn can_read(caller: &Caller, x: &Conv) -> bool {
    if caller.is_system() || is_anonymous_public(x.conv) {
        return true;
    }
    let Some(c) = caller.member_of(&x.conv.church_id) else {
        return false;
    };
    let content_id = x.conv.content_id.as_deref();
    match ContentType::of(x.conv) {
        T::StreamingLive | T::Freeshow => true,
        T::StreamingLiveHost => c.has_permission(Permission::ChatHost) || ce(c),
        T::Group | T::GroupAnnouncement => in_groups(c, content_id) || ce(c),
        T::PrivateMessage => pm_participant(c, x.pm),
        T::Person => c.has_permission(Permission::PeopleEdit),
        T::PersonConfidential => c.has_permission(Permission::ViewConfidentialNotes),
        _ => true,
    }
}

/// The "participate (post, react)" column.
pub fn can_participate(caller: &Caller, x: &Conv) -> bool {
    if caller.is_system() || is_anonymous_public(x.conv) {
        return true;
    }
    let Some(c) = caller.member_of(&x.conv.church_id) else {
        return false;
    };
    let content_id = x.conv.content_id.as_deref();
    match ContentType::of(x.conv) {
        T::StreamingLive | T::Freeshow => ce(c),
        T::StreamingLiveHost => c.has_permission(Permission::ChatHost) || ce(c),
        T::Group | T::GroupAnnouncement => in_groups(c, content_id) || ce(c),
        T::PrivateMessage => pm_participant(c, x.pm),
        T::Person => c.has_permission(Permission::PeopleEdit),
        T::PersonConfidential => c.has_permission(Permission::ViewConfidentialNotes),
        _ => ce(c),
    }
}

/// The "moderate (edit or delete others' messages)" column.
pub fn can_moderate(caller: &Caller, x: &Conv) -> bool {
    if caller.is_system() {
        return true;
    }
    let Some(c) = caller.member_of(&x.conv.church_id) else {
        return false;
    };
    if is_anonymous_public(x.conv) {
        return ce(c);
    }
    let content_id = x.conv.content_id.as_deref();
    match ContentType::of(x.conv) {
        T::Group | T::GroupAnnouncement => ce(c) || leads(c, content_id),
        T::PrivateMessage => false,
        T::Person => c.has_permission(Permission::PeopleEdit),
        T::PersonConfidential => c.has_permission(Permission::ViewConfidentialNotes),
        _ => ce(c),
    }
}

/// `canReadContent(contentType, contentId)` in `church_id`: the read column without a
/// conversation, except that `privateMessage` requires `contentId` = the caller's person.
pub fn can_read_content(
    caller: &Caller,
    church_id: &str,
    content_type: &str,
    content_id: &str,
) -> bool {
    if caller.is_system() {
        return true;
    }
    let Some(c) = caller.member_of(church_id) else {
        return false;
    };
    match ContentType::parse(content_type) {
        T::StreamingLive | T::Freeshow => true,
        T::StreamingLiveHost => c.has_permission(Permission::ChatHost) || ce(c),
        T::Group | T::GroupAnnouncement => in_groups(c, Some(content_id)) || ce(c),
        T::PrivateMessage => !c.person_id.is_empty() && c.person_id == content_id,
        T::Person => c.has_permission(Permission::PeopleEdit),
        T::PersonConfidential => c.has_permission(Permission::ViewConfidentialNotes),
        _ => true,
    }
}

/// Holders of Content Edit in `church_id` see `ipAddress` in connection lists.
pub fn sees_ip_addresses(caller: &Caller, church_id: &str) -> bool {
    caller.is_system() || caller.member_of(church_id).is_some_and(ce)
}
