//! One integration-test binary: the real server, real SQLite, real HTTP.

mod helpers;

mod bounded;
mod browser;
mod candidates;
mod cli;
mod cluster;
mod compat;
mod errors;
mod hardening;
mod health;
mod hostile;
mod nodes;
mod ops;
mod overrides;
mod pg;
mod plan;
mod proxy;
mod route;
mod spec;
mod store;
mod strategies;
mod ui;
