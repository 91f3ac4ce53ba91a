//! The access table of §8.3, one function per column. Every join, read, post and moderation
//! decision in the service goes through here, so this file can be checked against the
//! contract line by line.
use super::{Caller, Claims, Permission};

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
    pub fn of(content_type: Option<&str>) -> Self {
        content_type.map_or(Self::Other, Self::parse)
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

/// What the rules need to know about a conversation: its columns that decide access, and
/// its private-message participants.
pub struct Conv<'a> {
    pub church_id: &'a str,
    pub content_type: ContentType,
    pub content_id: Option<&'a str>,
    pub allow_anonymous_posts: bool,
    pub visibility: Option<&'a str>,
    /// `fromPersonId` and `toPersonId` of the `privateMessages` row whose `conversationId`
    /// is this conversation, if any.
    pub participants: Option<(&'a str, &'a str)>,
}

/// `contentType` is `streamingLive` or `freeshow`, `allowAnonymousPosts`, and `visibility = "public"`.
pub fn is_anonymous_public(c: &Conv) -> bool {
    matches!(c.content_type, T::StreamingLive | T::Freeshow)
        && c.allow_anonymous_posts
        && c.visibility == Some("public")
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

fn pm_participant(c: &Claims, participants: Option<(&str, &str)>) -> bool {
    !c.person_id.is_empty()
        && participants.is_some_and(|(from, to)| from == c.person_id || to == c.person_id)
}

/// The "read" column.
pub fn can_read(caller: &Caller, x: &Conv) -> bool {
    if caller.is_system() || is_anonymous_public(x) {
        return true;
    }
    let Some(c) = caller.member_of(x.church_id) else {
        return false;
    };
    let content_id = x.content_id;
    match x.content_type {
        T::StreamingLive | T::Freeshow => true,
        T::StreamingLiveHost => c.has_permission(Permission::ChatHost) || ce(c),
        T::Group | T::GroupAnnouncement => in_groups(c, content_id) || ce(c),
        T::PrivateMessage => pm_participant(c, x.participants),
        T::Person => c.has_permission(Permission::PeopleEdit),
        T::PersonConfidential => c.has_permission(Permission::ViewConfidentialNotes),
        _ => true,
    }
}

/// The "participate (post, react)" column.
pub fn can_participate(caller: &Caller, x: &Conv) -> bool {
    if caller.is_system() || is_anonymous_public(x) {
        return true;
    }
    let Some(c) = caller.member_of(x.church_id) else {
        return false;
    };
    let content_id = x.content_id;
    match x.content_type {
        T::StreamingLive | T::Freeshow => ce(c),
        T::StreamingLiveHost => c.has_permission(Permission::ChatHost) || ce(c),
        T::Group | T::GroupAnnouncement => in_groups(c, content_id) || ce(c),
        T::PrivateMessage => pm_participant(c, x.participants),
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
    let Some(c) = caller.member_of(x.church_id) else {
        return false;
    };
    if is_anonymous_public(x) {
        return ce(c);
    }
    let content_id = x.content_id;
    match x.content_type {
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
