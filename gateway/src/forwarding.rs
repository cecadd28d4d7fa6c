//! What the app learns about the client: `X-Forwarded-*`, `X-Real-IP`, and no hop-by-hop
//! headers. Incoming forwarding headers are believed only from configured proxies, so a
//! client cannot tell the app it is someone else.

use std::net::IpAddr;

use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::Cidr;

/// RFC 9110 §7.6.1 connection-specific headers, plus the non-standard ones nginx also drops.
/// `Transfer-Encoding` is left to pingora, which reframes bodies itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

pub struct Client<'a> {
    pub ip: Option<IpAddr>,
    pub tls: bool,
    pub trusted: &'a [Cidr],
}

impl Client<'_> {
    fn peer_trusted(&self) -> bool {
        self.ip
            .is_some_and(|ip| self.trusted.iter().any(|c| c.contains(ip)))
    }
}

/// The client's address for per-client limits of the realtime services: the peer, or, when
/// the peer is a trusted proxy, the rightmost `X-Forwarded-For` address that is not one of our
/// trusted proxies (nginx `real_ip_recursive on`, the same address `X-Real-IP` carries to the
/// app). An entry that is not an address stops the walk at the proxy, so a malformed header
/// counts against the proxy rather than against nobody.
pub fn real_client(client: &Client<'_>, headers: &http::HeaderMap) -> Option<IpAddr> {
    if !client.peer_trusted() {
        return client.ip;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for entry in forwarded.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if client.trusted.iter().any(|c| c.contains(ip)) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    client.ip
}

/// Names listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
fn connection_listed(value: Option<&http::HeaderValue>) -> Vec<String> {
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Rewrite a request for the app. With `keep_upgrade`, `Connection: upgrade` and `Upgrade`
/// survive (the WebSocket tunnel needs them).
pub fn request(req: &mut RequestHeader, client: &Client<'_>, keep_upgrade: bool) {
    let listed = connection_listed(req.headers.get("connection"));
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(listed) {
        if keep_upgrade && (name == "upgrade" || name == "connection") {
            continue;
        }
        req.remove_header(name.as_str());
    }
    if keep_upgrade {
        let _ = req.insert_header("connection", "upgrade");
    }

    let trusted = client.peer_trusted();
    let peer = client.ip.map(|ip| ip.to_string()).unwrap_or_default();
    let incoming_xff: Vec<String> = if trusted {
        req.headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    // The real client: the rightmost address that is not one of our trusted proxies
    // (nginx `real_ip_recursive on`).
    let real_ip = incoming_xff
        .iter()
        .rev()
        .find(|a| {
            a.parse::<IpAddr>()
                .map(|ip| !client.trusted.iter().any(|c| c.contains(ip)))
                .unwrap_or(true)
        })
        .cloned()
        .unwrap_or_else(|| peer.clone());
    let mut xff = incoming_xff;
    xff.push(peer);
    let _ = req.insert_header("x-forwarded-for", xff.join(", "));
    let _ = req.insert_header("x-real-ip", real_ip);

    let keep = |req: &RequestHeader, name: &str| trusted && req.headers.get(name).is_some();
    if !keep(req, "x-forwarded-proto") {
        let _ = req.insert_header(
            "x-forwarded-proto",
            if client.tls { "https" } else { "http" },
        );
    }
    if !keep(req, "x-forwarded-host") {
        match req
            .headers
            .get("host")
            .cloned()
            .or_else(|| req.uri.authority().and_then(|a| a.as_str().parse().ok()))
        {
            Some(host) => {
                let _ = req.insert_header("x-forwarded-host", host);
            }
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
    }
}

/// nginx's instructions from the app to the proxy (`proxy_hide_header` defaults): never for
/// the client. `X-Accel-Redirect` itself is acted upon before this (see `accel`).
const PROXY_CONTROL: &[&str] = &[
    "x-accel-buffering",
    "x-accel-charset",
    "x-accel-expires",
    "x-accel-limit-rate",
];

/// Drop hop-by-hop headers and nginx's proxy controls from the app's answer (except on a
/// 101, where the hop-by-hop headers are the point).
pub fn response(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let listed = connection_listed(resp.headers.get("connection"));
    for name in HOP_BY_HOP
        .iter()
        .chain(PROXY_CONTROL)
        .map(|s| s.to_string())
        .chain(listed)
    {
        resp.remove_header(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, k: &str) -> Option<&'a str> {
        r.headers.get(k).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn realtime_limits_count_the_forwarded_client_only_behind_a_trusted_proxy() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "198.51.100.7, 10.0.0.9".parse().unwrap());
        let from = |ip: &str| Client {
            ip: Some(ip.parse().unwrap()),
            tls: false,
            trusted: &trusted,
        };
        assert_eq!(
            real_client(&from("10.0.0.1"), &h),
            Some("198.51.100.7".parse().unwrap())
        );
        // Anyone else's header is ignored.
        assert_eq!(
            real_client(&from("203.0.113.1"), &h),
            Some("203.0.113.1".parse().unwrap())
        );
        // Junk stops at the proxy.
        let mut junk = http::HeaderMap::new();
        junk.append("x-forwarded-for", "198.51.100.7, nonsense".parse().unwrap());
        assert_eq!(
            real_client(&from("10.0.0.1"), &junk),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            real_client(&from("10.0.0.1"), &http::HeaderMap::new()),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn untrusted_client_cannot_forge_its_address() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut r = req(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
        ]);
        let c = Client {
            ip: Some("203.0.113.9".parse().unwrap()),
            tls: true,
            trusted: &trusted,
        };
        request(&mut r, &c, false);
        assert_eq!(get(&r, "x-forwarded-for"), Some("203.0.113.9"));
        assert_eq!(get(&r, "x-real-ip"), Some("203.0.113.9"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&r, "x-forwarded-host"), Some("example.com"));
        assert_eq!(get(&r, "connection"), None);
        assert_eq!(get(&r, "x-secret"), None);
        assert_eq!(get(&r, "host"), Some("example.com"));
    }

    #[test]
    fn trusted_proxy_chain_is_appended_and_real_ip_found() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut r = req(&[("host", "h"), ("x-forwarded-for", "198.51.100.7, 10.0.0.3")]);
        let c = Client {
            ip: Some("10.0.0.2".parse().unwrap()),
            tls: false,
            trusted: &trusted,
        };
        request(&mut r, &c, false);
        assert_eq!(
            get(&r, "x-forwarded-for"),
            Some("198.51.100.7, 10.0.0.3, 10.0.0.2")
        );
        assert_eq!(get(&r, "x-real-ip"), Some("198.51.100.7"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("http"));
    }

    #[test]
    fn upgrade_headers_survive_for_the_tunnel() {
        let mut r = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let c = Client {
            ip: None,
            tls: true,
            trusted: &[],
        };
        request(&mut r, &c, true);
        assert_eq!(get(&r, "upgrade"), Some("websocket"));
        assert_eq!(get(&r, "connection"), Some("upgrade"));
    }
}
