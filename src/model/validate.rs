//! Field rules shared by every input path (JSON events, Parquet rows, slot CSV, HTTP).

use std::borrow::Cow;
use std::fmt;

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// A rule broken by one named field. `Display` reads "`field`: rule".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub field: String,
    pub rule: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.rule)
    }
}

pub const NAME_RULE: &str = "must match [a-z0-9_-]{1,64}";
pub const NAME_MAX: usize = 64;

/// Tenant, slot, city and banner names: lowercase `[a-z0-9_-]{1,64}`.
pub fn validate_name(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= NAME_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{NAME_RULE} (got {})", shown(value)),
        ))
    }
}

/// The one rule that maps a name as other systems wrote it (the prototype stored `Pune` beside
/// `pune`, and its pages send ` Pune`) onto the contract: trim, lowercase, then
/// [`validate_name`]. Inputs that already follow the contract come back unchanged.
pub fn normalize_name(field: &str, value: &str) -> Result<String, FieldError> {
    let name = value.trim().to_lowercase();
    validate_name(field, &name)?;
    Ok(name)
}

/// The one rule for city names, applied wherever a city enters (events on the log and in Parquet
/// history, the /v1 API, the prototype's routes and rows): sites send what geo-IP or an address
/// book gives them (`Pune`, `New Delhi`, `Bengaluru`). Cities only; tenant, slot and banner
/// names are identifiers a tenant chooses, and stay [`validate_name`] (or [`normalize_name`]).
///
/// 1. Unicode compatibility decomposition (NFKD), combining marks dropped: full-width and
///    ligature forms become their plain letters, accented Latin letters their base letter
///    (`München` → `munchen`, `São Paulo` → `sao_paulo`);
/// 2. lowercase;
/// 3. every run of characters that are not letters or digits (white space, punctuation, `-`
///    and `_` included) becomes one `_`, and leading and trailing ones are dropped
///    (` New  Delhi `, `New-Delhi`, `new_delhi` → `new_delhi`);
/// 4. a letter still outside `a-z` (`ß`, `ø`, Devanagari, …) is refused, naming the field: such
///    a city is declared by its ASCII spelling (and its other spellings as aliases);
/// 5. then [`validate_name`] (1 to 64 bytes).
///
/// The result is a fixed point: `normalize_city(f, &normalize_city(f, x)?) == normalize_city(f, x)`.
/// A name already in that form is borrowed, not copied.
pub fn normalize_city<'a>(field: &str, value: &'a str) -> Result<Cow<'a, str>, FieldError> {
    if is_normal_city(value) {
        return Ok(Cow::Borrowed(value));
    }
    let mut city = String::with_capacity(value.len());
    let mut gap = false;
    for c in value
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
    {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if gap && !city.is_empty() {
                city.push('_');
            }
            gap = false;
            city.push(c);
        } else if c.is_alphanumeric() {
            return Err(FieldError::new(
                field,
                format!(
                    "{CITY_RULE}; {c:?} has no a-z spelling (got {}): declare the city by its \
                     ASCII name",
                    shown(value)
                ),
            ));
        } else {
            gap = true;
        }
    }
    if city.is_empty() {
        return Err(FieldError::new(
            field,
            format!(
                "{CITY_RULE}; it has no letter or digit (got {})",
                shown(value)
            ),
        ));
    }
    validate_name(field, &city)?;
    Ok(Cow::Owned(city))
}

pub const CITY_RULE: &str =
    "must be a city name: letters, digits, spaces and punctuation, normalized to [a-z0-9_]{1,64}";

/// Whether `value` is already what [`normalize_city`] makes of it.
fn is_normal_city(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= NAME_MAX
        && b[0] != b'_'
        && b[b.len() - 1] != b'_'
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !value.contains("__")
}

/// Free-text identifiers (event_id, customer_id, referrer, request_id): bounded length, no
/// control characters or whitespace.
pub fn validate_token(field: &str, value: &str, max_bytes: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > max_bytes {
        return Err(FieldError::new(
            field,
            format!("must be at most {max_bytes} bytes (got {})", value.len()),
        ));
    }
    let forbidden = if value.is_ascii() {
        // The ASCII whitespace and control characters are exactly these bytes.
        value.bytes().any(|b| b <= b' ' || b == 0x7f)
    } else {
        value.chars().any(|c| c.is_control() || c.is_whitespace())
    };
    if forbidden {
        return Err(FieldError::new(
            field,
            format!(
                "must not contain whitespace or control characters (got {})",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// A value quoted for an error message, cut so that a huge input cannot flood a log.
pub fn shown(value: &str) -> String {
    const MAX: usize = 80;
    if value.len() <= MAX {
        format!("{value:?}")
    } else {
        let mut end = MAX;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}… ({} bytes)", &value[..end], value.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        for ok in ["ajio", "hero", "pune", "b-01", "new_delhi", &"a".repeat(64)] {
            assert!(validate_name("city", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Pune", "new delhi", "a.b", "ü", &"a".repeat(65)] {
            let err = validate_name("city", bad).unwrap_err();
            assert_eq!(err.field, "city");
            assert!(err.rule.contains("[a-z0-9_-]{1,64}"), "{err}");
        }
    }

    #[test]
    fn names_normalize_by_trimming_and_lowercasing_then_validate() {
        for (raw, name) in [
            ("Pune", "pune"),
            (" NEW_delhi\t", "new_delhi"),
            ("b-01", "b-01"),
        ] {
            assert_eq!(normalize_name("city", raw).unwrap(), name, "{raw:?}");
        }
        for bad in ["", "  ", "New Delhi", "Zürich", &"A".repeat(65)] {
            let err = normalize_name("city", bad).unwrap_err();
            assert_eq!(err.field, "city");
            assert!(err.rule.contains("[a-z0-9_-]{1,64}"), "{err}");
        }
    }

    #[test]
    fn cities_normalize_by_the_documented_rule() {
        for (raw, city) in [
            ("Pune", "pune"),
            (" New  Delhi ", "new_delhi"),
            ("New-Delhi", "new_delhi"),
            ("new_delhi", "new_delhi"),
            ("BENGALURU", "bengaluru"),
            ("Bengaluru", "bengaluru"),
            ("  St. Thomas' Mount!", "st_thomas_mount"),
            ("München", "munchen"),
            ("SÃO PAULO", "sao_paulo"),
            ("Ｐｕｎｅ", "pune"),
            ("İstanbul", "istanbul"),
            ("b-01", "b_01"),
            ("delhi6", "delhi6"),
        ] {
            assert_eq!(normalize_city("city", raw).unwrap(), city, "{raw:?}");
        }
        assert!(matches!(
            normalize_city("city", "pune"),
            Ok(Cow::Borrowed("pune"))
        ));
    }

    #[test]
    fn cities_without_an_ascii_spelling_or_any_letter_are_refused_naming_the_field() {
        for bad in [
            "",
            "  ",
            "--",
            "!?",
            "पुणे",
            "Straße",
            "Ørestad",
            &"a".repeat(65),
        ] {
            let err = normalize_city("location", bad).unwrap_err();
            assert_eq!(err.field, "location", "{bad:?}");
            assert!(err.to_string().contains("field `location`"), "{err}");
        }
        let err = normalize_city("city", "Straße").unwrap_err();
        assert!(err.rule.contains("'ß' has no a-z spelling"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn city_normalization_is_idempotent(value in "[ a-zA-Z0-9_\\-.,'!éüÜßİＰ\u{301}\t]{0,20}") {
            if let Ok(once) = normalize_city("city", &value) {
                let twice = normalize_city("city", &once).unwrap();
                proptest::prop_assert_eq!(&twice, &once);
                proptest::prop_assert!(validate_name("city", &once).is_ok());
                proptest::prop_assert!(is_normal_city(&once));
            }
        }
    }

    #[test]
    fn tokens_are_bounded() {
        assert!(validate_token("customer_id", "c-42", 128).is_ok());
        assert!(validate_token("customer_id", "", 128).is_err());
        assert!(validate_token("customer_id", "a b", 128).is_err());
        let err = validate_token("customer_id", &"x".repeat(129), 128).unwrap_err();
        assert!(err.rule.contains("at most 128 bytes"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn tokens_reject_exactly_whitespace_and_control_characters(
            value in "[\\x00-\\x7f\\u{85}\\u{a0}\\u{2028}\\u{3000}é]{1,12}"
        ) {
            let forbidden = value.chars().any(|c| c.is_control() || c.is_whitespace());
            proptest::prop_assert_eq!(validate_token("referrer", &value, 64).is_err(), forbidden);
        }
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let s = shown(&"é".repeat(100));
        assert!(s.contains("(200 bytes)"));
    }
}
