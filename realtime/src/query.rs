//! Query strings as browsers and curl send them (`application/x-www-form-urlencoded`).

use percent_encoding::percent_decode_str;

/// Every `name=value` pair, decoded, in order (repeated names kept: `topic=a&topic=b`).
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of `name`.
pub fn get(query: &str, name: &str) -> Option<String> {
    pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Every value of `name`.
pub fn all(query: &str, name: &str) -> Vec<String> {
    pairs(query)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_keeps_repeats() {
        assert_eq!(
            pairs("t=a%20b&x&t=c+d&=e"),
            [
                ("t".into(), "a b".into()),
                ("x".into(), "".into()),
                ("t".into(), "c d".into()),
                ("".into(), "e".into())
            ]
        );
        assert_eq!(get("a=1&b=2", "b").as_deref(), Some("2"));
        assert_eq!(all("topic=a&topic=b", "topic"), ["a", "b"]);
        assert_eq!(get("a=1", "z"), None);
    }
}
