//! Query strings as browsers and curl send them (`application/x-www-form-urlencoded`).

/// Every `name=value` pair, decoded, in order (repeated names kept: `topic=a&topic=b`).
pub fn pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name`. The parser decodes lazily and borrows what has no escapes, so
/// finding a name allocates only for escaped pieces and the value returned (a long-poll reads
/// two names of its query on every poll).
pub fn get(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Every value of `name`.
pub fn all(query: &str, name: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
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
        assert_eq!(get("%74=x&t=y", "t").as_deref(), Some("x"));
        assert_eq!(get("t+x=1&t%20x=2", "t x").as_deref(), Some("1"));
        assert_eq!(get("t=%E2%9C%93", "t").as_deref(), Some("\u{2713}"));
        assert_eq!(get("t=%FF", "t").as_deref(), Some("\u{FFFD}"));
        assert_eq!(get("t", "t").as_deref(), Some(""));
    }
}
