//! Builds the application from a config and runs it.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;

use crate::{
    api::{auth::generate_token, build_app, AppState},
    config::Config,
    control::{tasks, Controller, Identity},
    metrics::Metrics,
    overrides::watcher,
    server::{self, Bound, ConnLimits, Role, Tls, TlsError},
    store::{self, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the database: {0}{cause}", cause = cause(.0))]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot watch the overrides file: {0}")]
    Watch(#[from] notify::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    admin: Option<(TcpListener, SocketAddr)>,
    tls: Option<Arc<Tls>>,
    limits: ConnLimits,
    state: Arc<AppState>,
    _watcher: watcher::WatcherHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Opens the store, builds the first routing table, starts the watcher and
    /// health tasks, and binds the listener (port 0 picks a free port).
    pub async fn build(config: Config) -> Result<Application, AppError> {
        tracing::info!(config = ?config.redacted(), "Starting imroute {}", env!("CARGO_PKG_VERSION"));
        // Bind first: the replica's default name carries the port.
        let (listener, addr) = bind(&config.listen).await?;
        let admin = match &config.admin_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let tls = match config.tls.paths() {
            Some((cert, key)) => Some(Tls::load(cert, key)?),
            None => None,
        };
        let fd_limit = server::descriptor_limit();
        let cap = server::connection_cap(config.limits.max_connections, fd_limit);
        if cap < config.limits.max_connections {
            tracing::warn!(
                fd_limit,
                max_connections = cap,
                configured = config.limits.max_connections,
                "limits.max_connections lowered to fit the file descriptor limit"
            );
        } else {
            tracing::info!(fd_limit, max_connections = cap, "Connection limit");
        }
        let limits = ConnLimits {
            header_timeout: Duration::from_millis(config.limits.header_timeout_ms),
            idle_timeout: Duration::from_millis(config.limits.idle_timeout_ms),
            max_connections: cap,
        };
        let access = crate::api::AdminAccess {
            separate: admin.is_some(),
            allow: config.admin_networks().map_err(|e| AppError::Listen {
                addr: "admin_allow".into(),
                source: std::io::Error::other(e),
            })?,
        };
        let me = Identity {
            id: config
                .cluster
                .replica_id
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), addr.port())),
            addr: config
                .cluster
                .advertise_addr
                .clone()
                .unwrap_or_else(|| addr.to_string()),
            started_at: crate::store::now_rfc3339(),
        };
        let store = store::open(&config.database_url).await?;
        tracing::info!(store = store.kind(), replica = %me.id, "Store open");
        let metrics = Arc::new(Metrics::new());
        let ctl = Controller::start(&config, store, metrics, me).await?;
        let token = match &config.admin_token {
            Some(token) => token.clone(),
            None => {
                let token = generate_token();
                tracing::warn!(
                    admin_token = %token,
                    "No admin token configured (IMROUTE_ADMIN_TOKEN or admin_token); generated one for this run"
                );
                token
            }
        };
        let watcher = watcher::spawn(ctl.clone())?;
        watcher::spawn_sighup(ctl.clone());
        let tasks = tasks::spawn_all(&ctl);
        match &admin {
            Some((_, admin_addr)) => {
                tracing::info!(%addr, %admin_addr, tls = tls.is_some(), "Listening")
            }
            None => tracing::info!(%addr, tls = tls.is_some(), "Listening"),
        }
        Ok(Application {
            listener,
            addr,
            admin,
            tls,
            limits,
            state: Arc::new(AppState {
                ctl,
                token,
                access,
                body_timeout: Duration::from_millis(config.limits.body_timeout_ms),
                trusted_proxies: config.proxy_networks().map_err(|e| AppError::Listen {
                    addr: "trusted_proxies".into(),
                    source: std::io::Error::other(e),
                })?,
                body_budget: Arc::new(tokio::sync::Semaphore::new(crate::api::body_budget_kib(
                    config.limits.max_body_bytes,
                ))),
                answer_budget: Arc::new(tokio::sync::Semaphore::new(crate::api::ANSWER_BUDGET_KIB)),
                admin_body_budget: Arc::new(tokio::sync::Semaphore::new(
                    crate::api::body_budget_kib(config.limits.max_body_bytes),
                )),
                cors: crate::api::cors::Cors {
                    public: crate::api::cors::Origins::from_config(&config.cors_origins),
                    admin: crate::api::cors::Origins::from_config(&config.admin_cors_origins),
                },
            }),
            _watcher: watcher,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.1)
    }

    pub fn admin_token(&self) -> &str {
        &self.state.token
    }

    /// The state handlers share (for serving a second view of the same app).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// requests in flight finish (up to 30 s).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let app = build_app(self.state.clone());
        let mut listeners = vec![Bound {
            listener: self.listener,
            role: Role::Public,
            allow: Vec::new(),
        }];
        if let Some((listener, _)) = self.admin {
            // The admin listener serves admins only: others are turned away
            // at the door, before they hold a slot.
            listeners.push(Bound {
                listener,
                role: Role::Admin,
                allow: self.state.access.allow.clone(),
            });
        }
        let metrics = self.state.ctl.metrics.clone();
        let result = server::serve(app, listeners, self.limits, self.tls, metrics, shutdown).await;
        self.state.ctl.stop();
        // Tasks stop at their next step; one stuck on an unreachable store is
        // not waited for past a few seconds.
        let tasks = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks).await;
        self.state.ctl.leave().await;
        tracing::info!("Stopped");
        result
    }
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), AppError> {
    let failed = |source| AppError::Listen {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// The cause chain of an error, for the one line that says why start failed
/// (database URLs are never part of it: sqlx does not quote them).
fn cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// The machine's host name, for the default replica id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "imroute".into())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("Shutdown signal received; finishing requests in flight");
}
