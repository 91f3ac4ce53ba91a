//! The browser client and demo page, embedded at build time (see `build.rs`), and the
//! development-mode token endpoint the demo uses.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{EdgeState, json_response};
use crate::auth::Claims;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/client_assets.rs"));
}

fn asset(path: &str) -> Option<Response> {
    let (_, content_type, bytes) = assets::ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut resp = (StatusCode::OK, *bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Some(resp)
}

fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| super::input::percent_decode(&v.replace('+', " ")).unwrap_or_default())
    })
}

fn list(query: Option<&str>, name: &str) -> Vec<String> {
    query_value(query, name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Answers GETs for `/`, `/demo`, `/client/…` and, in dev mode, `/demo/token`; `None`
/// for everything else.
pub fn serve(state: &EdgeState, path: &str, query: Option<&str>) -> Option<Response> {
    match path {
        "/" | "/demo" | "/demo/" => asset("/client/demo/index.html"),
        "/demo/token" if state.dev => {
            let person = query_value(query, "personId")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(crate::ids::new_id);
            let claims = Claims {
                id: format!("demo-{person}"),
                church_id: query_value(query, "churchId")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "DEMO".into()),
                person_id: person,
                first_name: query_value(query, "firstName").unwrap_or_default(),
                last_name: query_value(query, "lastName").unwrap_or_default(),
                permissions: list(query, "permissions"),
                group_ids: list(query, "groupIds"),
                leader_group_ids: list(query, "leaderGroupIds"),
                exp: Some(crate::time::now_ms() / 1000 + 8 * 3600),
                ..Default::default()
            };
            Some(match state.keys.mint(&claims) {
                Ok(token) => {
                    json_response(StatusCode::OK, &json!({"token": token, "claims": claims}))
                }
                Err(_) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": "Internal server error"}),
                ),
            })
        }
        p if p.starts_with("/client/") => asset(p),
        _ => None,
    }
}
