//! Query strings as browsers and curl send them (`application/x-www-form-urlencoded`).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// The raw `name=value` pieces of `query`, in order, undecoded.
fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// Every `name=value` pair, decoded, in order (repeated names kept: `topic=a&topic=b`).
pub fn pairs(query: &str) -> Vec<(String, String)> {
    raw_pairs(query)
        .map(|(k, v)| (decode(k).into_owned(), decode(v).into_owned()))
        .collect()
}

/// The first value of `name`. Decodes names only as far as the match, and no value but the
/// one returned: a long-poll reads two names of its query on every poll.
pub fn get(query: &str, name: &str) -> Option<String> {
    raw_pairs(query)
        .find(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v).into_owned())
}

/// Every value of `name`.
pub fn all(query: &str, name: &str) -> Vec<String> {
    raw_pairs(query)
        .filter(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v).into_owned())
        .collect()
}

/// `+` is a space, then percent-decoding, invalid UTF-8 replaced; borrowed when there is
/// nothing to decode.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned(),
    )
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

    /// What `pairs`, `get` and `all` answered when each decoded every pair.
    fn reference(query: &str) -> Vec<(String, String)> {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (decode(k), decode(v))
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn answers_as_decoding_every_pair_did(
            query in "([a-z+%=&]|%[0-9A-Fa-f]{2}|\\PC){0,40}",
            name in "([a-z ]|\\PC){0,3}",
        ) {
            let all_pairs = reference(&query);
            proptest::prop_assert_eq!(pairs(&query), all_pairs.clone());
            // A random name, and every name the query has.
            let names = std::iter::once(name).chain(all_pairs.iter().map(|(k, _)| k.clone()));
            for name in names {
                let first = all_pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
                proptest::prop_assert_eq!(get(&query, &name), first);
                let every: Vec<String> = all_pairs
                    .iter()
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
                    .collect();
                proptest::prop_assert_eq!(all(&query, &name), every);
            }
        }
    }
}
