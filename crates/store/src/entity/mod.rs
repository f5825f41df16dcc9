//! SeaORM entities, one module per table. Rows are plain data: conversion to and from the
//! core's model types lives with the port implementations.

pub mod audit_events;
pub mod clients;
pub mod consents;
pub mod refresh_tokens;
pub mod revocation_log_meta;
pub mod revocations;
pub mod set_receivers;
pub mod signing_keys;
pub mod users;
