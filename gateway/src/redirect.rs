//! The plain-HTTP listener when HTTPS is on: every request is sent to HTTPS with a 308, which
//! (unlike 301) keeps the method and body of a POST.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct RedirectToHttps {
    /// Port of the HTTPS listener; omitted from the Location when it is 443.
    pub https_port: u16,
}

fn plain(status: u16, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", body.len())
        .body(body.into_bytes())
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for RedirectToHttps {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        crate::header_deadline::head_parsed(session);
        let req = session.req_header();
        let Some(host) = req.headers.get("host").and_then(|h| h.to_str().ok()) else {
            return plain(400, "400 Bad Request: a Host header is required\n".into());
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or(v6)),
            None => host
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(host)
                .to_string(),
        };
        if name.is_empty() || name.contains(['/', '\\', '@', ' ']) {
            return plain(400, "400 Bad Request: invalid Host header\n".into());
        }
        let port = match self.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let location = format!("https://{name}{port}{target}");
        let body = format!("308 Permanent Redirect: {location}\n");
        Response::builder()
            .status(308)
            .header("location", location)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", body.len())
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}
