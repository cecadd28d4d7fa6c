//! Which node of a fleet owns an Engine.IO session, read from the session id itself.
//!
//! Behind a load balancer that is not sticky, a client's next polling request or its
//! WebSocket upgrade may reach any node; that node must find the session's owner without
//! asking anyone. So a node of a fleet makes its sids `<tag>.<random>`: `tag` names the node
//! ([`node_tag`], 8 URL-safe characters), `random` is the same unguessable part a single node
//! uses (16 random bytes, 22 URL-safe base64 characters). The `.` is outside the base64url
//! alphabet, so the two parts never blur, and a URL carries it as it is (no escaping).
//!
//! The tag is public: it says which node, nothing more. Knowing it does not help guessing a
//! session, whose credential is the random part.

/// Characters in a node tag.
pub const NODE_TAG_LEN: usize = 8;

/// Between the tag and the random part of a tagged sid.
const SEPARATOR: char = '.';

/// The tag a node with id `node_id` puts in its sids: 48 bits of the FNV-1a hash of the id,
/// in URL-safe base64. Distinct ids give distinct tags but for a 2^-48 chance per pair, far
/// below anything a fleet of gateways meets; the same id gives the same tag after a restart,
/// so a restarted node answers for its old tag (with "Session ID unknown": its sessions died
/// with the process).
pub fn node_tag(node_id: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (0..NODE_TAG_LEN)
        .map(|i| ALPHABET[((hash >> (6 * i)) & 63) as usize] as char)
        .collect()
}

/// A sid for the node tagged `tag`, around the random part `random`.
pub fn tagged_sid(tag: &str, random: &str) -> String {
    format!("{tag}{SEPARATOR}{random}")
}

/// The tag of the node that made `sid`, if it is a tagged sid (`None` for a single node's,
/// and for anything that is not shaped like a tag: such a sid is then simply unknown where it
/// lands).
pub fn sid_owner(sid: &str) -> Option<&str> {
    let (tag, random) = sid.split_once(SEPARATOR)?;
    let url_safe = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (tag.len() == NODE_TAG_LEN && url_safe(tag) && !random.is_empty() && url_safe(random))
        .then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_tag_is_eight_url_safe_characters_fixed_by_the_node_id() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; its low 48 bits, six at a time from the
        // lowest, index the base64url alphabet.
        assert_eq!(node_tag("a"), "MyeAGyE3");
        assert_eq!(node_tag("a"), node_tag("a"));
        assert_ne!(node_tag("a"), node_tag("b"));
        assert_ne!(node_tag("gw-1:4242"), node_tag("gw-1:4243"));
        for id in ["", "a", "host.example:123", "ünïcode node"] {
            let tag = node_tag(id);
            assert_eq!(tag.len(), NODE_TAG_LEN, "{id:?}");
            assert!(
                tag.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{tag}"
            );
        }
    }

    #[test]
    fn a_tagged_sid_names_its_node() {
        let tag = node_tag("a");
        let sid = tagged_sid(&tag, "AAECAwQFBgcICQoLDA0ODw");
        assert_eq!(sid, "MyeAGyE3.AAECAwQFBgcICQoLDA0ODw");
        assert_eq!(sid_owner(&sid), Some(tag.as_str()));
    }

    #[test]
    fn untagged_and_odd_sids_have_no_owner() {
        for sid in [
            // a single node's sid: 22 base64url characters
            "AAECAwQFBgcICQoLDA0ODw",
            "",
            ".",
            "MyeAGyE3.",
            ".AAECAwQFBgcICQoLDA0ODw",
            // a tag of the wrong length
            "MyeAGyE.AAECAwQF",
            "MyeAGyE3j.AAECAwQF",
            // characters outside the alphabet, on either side
            "MyeA+yE3.AAECAwQF",
            "MyeAGyE3.AAEC/wQF",
            "MyeAGyE3.AAEC.wQF",
            "MyeAGyE3.AAEC%20",
        ] {
            assert_eq!(sid_owner(sid), None, "{sid:?}");
        }
    }
}
