//! A PostgreSQL database of its own for one test: created on the server
//! named by `IMROUTE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped afterwards.
//! Where no server answers, the test is skipped with a printed reason, unless
//! `IMROUTE_REQUIRE_POSTGRES=1` (as in CI), which makes it fail instead.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use sqlx::{Connection, Executor, PgConnection};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn server_url() -> String {
    std::env::var("IMROUTE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

fn required() -> bool {
    std::env::var("IMROUTE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// `url` with its database replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    server: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A fresh, empty database; `None` (with the reason printed) when no
    /// server answers and PostgreSQL is not required.
    pub async fn create(test: &str) -> Option<TestDb> {
        let server = server_url();
        let conn =
            tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&server)).await;
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 5 s".into(),
                };
                if required() {
                    panic!("IMROUTE_REQUIRE_POSTGRES=1 but PostgreSQL at {server} is not reachable: {why}");
                }
                eprintln!("SKIPPED {test}: PostgreSQL at {server} is not reachable ({why}); set IMROUTE_TEST_POSTGRES_URL");
                return None;
            }
        };
        let name = format!(
            "imroute_test_{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the test database");
        let _ = conn.close().await;
        Some(TestDb {
            url: with_database(&server, &name),
            name,
            server,
        })
    }

    /// Terminates every connection to the test database but the caller's.
    pub async fn terminate_all(&self) -> u64 {
        let mut conn = PgConnection::connect(&self.server).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) t",
        )
        .bind(&self.name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        n as u64
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&server).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

#[test]
fn urls_get_their_database_replaced() {
    assert_eq!(
        with_database("postgres://u@h:5432/postgres", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h:5432", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
        "postgresql://u:p@h/x?sslmode=disable"
    );
}
