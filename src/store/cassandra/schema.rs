//! The Cassandra schema: the versioned CQL files under `schema/cassandra/`, how they are
//! rendered for a keyspace and a [`Replication`], applied (`slotbandit schema apply`), and checked
//! when a store opens.

use std::collections::BTreeSet;

use chrono::Utc;
use scylla::value::CqlTimestamp;

use super::connection::Connection;
use super::migrate::move_data_to;
use super::retry::Failure;
use crate::store::url::{validate_keyspace, CassandraUrl};
use crate::store::StoreError;

/// The schema files, in version order: (version, name, CQL with `{keyspace}` and
/// `{replication}` placeholders).
const MIGRATIONS: [(i32, &str, &str); 5] = [
    (
        1,
        "001_init",
        include_str!("../../../schema/cassandra/001_init.cql"),
    ),
    (
        2,
        "002_counts_by_bucket",
        include_str!("../../../schema/cassandra/002_counts_by_bucket.cql"),
    ),
    (
        3,
        "003_city_aliases",
        include_str!("../../../schema/cassandra/003_city_aliases.cql"),
    ),
    (
        4,
        "004_prior_cities",
        include_str!("../../../schema/cassandra/004_prior_cities.cql"),
    ),
    (
        5,
        "005_slot_rules",
        include_str!("../../../schema/cassandra/005_slot_rules.cql"),
    ),
];
/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// How the keyspace is replicated: `simple:RF` (SimpleStrategy, one data centre, development)
/// or `DC:RF[,DC:RF...]` (NetworkTopologyStrategy, clusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    Simple(u8),
    Network(Vec<(String, u8)>),
}

impl Default for Replication {
    fn default() -> Self {
        Replication::Simple(1)
    }
}

impl std::str::FromStr for Replication {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let factor = |dc: &str, rf: &str| -> Result<u8, String> {
            rf.parse::<u8>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                format!(
                    "replication factor of {dc} must be a whole number from 1 to 255 (got {rf:?})"
                )
            })
        };
        if let Some(rf) = s.strip_prefix("simple:") {
            return factor("simple", rf).map(Replication::Simple);
        }
        let mut dcs = Vec::new();
        for part in s.split(',') {
            let Some((dc, rf)) = part.split_once(':') else {
                return Err(format!(
                    "must be simple:RF or DC:RF[,DC:RF...] (got {part:?})"
                ));
            };
            let valid_dc = !dc.is_empty()
                && dc.len() <= 64
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !valid_dc {
                return Err(format!(
                    "data centre name must match [A-Za-z0-9_.-]{{1,64}} (got {dc:?})"
                ));
            }
            if dcs.iter().any(|(seen, _)| seen == dc) {
                return Err(format!("data centre {dc:?} is named twice"));
            }
            dcs.push((dc.to_string(), factor(dc, rf)?));
        }
        Ok(Replication::Network(dcs))
    }
}

impl Replication {
    /// The CQL map of `WITH replication = ...`.
    pub fn cql(&self) -> String {
        match self {
            Replication::Simple(rf) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
            }
            Replication::Network(dcs) => {
                let factors: Vec<String> =
                    dcs.iter().map(|(dc, rf)| format!("'{dc}': {rf}")).collect();
                format!(
                    "{{'class': 'NetworkTopologyStrategy', {}}}",
                    factors.join(", ")
                )
            }
        }
    }
}

/// The whole schema as CQL for one keyspace, as `schema apply` runs it.
pub fn render_schema(keyspace: &str, replication: &Replication) -> Result<String, StoreError> {
    validate_keyspace(keyspace).map_err(|rule| StoreError::Url {
        url: keyspace.to_string(),
        rule,
    })?;
    Ok(MIGRATIONS
        .iter()
        .map(|(_, _, cql)| render(cql, keyspace, replication))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn render(cql: &str, keyspace: &str, replication: &Replication) -> String {
    cql.replace("{keyspace}", keyspace)
        .replace("{replication}", &replication.cql())
}

/// The statements of a CQL file: `--` comments dropped, split at `;`.
fn cql_statements(cql: &str) -> Vec<String> {
    let text: String = cql
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Creates the keyspace and tables if missing and records the schema versions; returns the
/// versions this call recorded (empty when the keyspace was already current). A version not yet
/// recorded moves the data of the one before it (`migrate`) first. Versions 3 to 5 add tables
/// or columns only.
pub fn apply_schema(url: &CassandraUrl, replication: &Replication) -> Result<Vec<i32>, StoreError> {
    let conn = Connection::connect(url)?;
    conn.run(async {
        let present = schema_versions(&conn).await?.unwrap_or_default();
        let mut recorded = Vec::new();
        // Every version's tables first: a move of data prepares this build's statements, which
        // name the tables of every version.
        for (_, name, cql) in MIGRATIONS {
            for statement in cql_statements(&render(cql, &url.keyspace, replication)) {
                conn.retrying(&format!("schema {name}"), || async {
                    conn.session
                        .query_unpaged(statement.as_str(), &[])
                        .await
                        .map_err(|e| Failure::from(e).transient_if_schema_lags())?;
                    Ok(())
                })
                .await?;
            }
        }
        for (version, name, _) in MIGRATIONS {
            if present.contains(&version) {
                continue;
            }
            move_data_to(version, &conn).await?;
            let insert = format!(
                "INSERT INTO {}.schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                url.keyspace
            );
            conn.retrying("record the schema version", || async {
                let now = CqlTimestamp(Utc::now().timestamp_millis());
                conn.session
                    .query_unpaged(insert.as_str(), (version, name, now))
                    .await?;
                Ok(())
            })
            .await?;
            recorded.push(version);
        }
        Ok(recorded)
    })
}

/// The schema versions recorded in the keyspace, or `None` when it has no schema table.
async fn schema_versions(conn: &Connection) -> Result<Option<BTreeSet<i32>>, StoreError> {
    let found = conn
        .retrying("read the schema", || async {
            let rows = conn
                .session
                .query_unpaged(
                    "SELECT table_name FROM system_schema.tables \
                     WHERE keyspace_name = ? AND table_name = 'schema_version'",
                    (&conn.keyspace,),
                )
                .await?
                .into_rows_result()?;
            Ok(rows.maybe_first_row::<(String,)>()?.is_some())
        })
        .await?;
    if !found {
        return Ok(None);
    }
    let select = format!("SELECT version FROM {}.schema_version", conn.keyspace);
    conn.retrying("read the schema version", || async {
        let rows = conn
            .session
            .query_unpaged(select.as_str(), &[])
            .await?
            .into_rows_result()?;
        let versions = rows
            .rows::<(i32,)>()?
            .map(|r| r.map(|(v,)| v))
            .collect::<Result<BTreeSet<i32>, _>>()?;
        Ok(Some(versions))
    })
    .await
}

/// Fails unless the keyspace holds this build's schema version, saying what to do about it.
pub(super) async fn check_schema_version(
    conn: &Connection,
    url: &CassandraUrl,
) -> Result<(), StoreError> {
    let apply = format!(
        "run `slotbandit schema apply --store cassandra://{}`",
        url.name()
    );
    match schema_versions(conn).await?.and_then(|v| v.last().copied()) {
        None => Err(conn.fail(format!(
            "keyspace `{}` has no slotbandit schema ({apply})",
            url.keyspace
        ))),
        Some(v) if v < SCHEMA_VERSION => Err(conn.fail(format!(
            "schema version {v} is older than this build's {SCHEMA_VERSION} ({apply})"
        ))),
        Some(v) if v > SCHEMA_VERSION => Err(conn.fail(format!(
            "schema version {v} is newer than this build's {SCHEMA_VERSION} (upgrade slotbandit)"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_parses_both_strategies_and_names_the_rule() {
        assert_eq!("simple:3".parse(), Ok(Replication::Simple(3)));
        assert_eq!(
            "dc1:3,us-east.2:2".parse(),
            Ok(Replication::Network(vec![
                ("dc1".into(), 3),
                ("us-east.2".into(), 2)
            ]))
        );
        assert_eq!(
            Replication::Simple(1).cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            "dc1:3,dc2:1".parse::<Replication>().unwrap().cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 1}"
        );
        for (bad, rule) in [
            ("simple:0", "from 1 to 255"),
            ("simple:x", "from 1 to 255"),
            ("dc1", "simple:RF or DC:RF"),
            ("dc'1:3", "[A-Za-z0-9_.-]"),
            ("dc1:3,dc1:2", "named twice"),
            ("", "simple:RF or DC:RF"),
        ] {
            let err = bad.parse::<Replication>().unwrap_err();
            assert!(err.contains(rule), "{bad}: {err}");
        }
    }

    #[test]
    fn the_schema_renders_every_table_for_the_keyspace() {
        let cql = render_schema("sb_test", &Replication::Simple(1)).unwrap();
        assert!(!cql.contains("{keyspace}") && !cql.contains("{replication}"));
        let all = cql_statements(&cql);
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS sb_test"));
        for table in [
            "arm_state",
            "arm_counts",
            "part_versions",
            "priors",
            "slot_banners",
            "customer_events",
            "checkpoints",
            "api_keys",
            "meta",
            "schema_version",
            "city_aliases",
            "city_merges",
            "prior_cities",
        ] {
            let create = format!("CREATE TABLE IF NOT EXISTS sb_test.{table} (");
            assert_eq!(
                all.iter().filter(|s| s.starts_with(&create)).count(),
                1,
                "{table}"
            );
        }
        assert!(all.iter().all(|s| !s.contains("--") && !s.contains(';')));
        assert!(render_schema("Bad", &Replication::Simple(1)).is_err());
    }
}
