//! Statements with fixed SQL text for the writer's hot path. diesel never caches its
//! own UPDATE or upsert builders (their SQL could vary), so every execution would be
//! parsed and planned again; the SQL here never varies, so each connection prepares it
//! once. On PostgreSQL one statement carries a whole batch through array parameters
//! (`unnest`, `= ANY`): a round trip and a plan per batch instead of per row.
//!
//! SQL is written with `?` where a parameter goes; diesel writes each backend's
//! placeholder. Each statement is a type of its own ([`fixed_statement!`]), so diesel
//! finds its prepared form by type; keyed by SQL text, every execution would build
//! the SQL string and hash it first.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Binary, Text, Untyped};
use diesel::sqlite::Sqlite;
use diesel::QueryResult;

/// One parameter. Arrays are PostgreSQL only.
pub enum Bind<'a> {
    Text(&'a str),
    BigInt(i64),
    Blob(&'a [u8]),
    TextArray(Vec<&'a str>),
    BigIntArray(Vec<i64>),
    BlobArray(Vec<&'a [u8]>),
}

/// A statement's SQL; implemented by the types [`fixed_statement!`] declares.
pub trait Sql: 'static {
    const SQL: &'static str;

    /// The statement with its parameters, in order.
    fn with(binds: Vec<Bind<'_>>) -> Fixed<'_, Self>
    where
        Self: Sized,
    {
        Fixed {
            binds,
            statement: PhantomData,
        }
    }
}

/// Declares a statement type: `fixed_statement!(Name = "SQL with ? placeholders");`
macro_rules! fixed_statement {
    ($(#[$meta:meta])* $name:ident = $sql:expr) => {
        $(#[$meta])*
        struct $name;
        impl $crate::storage::fixed::Sql for $name {
            const SQL: &'static str = $sql;
        }
    };
}

pub(crate) use fixed_statement;

/// A statement and its parameters. Load results into a `QueryableByName` type, or
/// execute it.
pub struct Fixed<'a, S> {
    binds: Vec<Bind<'a>>,
    statement: PhantomData<S>,
}

impl<'a, S: Sql> Fixed<'a, S> {
    /// Writes the SQL, handing each `?` and its parameter to `bind`.
    fn walk<'b, DB: diesel::backend::Backend>(
        &'b self,
        mut out: AstPass<'_, 'b, DB>,
        mut bind: impl FnMut(&mut AstPass<'_, 'b, DB>, &'b Bind<'a>) -> QueryResult<()>,
    ) -> QueryResult<()> {
        let mut binds = self.binds.iter();
        for (index, part) in S::SQL.split('?').enumerate() {
            if index > 0 {
                let value = binds.next().ok_or_else(|| mismatch(S::SQL))?;
                bind(&mut out, value)?;
            }
            out.push_sql(part);
        }
        if binds.next().is_some() {
            return Err(mismatch(S::SQL));
        }
        Ok(())
    }
}

fn mismatch(sql: &str) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!("parameters do not match the placeholders of: {sql}").into(),
    )
}

impl<S: Sql> QueryId for Fixed<'_, S> {
    type QueryId = S;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<S: Sql> Query for Fixed<'_, S> {
    type SqlType = Untyped;
}

impl<S, Conn> diesel::RunQueryDsl<Conn> for Fixed<'_, S> {}

impl<S: Sql> QueryFragment<Sqlite> for Fixed<'_, S> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        self.walk(out, |out, value| match value {
            Bind::Text(v) => out.push_bind_param::<Text, _>(v),
            Bind::BigInt(v) => out.push_bind_param::<BigInt, _>(v),
            Bind::Blob(v) => out.push_bind_param::<Binary, _>(v),
            Bind::TextArray(_) | Bind::BigIntArray(_) | Bind::BlobArray(_) => {
                Err(diesel::result::Error::QueryBuilderError(
                    "array parameters are PostgreSQL only".into(),
                ))
            }
        })
    }
}

impl<S: Sql> QueryFragment<Pg> for Fixed<'_, S> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.walk(out, |out, value| match value {
            Bind::Text(v) => out.push_bind_param::<Text, _>(v),
            Bind::BigInt(v) => out.push_bind_param::<BigInt, _>(v),
            Bind::Blob(v) => out.push_bind_param::<Binary, _>(v),
            Bind::TextArray(v) => out.push_bind_param::<Array<Text>, _>(v),
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
