//! Store URLs: which backend a `--store` names and where it is. One parser for both forms, whose
//! errors name the rule the URL breaks.

use std::path::PathBuf;
use std::time::Duration;

use super::StoreError;
use crate::model::address::{option, parse_host_ports, parse_query};

/// Where a store URL points:
/// - `embedded:PATH`, a redb file;
/// - `cassandra://HOST:PORT[,HOST:PORT...]/KEYSPACE[?deadline_s=SECONDS]`, a Cassandra cluster
///   (contact points, the keyspace `slotbandit schema apply` made, and how long an operation
///   retries before it fails; 60 s by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Embedded(PathBuf),
    Cassandra(CassandraUrl),
}

/// The parts of a `cassandra://` store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CassandraUrl {
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// How long an operation retries (with backoff) before it fails.
    pub deadline: Duration,
}

impl CassandraUrl {
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
    const MAX_DEADLINE_S: u64 = 86_400;

    /// `HOST:PORT,.../KEYSPACE`, the store's name in messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.nodes.join(","), self.keyspace)
    }
}

const STORE_URL_FORMS: &str =
    "must be embedded:PATH or cassandra://HOST:PORT[,HOST:PORT...]/KEYSPACE[?deadline_s=SECONDS]";

impl StoreUrl {
    /// Whether several processes of one job may each write their own shards to it (a
    /// Cassandra cluster), or only process 0 may open it (an embedded file).
    pub fn shared_across_processes(&self) -> bool {
        matches!(self, StoreUrl::Cassandra(_))
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, StoreError> {
        let fail = |rule: String| StoreError::Url {
            url: url.to_string(),
            rule,
        };
        if let Some(rest) = url.strip_prefix("cassandra://") {
            return parse_cassandra(rest).map(StoreUrl::Cassandra).map_err(fail);
        }
        match url.split_once(':') {
            Some(("embedded", path)) if !path.is_empty() => Ok(StoreUrl::Embedded(path.into())),
            _ => Err(fail(STORE_URL_FORMS.into())),
        }
    }
}

/// Cassandra folds unquoted names to lower case and allows 48 characters.
pub(super) fn validate_keyspace(keyspace: &str) -> Result<(), String> {
    let mut chars = keyspace.chars();
    let ok = keyspace.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "keyspace must match [a-z][a-z0-9_]{{0,47}} (got {keyspace:?})"
        ))
    }
}

fn parse_cassandra(rest: &str) -> Result<CassandraUrl, String> {
    let (address, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let Some((hosts, keyspace)) = address.split_once('/') else {
        return Err(format!("{STORE_URL_FORMS} (the keyspace is missing)"));
    };
    let nodes = parse_host_ports(hosts).map_err(|e| format!("node {e}"))?;
    validate_keyspace(keyspace)?;
    let params = parse_query(query)?;
    let deadline = option::<u64>(
        &params,
        &["deadline_s"],
        "deadline_s",
        &format!(
            "must be a whole number of seconds from 1 to {}",
            CassandraUrl::MAX_DEADLINE_S
        ),
        |s| (1..=CassandraUrl::MAX_DEADLINE_S).contains(s),
    )?
    .map_or(CassandraUrl::DEFAULT_DEADLINE, Duration::from_secs);
    Ok(CassandraUrl {
        nodes,
        keyspace: keyspace.to_string(),
        deadline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(url: &str) -> String {
        match url.parse::<StoreUrl>() {
            Err(StoreError::Url { rule, .. }) => rule,
            other => panic!("{url}: expected a URL error, got {other:?}"),
        }
    }

    #[test]
    fn cassandra_urls_parse_with_nodes_keyspace_and_deadline() {
        assert_eq!(
            "cassandra://127.0.0.1:9042/slotbandit"
                .parse::<StoreUrl>()
                .unwrap(),
            StoreUrl::Cassandra(CassandraUrl {
                nodes: vec!["127.0.0.1:9042".into()],
                keyspace: "slotbandit".into(),
                deadline: CassandraUrl::DEFAULT_DEADLINE,
            })
        );
        let url: StoreUrl = "cassandra://a:9042,b.example:9142/ks_2?deadline_s=5"
            .parse()
            .unwrap();
        let StoreUrl::Cassandra(c) = &url else {
            panic!("{url:?}")
        };
        assert_eq!(c.nodes, ["a:9042", "b.example:9142"]);
        assert_eq!(c.deadline, Duration::from_secs(5));
        assert_eq!(c.name(), "a:9042,b.example:9142/ks_2");
        assert!(url.shared_across_processes());
        assert!(!"embedded:x.redb"
            .parse::<StoreUrl>()
            .unwrap()
            .shared_across_processes());
    }

    #[test]
    fn bad_store_urls_name_the_rule() {
        assert!(rule("redis://x").contains("must be embedded:PATH or cassandra://"));
        assert!(rule("embedded:").contains("must be embedded:PATH"));
        assert!(rule("cassandra://127.0.0.1:9042").contains("keyspace is missing"));
        assert!(rule("cassandra://127.0.0.1/ks").contains("HOST:PORT"));
        assert!(rule("cassandra://h:0/ks").contains("port from 1 to 65535"));
        assert!(rule("cassandra://h h:9042/ks").contains("without spaces"));
        assert!(rule("cassandra://h:9042,/ks").contains("node \"\""));
        assert!(rule("cassandra://h:9042/Ks").contains("[a-z][a-z0-9_]"));
        assert!(rule("cassandra://h:9042/ks-1").contains("[a-z][a-z0-9_]"));
        assert!(rule(&format!("cassandra://h:9042/{}", "k".repeat(49))).contains("{0,47}"));
        assert!(rule("cassandra://h:9042/ks?deadline_s=0").contains("from 1 to 86400"));
        assert!(rule("cassandra://h:9042/ks?deadline_s=x").contains("deadline_s"));
        assert!(rule("cassandra://h:9042/ks?timeout=3").contains("unknown option \"timeout\""));
        assert!(rule("cassandra://h:9042/ks?deadline_s=3&deadline_s=4").contains("given twice"));
    }
}
