//! Reading the prototype's keyspace with the scylla driver: the URL, a session that first checks
//! that both tables have the columns the import reads, and the tables read page by page.

use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::unprepared::Statement;
use scylla::value::CqlTimeuuid;

use super::convert::{ClickRow, SlotRow};
use super::ImportError;
use crate::model::address::parse_host_ports;

pub const CLICKSTREAM_TABLE: &str = "bannerclickstream";
pub const SLOTS_TABLE: &str = "slotconfiguration";
/// The columns read, with their CQL types (`createddate` is not read: see `convert`).
const CLICKSTREAM_COLUMNS: [(&str, &str); 8] = [
    ("platform", "text"),
    ("slotname", "text"),
    ("operationdate", "timeuuid"),
    ("location", "text"),
    ("bannerid", "text"),
    ("clicked", "boolean"),
    ("customerid", "text"),
    ("adreferrer", "text"),
];
const SLOTS_COLUMNS: [(&str, &str); 6] = [
    ("platform", "text"),
    ("slotname", "text"),
    ("validto", "bigint"),
    ("imagekey", "text"),
    ("imagename", "text"),
    ("validfrom", "bigint"),
];
const PAGE_ROWS: i32 = 5_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `cassandra://HOST:PORT[,HOST:PORT...]/KEYSPACE`: the prototype's nodes and keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrototypeUrl {
    pub nodes: Vec<String>,
    pub keyspace: String,
}

impl FromStr for PrototypeUrl {
    type Err = ImportError;

    fn from_str(url: &str) -> Result<Self, ImportError> {
        let err = |rule: String| ImportError::Url {
            url: url.to_string(),
            rule,
        };
        let rest = url
            .strip_prefix("cassandra://")
            .ok_or_else(|| err("must be cassandra://HOST:PORT[,HOST:PORT...]/KEYSPACE".into()))?;
        let (hosts, keyspace) = rest
            .split_once('/')
            .ok_or_else(|| err("names no keyspace".into()))?;
        let nodes = parse_host_ports(hosts).map_err(|e| err(format!("node {e}")))?;
        let keyspace_ok = (1..=48).contains(&keyspace.len())
            && keyspace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !keyspace_ok {
            return Err(err(format!(
                "keyspace {keyspace:?} must match [A-Za-z0-9_]{{1,48}}"
            )));
        }
        Ok(Self {
            nodes,
            keyspace: keyspace.to_string(),
        })
    }
}

/// A session to the prototype's cluster whose keyspace has been checked.
pub struct PrototypeSource {
    url: PrototypeUrl,
    runtime: tokio::runtime::Runtime,
    session: Session,
}

impl PrototypeSource {
    /// Connects and checks that both tables exist with the columns and types the import reads.
    pub fn connect(url: &PrototypeUrl) -> Result<Self, ImportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ImportError::Connect {
                nodes: url.nodes.join(","),
                detail: format!("cannot start the driver's runtime: {e}"),
            })?;
        let session = runtime
            .block_on(
                SessionBuilder::new()
                    .known_nodes(&url.nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .build(),
            )
            .map_err(|e| ImportError::Connect {
                nodes: url.nodes.join(","),
                detail: one_line(e),
            })?;
        let source = Self {
            url: url.clone(),
            runtime,
            session,
        };
        source.check_table(CLICKSTREAM_TABLE, &CLICKSTREAM_COLUMNS)?;
        source.check_table(SLOTS_TABLE, &SLOTS_COLUMNS)?;
        Ok(source)
    }

    fn check_table(&self, table: &str, wanted: &[(&str, &str)]) -> Result<(), ImportError> {
        let keyspace = self.url.keyspace.as_str();
        let read_err = |detail: String| ImportError::Read {
            keyspace: keyspace.to_string(),
            table: table.to_string(),
            detail,
        };
        let columns: Vec<(String, String)> = self.runtime.block_on(async {
            let rows = self
                .session
                .query_unpaged(
                    "SELECT column_name, type FROM system_schema.columns \
                     WHERE keyspace_name = ? AND table_name = ?",
                    (keyspace, table),
                )
                .await
                .map_err(|e| read_err(one_line(e)))?
                .into_rows_result()
                .map_err(|e| read_err(one_line(e)))?;
            rows.rows::<(String, String)>()
                .map_err(|e| read_err(one_line(e)))?
                .collect::<Result<_, _>>()
                .map_err(|e| read_err(one_line(e)))
        })?;
        if columns.is_empty() {
            return Err(ImportError::MissingTable {
                keyspace: keyspace.to_string(),
                table: table.to_string(),
            });
        }
        for (name, cql_type) in wanted {
            match columns.iter().find(|(c, _)| c == name) {
                None => {
                    return Err(ImportError::MissingColumn {
                        keyspace: keyspace.to_string(),
                        table: table.to_string(),
                        column: name.to_string(),
                    })
                }
                Some((_, found)) if found != cql_type => {
                    return Err(ImportError::ColumnType {
                        keyspace: keyspace.to_string(),
                        table: table.to_string(),
                        column: name.to_string(),
                        found: found.clone(),
                        expected: cql_type.to_string(),
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Reads a table page by page, handing each decoded row to `each`.
    fn read<R, T>(
        &self,
        table: &str,
        columns: &[(&str, &str)],
        decode: impl Fn(R) -> T,
        mut each: impl FnMut(T),
    ) -> Result<(), ImportError>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let cql = format!(
            "SELECT {} FROM {}.{}",
            names.join(", "),
            self.url.keyspace,
            table
        );
        let read_err = |detail: String| ImportError::Read {
            keyspace: self.url.keyspace.clone(),
            table: table.to_string(),
            detail,
        };
        let mut statement = Statement::new(cql).with_page_size(PAGE_ROWS);
        statement.set_request_timeout(Some(REQUEST_TIMEOUT));
        self.runtime.block_on(async {
            let pager = self
                .session
                .query_iter(statement, ())
                .await
                .map_err(|e| read_err(one_line(e)))?;
            let mut rows = pager
                .rows_stream::<R>()
                .map_err(|e| read_err(one_line(e)))?;
            while let Some(row) = rows.next().await {
                each(decode(row.map_err(|e| read_err(one_line(e)))?));
            }
            Ok(())
        })
    }

    /// Every row of `bannerclickstream`.
    pub fn clickstream(&self, each: impl FnMut(ClickRow)) -> Result<(), ImportError> {
        type Raw = (
            String,
            String,
            CqlTimeuuid,
            String,
            Option<String>,
            Option<bool>,
            Option<String>,
            Option<String>,
        );
        self.read(
            CLICKSTREAM_TABLE,
            &CLICKSTREAM_COLUMNS,
            |(
                platform,
                slotname,
                operationdate,
                location,
                bannerid,
                clicked,
                customerid,
                adreferrer,
            ): Raw| {
                ClickRow {
                    platform,
                    slotname,
                    operationdate: operationdate.into(),
                    location,
                    bannerid,
                    clicked,
                    customerid,
                    adreferrer,
                }
            },
            each,
        )
    }

    /// Every row of `slotconfiguration`.
    pub fn slots(&self, each: impl FnMut(SlotRow)) -> Result<(), ImportError> {
        type Raw = (String, String, i64, String, Option<String>, Option<i64>);
        self.read(
            SLOTS_TABLE,
            &SLOTS_COLUMNS,
            |(platform, slotname, validto, imagekey, imagename, validfrom): Raw| SlotRow {
                platform,
                slotname,
                validto,
                imagekey,
                imagename,
                validfrom,
            },
            each,
        )
    }
}

/// A driver error on one line (some span several).
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prototype_urls() {
        assert_eq!(
            "cassandra://127.0.0.1:9042,c2:9043/cognitivebanners"
                .parse::<PrototypeUrl>()
                .unwrap(),
            PrototypeUrl {
                nodes: vec!["127.0.0.1:9042".into(), "c2:9043".into()],
                keyspace: "cognitivebanners".into(),
            }
        );
        for (url, rule) in [
            ("embedded:/x", "must be cassandra://"),
            ("cassandra://h:9042", "names no keyspace"),
            ("cassandra://h/ks", "node"),
            ("cassandra://h:9042/bad-name", "must match"),
        ] {
            let err = url.parse::<PrototypeUrl>().unwrap_err().to_string();
            assert!(err.contains(rule) && err.contains(url), "{err}");
        }
    }
}
