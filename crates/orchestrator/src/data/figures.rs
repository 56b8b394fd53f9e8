//! What a database holds, table by table: the row count, and for tables up
//! to [`CHECKSUM_ROWS`] rows the md5 of their rows in a fixed order. A
//! backup records them from the snapshot it was taken in; its check
//! restores it elsewhere and computes them again: equal figures are what
//! "this file restores to what was there" means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

/// Tables with more rows than this get a count only: sorting every row of a
/// big table for its checksum costs more than a backup should.
pub(crate) const CHECKSUM_ROWS: i64 = 200_000;

/// One table's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TableFigures {
    pub rows: i64,
    /// md5 of the rows' text, sorted bytewise, one per line; `None` above
    /// [`CHECKSUM_ROWS`].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub md5: Option<String>,
}

/// Every table (quoted `schema.table`) and its figures.
pub(crate) type Figures = BTreeMap<String, TableFigures>;

/// The figures of the database `client` is connected to, as of its
/// transaction's snapshot.
pub(crate) async fn compute<C: GenericClient>(
    client: &C,
) -> Result<Figures, tokio_postgres::Error> {
    let tables = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND c.relpersistence <> 't'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
             ORDER BY 1",
            &[],
        )
        .await?;
    let mut figures = Figures::new();
    for row in tables {
        // Quoted by the server: safe to put into the statement.
        let table: String = row.get(0);
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        let md5 = if rows <= CHECKSUM_ROWS {
            let row = client
                .query_one(
                    &format!(
                        "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE \"C\"), ''))
                         FROM {table} t"
                    ),
                    &[],
                )
                .await?;
            Some(row.get(0))
        } else {
            None
        };
        figures.insert(table, TableFigures { rows, md5 });
    }
    Ok(figures)
}

/// How `got` differs from `want`, in one sentence per table; empty when
/// they agree.
pub(crate) fn differences(want: &Figures, got: &Figures) -> Vec<String> {
    let mut out = Vec::new();
    for (table, w) in want {
        match got.get(table) {
            None => out.push(format!("{table} is missing")),
            Some(g) if g.rows != w.rows => {
                out.push(format!("{table} has {} rows instead of {}", g.rows, w.rows));
            }
            Some(g) if g.md5.is_some() && w.md5.is_some() && g.md5 != w.md5 => {
                out.push(format!(
                    "{table} has other rows (md5 {} instead of {})",
                    g.md5.as_deref().unwrap_or(""),
                    w.md5.as_deref().unwrap_or("")
                ));
            }
            Some(_) => {}
        }
    }
    for table in got.keys().filter(|t| !want.contains_key(*t)) {
        out.push(format!("{table} was not there"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rows: i64, md5: Option<&str>) -> TableFigures {
        TableFigures {
            rows,
            md5: md5.map(str::to_owned),
        }
    }

    #[test]
    fn differences_name_each_table() {
        let want: Figures = [
            ("public.a".to_owned(), f(3, Some("x"))),
            ("public.b".to_owned(), f(2, None)),
            ("public.c".to_owned(), f(1, Some("y"))),
        ]
        .into();
        assert!(differences(&want, &want).is_empty());
        let got: Figures = [
            ("public.a".to_owned(), f(3, Some("z"))),
            ("public.b".to_owned(), f(1, None)),
            ("public.d".to_owned(), f(0, Some("w"))),
        ]
        .into();
        assert_eq!(
            differences(&want, &got),
            [
                "public.a has other rows (md5 z instead of x)",
                "public.b has 1 rows instead of 2",
                "public.c is missing",
                "public.d was not there",
            ]
        );
        // A checksum only one side has is not a difference.
        let counted: Figures = [("public.a".to_owned(), f(3, None))].into();
        let summed: Figures = [("public.a".to_owned(), f(3, Some("x")))].into();
        assert!(differences(&summed, &counted).is_empty());
    }
}
