//! Routing: the first rule whose path prefix (and host, if it names one) matches wins.
//!
//! Matching runs on the path with dot segments resolved, so `/static/../socket.io/` is routed
//! where it would end up, not where it starts; a path that climbs above `/` is refused.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::compression::Settings;
use crate::settings::{self, Endpoint};
use crate::static_files::{StaticFiles, StaticOptions};
use crate::upstream::Pool;

/// Where a request goes.
pub enum Target {
    /// Static files first (when configured), then the upstream pool (when configured).
    App {
        files: Option<Arc<StaticFiles>>,
        pool: Option<Arc<Pool>>,
        websocket: bool,
        /// On-the-fly compression of what the files and the pool answer; `None` when off.
        compression: Option<Arc<Settings>>,
        /// Hold the whole request body before asking the app.
        request_buffering: bool,
        /// Read the app's answer ahead of a slow client.
        response_buffering: bool,
    },
    /// An in-process realtime service, reached through the seam.
    Realtime(Arc<dyn realtime::seam::Service>, settings::RealtimeKind),
}

pub struct Route {
    /// Its place in the configuration (`routes[index]`), for the metrics.
    pub index: usize,
    /// `routes[i]`, for log lines (shared, so a request takes it without allocating).
    pub name: Arc<str>,
    prefix: String,
    host: Option<String>,
    pub target: Target,
}

pub struct Router {
    routes: Vec<Route>,
    pub pools: BTreeMap<String, Arc<Pool>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("routes[{index}].static: {source}")]
    Static {
        index: usize,
        source: crate::static_files::StaticError,
    },
}

impl Router {
    /// The routes of `settings` over `pools` (one per upstream, see [`Pool::all`]).
    pub fn build(
        settings: &settings::Settings,
        pools: BTreeMap<String, Arc<Pool>>,
        realtime: &dyn Fn(&Endpoint, &str) -> Arc<dyn realtime::seam::Service>,
    ) -> Result<Router, BuildError> {
        let compression = settings.compression.clone().map(Arc::new);
        let mut routes = Vec::new();
        for (index, r) in settings.routes.iter().enumerate() {
            let target = match &r.target {
                settings::Target::Realtime(endpoint) => {
                    Target::Realtime(realtime(endpoint, &r.path), endpoint.kind())
                }
                settings::Target::App(app) => Target::App {
                    files: match &app.files {
                        Some(s) => Some(Arc::new(
                            StaticFiles::new(StaticOptions {
                                root: s.root.clone(),
                                index: s.index.clone(),
                                cache_control: s.cache_control.clone(),
                                precompressed: s.precompressed,
                            })
                            .map_err(|source| BuildError::Static { index, source })?,
                        )),
                        None => None,
                    },
                    pool: app.upstream.as_ref().and_then(|u| pools.get(u).cloned()),
                    websocket: app.websocket,
                    compression: compression.clone().filter(|_| app.compression),
                    request_buffering: app.request_buffering,
                    response_buffering: app.response_buffering,
                },
            };
            routes.push(Route {
                index,
                name: Arc::from(format!("routes[{index}]")),
                prefix: r.path.clone(),
                host: r.host.clone(),
                target,
            });
        }
        Ok(Router { routes, pools })
    }

    /// `host` without port, lower case; `path` already normalised by [`normalize`].
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.host.as_deref().is_none_or(|h| Some(h) == host) && prefix_matches(&r.prefix, path)
        })
    }
}

/// `/ws` matches `/ws` and `/ws/...` but not `/wsx`; `/static/` matches everything under it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// Resolve `.` and `..` segments (also percent-encoded ones) for routing. `None` when the path
/// climbs above the root or does not start with `/`.
///
/// Runs on every request: a path with nothing to resolve (the usual case) is returned as it
/// is, without a copy.
pub fn normalize(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    let encoded_dot = path
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%2e"));
    if !path.contains("/.") && !encoded_dot && !path.contains("//") {
        return Some(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        match s.as_str() {
            "" if i != last => {}
            "." => trailing = i == last,
            ".." => {
                out.pop()?;
                trailing = i == last;
            }
            _ => {
                out.push(seg);
                trailing = false;
            }
        }
    }
    let mut s = format!("/{}", out.join("/"));
    if trailing && !s.ends_with('/') {
        s.push('/');
    }
    Some(Cow::Owned(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_respect_segments() {
        assert!(prefix_matches("/ws", "/ws"));
        assert!(prefix_matches("/ws", "/ws/x"));
        assert!(!prefix_matches("/ws", "/wsx"));
        assert!(prefix_matches("/socket.io/", "/socket.io/"));
        assert!(!prefix_matches("/socket.io/", "/socket.io"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        assert_eq!(normalize("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(normalize("/a/../b").as_deref(), Some("/b"));
        assert_eq!(normalize("/a/%2E%2e/b").as_deref(), Some("/b"));
        assert_eq!(normalize("/a/./b/.").as_deref(), Some("/a/b/"));
        assert_eq!(normalize("//a//b").as_deref(), Some("/a/b"));
        assert_eq!(normalize("/a/..").as_deref(), Some("/"));
        assert_eq!(normalize("/.."), None);
        assert_eq!(normalize("/a/../../etc/passwd"), None);
        assert_eq!(normalize("a"), None);
    }
}
