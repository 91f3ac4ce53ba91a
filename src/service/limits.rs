//! Validation limits of the contract, declared once. The doors (REST bodies, gRPC
//! requests) and the OpenAPI document read them from here.

/// Ids: churchId, personId, conversationId, groupId, serviceId, message and row ids.
pub const MAX_ID: usize = 64;
/// Room ids (`conversationId` of a join): a conversation id, `alerts` or `content-{type}-{id}`.
pub const MAX_ROOM_ID: usize = 64;
pub const MAX_SOCKET_ID: usize = 45;
/// A position's epoch (§5.6): ours are far shorter; this bounds what a client may echo.
pub const MAX_EPOCH: usize = 64;
/// A position's seq: JSON numbers stay exact up to 2^53 - 1 in every browser.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
pub const MAX_DISPLAY_NAME: usize = 45;
/// Short labels: contentType, messageType, visibility.
pub const MAX_LABEL: usize = 45;
pub const MAX_CONTENT_ID: usize = 255;
pub const MAX_TITLE: usize = 255;
/// An IPv6 address in text, the longest form.
pub const MAX_IP: usize = 45;
pub const MAX_LINK: usize = 100;
/// Timestamps given as text (RFC 3339).
pub const MAX_TIMESTAMP: usize = 64;
/// Message and notification content, in bytes (a MySQL `TEXT`).
pub const MAX_CONTENT_BYTES: usize = 65_535;
pub const MAX_EMOJI: usize = 16;
/// Items in one batch body, ids in one query.
pub const MAX_BATCH: usize = 100;
/// Request bodies over this many bytes get 413 (§9).
pub const MAX_BODY: usize = 1 << 20;
/// `page` of a paged listing (`GET /conversations/messages/…`): 1 to this.
pub const MAX_PAGE: u64 = 1_000_000;
/// `limit` of a paged listing: messages per page, at most this; 20 when absent.
pub const MAX_PAGE_SIZE: u64 = 100;
pub const DEFAULT_PAGE_SIZE: u64 = 20;
