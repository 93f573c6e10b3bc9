//! Decision tokens: the `request_id` a decision answers with is an HMAC-SHA256-signed record of
//! what was shown (tenant, slot, city, banners, issue time). A click must bring it back, so a
//! click can only count for a banner that a decision of this service really showed, recently,
//! to that tenant.
//!
//! Form: `base64url(payload) "." base64url(tag)`, payload =
//! `v2|tenant|slot|city|b1,b2|ms|nonce|group`, group `t` (Thompson sampling) or `h` (holdout),
//! tag = the first 16 bytes of HMAC-SHA256(secret, payload). Names are `[a-z0-9_-]`, so `|` and
//! `,` never occur inside them. Tokens of the first form (`v1|…|nonce`, no group), issued before
//! an upgrade, are still accepted: their decision's group is unknown. Events carry the tag (22 characters) as their `request_id`: it
//! identifies the decision and links its clicks to its impressions, and it stays within the
//! event contract's 512 bytes however many banners were shown.

use std::fmt::Write;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::validate_name;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v2";
/// The form before the group was signed in.
const VERSION_WITHOUT_GROUP: &str = "v1";
const TAG_BYTES: usize = 16;
/// A token may be issued this far in the future of the verifying clock (clock skew between
/// replicas) and still be accepted.
const SKEW_MS: i64 = 60_000;

/// What a decision showed, as recovered from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub tenant: String,
    pub slot: String,
    pub city: String,
    pub banners: Vec<String>,
    pub issued_at: DateTime<Utc>,
    /// Whether the decision was held out (uniform choice); `None` for a token issued before
    /// the group was signed in.
    pub holdout: Option<bool>,
    /// The decision's ID (the token's tag), written as `request_id` into its events.
    pub id: String,
}

/// What a decision showed, to sign into its token.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    pub tenant: &'a str,
    pub slot: &'a str,
    pub city: &'a str,
    pub banners: &'a [&'a str],
    pub holdout: bool,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("is not a decision token of this service (malformed)")]
    Malformed,
    #[error("is not a decision token of this service (the signature does not match)")]
    BadSignature,
    #[error("expired: the decision was made at {issued} and tokens are valid for {ttl_secs} s")]
    Expired { issued: String, ttl_secs: u64 },
    #[error("was issued in the future ({issued}); check the clocks of the service replicas")]
    FromTheFuture { issued: String },
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    mac: HmacSha256,
    ttl_ms: i64,
}

impl TokenSigner {
    /// `secret` should be at least 32 random bytes; `ttl_secs` is how long a click may follow
    /// its decision.
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
            ttl_ms: i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        (self.ttl_ms / 1000) as u64
    }

    /// The token for a decision and the decision's ID. `nonce` makes two decisions of the same
    /// millisecond differ.
    pub fn sign(&self, shown: &Shown<'_>, at: DateTime<Utc>, nonce: u64) -> (String, String) {
        let Shown {
            tenant,
            slot,
            city,
            banners,
            holdout,
        } = *shown;
        let group = if holdout { 'h' } else { 't' };
        // Written piece by piece into buffers of the right size: this runs on every decision,
        // and `format!` and `join` cost more here than the HMAC itself.
        let names: usize = [tenant, slot, city]
            .iter()
            .chain(banners)
            .map(|n| n.len() + 1)
            .sum();
        let mut payload = String::with_capacity(names + 48);
        for part in [VERSION, tenant, slot, city] {
            payload.push_str(part);
            payload.push('|');
        }
        for (i, banner) in banners.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(banner);
        }
        write!(payload, "|{}|{nonce:x}|{group}", at.timestamp_millis())
            .expect("writing to a String cannot fail");
        let tag = self.tag(payload.as_bytes());
        let id = URL_SAFE_NO_PAD.encode(tag);
        let mut token = String::with_capacity(payload.len().div_ceil(3) * 4 + 1 + id.len());
        URL_SAFE_NO_PAD.encode_string(payload.as_bytes(), &mut token);
        token.push('.');
        token.push_str(&id);
        (token, id)
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    /// Checks the signature first (nothing unsigned is parsed further), then the age.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Decision, TokenError> {
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(&payload);
        mac.verify_truncated_left(&tag)
            .ok()
            .filter(|()| tag.len() == TAG_BYTES)
            .ok_or(TokenError::BadSignature)?;

        let payload = std::str::from_utf8(&payload).map_err(|_| TokenError::Malformed)?;
        let parts: Vec<&str> = payload.split('|').collect();
        let (tenant, slot, city, banners, ms, holdout) = match parts[..] {
            [VERSION, tenant, slot, city, banners, ms, _nonce, group] => {
                let holdout = match group {
                    "t" => false,
                    "h" => true,
                    _ => return Err(TokenError::Malformed),
                };
                (tenant, slot, city, banners, ms, Some(holdout))
            }
            [VERSION_WITHOUT_GROUP, tenant, slot, city, banners, ms, _nonce] => {
                (tenant, slot, city, banners, ms, None)
            }
            _ => return Err(TokenError::Malformed),
        };
        let banners: Vec<String> = banners.split(',').map(str::to_string).collect();
        let names_ok = [tenant, slot, city]
            .into_iter()
            .chain(banners.iter().map(String::as_str))
            .all(|n| validate_name("name", n).is_ok());
        let ms: i64 = ms.parse().map_err(|_| TokenError::Malformed)?;
        let issued_at = DateTime::from_timestamp_millis(ms).ok_or(TokenError::Malformed)?;
        if !names_ok {
            return Err(TokenError::Malformed);
        }
        let age_ms = now.timestamp_millis() - ms;
        if age_ms > self.ttl_ms {
            return Err(TokenError::Expired {
                issued: crate::time::format_ist(issued_at),
                ttl_secs: self.ttl_secs(),
            });
        }
        if age_ms < -SKEW_MS {
            return Err(TokenError::FromTheFuture {
                issued: crate::time::format_ist(issued_at),
            });
        }
        Ok(Decision {
            tenant: tenant.to_string(),
            slot: slot.to_string(),
            city: city.to_string(),
            banners,
            issued_at,
            holdout,
            id: tag_b64.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        crate::time::parse_rfc3339("2026-11-28T21:05:00+05:30").unwrap()
    }

    fn shown<'a>(banners: &'a [&'a str], holdout: bool) -> Shown<'a> {
        Shown {
            tenant: "ajio",
            slot: "hero",
            city: "pune",
            banners,
            holdout,
        }
    }

    #[test]
    fn a_signed_token_verifies_to_what_was_shown() {
        let s = TokenSigner::new(b"0123456789abcdef0123456789abcdef", 3600);
        let (token, id) = s.sign(&shown(&["b03", "b07"], false), now(), 42);
        let d = s.verify(&token, now() + Duration::seconds(10)).unwrap();
        assert_eq!(d.tenant, "ajio");
        assert_eq!(d.slot, "hero");
        assert_eq!(d.city, "pune");
        assert_eq!(d.banners, ["b03", "b07"]);
        assert_eq!(d.issued_at, now());
        assert_eq!(d.holdout, Some(false));
        assert_eq!(d.id, id);
        assert_eq!(id.len(), 22);
        let (other, other_id) = s.sign(&shown(&["b03", "b07"], false), now(), 43);
        assert_ne!(
            (other, other_id),
            (token, id),
            "the nonce tells decisions apart"
        );
    }

    #[test]
    fn forged_altered_and_old_tokens_are_refused() {
        let s = TokenSigner::new(b"0123456789abcdef0123456789abcdef", 3600);
        let (token, _) = s.sign(&shown(&["b03"], false), now(), 1);
        let other_key = TokenSigner::new(b"another secret, also 32 bytes...", 3600);
        let (forged, _) = other_key.sign(&shown(&["b03"], false), now(), 1);
        assert_eq!(s.verify(&forged, now()), Err(TokenError::BadSignature));

        let (payload, tag) = token.split_once('.').unwrap();
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let altered = URL_SAFE_NO_PAD.encode(text.replace("b03", "b01"));
        assert_eq!(
            s.verify(&format!("{altered}.{tag}"), now()),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.verify(&format!("{payload}.{}", &tag[..12]), now()),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify("no-dot", now()), Err(TokenError::Malformed));
        assert_eq!(s.verify("!!.??", now()), Err(TokenError::Malformed));

        let late = now() + Duration::seconds(3601);
        assert!(matches!(
            s.verify(&token, late),
            Err(TokenError::Expired { .. })
        ));
        let early = now() - Duration::minutes(5);
        assert!(matches!(
            s.verify(&token, early),
            Err(TokenError::FromTheFuture { .. })
        ));
    }

    #[test]
    fn the_group_is_signed_in_and_tokens_of_the_first_form_still_verify() {
        let s = TokenSigner::new(b"0123456789abcdef0123456789abcdef", 3600);
        let (held_out, _) = s.sign(&shown(&["b03"], true), now(), 7);
        assert_eq!(s.verify(&held_out, now()).unwrap().holdout, Some(true));

        let (payload, tag) = held_out.split_once('.').unwrap();
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(text.ends_with("|h"), "{text}");
        let flipped = URL_SAFE_NO_PAD.encode(format!("{}t", &text[..text.len() - 1]));
        assert_eq!(
            s.verify(&format!("{flipped}.{tag}"), now()),
            Err(TokenError::BadSignature),
            "the group cannot be changed without the secret"
        );

        let first_form = format!("v1|ajio|hero|pune|b03,b07|{}|2a", now().timestamp_millis());
        let tag = URL_SAFE_NO_PAD.encode(s.tag(first_form.as_bytes()));
        let token = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(&first_form));
        let d = s.verify(&token, now()).unwrap();
        assert_eq!((d.holdout, d.banners.len(), d.id), (None, 2, tag));

        let unknown_group = format!("v2|ajio|hero|pune|b03|{}|2a|x", now().timestamp_millis());
        let tag = URL_SAFE_NO_PAD.encode(s.tag(unknown_group.as_bytes()));
        let token = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(&unknown_group));
        assert_eq!(s.verify(&token, now()), Err(TokenError::Malformed));
    }
}
