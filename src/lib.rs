//! imroute tells IM clients which gateway node to connect to.
//!
//! Layout:
//! - `routing/`   the pure core: an immutable `Table` and the strategy plugins
//!   (`hash`, `weighted`, `region`) over one rendezvous-hashing core.
//! - `control`    the one rebuild-and-swap path every change goes through.
//! - `store/`     the `Store` trait and its SQLite implementation.
//! - `overrides/` the YAML overrides model and its file watcher.
//! - `health/`    heartbeats, TCP probes and the health registry.
//! - `api/`       poem-openapi handlers, errors, auth, middleware.
//! - `app`        wires everything and runs the server.
//! - `server`     the accept loop, connection limits and timeouts, TLS.
//! - `supervise`  restarts background tasks that panic or end.
//! - `config`, `model`, `metrics`, `telemetry`: settings, domain types, Prometheus, logs.

pub mod api;
pub mod app;
pub mod config;
pub mod control;
pub mod health;
pub mod metrics;
pub mod model;
pub mod overrides;
pub mod routing;
pub mod server;
pub mod store;
pub mod supervise;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
