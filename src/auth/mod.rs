//! Tokens (§8.1), permissions (§8.2) and the caller of a request. The access rules of §8.3
//! are in `access`.
pub mod access;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of §8.1. Unknown claims are ignored; every claim is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Claims {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub first_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub church_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub person_id: String,
    pub permissions: Vec<String>,
    pub group_ids: Vec<String>,
    pub leader_group_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

impl Claims {
    /// `"{firstName} {lastName}"`, trimmed: the default display name.
    pub fn display_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
            .trim()
            .to_string()
    }

    /// §8.2: `T__A`, or `P_T__A` with a non-empty prefix `P` without `_`.
    pub fn has_permission(&self, perm: Permission) -> bool {
        let wanted = perm.as_str();
        self.permissions.iter().any(|p| {
            p == wanted
                || p.strip_suffix(wanted)
                    .and_then(|prefix| prefix.strip_suffix('_'))
                    .is_some_and(|api| !api.is_empty() && !api.contains('_'))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ContentEdit,
    ChatHost,
    PeopleEdit,
    ViewConfidentialNotes,
    MessagingAdmin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ContentEdit => "Content__Edit",
            Permission::ChatHost => "Chat__Host",
            Permission::PeopleEdit => "People__Edit",
            Permission::ViewConfidentialNotes => "People__View Confidential Notes",
            Permission::MessagingAdmin => "Messaging__Admin",
        }
    }
}

/// Who is calling. REST callers are `Anonymous` or `User`; network gRPC callers are trusted
/// backends and act as `System` after the `GRPC_TOKEN` check.
#[derive(Debug, Clone)]
pub enum Caller {
    System,
    Anonymous,
    User(Arc<Claims>),
}

impl Caller {
    pub fn claims(&self) -> Option<&Claims> {
        match self {
            Caller::User(c) => Some(c),
            _ => None,
        }
    }

    /// The caller's claims when they are a member of `church_id`.
    pub fn member_of(&self, church_id: &str) -> Option<&Claims> {
        self.claims().filter(|c| c.church_id == church_id)
    }

    pub fn is_system(&self) -> bool {
        matches!(self, Caller::System)
    }
}

/// Verifies and mints HS256 tokens.
#[derive(Clone)]
pub struct TokenKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        // No claim is required; `exp` is enforced only when present.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_aud = false;
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// `Some` only for a valid token that is *authenticated*: good signature, `id` and
    /// `churchId` non-empty.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let c = data.claims;
        (!c.id.is_empty() && !c.church_id.is_empty()).then_some(c)
    }

    pub fn mint(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// The caller behind an `Authorization` header value. Anything but a valid bearer
    /// token is anonymous; token-required endpoints turn that into 401.
    pub fn caller_from_header(&self, header: Option<&str>) -> Caller {
        header
            .and_then(|h| {
                let (scheme, token) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .and_then(|t| self.verify(t))
            .map(|c| Caller::User(Arc::new(c)))
            .unwrap_or(Caller::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_perms(p: &[&str]) -> Claims {
        Claims {
            permissions: p.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn permission_strings() {
        assert!(with_perms(&["Content__Edit"]).has_permission(Permission::ContentEdit));
        assert!(with_perms(&["B1Api_Content__Edit"]).has_permission(Permission::ContentEdit));
        assert!(!with_perms(&["Content_abc_Edit"]).has_permission(Permission::ContentEdit));
        assert!(!with_perms(&["_Content__Edit"]).has_permission(Permission::ContentEdit));
        assert!(!with_perms(&["a_b_Content__Edit"]).has_permission(Permission::ContentEdit));
        assert!(
            with_perms(&["People__View Confidential Notes"])
                .has_permission(Permission::ViewConfidentialNotes)
        );
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let keys = TokenKeys::new("s3cret");
        let mut c = Claims {
            id: "U1".into(),
            church_id: "C1".into(),
            person_id: "P1".into(),
            ..Default::default()
        };
        let t = keys.mint(&c).unwrap();
        assert_eq!(keys.verify(&t).unwrap().person_id, "P1");
        assert!(TokenKeys::new("other").verify(&t).is_none());
        c.exp = Some(crate::time::now_ms() / 1000 - 1);
        assert!(keys.verify(&keys.mint(&c).unwrap()).is_none());
        c.exp = None;
        c.church_id.clear();
        assert!(keys.verify(&keys.mint(&c).unwrap()).is_none());
    }
}
