//! Operator overrides: the YAML model (pure) and the file watcher.

pub mod file;
pub mod model;
pub mod watcher;

pub use model::{parse, EffectiveNode, Overrides, Source};

use crate::{
    config::Config,
    store::{is_postgres_url, PostgresStore, SqliteStore, Store},
};

/// `imroute check-config`: validates the overrides file with the same rules
/// and messages as a reload. References to stored nodes and strategies are
/// checked when the database exists; otherwise only the file itself is.
pub async fn check_file(config: &Config) -> Result<String, String> {
    let path = &config.overrides_path;
    let text = match file::read(path, config.limits.max_overrides_bytes) {
        Ok(Some(bytes)) => String::from_utf8(bytes)
            .map_err(|_| format!("{}: file is not valid UTF-8", path.display()))?,
        Ok(None) => return Ok(format!("no overrides file at {}", path.display())),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let parsed = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let stored = if is_postgres_url(&config.database_url) {
        // A shared database is expected to exist: not reaching it is an
        // error, not a reason to check less.
        let load = async {
            PostgresStore::connect_only(&config.database_url)
                .await?
                .load()
                .await
        };
        match load.await {
            Ok(stored) => Some(stored),
            Err(e) => {
                let mut msg = format!("cannot check against the database: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    msg.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                return Err(msg);
            }
        }
    } else {
        match SqliteStore::open_read_only(&config.database_url).await {
            Ok(store) => store.load().await.ok(),
            Err(_) => None,
        }
    };
    parsed
        .validate(stored.as_ref(), config.limits.max_uid_bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(match stored {
        Some(_) => format!("overrides file {} ok (checked against the database)", path.display()),
        None => format!(
            "overrides file {} ok (database not found: references to stored nodes and strategies not checked)",
            path.display()
        ),
    })
}
