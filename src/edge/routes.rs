//! The REST route table and its matcher. Literal segments match case-insensitively, a
//! trailing `/` is optional, parameters are percent-decoded and keep their case, and a
//! literal segment wins over a parameter in the same position (§9).

/// Every REST endpoint the edge serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    ConnectionsList,
    ConnectionsJoin,
    ConnectionsLeave,
    ConnectionsSetName,
}

pub struct Route {
    pub method: &'static str,
    /// Path segments; `{}` is a parameter.
    pub path: &'static str,
    pub endpoint: Endpoint,
}

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/health",
        endpoint: Endpoint::Health,
    },
    Route {
        method: "GET",
        path: "/ready",
        endpoint: Endpoint::Ready,
    },
    Route {
        method: "GET",
        path: "/metrics",
        endpoint: Endpoint::Metrics,
    },
    Route {
        method: "GET",
        path: "/messaging/connections/{}/{}",
        endpoint: Endpoint::ConnectionsList,
    },
    Route {
        method: "POST",
        path: "/messaging/connections",
        endpoint: Endpoint::ConnectionsJoin,
    },
    Route {
        method: "DELETE",
        path: "/messaging/connections/{}/{}/{}",
        endpoint: Endpoint::ConnectionsLeave,
    },
    Route {
        method: "POST",
        path: "/messaging/connections/setName",
        endpoint: Endpoint::ConnectionsSetName,
    },
];

/// A matched route: the endpoint, its path pattern (a metrics label) and its parameters.
pub struct Matched {
    pub endpoint: Endpoint,
    pub pattern: &'static str,
    pub params: Vec<String>,
}

fn segments(path: &str) -> Vec<&str> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    trimmed.split('/').skip(1).collect()
}

/// Finds the route for `method` and a raw (still percent-encoded) `path`.
pub fn find(method: &str, path: &str) -> Option<Matched> {
    let segs = segments(path);
    let mut best: Option<(Vec<bool>, &Route)> = None;
    for route in ROUTES.iter().filter(|r| r.method == method) {
        let pattern = segments(route.path);
        if pattern.len() != segs.len() {
            continue;
        }
        let mut shape = Vec::with_capacity(pattern.len());
        let ok = pattern.iter().zip(&segs).all(|(p, s)| {
            let is_param = *p == "{}";
            shape.push(is_param);
            is_param && !s.is_empty() || p.eq_ignore_ascii_case(s)
        });
        // `false` (literal) sorts before `true` (parameter): the most literal match wins.
        if ok && best.as_ref().is_none_or(|(b, _)| shape < *b) {
            best = Some((shape, route));
        }
    }
    let (shape, route) = best?;
    let params = segs
        .iter()
        .zip(shape)
        .filter(|(_, is_param)| *is_param)
        .map(|(s, _)| percent_decode(s))
        .collect::<Option<Vec<_>>>()?;
    Some(Matched {
        endpoint: route.endpoint,
        pattern: route.path,
        params,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_segments_ignore_case_and_trailing_slash() {
        let m = find("POST", "/MESSAGING/Connections/SETNAME/").unwrap();
        assert_eq!(m.endpoint, Endpoint::ConnectionsSetName);
        let m = find("GET", "/messaging/connections/Ch%20urch/Room1").unwrap();
        assert_eq!(m.params, ["Ch urch", "Room1"]);
        assert!(find("PUT", "/messaging/connections").is_none());
        assert!(find("GET", "/messaging/connections//x").is_none());
    }
}
