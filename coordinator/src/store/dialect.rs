//! Every difference between the SQLite and PostgreSQL SQL the store issues, in one place:
//! the clock expression, how a write transaction starts, row locking for claims, whether a
//! statement may write in its WITH clause, and URL handling. The statements themselves are
//! written once, in the store's modules, with `{now}` standing for the clock,
//! `{skip_locked}` for claim locking, `{json $N: col TYPE, …}` for a table of rows sent as
//! one JSON array parameter (how a batch of many requests travels in one statement, see
//! `store/batch/`) and `{in_ids $N}` for membership in those rows' ids.
//!
//! How connections are opened and their sessions set up is `store/pool.rs`; the rules the
//! statements apply are `store/sql.rs`.

use super::Error;

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Embedded, one process.
    Sqlite,
    /// Production; several coordinators may share one database.
    Postgres,
}

impl Dialect {
    /// Recognises `sqlite:` and `postgres:`/`postgresql:` URLs.
    pub fn from_url(url: &str) -> Result<Dialect, Error> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Dialect::Postgres)
        } else {
            Err(Error::UnsupportedUrl(redact(url)))
        }
    }

    /// Epoch milliseconds from the one clock: PostgreSQL's own for every coordinator sharing
    /// it; for SQLite, the single process's. Stable within one statement on both.
    fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Dialect::Postgres => "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT",
        }
    }

    /// SQLite must take the write lock up front: a deferred transaction that reads and then
    /// writes can fail with SQLITE_BUSY instead of waiting.
    pub fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Several coordinators claim from one PostgreSQL table without waiting on each other;
    /// SQLite has one writer at a time, so its conditional UPDATE needs no row locks.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        }
    }

    /// Turns a statement template into this dialect's SQL. Called once per statement and
    /// dialect per process; the result lives as long as a string literal would.
    pub fn render(self, template: &str) -> &'static str {
        let mut sql = template
            .replace("{now}", self.now_ms())
            .replace("{skip_locked}", self.skip_locked());
        for (tag, expand) in [
            ("{json ", Dialect::json_rows as fn(Dialect, &str) -> String),
            ("{in_ids ", Dialect::in_ids),
        ] {
            while let Some(start) = sql.find(tag) {
                let end = start
                    + sql[start..]
                        .find('}')
                        .unwrap_or_else(|| panic!("unclosed {tag}…}} in {template}"));
                let expanded = expand(self, &sql[start + tag.len()..end]);
                sql.replace_range(start..=end, &expanded);
            }
        }
        Box::leak(sql.into_boxed_str())
    }

    /// `{in_ids $N}`: membership in the `id` keys of the JSON rows in `$N`, written so that
    /// the lookup can use the table's primary key. (Joined on its own, PostgreSQL plans a
    /// JSON row source as 100 rows and, before the first ANALYZE of a young table, scans
    /// the whole table to hash-join them.) PostgreSQL counts the array as ten ids whatever
    /// its length, so another index that looks cheaper can still win; `store/batch/writes.rs`
    /// keeps the partial due-work index out of reach where that happened.
    fn in_ids(self, param: &str) -> String {
        let param = param.trim();
        match self {
            Dialect::Postgres => format!(
                "= ANY (ARRAY(SELECT r.id FROM json_to_recordset({param}::json) AS r(id TEXT)))"
            ),
            Dialect::Sqlite => {
                format!("IN (SELECT json_extract(value, '$.id') FROM json_each({param}))")
            }
        }
    }

    /// Whether a statement can write in its WITH clause (PostgreSQL), so that a batch that
    /// writes two tables is one statement and one round trip. SQLite runs the two
    /// statements in one transaction instead, which costs nothing extra in-process.
    pub fn writable_cte(self) -> bool {
        self == Dialect::Postgres
    }

    /// A derived table of the rows in a JSON array parameter, from a spec like
    /// `$1: id TEXT, n BIGINT, payload BYTEA`: one row per array element, one column per
    /// key named in the spec (other keys are ignored). BYTEA values travel as hex strings.
    /// One parameter carries any number of rows, so a batch of any size is one prepared
    /// statement.
    fn json_rows(self, spec: &str) -> String {
        let (param, columns) = spec
            .split_once(':')
            .unwrap_or_else(|| panic!("{{json {spec}}} names no columns"));
        let columns: Vec<(&str, &str)> = columns
            .split(',')
            .map(|column| {
                column
                    .trim()
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{{json {spec}}}: column {column:?} has no type"))
            })
            .collect();
        let param = param.trim();
        match self {
            Dialect::Postgres => {
                let select: Vec<String> = columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        "BYTEA" => format!("decode(r.{name}, 'hex') AS {name}"),
                        _ => format!("r.{name}"),
                    })
                    .collect();
                let record: Vec<String> = columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        "BYTEA" => format!("{name} TEXT"),
                        _ => format!("{name} {kind}"),
                    })
                    .collect();
                format!(
                    "(SELECT {} FROM json_to_recordset({param}::json) AS r({}))",
                    select.join(", "),
                    record.join(", ")
                )
            }
            Dialect::Sqlite => {
                let select: Vec<String> = columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        "BYTEA" => format!("unhex(json_extract(value, '$.{name}')) AS {name}"),
                        _ => format!("json_extract(value, '$.{name}') AS {name}"),
                    })
                    .collect();
                format!("(SELECT {} FROM json_each({param}))", select.join(", "))
            }
        }
    }
}

/// A URL fit for logs and errors: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://settle.db"), "sqlite://settle.db");
    }

    #[test]
    fn recognises_urls() {
        assert_eq!(
            Dialect::from_url("sqlite://x.db").ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            Dialect::from_url("postgresql://h/db").ok(),
            Some(Dialect::Postgres)
        );
        assert!(Dialect::from_url("mysql://h/db").is_err());
    }
}
