//! Statements with fixed SQL text for the writer's hot path. diesel never caches its
//! own UPDATE or upsert builders (their SQL could vary), so every execution would be
//! parsed and planned again; the SQL here never varies, so each connection prepares it
//! once. On PostgreSQL one statement carries a whole batch through array parameters
//! (`unnest`, `= ANY`): a round trip and a plan per batch instead of per row.
//!
//! SQL is written with `?` where a parameter goes; diesel writes each backend's
//! placeholder.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Binary, Nullable, Text, Untyped};
use diesel::sqlite::Sqlite;
use diesel::QueryResult;

/// One parameter. Arrays are PostgreSQL only.
pub enum Bind<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    BigInt(i64),
    Blob(&'a [u8]),
    TextArray(Vec<&'a str>),
    OptTextArray(Vec<Option<&'a str>>),
    BigIntArray(Vec<i64>),
    BlobArray(Vec<&'a [u8]>),
}

/// A statement: fixed SQL and its parameters, in order. Load results into a
/// `QueryableByName` type, or execute it.
pub struct Fixed<'a> {
    sql: &'static str,
    binds: Vec<Bind<'a>>,
}

impl<'a> Fixed<'a> {
    pub fn new(sql: &'static str, binds: Vec<Bind<'a>>) -> Self {
        Fixed { sql, binds }
    }

    /// Writes the SQL, handing each `?` and its parameter to `bind`.
    fn walk<'b, DB: diesel::backend::Backend>(
        &'b self,
        mut out: AstPass<'_, 'b, DB>,
        mut bind: impl FnMut(&mut AstPass<'_, 'b, DB>, &'b Bind<'a>) -> QueryResult<()>,
    ) -> QueryResult<()> {
        let mut binds = self.binds.iter();
        for (index, part) in self.sql.split('?').enumerate() {
            if index > 0 {
                let value = binds.next().ok_or_else(|| mismatch(self.sql))?;
                bind(&mut out, value)?;
            }
            out.push_sql(part);
        }
        if binds.next().is_some() {
            return Err(mismatch(self.sql));
        }
        Ok(())
    }
}

fn mismatch(sql: &str) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!("parameters do not match the placeholders of: {sql}").into(),
    )
}

impl QueryId for Fixed<'_> {
    // Not static: diesel caches the prepared statement by its SQL text instead.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Fixed<'_> {
    type SqlType = Untyped;
}

impl<Conn> diesel::RunQueryDsl<Conn> for Fixed<'_> {}

impl QueryFragment<Sqlite> for Fixed<'_> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        self.walk(out, |out, value| match value {
            Bind::Text(v) => out.push_bind_param::<Text, _>(v),
            Bind::OptText(v) => out.push_bind_param::<Nullable<Text>, _>(v),
            Bind::BigInt(v) => out.push_bind_param::<BigInt, _>(v),
            Bind::Blob(v) => out.push_bind_param::<Binary, _>(v),
            Bind::TextArray(_)
            | Bind::OptTextArray(_)
            | Bind::BigIntArray(_)
            | Bind::BlobArray(_) => Err(diesel::result::Error::QueryBuilderError(
                "array parameters are PostgreSQL only".into(),
            )),
        })
    }
}

impl QueryFragment<Pg> for Fixed<'_> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.walk(out, |out, value| match value {
            Bind::Text(v) => out.push_bind_param::<Text, _>(v),
            Bind::OptText(v) => out.push_bind_param::<Nullable<Text>, _>(v),
            Bind::BigInt(v) => out.push_bind_param::<BigInt, _>(v),
            Bind::Blob(v) => out.push_bind_param::<Binary, _>(v),
            Bind::TextArray(v) => out.push_bind_param::<Array<Text>, _>(v),
            Bind::OptTextArray(v) => out.push_bind_param::<Array<Nullable<Text>>, _>(v),
            Bind::BigIntArray(v) => out.push_bind_param::<Array<BigInt>, _>(v),
            Bind::BlobArray(v) => out.push_bind_param::<Array<Binary>, _>(v),
        })
    }
}

/// A single `id` column of a `RETURNING` clause.
#[derive(diesel::QueryableByName)]
pub struct ReturnedId {
    #[diesel(sql_type = Text)]
    pub id: String,
}
