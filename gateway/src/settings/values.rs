//! The typed values the settings builder turns strings into, each parsed here and nowhere
//! else: server addresses, CIDR blocks, content codings, media type patterns, server names.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with the final NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Where a server listens: TCP, or a Unix socket (php-fpm, or Puma's `bind unix://...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Why a server address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    /// `unix:` with nothing after it.
    NoSocketPath,
    /// The socket's path (after resolving) is this many bytes, over [`MAX_UNIX_PATH`].
    SocketPathTooLong(usize),
    /// Neither `host:port` (an IP address and a port) nor `unix:`.
    NotAnAddress,
}

impl Addr {
    /// `host:port`, `unix:/path`, or the URL form Puma prints, `unix:///path` (where
    /// `unix://tmp/app.sock` is relative, as Puma reads it). A relative socket path is resolved
    /// against `base` (the configuration file's folder) and then the working directory, so the
    /// server is reached whatever directory the gateway runs in.
    pub fn parse(s: &str, base: &Path) -> Result<Addr, AddrError> {
        let Some(rest) = s.strip_prefix("unix:") else {
            return s
                .parse::<SocketAddr>()
                .map(Addr::Tcp)
                .map_err(|_| AddrError::NotAnAddress);
        };
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(AddrError::NoSocketPath);
        }
        let mut path = PathBuf::from(path);
        if path.is_relative() {
            path = base.join(path);
            if path.is_relative() {
                if let Ok(cwd) = std::env::current_dir() {
                    path = cwd.join(path);
                }
            }
        }
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH {
            return Err(AddrError::SocketPathTooLong(len));
        }
        Ok(Addr::Unix(path))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A parsed CIDR block (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A content coding we can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` / `Accept-Encoding` token, also the name used in the config.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    pub fn from_token(s: &str) -> Option<Coding> {
        match s {
            "br" => Some(Coding::Brotli),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// A media type the configuration allows: `type/subtype` or `type/*`, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    main: String,
    /// `None` for `type/*`.
    sub: Option<String>,
}

impl TypePattern {
    /// Parses one entry of `compression.types`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<TypePattern, String> {
        let s = s.trim().to_ascii_lowercase();
        let Some((main, sub)) = s.split_once('/') else {
            return Err(format!(
                "{s:?} is not a media type like text/html or text/*"
            ));
        };
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !token(main) || !(sub == "*" || token(sub)) {
            return Err(format!(
                "{s:?} is not a media type like text/html or text/* (no parameters, no */*)"
            ));
        }
        if main == "text" && sub == "event-stream" {
            return Err(
                "text/event-stream is never compressed: each event must reach the client as it is sent"
                    .into(),
            );
        }
        Ok(TypePattern {
            main: main.to_string(),
            sub: (sub != "*").then(|| sub.to_string()),
        })
    }

    /// `main` and `sub` in lower case.
    pub fn matches(&self, main: &str, sub: &str) -> bool {
        self.main == main && self.sub.as_deref().is_none_or(|s| s == sub)
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.main, self.sub.as_deref().unwrap_or("*"))
    }
}

/// A name a certificate answers for, lower case, as SNI carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// `example.com`
    Exact(String),
    /// `*.example.com`, kept as its parent `example.com`: it matches one label more.
    Wildcard(String),
}

impl ServerName {
    /// A DNS name (letters, digits, `-`, `_`; IDNs in their `xn--` form, as SNI carries them),
    /// optionally a wildcard as the whole first label (`*.example.com`), as nginx's
    /// `server_name` and rustls' SNI matching take them.
    pub fn parse(name: &str) -> Option<ServerName> {
        let rest = name.strip_prefix("*.").unwrap_or(name);
        let dns = !rest.is_empty()
            && name.len() <= 253
            && rest.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !dns {
            return None;
        }
        let lower = rest.to_ascii_lowercase();
        Some(if name.starts_with("*.") {
            ServerName::Wildcard(lower)
        } else {
            ServerName::Exact(lower)
        })
    }
}

/// A file name with no directory in it: what `index` entries must be.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_tcp_and_both_unix_spellings() {
        let base = Path::new("/etc/gw");
        assert_eq!(
            Addr::parse("127.0.0.1:3000", base),
            Ok(Addr::Tcp("127.0.0.1:3000".parse().unwrap()))
        );
        assert_eq!(
            Addr::parse("[::1]:3000", base),
            Ok(Addr::Tcp("[::1]:3000".parse().unwrap()))
        );
        let puma = Ok(Addr::Unix(PathBuf::from("/run/app/puma.sock")));
        assert_eq!(Addr::parse("unix:/run/app/puma.sock", base), puma);
        assert_eq!(Addr::parse("unix:///run/app/puma.sock", base), puma);
        assert_eq!(
            Addr::parse("unix:relative.sock", base),
            Ok(Addr::Unix(PathBuf::from("/etc/gw/relative.sock")))
        );
        assert_eq!(
            Addr::parse("unix://tmp/puma.sock", base),
            Ok(Addr::Unix(PathBuf::from("/etc/gw/tmp/puma.sock")))
        );
        assert_eq!(Addr::parse("unix:", base), Err(AddrError::NoSocketPath));
        assert_eq!(Addr::parse("unix://", base), Err(AddrError::NoSocketPath));
        assert_eq!(Addr::parse("localhost", base), Err(AddrError::NotAnAddress));
        assert_eq!(
            Addr::parse("localhost:3000", base),
            Err(AddrError::NotAnAddress)
        );
        assert_eq!(Addr::parse("127.0.0.1", base), Err(AddrError::NotAnAddress));
        let long = format!("unix:/{}", "x".repeat(120));
        assert_eq!(
            Addr::parse(&long, base),
            Err(AddrError::SocketPathTooLong(121))
        );
        assert_eq!(
            Addr::parse("unix:///run/app/puma.sock", base)
                .map(|a| a.to_string())
                .as_deref(),
            Ok("unix:/run/app/puma.sock")
        );
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        assert!(Cidr::parse("10.0.0.0/x").is_none());
        assert!(Cidr::parse("example.com").is_none());
        assert_eq!(Cidr::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
    }

    #[test]
    fn server_names_are_dns_names_and_odd_ones_are_refused_not_panics() {
        for ok in [
            "example.com",
            "*.example.com",
            "localhost",
            "xn--bcher-kva.example",
            "a_b.example",
        ] {
            assert!(ServerName::parse(ok).is_some(), "{ok}");
        }
        assert_eq!(
            ServerName::parse("*.Example.COM"),
            Some(ServerName::Wildcard("example.com".into()))
        );
        assert_eq!(
            ServerName::parse("WWW.example.com"),
            Some(ServerName::Exact("www.example.com".into()))
        );
        // "é..." starts with a two-byte character: slicing off one byte used to panic.
        for bad in [
            "",
            "é.example",
            "a b",
            "*",
            "*.",
            "a.*.b",
            "**.x",
            "a..b",
            ".a",
            "x*.a",
        ] {
            assert!(ServerName::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn type_patterns_are_checked() {
        assert!(TypePattern::parse("text/*").is_ok());
        let svg = TypePattern::parse("Image/SVG+XML").expect("a type");
        assert!(svg.matches("image", "svg+xml"));
        assert_eq!(svg.to_string(), "image/svg+xml");
        for bad in [
            "*/*",
            "*",
            "text",
            "text/",
            "/html",
            "text/html; charset=utf-8",
        ] {
            assert!(TypePattern::parse(bad).is_err(), "{bad}");
        }
        let e = TypePattern::parse("text/event-stream").unwrap_err();
        assert!(e.contains("never compressed"), "{e}");
    }

    #[test]
    fn plain_file_names() {
        assert!(is_plain_file_name("index.html"));
        for bad in ["", ".", "..", "../secret", "a/b", "a\\b", "a\0b"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }
}
