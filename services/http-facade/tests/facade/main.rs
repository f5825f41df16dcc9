//! Black-box tests of the HTTP facade: the real token service and the facade on free ports,
//! driven with raw HTTP requests (and a real browser), on SQLite + memory and on Postgres +
//! Redis. One test binary for the crate.

mod bad_input;
mod browser;
mod edges;
mod flows;
mod harness;
mod independent_client;
mod leaks;
mod malformed;
mod metrics;
mod openapi;
mod passwords;
mod standalone;
mod traces;
