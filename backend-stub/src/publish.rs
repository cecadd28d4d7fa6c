//! A minimal HTTP/1.1 client for one job: POST a JSON body to the gateway's
//! publish API (`http://127.0.0.1:9090/publish`), as a Rails or Laravel app
//! would with its HTTP library. Plain `http://` only (the admin listener is
//! on loopback), one request per connection (`Connection: close`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from the publish API.
const MAX_ANSWER: usize = 1024 * 1024;

/// `http://host:port/path` split into the address to connect to, the
/// `Host` header value and the request target.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub authority: String,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported: {url:?}"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("no usable host in {url:?}"));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target { authority, path })
}

/// POSTs `body` (JSON) to `url`; the answer's status and body.
pub async fn post_json(url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let target = parse_url(url)?;
    tokio::time::timeout(TIMEOUT, exchange(&target, body))
        .await
        .map_err(|_| format!("{url}: no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))
}

async fn exchange(target: &Target, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut tcp = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        body.len()
    );
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    tcp.write_all(body)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    (&mut tcp)
        .take(MAX_ANSWER as u64 + 16 * 1024)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

/// Status and body of a whole HTTP/1.1 answer (Content-Length, chunked, or
/// delimited by the end of the connection).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete answer (no end of headers)")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "answer head is not UTF-8")?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = length {
        rest.get(..len)
            .ok_or("answer shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 || out.len() + size > MAX_ANSWER {
            return Err("truncated or oversized chunked body".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9090/publish"),
            Ok(Target {
                authority: "127.0.0.1:9090".into(),
                path: "/publish".into()
            })
        );
        assert_eq!(
            parse_url("http://localhost").map(|t| (t.authority, t.path)),
            Ok(("localhost:80".into(), "/".into()))
        );
        assert_eq!(
            parse_url("http://[::1]/p?x=1").map(|t| (t.authority, t.path)),
            Ok(("[::1]:80".into(), "/p?x=1".into()))
        );
        assert!(parse_url("https://127.0.0.1:9090/publish").is_err());
        assert!(parse_url("http:///publish").is_err());
    }

    #[test]
    fn answers() {
        let fixed = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_response(fixed), Ok((200, b"{}".to_vec())));
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Ok((401, b"abcde".to_vec())));
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(
            parse_response(until_close),
            Ok((200, b"all of it".to_vec()))
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
