//! City aliases: per tenant, other spellings of a city (`bangalore`) and the canonical city they
//! name (`bengaluru`), so that one place is one arm (docs/architecture.md, "City names").

use std::collections::BTreeMap;

use super::validate::{normalize_city, FieldError};

/// One tenant's aliases, alias → canonical city, both normalized. The map is flat: no canonical
/// city is itself an alias, so one lookup resolves any name and no cycle can form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CityAliases(BTreeMap<String, String>);

impl CityAliases {
    /// The arm's city for `city` (normalized): its canonical city, or itself.
    pub fn resolve<'a>(&'a self, city: &'a str) -> &'a str {
        self.0.get(city).map_or(city, String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// (alias, canonical city) in alias order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(a, c)| (a.as_str(), c.as_str()))
    }

    /// Declares `alias` (any spelling; normalized by the city rule) another name of `city`.
    /// Refused, naming the field, with nothing changed: a name that does not normalize, an alias
    /// of itself, a canonical city that is an alias, an alias that is another alias's canonical
    /// city (a chain, or with the first two a cycle), an alias already naming another city.
    /// Declaring an alias again is a no-op. Returns the normalized (alias, city).
    pub fn declare(&mut self, alias: &str, city: &str) -> Result<(String, String), FieldError> {
        let alias = normalize_city("alias", alias)?.into_owned();
        let city = normalize_city("city", city)?.into_owned();
        if alias == city {
            return Err(FieldError::new(
                "alias",
                format!("must differ from its city (both normalize to {alias:?})"),
            ));
        }
        if let Some(canonical) = self.0.get(&city) {
            return Err(FieldError::new(
                "city",
                format!("{city:?} is itself an alias of {canonical:?}: name {canonical:?}"),
            ));
        }
        if let Some((other, _)) = self.0.iter().find(|(_, c)| **c == alias) {
            return Err(FieldError::new(
                "alias",
                format!(
                    "{alias:?} is the city that {other:?} is an alias of: a city cannot also be \
                     an alias"
                ),
            ));
        }
        match self.0.get(&alias) {
            Some(existing) if *existing != city => Err(FieldError::new(
                "alias",
                format!("{alias:?} is already an alias of {existing:?}: delete it first"),
            )),
            _ => {
                self.0.insert(alias.clone(), city.clone());
                Ok((alias, city))
            }
        }
    }

    /// Removes an alias (any spelling); whether it was declared.
    pub fn remove(&mut self, alias: &str) -> Result<bool, FieldError> {
        let alias = normalize_city("alias", alias)?;
        Ok(self.0.remove(alias.as_ref()).is_some())
    }

    /// Every alias of `text` (CSV with the header `alias,city`), declared in order onto a copy
    /// of `self`: all or nothing. A refused line names its line number.
    pub fn with_csv(&self, text: &str) -> Result<CityAliases, FieldError> {
        let mut aliases = self.clone();
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        match lines.next() {
            Some((_, header)) if header.trim().eq_ignore_ascii_case("alias,city") => {}
            _ => return Err(FieldError::new("header", "must be `alias,city`")),
        }
        for (i, line) in lines {
            let at = |e: FieldError| FieldError::new(format!("line {} {}", i + 1, e.field), e.rule);
            let (alias, city) = line
                .split_once(',')
                .ok_or_else(|| at(FieldError::new("", "must be `alias,city`")))?;
            aliases.declare(alias, city).map_err(at)?;
        }
        Ok(aliases)
    }
}

impl FromIterator<(String, String)> for CityAliases {
    /// Pairs as stored (already checked when declared).
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }
}

/// Every tenant's aliases, as the jobs apply them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantAliases(BTreeMap<String, CityAliases>);

impl TenantAliases {
    pub fn insert(&mut self, tenant: &str, aliases: CityAliases) {
        if !aliases.is_empty() {
            self.0.insert(tenant.to_string(), aliases);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical city of `city` in `tenant`.
    pub fn resolve<'a>(&'a self, tenant: &str, city: &'a str) -> &'a str {
        match self.0.get(tenant) {
            Some(a) => a.resolve(city),
            None => city,
        }
    }

    /// (tenant, alias, canonical city) of every tenant.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.0
            .iter()
            .flat_map(|(t, a)| a.iter().map(move |(alias, city)| (t.as_str(), alias, city)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_any_spelling_to_one_city() {
        let mut a = CityAliases::default();
        assert_eq!(
            a.declare("Bangalore", "Bengaluru").unwrap(),
            ("bangalore".into(), "bengaluru".into())
        );
        a.declare("gurgaon", "gurugram").unwrap();
        a.declare("BANGALORE", "bengaluru").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.resolve("bangalore"), "bengaluru");
        assert_eq!(a.resolve("bengaluru"), "bengaluru");
        assert_eq!(a.resolve("pune"), "pune");
        assert!(a.remove(" Gurgaon").unwrap());
        assert!(!a.remove("gurgaon").unwrap());
    }

    #[test]
    fn bad_aliases_are_refused_naming_the_field_and_change_nothing() {
        let mut a = CityAliases::default();
        a.declare("bangalore", "bengaluru").unwrap();
        let before = a.clone();
        for (alias, city, field, says) in [
            ("Pune", "pune", "alias", "must differ"),
            ("blr", "Bangalore", "city", "itself an alias"),
            ("bengaluru", "bangalore", "city", "itself an alias"),
            (
                "bengaluru",
                "mysuru",
                "alias",
                "a city cannot also be an alias",
            ),
            ("bangalore", "mysuru", "alias", "already an alias"),
            ("!!", "pune", "alias", "no letter"),
            ("pune", "", "city", "no letter"),
            ("münchen", "पुणे", "city", "no a-z spelling"),
        ] {
            let err = a.declare(alias, city).unwrap_err();
            assert_eq!(err.field, field, "{alias} = {city}: {err}");
            assert!(err.rule.contains(says), "{alias} = {city}: {err}");
            assert_eq!(a, before);
        }
    }

    #[test]
    fn a_csv_is_declared_whole_or_not_at_all() {
        let a = CityAliases::default()
            .with_csv("alias,city\nBangalore,Bengaluru\n\nGurgaon, Gurugram\n")
            .unwrap();
        assert_eq!(a.resolve("gurgaon"), "gurugram");
        let err = CityAliases::default()
            .with_csv("alias,city\nbangalore,bengaluru\nbengaluru,bangalore\n")
            .unwrap_err();
        assert_eq!(err.field, "line 3 city", "{err}");
        assert!(CityAliases::default().with_csv("a,b\nx,y").is_err());
    }
}
