//! Access matrix (§4, §8, §9, §10.2–§10.4, §10.7): every caller kind × conversation type ×
//! endpoint, checked against an oracle written from the contract alone.
//!
//! The oracle (`expect_read`, `expect_participate`, `expect_moderate`,
//! `expect_can_read_content` and `holds`) mirrors §8.2/§8.3 line by line and never looks at
//! `src/`. Each case is data; all cases run against one server per backend, every mismatch is
//! collected, and the test fails once at the end with the full list.
//!
//! Readings of the contract where it leaves room (marked `AMBIGUOUS` where they are used):
//! - Another church's caller on a token endpoint that names an object by a global id without
//!   saying in which church it is looked up (reactions, `DELETE /messages/{id}`): `401
//!   Unauthorized` (not a member, §8.3) or `404 Message not found` are both accepted.
//! - A Content Edit holder of another church on this church's conversation (callout, blocked-IP
//!   toggle, conversation delete), and any token of another church updating one
//!   (`POST /conversations` with `id` is a Tok. endpoint, so by §9 existence is checked before
//!   the per-item Content Edit): `401` or `404 Conversation not found`.
//! - The `personId` a join by another church's token stores (§5.1 "if authenticated" vs §8.1
//!   "treated like an anonymous caller") is not checked; a token without `personId` stores
//!   `null` (§0). `/messages/send` with such a token is not in the matrix.
//! - `GET /conversations/messages/{type}/{id}` needs `canReadContent` and returns only
//!   conversations the caller can read (§8.3); the content-room list has the join's audience.
//! - The timeline of another church's token may include or omit this church's
//!   anonymous-public conversations.
//! - A "member of the group" (`/posts/group`) is `groupIds` or `leaderGroupIds`, as in §8.3.
//! - A new message from a blocked IP: access (401) is checked before the block (403), as §9
//!   step 6 lists them; Content Edit is exempt (§10.3).
//!
//! Plain readings, stated because a server could differ: `canReadContent` has no
//! anonymous-public row (there is no conversation); content rooms and content listings are in
//! the token's church, so another church's token is a member there; the Content Edit endpoints
//! have no per-type rule (Content Edit may call them on `person`/`privateMessage`
//! conversations it cannot read); `/current` treats `freeshow` as an "other type" (token,
//! member, `canReadContent`), so anonymous callers get 401 even on an anonymous-public one;
//! `POST /messages` and `GET /messages/conversation/{id}` look the conversation up in the
//! caller's church, so another church gets 404 there.
use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use futures::StreamExt;
use messaging::auth::{Claims, TokenKeys};
use messaging::store::entities::{
    blocked_ips, connections, conversations, messages, private_messages,
};
use reqwest::Method;
use sea_orm::{EntityTrait, IntoActiveModel};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::server_test;

const C1: &str = "CHURCH-AAA1";
const C2: &str = "CHURCH-BBB2";
const G1: &str = "GROUP-G1";
const G2: &str = "GROUP-G2";
/// The author of the "someone else's" messages; never a caller.
const AUTHOR: &str = "P-AUTHOR";
const PM_FROM: &str = "P-PM-FROM";
const PM_TO: &str = "P-PM-TO";
/// A member who is not in the privateMessages row but whose person id is the private
/// conversation's `contentId` (§8.3: participation is decided by the row, not by `contentId`).
const PM_OTHER: &str = "P-PM-OTHER";
const NOTE_PERSON: &str = "PER-NOTES1";
/// Requests in flight at once.
const CONCURRENCY: usize = 16;

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Anonymous,
    /// Tokens that are not authenticated (§8.1), all claiming Content Edit and group G1:
    /// signed with another key, expired 2 s ago and not valid for 10 min (no leeway),
    /// without the user `id`, without `churchId`, HS384 with the right key, and `alg: none`.
    /// All are anonymous.
    BadSignature,
    Expired,
    NotYetValid,
    NoUserId,
    NoChurch,
    WrongAlgorithm,
    AlgNone,
    OtherChurch,
    OtherChurchContentEdit,
    Member,
    /// A member token without `personId` (§8.1: acting as a person needs one).
    NoPerson,
    GroupMember,
    GroupLeader,
    ContentEdit,
    ChatHost,
    PeopleEdit,
    ViewConfidential,
    MessagingAdmin,
    PmFrom,
    PmTo,
    PmOtherMember,
}

impl Kind {
    /// Invalid tokens other than the bad signature run on a sample of conversation types.
    fn sampled(self) -> bool {
        use Kind::*;
        matches!(
            self,
            Expired | NotYetValid | NoUserId | NoChurch | WrongAlgorithm | AlgNone
        )
    }
}

/// What the oracle knows about a valid token (§8.1).
#[derive(Debug, Clone)]
struct Ident {
    church: &'static str,
    person: &'static str,
    permissions: Vec<&'static str>,
    group_ids: Vec<&'static str>,
    leader_group_ids: Vec<&'static str>,
}

struct Caller {
    kind: Kind,
    label: &'static str,
    /// What is sent as the bearer token.
    token: Option<String>,
    /// `None` when the caller is anonymous (no token, or an invalid one).
    ident: Option<Ident>,
    /// A live socket of this caller, for the joins.
    socket: String,
    /// Two more live sockets whose rows are inserted directly (§10.2 setName): the first is
    /// in every fixture room, the second only in the rooms of `setname_b`; both in `alerts`.
    victims: [String; 2],
}

fn ident(
    church: &'static str,
    person: &'static str,
    permissions: &[&'static str],
    group_ids: &[&'static str],
    leader_group_ids: &[&'static str],
) -> Ident {
    Ident {
        church,
        person,
        permissions: permissions.to_vec(),
        group_ids: group_ids.to_vec(),
        leader_group_ids: leader_group_ids.to_vec(),
    }
}

/// Caller kinds with the claims of their tokens. The permission strings mix the plain and the
/// API-prefixed forms of §8.2; the plain member also carries strings that grant nothing.
fn caller_specs() -> Vec<(Kind, &'static str, Option<Ident>)> {
    use Kind::*;
    vec![
        (Anonymous, "anonymous", None),
        (BadSignature, "bad-signature token", None),
        (Expired, "token expired 2 s ago", None),
        (NotYetValid, "token with nbf in 10 min", None),
        (NoUserId, "token without user id", None),
        (NoChurch, "token without churchId", None),
        (WrongAlgorithm, "HS384 token", None),
        (AlgNone, "alg none token", None),
        (
            OtherChurch,
            "other church",
            Some(ident(C2, "P-OTHER", &[], &[G1], &[G1])),
        ),
        (
            OtherChurchContentEdit,
            "other church Content Edit",
            Some(ident(
                C2,
                "P-OTHER-CE",
                &["Content__Edit", "Chat__Host", "People__Edit"],
                &[G1],
                &[G1],
            )),
        ),
        (
            Member,
            "member",
            Some(ident(
                C1,
                "P-MEMBER",
                &[
                    // None of these grants anything (§8.2).
                    "Content_CONV1_Edit",
                    "Content_Edit",
                    "_Content__Edit",
                    "x_y_Content__Edit",
                    "Content__View",
                    "Chat_Host",
                    "B1Api_People_PER-NOTES1_Edit",
                ],
                &["GROUP-OTHER"],
                &[],
            )),
        ),
        (
            NoPerson,
            "member without personId",
            Some(ident(C1, "", &[], &[], &[])),
        ),
        (
            GroupMember,
            "group member",
            Some(ident(C1, "P-GMEMBER", &[], &[G1], &[])),
        ),
        (
            GroupLeader,
            "group leader",
            Some(ident(C1, "P-GLEADER", &[], &[], &[G1])),
        ),
        (
            ContentEdit,
            "Content Edit",
            Some(ident(C1, "P-CE", &["B1Api_Content__Edit"], &[], &[])),
        ),
        (
            ChatHost,
            "Chat Host",
            Some(ident(C1, "P-HOST", &["Chat__Host"], &[], &[])),
        ),
        (
            PeopleEdit,
            "People Edit",
            Some(ident(C1, "P-PEOPLE", &["B1Api_People__Edit"], &[], &[])),
        ),
        (
            ViewConfidential,
            "View Confidential Notes",
            Some(ident(
                C1,
                "P-CONFID",
                &["People__View Confidential Notes"],
                &[],
                &[],
            )),
        ),
        (
            MessagingAdmin,
            "Messaging Admin",
            Some(ident(
                C1,
                "P-MSGADMIN",
                &["B1Api_Messaging__Admin"],
                &[],
                &[],
            )),
        ),
        (
            PmFrom,
            "pm participant (from)",
            Some(ident(C1, PM_FROM, &[], &[], &[])),
        ),
        (
            PmTo,
            "pm participant (to)",
            Some(ident(C1, PM_TO, &[], &[], &[])),
        ),
        (
            PmOtherMember,
            "pm other member (= contentId)",
            Some(ident(C1, PM_OTHER, &[], &[], &[])),
        ),
    ]
}

fn claims(id: &Ident) -> Claims {
    Claims {
        id: format!("U-{}-{}", id.church, id.person),
        church_id: id.church.into(),
        person_id: id.person.into(),
        first_name: "First".into(),
        last_name: if id.person.is_empty() {
            "Nobody".into()
        } else {
            id.person.into()
        },
        permissions: id.permissions.iter().map(|s| s.to_string()).collect(),
        group_ids: id.group_ids.iter().map(|s| s.to_string()).collect(),
        leader_group_ids: id.leader_group_ids.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ConvSpec {
    label: &'static str,
    content_type: &'static str,
    content_id: &'static str,
    visibility: Option<&'static str>,
    allow_anonymous_posts: bool,
    /// `(fromPersonId, toPersonId)` of the privateMessages row.
    pm: Option<(&'static str, &'static str)>,
}

fn conv(
    label: &'static str,
    content_type: &'static str,
    content_id: &'static str,
    visibility: Option<&'static str>,
    allow_anonymous_posts: bool,
) -> ConvSpec {
    ConvSpec {
        label,
        content_type,
        content_id,
        visibility,
        allow_anonymous_posts,
        pm: None,
    }
}

/// One fixture per conversation type. Each has its own `(contentType, contentId)` (the copies
/// for the delete and update cases get another one), so a listing by content or `/current`
/// finds exactly that fixture.
fn conv_specs() -> Vec<ConvSpec> {
    vec![
        conv(
            "streamingLive anonymous-public",
            "streamingLive",
            "SL-PUBLIC",
            Some("public"),
            true,
        ),
        conv(
            "streamingLive no anonymous posts",
            "streamingLive",
            "SL-CLOSED",
            Some("public"),
            false,
        ),
        conv(
            "streamingLive visibility private",
            "streamingLive",
            "SL-PRIVVIS",
            Some("private"),
            true,
        ),
        conv(
            "freeshow anonymous-public",
            "freeshow",
            "FS-PUBLIC",
            Some("public"),
            true,
        ),
        // Public with anonymous posts, but the type is not streamingLive/freeshow.
        conv(
            "streamingLiveHost",
            "streamingLiveHost",
            "HOST-1",
            Some("public"),
            true,
        ),
        conv("group G1", "group", G1, Some("public"), false),
        conv("group G2", "group", G2, Some("public"), false),
        conv(
            "groupAnnouncement G1",
            "groupAnnouncement",
            G1,
            Some("public"),
            false,
        ),
        ConvSpec {
            pm: Some((PM_FROM, PM_TO)),
            ..conv("privateMessage", "privateMessage", PM_OTHER, None, false)
        },
        // No privateMessages row: nobody may read, although contentId names a person.
        conv(
            "privateMessage without row",
            "privateMessage",
            PM_FROM,
            None,
            false,
        ),
        conv("person", "person", NOTE_PERSON, None, false),
        conv(
            "personConfidential",
            "personConfidential",
            NOTE_PERSON,
            None,
            false,
        ),
        conv(
            "sermon (other type)",
            "sermon",
            "SERMON-1",
            Some("public"),
            true,
        ),
    ]
}

/// The types the invalid tokens other than the bad signature are checked on: those where a
/// token wrongly taken as valid (Content Edit, Chat Host, group G1) would change the answer.
fn unauthenticated_sample(c: &ConvSpec) -> bool {
    matches!(
        c.label,
        "streamingLive anonymous-public"
            | "streamingLive no anonymous posts"
            | "streamingLiveHost"
            | "group G1"
            | "sermon (other type)"
    )
}

/// The rooms of the second setName victim: none of them anonymous-public.
fn setname_b(c: &ConvSpec) -> bool {
    matches!(
        c.content_type,
        "person" | "personConfidential" | "privateMessage"
    )
}

/// The types the Content Edit endpoints are checked on.
fn ce_sample(c: &ConvSpec) -> bool {
    matches!(
        c.label,
        "streamingLive anonymous-public"
            | "streamingLiveHost"
            | "group G1"
            | "privateMessage"
            | "person"
            | "personConfidential"
    )
}

// ---------------------------------------------------------------------------------------------
// The oracle: §8.2 and §8.3, line by line
// ---------------------------------------------------------------------------------------------

/// §8.2: `T__A`, or `P_T__A` with a non-empty prefix `P` without `_`.
fn holds(id: &Ident, t: &str, a: &str) -> bool {
    let exact = format!("{t}__{a}");
    id.permissions.iter().any(|p| {
        *p == exact
            || p.strip_suffix(exact.as_str())
                .and_then(|rest| rest.strip_suffix('_'))
                .is_some_and(|prefix| !prefix.is_empty() && !prefix.contains('_'))
    })
}

fn content_edit(id: &Ident) -> bool {
    holds(id, "Content", "Edit")
}
fn chat_host(id: &Ident) -> bool {
    holds(id, "Chat", "Host")
}
fn people_edit(id: &Ident) -> bool {
    holds(id, "People", "Edit")
}
fn view_confidential(id: &Ident) -> bool {
    holds(id, "People", "View Confidential Notes")
}
fn in_group(id: &Ident, group: &str) -> bool {
    id.group_ids.contains(&group) || id.leader_group_ids.contains(&group)
}

/// §0: a member has a valid token of the church of the thing accessed. All fixtures are in C1.
fn member(who: Option<&Ident>) -> Option<&Ident> {
    who.filter(|i| i.church == C1)
}

/// §8.3: `contentType` is streamingLive or freeshow, `allowAnonymousPosts`, `visibility` public.
fn anonymous_public(c: &ConvSpec) -> bool {
    matches!(c.content_type, "streamingLive" | "freeshow")
        && c.allow_anonymous_posts
        && c.visibility == Some("public")
}

fn pm_participant(id: &Ident, c: &ConvSpec) -> bool {
    c.pm.is_some_and(|(from, to)| id.person == from || id.person == to)
}

/// §8.3, "read" column.
fn expect_read(who: Option<&Ident>, c: &ConvSpec) -> bool {
    if anonymous_public(c) {
        return true; // everyone, anonymous and other churches included
    }
    let Some(id) = member(who) else {
        return false;
    };
    match c.content_type {
        "streamingLive" | "freeshow" => true,
        "streamingLiveHost" => chat_host(id) || content_edit(id),
        "group" | "groupAnnouncement" => in_group(id, c.content_id) || content_edit(id),
        "privateMessage" => pm_participant(id, c),
        "person" => people_edit(id),
        "personConfidential" => view_confidential(id),
        _ => true,
    }
}

/// §8.3, "participate" column, for members. Non-members may post only through `/send`.
fn expect_participate(who: Option<&Ident>, c: &ConvSpec) -> bool {
    let Some(id) = member(who) else {
        return false;
    };
    if anonymous_public(c) {
        return true;
    }
    match c.content_type {
        "streamingLive" | "freeshow" => content_edit(id),
        "streamingLiveHost" => chat_host(id) || content_edit(id),
        "group" | "groupAnnouncement" => in_group(id, c.content_id) || content_edit(id),
        "privateMessage" => pm_participant(id, c),
        "person" => people_edit(id),
        "personConfidential" => view_confidential(id),
        _ => content_edit(id),
    }
}

/// §8.3, "moderate" column.
fn expect_moderate(who: Option<&Ident>, c: &ConvSpec) -> bool {
    let Some(id) = member(who) else {
        return false;
    };
    if anonymous_public(c) {
        return content_edit(id);
    }
    match c.content_type {
        "streamingLive" | "freeshow" | "streamingLiveHost" => content_edit(id),
        "group" | "groupAnnouncement" => {
            content_edit(id) || id.leader_group_ids.contains(&c.content_id)
        }
        "privateMessage" => false,
        "person" => people_edit(id),
        "personConfidential" => view_confidential(id),
        _ => content_edit(id),
    }
}

/// §8.3 `canReadContent`: the read column without a conversation (so no anonymous-public
/// row); `privateMessage` needs `contentId` = the caller's `personId`. Content rooms and
/// listings are in the caller's own church, so every token holder is a member there.
fn expect_can_read_content(id: &Ident, content_type: &str, content_id: &str) -> bool {
    match content_type {
        "streamingLive" | "freeshow" => true,
        "streamingLiveHost" => chat_host(id) || content_edit(id),
        "group" | "groupAnnouncement" => in_group(id, content_id) || content_edit(id),
        "privateMessage" => !id.person.is_empty() && content_id == id.person,
        "person" => people_edit(id),
        "personConfidential" => view_confidential(id),
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// What a 2xx answer must also satisfy.
#[derive(Debug, Clone)]
enum Check {
    Status(u16),
    Array,
    /// The first returned row: its church and (when `Some`) its person.
    Row {
        church: &'static str,
        person: Option<Value>,
    },
    /// Connection list: `ipAddress` is non-null exactly for Content Edit of the church.
    Connections {
        ip_visible: bool,
    },
    Id(String),
    /// The first returned message's `personId`.
    MessagePerson(Value),
    Reaction(String),
    Callout(String),
    Toggled,
    Updated(String),
    /// The returned objects' ids: all of `must`, and nothing outside `must` and `may`.
    Ids {
        must: Vec<String>,
        may: Vec<String>,
    },
    /// `n` messages, each with this `personId`.
    Messages {
        person: Value,
        n: usize,
    },
    /// `n` rows.
    Rows(usize),
    /// One conversation created in this church.
    Created(&'static str),
    /// Rows of exactly these rooms (`conversationId`), in any order.
    Rooms(Vec<String>),
    /// A connection list of the alerts room: at least one row, each of this person.
    OwnRows(String),
    Exact(Value),
}

#[derive(Debug, Clone)]
enum Expect {
    Allow(Check),
    /// Any of these (status, exact body).
    Deny(Vec<(u16, Value)>),
}

fn unauthorized() -> Expect {
    Expect::Deny(vec![(401, json!({"error": "Unauthorized"}))])
}
fn anonymous_posting() -> Expect {
    Expect::Deny(vec![(
        401,
        json!({"error": "Anonymous posting not allowed"}),
    )])
}
fn conversation_not_found() -> Expect {
    Expect::Deny(vec![(404, json!({"error": "Conversation not found"}))])
}
fn message_not_found() -> Expect {
    Expect::Deny(vec![(404, json!({"error": "Message not found"}))])
}
/// AMBIGUOUS (see the module docs): a denial either as 401 or as the named 404.
fn unauthorized_or(not_found: &str) -> Expect {
    Expect::Deny(vec![
        (401, json!({"error": "Unauthorized"})),
        (404, json!({ "error": not_found })),
    ])
}
fn ids(must: impl IntoIterator<Item = String>) -> Check {
    Check::Ids {
        must: must.into_iter().collect(),
        may: Vec::new(),
    }
}
fn allow_if(ok: bool, check: Check) -> Expect {
    if ok {
        Expect::Allow(check)
    } else {
        unauthorized()
    }
}

struct Case {
    endpoint: &'static str,
    caller: usize,
    target: String,
    method: Method,
    path: String,
    body: Option<Value>,
    expect: Expect,
}

/// Fixture ids: the shared conversation and its "someone else's" message per type, plus the
/// fresh objects each (caller, type) case consumes.
struct Conv {
    spec: ConvSpec,
    id: String,
    other_msg: String,
}

#[derive(Default)]
struct Fresh {
    /// AUTHOR's message, deleted by the case.
    delete_other: String,
    /// The caller's own messages (C1 callers with a person only).
    own_edit: Option<String>,
    own_delete: Option<String>,
    /// Copies of the conversation for the delete and update cases (sampled types only).
    copies: Option<(String, String)>,
}

struct Fixtures {
    convs: Vec<Conv>,
    fresh: HashMap<(usize, usize), Fresh>,
    /// Conversations where the callers' IP (127.0.0.1) is blocked.
    blocked: Vec<Conv>,
    /// Two streamingLive conversations of one content, one anonymous-public, one not.
    mixed: Vec<Conv>,
}

fn build_cases(callers: &[Caller], fx: &Fixtures) -> (Vec<Case>, Vec<Case>) {
    use Kind::*;
    let mut joins = Vec::new();
    let mut rest = Vec::new();
    for (ci, caller) in callers.iter().enumerate() {
        let who = caller.ident.as_ref();
        let has_token = who.is_some();
        let mem = member(who);
        let acts_as_person = who.is_some_and(|i| !i.person.is_empty());
        // The personId a join stores (§5.1); not checked for other churches (AMBIGUOUS).
        let join_person = match who {
            None => Some(Value::Null),
            // A token without personId: "a field with no value is null" (§0).
            Some(i) if i.church == C1 && i.person.is_empty() => Some(Value::Null),
            Some(i) if i.church == C1 => Some(json!(i.person)),
            Some(_) => None,
        };
        let ce_of_church = mem.is_some_and(content_edit);
        let case = |endpoint, target: &str, method, path: String, body, expect| Case {
            endpoint,
            caller: ci,
            target: target.to_string(),
            method,
            path,
            body,
            expect,
        };

        for (vi, cv) in fx.convs.iter().enumerate() {
            if caller.kind.sampled() && !unauthenticated_sample(&cv.spec) {
                continue; // BadSignature covers every type, the other invalid tokens a sample
            }
            let c = &cv.spec;
            let t = c.label;
            let id = &cv.id;
            let fresh = &fx.fresh[&(ci, vi)];
            let read = expect_read(who, c);
            let participate = expect_participate(who, c);
            let moderate = expect_moderate(who, c);

            // §4, §10.2: joining a conversation room needs read; the row's church is the
            // conversation's whatever the body says.
            joins.push(case(
                "POST /connections (conversation room)",
                t,
                Method::POST,
                "/messaging/connections".into(),
                Some(
                    json!([{"conversationId": id, "socketId": caller.socket, "churchId": "SPOOF",
                             "personId": "SPOOF", "displayName": caller.label}]),
                ),
                allow_if(
                    read,
                    Check::Row {
                        church: C1,
                        person: join_person.clone(),
                    },
                ),
            ));
            rest.push(case(
                "GET /connections/{churchId}/{roomId}",
                t,
                Method::GET,
                format!("/messaging/connections/{C1}/{id}"),
                None,
                allow_if(
                    read,
                    Check::Connections {
                        ip_visible: ce_of_church,
                    },
                ),
            ));
            // Leave: "as for GET"; a socket with no row still answers success (§10.2).
            rest.push(case(
                "DELETE /connections/{churchId}/{roomId}/{socketId}",
                t,
                Method::DELETE,
                format!("/messaging/connections/{C1}/{id}/NoSuchSock1"),
                None,
                allow_if(read, Check::Exact(json!({"success": true}))),
            ));
            rest.push(case(
                "GET /conversations/{churchId}/{id}",
                t,
                Method::GET,
                format!("/messaging/conversations/{C1}/{id}"),
                None,
                allow_if(read, Check::Id(id.clone())),
            ));
            rest.push(case(
                "GET /messages/catchup/{churchId}/{id}",
                t,
                Method::GET,
                format!("/messaging/messages/catchup/{C1}/{id}"),
                None,
                allow_if(read, Check::Array),
            ));
            // Tok.; "the conversation is looked up in the caller's church" (§10.3).
            rest.push(case(
                "GET /messages/conversation/{id}",
                t,
                Method::GET,
                format!("/messaging/messages/conversation/{id}"),
                None,
                if !has_token {
                    unauthorized()
                } else if mem.is_none() {
                    conversation_not_found()
                } else {
                    allow_if(read, Check::Array)
                },
            ));
            rest.push(case(
                "GET /messages/{churchId}/{id}",
                t,
                Method::GET,
                format!("/messaging/messages/{C1}/{}", cv.other_msg),
                None,
                allow_if(read, Check::Id(cv.other_msg.clone())),
            ));
            rest.push(case(
                "GET /blockedips/{churchId}/{id}",
                t,
                Method::GET,
                format!("/messaging/blockedips/{C1}/{id}"),
                None,
                allow_if(read, Check::Array),
            ));

            // §10.3 /send: authenticated post if a member who may participate, else an
            // anonymous post if anonymous-public, else 401 Anonymous posting not allowed.
            if caller.kind != NoPerson {
                let expect = if participate {
                    Expect::Allow(Check::MessagePerson(json!(mem.unwrap().person)))
                } else if anonymous_public(c) {
                    Expect::Allow(Check::MessagePerson(Value::Null))
                } else {
                    anonymous_posting()
                };
                rest.push(case(
                    "POST /messages/send",
                    t,
                    Method::POST,
                    "/messaging/messages/send".into(),
                    Some(json!([{"conversationId": id, "content": format!("send by {}", caller.label),
                                 "displayName": "X", "personId": "SPOOF", "churchId": "SPOOF"}])),
                    expect,
                ));
            }

            // POST /messages, new item: Tok. + person; conversation in the caller's church;
            // participate.
            rest.push(case(
                "POST /messages (new)",
                t,
                Method::POST,
                "/messaging/messages".into(),
                Some(
                    json!([{"conversationId": id, "content": format!("post by {}", caller.label)}]),
                ),
                if !has_token || !acts_as_person {
                    unauthorized()
                } else if mem.is_none() {
                    conversation_not_found()
                } else {
                    allow_if(
                        participate,
                        Check::MessagePerson(json!(mem.unwrap().person)),
                    )
                },
            ));
            rest.push(case(
                "POST /messages/{id}/reactions",
                t,
                Method::POST,
                format!("/messaging/messages/{}/reactions", cv.other_msg),
                Some(json!({"emoji": "👍"})),
                if !has_token || !acts_as_person {
                    unauthorized()
                } else if mem.is_none() {
                    unauthorized_or("Message not found") // AMBIGUOUS
                } else {
                    allow_if(participate, Check::Reaction(cv.other_msg.clone()))
                },
            ));
            // Edit someone else's message: "the message must exist in the caller's church",
            // then author or moderator.
            rest.push(case(
                "POST /messages (edit other's)",
                t,
                Method::POST,
                "/messaging/messages".into(),
                Some(json!([{"id": cv.other_msg, "conversationId": id,
                             "content": format!("edited by {}", caller.label)}])),
                if !has_token {
                    unauthorized()
                } else if mem.is_none() {
                    message_not_found()
                } else {
                    allow_if(moderate, Check::MessagePerson(json!(AUTHOR)))
                },
            ));
            rest.push(case(
                "DELETE /messages/{id} (other's)",
                t,
                Method::DELETE,
                format!("/messaging/messages/{}", fresh.delete_other),
                None,
                if !has_token {
                    unauthorized()
                } else if mem.is_none() {
                    unauthorized_or("Message not found") // AMBIGUOUS
                } else {
                    allow_if(
                        moderate,
                        Check::Exact(json!({"message": "Message deleted successfully"})),
                    )
                },
            ));
            // Authors may edit and delete their own messages while they can read.
            if let (Some(own_edit), Some(own_delete)) = (&fresh.own_edit, &fresh.own_delete) {
                let person = json!(mem.unwrap().person);
                rest.push(case(
                    "POST /messages (edit own)",
                    t,
                    Method::POST,
                    "/messaging/messages".into(),
                    Some(json!([{"id": own_edit, "conversationId": id, "content": "edited own"}])),
                    allow_if(read, Check::MessagePerson(person)),
                ));
                rest.push(case(
                    "DELETE /messages/{id} (own)",
                    t,
                    Method::DELETE,
                    format!("/messaging/messages/{own_delete}"),
                    None,
                    allow_if(
                        read,
                        Check::Exact(json!({"message": "Message deleted successfully"})),
                    ),
                ));
            }

            // Content Edit endpoints (§8.2, §10.3, §10.4, §10.7). They carry no per-type rule,
            // so they run on a sample of types, including those Content Edit cannot read.
            if let Some((conv_delete, conv_update)) = &fresh.copies {
                let ce_endpoint = |check: Check, not_found: &str| {
                    if ce_of_church {
                        Expect::Allow(check)
                    } else if who.is_some_and(content_edit) {
                        unauthorized_or(not_found) // AMBIGUOUS: CE of another church
                    } else {
                        unauthorized()
                    }
                };
                rest.push(case(
                    "POST /messages/setCallout",
                    t,
                    Method::POST,
                    "/messaging/messages/setCallout".into(),
                    Some(
                        json!({"conversationId": id, "content": "callout", "displayName": "Host"}),
                    ),
                    ce_endpoint(Check::Callout(id.clone()), "Conversation not found"),
                ));
                rest.push(case(
                    "POST /blockedips",
                    t,
                    Method::POST,
                    "/messaging/blockedips".into(),
                    Some(json!([{"conversationId": id, "ipAddress": format!("10.{ci}.{vi}.9")}])),
                    ce_endpoint(Check::Toggled, "Conversation not found"),
                ));
                rest.push(case(
                    "DELETE /conversations/{churchId}/{id}",
                    t,
                    Method::DELETE,
                    format!("/messaging/conversations/{C1}/{}", conv_delete),
                    None,
                    ce_endpoint(Check::Status(204), "Conversation not found"),
                ));
                let mut update = json!({"id": conv_update, "contentType": c.content_type,
                                        "contentId": format!("{}-COPY", c.content_id), "title": "renamed",
                                        "allowAnonymousPosts": c.allow_anonymous_posts});
                if let Some(v) = c.visibility {
                    update["visibility"] = json!(v);
                }
                rest.push(case(
                    "POST /conversations (update)",
                    t,
                    Method::POST,
                    "/messaging/conversations".into(),
                    Some(json!([update])),
                    // The endpoint is Tok.; Content Edit is needed per item (§10.4), so by the
                    // check order (§9) existence comes first. AMBIGUOUS: whether a caller of
                    // another church gets 404 (looked up in its church) or 401.
                    if !has_token {
                        unauthorized()
                    } else if mem.is_none() {
                        unauthorized_or("Conversation not found")
                    } else {
                        allow_if(ce_of_church, Check::Updated(conv_update.clone()))
                    },
                ));
            }

            // §10.4 create: any authenticated caller, in its own church; person and
            // personConfidential need the notes permission. Fresh contentIds, so nothing
            // else sees the new conversations.
            let may_create = who.is_some_and(|i| match c.content_type {
                "person" => people_edit(i),
                "personConfidential" => view_confidential(i),
                _ => true,
            });
            rest.push(case(
                "POST /conversations (create)",
                t,
                Method::POST,
                "/messaging/conversations".into(),
                Some(
                    json!([{"contentType": c.content_type, "contentId": format!("NEW-{ci}-{vi}"),
                             "title": "new", "churchId": "SPOOF"}]),
                ),
                allow_if(may_create, Check::Created(who.map_or(C1, |i| i.church))),
            ));

            // §10.4 listing by content: members need canReadContent and see only what they
            // can read; others get 401 unless every conversation is anonymous-public.
            // The fixture is the only conversation with its content.
            let listing = if let Some(m) = mem {
                allow_if(
                    expect_can_read_content(m, c.content_type, c.content_id),
                    ids(read.then(|| id.clone())),
                )
            } else {
                allow_if(anonymous_public(c), ids([id.clone()]))
            };
            rest.push(case(
                "GET /conversations/{churchId}/{contentType}/{contentId}",
                t,
                Method::GET,
                format!(
                    "/messaging/conversations/{C1}/{}/{}",
                    c.content_type, c.content_id
                ),
                None,
                listing,
            ));
        }

        // Content rooms and listings: token required, church from the token, canReadContent.
        let mut targets: Vec<(&'static str, String)> = Vec::new();
        for cv in &fx.convs {
            let key = (cv.spec.content_type, cv.spec.content_id.to_string());
            if !targets.contains(&key) {
                targets.push(key);
            }
        }
        if let Some(i) = who.filter(|i| !i.person.is_empty()) {
            targets.push(("privateMessage", i.person.to_string()));
        } else if who.is_none() {
            targets.push(("privateMessage", "P-SELF".to_string()));
        }
        for (ct, cid) in targets {
            let target = format!("content {ct}/{cid}");
            let ok = who.is_some_and(|i| expect_can_read_content(i, ct, &cid));
            let token_church = who.map_or(C1, |i| i.church);
            // The fixture with this content, when the caller is a member of its church.
            let fixture = fx.convs.iter().find(|cv| {
                cv.spec.content_type == ct && cv.spec.content_id == cid && token_church == C1
            });
            joins.push(case(
                "POST /connections (content room)",
                &target,
                Method::POST,
                "/messaging/connections".into(),
                Some(json!([{"conversationId": format!("content-{ct}-{cid}"),
                             "socketId": caller.socket, "churchId": "SPOOF"}])),
                allow_if(
                    ok,
                    Check::Row {
                        church: who.map_or(C1, |i| i.church),
                        person: who
                            .filter(|i| !i.person.is_empty())
                            .map(|i| json!(i.person)),
                    },
                ),
            ));
            rest.push(case(
                "GET /conversations/messages/{contentType}/{contentId}",
                &target,
                Method::GET,
                format!("/messaging/conversations/messages/{ct}/{cid}"),
                None,
                // Only conversations the caller may read (§8.3 read column): my reading, the
                // endpoint's row does not repeat it.
                allow_if(
                    ok,
                    ids(fixture
                        .filter(|cv| expect_read(who, &cv.spec))
                        .map(|cv| cv.id.clone())),
                ),
            ));
            // The room list has the audience of the join (my reading of §10.2 "Tok.").
            rest.push(case(
                "GET /connections/{churchId}/content-…",
                &target,
                Method::GET,
                format!("/messaging/connections/{token_church}/content-{ct}-{cid}"),
                None,
                allow_if(ok, Check::Array),
            ));
        }

        // §4: alerts needs a token with a personId; church and person come from the token.
        joins.push(case(
            "POST /connections (alerts)",
            "alerts",
            Method::POST,
            "/messaging/connections".into(),
            Some(
                json!([{"conversationId": "alerts", "socketId": caller.socket,
                         "churchId": "SPOOF", "personId": "SPOOF"}]),
            ),
            match who {
                Some(i) if acts_as_person => Expect::Allow(Check::Row {
                    church: i.church,
                    person: Some(json!(i.person)),
                }),
                _ => unauthorized(),
            },
        ));
        if caller.kind != NoPerson {
            rest.push(case(
                "GET /connections/{churchId}/alerts",
                "alerts",
                Method::GET,
                format!(
                    "/messaging/connections/{}/alerts",
                    who.map_or(C1, |i| i.church)
                ),
                None,
                match who {
                    Some(i) => Expect::Allow(Check::OwnRows(i.person.to_string())),
                    None => unauthorized(),
                },
            ));
        }

        // §10.3 "Blocked IPs": a new message from a blocked IP gets 403 unless the caller holds
        // Content Edit; per-object access (401) is checked before the IP block (§9 step 6).
        for cv in &fx.blocked {
            let c = &cv.spec;
            let participate = expect_participate(who, c);
            let blocked = Expect::Deny(vec![(403, json!({"error": "IP address blocked"}))]);
            let ip_ok = |check: Check| {
                if ce_of_church {
                    Expect::Allow(check)
                } else {
                    blocked.clone()
                }
            };
            if caller.kind != NoPerson {
                rest.push(case(
                    "POST /messages/send (IP blocked)",
                    c.label,
                    Method::POST,
                    "/messaging/messages/send".into(),
                    Some(json!([{"conversationId": cv.id, "content": "from a blocked IP"}])),
                    if participate {
                        ip_ok(Check::MessagePerson(json!(mem.unwrap().person)))
                    } else if anonymous_public(c) {
                        blocked.clone()
                    } else {
                        anonymous_posting()
                    },
                ));
            }
            rest.push(case(
                "POST /messages (new, IP blocked)",
                c.label,
                Method::POST,
                "/messaging/messages".into(),
                Some(json!([{"conversationId": cv.id, "content": "from a blocked IP"}])),
                if !has_token || !acts_as_person {
                    unauthorized()
                } else if mem.is_none() {
                    conversation_not_found()
                } else if participate {
                    ip_ok(Check::MessagePerson(json!(mem.unwrap().person)))
                } else {
                    unauthorized()
                },
            ));
        }

        // §10.2 setName: only the socket's rows in rooms the caller can read, never alerts;
        // 401 if the socket has such rows but none is readable.
        for (n, victim) in caller.victims.iter().enumerate() {
            let rooms: Vec<String> = fx
                .convs
                .iter()
                .filter(|cv| n == 0 || setname_b(&cv.spec))
                .filter(|cv| expect_read(who, &cv.spec))
                .map(|cv| cv.id.clone())
                .collect();
            rest.push(case(
                "POST /connections/setName",
                if n == 0 {
                    "socket in every room"
                } else {
                    "socket in person/personConfidential/privateMessage rooms"
                },
                Method::POST,
                "/messaging/connections/setName".into(),
                Some(json!({"socketId": victim, "name": format!("renamed by {}", caller.label)})),
                allow_if(!rooms.is_empty(), Check::Rooms(rooms)),
            ));
        }

        // Batches are authorized as a whole (§9 "Atomicity", §10.2 pass 1, §10.3 /send).
        let open = &fx.convs[0];
        assert_eq!(open.spec.label, "streamingLive anonymous-public");
        let pair = |label: &str| fx.convs.iter().find(|cv| cv.spec.label == label).unwrap();
        let person_room = pair("person");
        joins.push(case(
            "POST /connections (batch)",
            "anonymous-public + person",
            Method::POST,
            "/messaging/connections".into(),
            Some(
                json!([{"conversationId": open.id, "socketId": caller.socket},
                        {"conversationId": person_room.id, "socketId": caller.socket}]),
            ),
            allow_if(expect_read(who, &person_room.spec), Check::Rows(2)),
        ));
        if caller.kind != NoPerson {
            let sermon = pair("sermon (other type)");
            rest.push(case(
                "POST /messages/send (batch)",
                "anonymous-public + sermon",
                Method::POST,
                "/messaging/messages/send".into(),
                Some(json!([{"conversationId": open.id, "content": "batch 1"},
                            {"conversationId": sermon.id, "content": "batch 2"}])),
                if expect_participate(who, &sermon.spec) {
                    Expect::Allow(Check::Messages {
                        person: json!(mem.unwrap().person),
                        n: 2,
                    })
                } else {
                    anonymous_posting()
                },
            ));
        }

        // §10.4 listing by content when only some conversations are anonymous-public.
        rest.push(case(
            "GET /conversations/{churchId}/{contentType}/{contentId}",
            "streamingLive with mixed conversations",
            Method::GET,
            format!(
                "/messaging/conversations/{C1}/streamingLive/{}",
                fx.mixed[0].spec.content_id
            ),
            None,
            allow_if(mem.is_some(), ids(fx.mixed.iter().map(|cv| cv.id.clone()))),
        ));

        // §10.4 timeline: unknown or unreadable ids are silently omitted.
        let all_ids: Vec<&str> = fx.convs.iter().map(|cv| cv.id.as_str()).collect();
        let readable = |cv: &&Conv| expect_read(who, &cv.spec);
        rest.push(case(
            "GET /conversations/timeline/ids",
            "all types",
            Method::GET,
            format!(
                "/messaging/conversations/timeline/ids?ids={},NoSuchConv1",
                all_ids.join(",")
            ),
            None,
            if !has_token {
                unauthorized()
            } else if mem.is_some() {
                Expect::Allow(ids(fx
                    .convs
                    .iter()
                    .filter(readable)
                    .map(|cv| cv.id.clone())))
            } else {
                // AMBIGUOUS: another church's token may or may not see the anonymous-public
                // conversations of this church here.
                Expect::Allow(Check::Ids {
                    must: Vec::new(),
                    may: fx
                        .convs
                        .iter()
                        .filter(readable)
                        .map(|cv| cv.id.clone())
                        .collect(),
                })
            },
        ));

        // §10.4 posts of a group: 401 unless a member of the group (groupIds or, my reading,
        // leaderGroupIds) or Content Edit.
        for g in [G1, G2] {
            rest.push(case(
                "GET /conversations/posts/group/{groupId}",
                g,
                Method::GET,
                format!("/messaging/conversations/posts/group/{g}"),
                None,
                allow_if(
                    who.is_some_and(|i| in_group(i, g) || content_edit(i)),
                    Check::Array,
                ),
            ));
        }

        // §10.4 /current on each fixture's content (each is the newest of its content and
        // less than 24 hours old, so it is returned and nothing is created).
        for cv in &fx.convs {
            let c = &cv.spec;
            if caller.kind.sampled() && !unauthenticated_sample(c) {
                continue;
            }
            let ok = if c.content_type == "streamingLive" {
                mem.is_some() || anonymous_public(c)
            } else {
                mem.is_some_and(|m| expect_can_read_content(m, c.content_type, c.content_id))
            };
            rest.push(case(
                "GET /conversations/current/{churchId}/{contentType}/{contentId}",
                c.label,
                Method::GET,
                format!(
                    "/messaging/conversations/current/{C1}/{}/{}",
                    c.content_type, c.content_id
                ),
                None,
                allow_if(ok, Check::Id(cv.id.clone())),
            ));
        }
    }
    (joins, rest)
}

// ---------------------------------------------------------------------------------------------
// Judging
// ---------------------------------------------------------------------------------------------

fn describe_check(check: &Check) -> String {
    match check {
        Check::Status(s) => format!("{s}"),
        Check::Array => "200 with an array".into(),
        Check::Row { church, person } => match person {
            Some(p) => format!("200 with one row of church {church} and personId {p}"),
            None => format!("200 with one row of church {church}"),
        },
        Check::Connections { ip_visible: true } => "200, rows with ipAddress".into(),
        Check::Connections { ip_visible: false } => "200, rows with ipAddress null".into(),
        Check::Id(id) => format!("200 with id {id}"),
        Check::MessagePerson(p) => format!("200 with one message of personId {p}"),
        Check::Reaction(m) => format!("200 with messageId {m} and added"),
        Check::Callout(c) => format!("200 with churchId {C1} and conversationId {c}"),
        Check::Toggled => "200 with blocked true".into(),
        Check::Updated(id) => format!("200 with {id} renamed"),
        Check::Ids { must, may } if may.is_empty() => format!("200 with ids exactly {must:?}"),
        Check::Ids { must, may } => format!("200 with ids {must:?} and maybe {may:?}"),
        Check::OwnRows(p) => format!("200 with rows, all of personId {p}"),
        Check::Messages { person, n } => format!("200 with {n} messages of personId {person}"),
        Check::Rows(n) => format!("200 with {n} rows"),
        Check::Created(c) => format!("200 with one conversation of church {c}"),
        Check::Rooms(r) => format!("200 with rows of exactly the rooms {r:?}"),
        Check::Exact(v) => format!("200 {v}"),
    }
}

fn describe(e: &Expect) -> String {
    match e {
        Expect::Allow(check) => format!("allowed: {}", describe_check(check)),
        Expect::Deny(v) => v
            .iter()
            .map(|(s, b)| format!("{s} {b}"))
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

fn first(body: &Value) -> &Value {
    body.get(0).unwrap_or(&Value::Null)
}

fn verify(check: &Check, status: u16, body: &Value) -> bool {
    match check {
        Check::Status(s) => status == *s,
        Check::Array => status == 200 && body.is_array(),
        Check::Row { church, person } => {
            let row = first(body);
            status == 200
                && body.as_array().is_some_and(|a| a.len() == 1)
                && row["churchId"] == *church
                && person.as_ref().is_none_or(|p| row["personId"] == *p)
        }
        Check::Connections { ip_visible } => {
            status == 200
                && body.as_array().is_some_and(|rows| {
                    rows.iter().all(|r| r["ipAddress"].is_null() != *ip_visible)
                })
        }
        Check::Id(id) => status == 200 && body["id"] == *id,
        Check::MessagePerson(p) => {
            status == 200
                && body.as_array().is_some_and(|a| a.len() == 1)
                && first(body)["personId"] == *p
        }
        Check::Reaction(msg) => {
            status == 200 && body["messageId"] == *msg && body["added"].is_boolean()
        }
        Check::Callout(conv) => {
            status == 200 && body["churchId"] == C1 && body["conversationId"] == *conv
        }
        Check::Toggled => status == 200 && first(body)["blocked"] == true,
        Check::Updated(id) => {
            status == 200 && first(body)["id"] == *id && first(body)["title"] == "renamed"
        }
        Check::Ids { must, may } => {
            let Some(rows) = body.as_array().filter(|_| status == 200) else {
                return false;
            };
            let ids: Vec<&str> = rows
                .iter()
                .map(|r| r["id"].as_str().unwrap_or("?"))
                .collect();
            must.iter().all(|m| ids.contains(&m.as_str()))
                && ids.iter().all(|i| must.iter().chain(may).any(|m| m == i))
                && ids.len() == rows.len()
        }
        Check::OwnRows(p) => {
            status == 200
                && body.as_array().is_some_and(|rows| {
                    !rows.is_empty() && rows.iter().all(|r| r["personId"] == *p)
                })
        }
        Check::Exact(v) => status == 200 && body == v,
        Check::Messages { person, n } => {
            status == 200
                && body
                    .as_array()
                    .is_some_and(|a| a.len() == *n && a.iter().all(|m| m["personId"] == *person))
        }
        Check::Rows(n) => status == 200 && body.as_array().is_some_and(|a| a.len() == *n),
        Check::Created(church) => {
            status == 200
                && body.as_array().is_some_and(|a| a.len() == 1)
                && first(body)["churchId"] == *church
                && first(body)["id"].is_string()
        }
        Check::Rooms(expected) => {
            let Some(rows) = body.as_array().filter(|_| status == 200) else {
                return false;
            };
            let mut got: Vec<&str> = rows
                .iter()
                .map(|r| r["conversationId"].as_str().unwrap_or("?"))
                .collect();
            let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
            got.sort();
            want.sort();
            got == want
        }
    }
}

fn judge(expect: &Expect, status: u16, body: &Value) -> bool {
    match expect {
        Expect::Allow(check) => (200..300).contains(&status) && verify(check, status, body),
        Expect::Deny(v) => v.iter().any(|(s, b)| *s == status && b == body),
    }
}

async fn run_all(app: &TestApp, callers: &[Caller], cases: &[Case]) -> Vec<String> {
    let results = futures::stream::iter(cases.iter().map(|case| async move {
        let caller = &callers[case.caller];
        let mut req = app.client.request(case.method.clone(), app.url(&case.path));
        if let Some(b) = &case.body {
            req = req.json(b);
        }
        let (status, body) = app.send(req, caller.token.as_deref()).await;
        if judge(&case.expect, status, &body) {
            None
        } else {
            let mut shown = body.to_string();
            if shown.len() > 300 {
                shown.truncate(300);
                shown.push('…');
            }
            Some(format!(
                "{} / {} / {}: expected {} got {status} ({shown})",
                case.endpoint,
                caller.label,
                case.target,
                describe(&case.expect)
            ))
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    results.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn conversation_row(id: &str, c: &ConvSpec, now: i64) -> conversations::Model {
    conversations::Model {
        id: id.into(),
        church_id: C1.into(),
        content_type: Some(c.content_type.into()),
        content_id: Some(c.content_id.into()),
        title: Some(c.label.into()),
        date_created: now,
        group_id: matches!(c.content_type, "group" | "groupAnnouncement")
            .then(|| c.content_id.to_string()),
        visibility: c.visibility.map(str::to_string),
        first_post_id: None,
        last_post_id: None,
        post_count: 0,
        allow_anonymous_posts: c.allow_anonymous_posts,
    }
}

fn message_row(conv: &str, person: &str, time_sent: i64) -> messages::Model {
    messages::Model {
        id: messaging::ids::new_id(),
        church_id: C1.into(),
        conversation_id: conv.into(),
        person_id: Some(person.into()),
        display_name: Some(person.into()),
        time_sent,
        time_updated: None,
        message_type: "comment".into(),
        content: format!("by {person}"),
    }
}

async fn create_fixtures(app: &TestApp, callers: &[Caller]) -> Fixtures {
    let now = messaging::time::now_ms();
    let mut clock = now - 600_000;
    let mut tick = || {
        clock += 1;
        clock
    };
    let mut conv_rows = Vec::new();
    let mut msg_rows: Vec<messages::Model> = Vec::new();
    let mut pm_rows = Vec::new();
    let mut convs = Vec::new();
    let mut fresh = HashMap::new();
    // Copies (for the delete and update cases) get their own contentId, so that listings by
    // content see the fixture alone.
    let mut new_conv = |spec: &ConvSpec, copy: bool, rows: &mut Vec<conversations::Model>| {
        let id = messaging::ids::new_id();
        let mut row = conversation_row(&id, spec, now);
        if copy {
            row.content_id = Some(format!("{}-COPY", spec.content_id));
        }
        rows.push(row);
        if let Some((from, to)) = spec.pm {
            pm_rows.push(private_messages::Model {
                id: messaging::ids::new_id(),
                church_id: C1.into(),
                from_person_id: from.into(),
                to_person_id: to.into(),
                conversation_id: id.clone(),
                notify_person_id: None,
            });
        }
        id
    };
    for (vi, spec) in conv_specs().into_iter().enumerate() {
        let id = new_conv(&spec, false, &mut conv_rows);
        let other = message_row(&id, AUTHOR, tick());
        let other_msg = other.id.clone();
        let mut in_conv = vec![other];
        for (ci, caller) in callers.iter().enumerate() {
            let delete_other = message_row(&id, AUTHOR, tick());
            let mut f = Fresh {
                delete_other: delete_other.id.clone(),
                ..Default::default()
            };
            if ce_sample(&spec) {
                f.copies = Some((
                    new_conv(&spec, true, &mut conv_rows),
                    new_conv(&spec, true, &mut conv_rows),
                ));
            }
            in_conv.push(delete_other);
            if let Some(i) = caller
                .ident
                .as_ref()
                .filter(|i| i.church == C1 && !i.person.is_empty())
            {
                let (e, d) = (
                    message_row(&id, i.person, tick()),
                    message_row(&id, i.person, tick()),
                );
                f.own_edit = Some(e.id.clone());
                f.own_delete = Some(d.id.clone());
                in_conv.extend([e, d]);
            }
            fresh.insert((ci, vi), f);
        }
        // Consistent stats for the fixture conversation (§10.3 "Stats").
        let row = conv_rows.iter_mut().find(|r| r.id == id).unwrap();
        row.post_count = in_conv.len() as i32;
        row.first_post_id = Some(in_conv.first().unwrap().id.clone());
        row.last_post_id = Some(in_conv.last().unwrap().id.clone());
        msg_rows.extend(in_conv);
        convs.push(Conv {
            spec,
            id,
            other_msg,
        });
    }
    let plain = |spec: ConvSpec, rows: &mut Vec<conversations::Model>, msgs: &mut Vec<_>| {
        let id = messaging::ids::new_id();
        let mut row = conversation_row(&id, &spec, now);
        let m = message_row(&id, AUTHOR, now - 1000);
        row.post_count = 1;
        row.first_post_id = Some(m.id.clone());
        row.last_post_id = Some(m.id.clone());
        rows.push(row);
        msgs.push(m.clone());
        Conv {
            spec,
            id,
            other_msg: m.id,
        }
    };
    let blocked = vec![
        plain(
            conv(
                "streamingLive anonymous-public, IP blocked",
                "streamingLive",
                "SL-BLOCKED",
                Some("public"),
                true,
            ),
            &mut conv_rows,
            &mut msg_rows,
        ),
        plain(
            conv(
                "sermon, IP blocked",
                "sermon",
                "SERMON-BLK",
                Some("public"),
                true,
            ),
            &mut conv_rows,
            &mut msg_rows,
        ),
    ];
    let mixed = vec![
        plain(
            conv(
                "mixed open",
                "streamingLive",
                "SL-MIXED",
                Some("public"),
                true,
            ),
            &mut conv_rows,
            &mut msg_rows,
        ),
        plain(
            conv(
                "mixed closed",
                "streamingLive",
                "SL-MIXED",
                Some("public"),
                false,
            ),
            &mut conv_rows,
            &mut msg_rows,
        ),
    ];
    // The setName victims' rows, inserted directly with this node's id.
    let mut rows = Vec::new();
    for caller in callers {
        for (n, socket) in caller.victims.iter().enumerate() {
            let rooms = convs
                .iter()
                .filter(|cv| n == 0 || setname_b(&cv.spec))
                .map(|cv| (C1, cv.id.as_str()))
                .chain([(C1, "alerts")]);
            for (church, room) in rooms {
                rows.push(connections::Model {
                    id: messaging::ids::new_id(),
                    church_id: church.into(),
                    conversation_id: room.into(),
                    person_id: Some("P-VICTIM".into()),
                    display_name: Some("victim".into()),
                    time_joined: now,
                    socket_id: socket.clone(),
                    ip_address: Some("127.0.0.1".into()),
                    node_id: app.node_id.clone(),
                    anonymous_number: None,
                });
            }
        }
    }
    let db = &app.db;
    for chunk in rows.chunks(100) {
        connections::Entity::insert_many(chunk.iter().cloned().map(|m| m.into_active_model()))
            .exec_without_returning(db)
            .await
            .expect("insert connections");
    }
    for chunk in conv_rows.chunks(100) {
        conversations::Entity::insert_many(chunk.iter().cloned().map(|m| m.into_active_model()))
            .exec_without_returning(db)
            .await
            .expect("insert conversations");
    }
    for chunk in msg_rows.chunks(100) {
        messages::Entity::insert_many(chunk.iter().cloned().map(|m| m.into_active_model()))
            .exec_without_returning(db)
            .await
            .expect("insert messages");
    }
    for chunk in pm_rows.chunks(100) {
        private_messages::Entity::insert_many(chunk.iter().cloned().map(|m| m.into_active_model()))
            .exec_without_returning(db)
            .await
            .expect("insert privateMessages");
    }
    blocked_ips::Entity::insert_many(blocked.iter().map(|cv| {
        blocked_ips::Model {
            id: messaging::ids::new_id(),
            church_id: C1.into(),
            conversation_id: cv.id.clone(),
            service_id: None,
            ip_address: "127.0.0.1".into(),
        }
        .into_active_model()
    }))
    .exec_without_returning(db)
    .await
    .expect("insert blockedIps");
    Fixtures {
        convs,
        fresh,
        blocked,
        mixed,
    }
}

async fn make_callers(app: &TestApp) -> Vec<Caller> {
    let forged = TokenKeys::new("not-the-server-secret");
    let mut callers = Vec::new();
    for (kind, label, id) in caller_specs() {
        let now_s = messaging::time::now_ms() / 1000;
        let unauthenticated = claims(&ident(
            C1,
            "P-UNAUTH",
            &["Content__Edit", "Chat__Host", "People__Edit"],
            &[G1],
            &[G1],
        ));
        let claims = match (&kind, &id) {
            (Kind::Anonymous, _) => None,
            (Kind::BadSignature, _) => Some((&forged, unauthenticated.clone())),
            (Kind::Expired, _) => Some((
                &app.keys,
                Claims {
                    exp: Some(now_s - 2),
                    ..unauthenticated.clone()
                },
            )),
            (Kind::NotYetValid, _) => Some((
                &app.keys,
                Claims {
                    nbf: Some(now_s + 600),
                    ..unauthenticated.clone()
                },
            )),
            (Kind::NoUserId, _) => Some((
                &app.keys,
                Claims {
                    id: String::new(),
                    ..unauthenticated.clone()
                },
            )),
            (Kind::NoChurch, _) => Some((
                &app.keys,
                Claims {
                    church_id: String::new(),
                    ..unauthenticated.clone()
                },
            )),
            (Kind::WrongAlgorithm | Kind::AlgNone, _) => None,
            (_, Some(i)) => Some((&app.keys, claims(i))),
            (_, None) => unreachable!("every other kind has claims"),
        };
        let token = match kind {
            Kind::WrongAlgorithm => Some(
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
                    &unauthenticated,
                    &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .expect("HS384"),
            ),
            Kind::AlgNone => {
                let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
                Some(format!(
                    "{}.{}.",
                    b64(br#"{"alg":"none","typ":"JWT"}"#),
                    b64(&serde_json::to_vec(&unauthenticated).expect("claims"))
                ))
            }
            _ => claims.map(|(keys, c)| keys.mint(&c).expect("mint")),
        };
        // Live sockets; background tasks drain their frames.
        let mut sockets = Vec::new();
        for _ in 0..3 {
            let mut ws = app.ws_with_id().await;
            sockets.push(ws.id.clone());
            tokio::spawn(async move { while let Some(Ok(_)) = ws.stream.next().await {} });
        }
        callers.push(Caller {
            kind,
            label,
            token,
            ident: id,
            socket: sockets[0].clone(),
            victims: [sockets[1].clone(), sockets[2].clone()],
        });
    }
    callers
}

server_test!(
    access_matrix_follows_the_contract,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let started = Instant::now();
        let callers = make_callers(&app).await;
        let fixtures = create_fixtures(&app, &callers).await;
        let (joins, rest) = build_cases(&callers, &fixtures);
        let setup = started.elapsed();
        // Joins first, so that the connection lists have rows to show (or hide) ipAddress on.
        let mut mismatches = run_all(&app, &callers, &joins).await;
        mismatches.extend(run_all(&app, &callers, &rest).await);
        let total = joins.len() + rest.len();
        println!(
            "access matrix on {}: {total} cases checked ({} callers × {} conversation types), \
         {} mismatches; setup {setup:?}, total {:?}",
            app.db_url.split(':').next().unwrap_or(""),
            callers.len(),
            fixtures.convs.len(),
            mismatches.len(),
            started.elapsed()
        );
        mismatches.sort();
        assert!(
            mismatches.is_empty(),
            "{} of {total} access cases differ from the contract:\n  {}",
            mismatches.len(),
            mismatches.join("\n  ")
        );
    }
);
