//! The one integration-test binary (each file under tests/ would be another binary
//! linking the whole crate). Every test drives the real HTTP server on an ephemeral
//! port; storage-facing tests run on SQLite and, when CONVERRA_TEST_DATABASE_URL is
//! set, on PostgreSQL too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod at_rest;
mod automations;
mod compliance;
mod daemon;
mod erasure;
mod fake_graph;
mod media;
mod messaging_limit;
mod notices;
mod outbound;
mod recovery;
mod retention;
mod smtp;
mod storage;
mod support;
mod webhook;
