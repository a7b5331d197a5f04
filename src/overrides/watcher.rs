//! Watches the overrides file's folder (not the file: editors that save by
//! rename, `mv` over the file, and files created after start all show up as
//! events on the folder), waits for writes to settle, then reloads through the
//! control plane. Initial load and reload share that one path.

use std::{path::Path, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{control::Controller, store::Actor};

/// How long the folder must be quiet before a reload: editors write in bursts.
pub const SETTLE: Duration = Duration::from_millis(200);
/// The longest a reload waits after the first change of a burst, so a file
/// that keeps changing is still picked up well within a second.
pub const MAX_DELAY: Duration = Duration::from_millis(700);

/// Starts the watcher; it lives as long as the returned handle.
pub fn spawn(ctl: Arc<Controller>) -> Result<notify::RecommendedWatcher, notify::Error> {
    let path = ctl.overrides_status().path.clone();
    let file_name = path.file_name().map(|n| n.to_owned());
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => Path::new(".").to_owned(),
    };
    if let Err(error) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %error, "Cannot create the overrides folder");
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let ours = event.need_rescan()
                    || event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == file_name.as_deref());
                if ours {
                    let _ = tx.send(());
                }
            }
            Err(error) => tracing::warn!(error = %error, "Overrides watcher error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Settle: keep draining until the folder is quiet for SETTLE, but
            // no longer than MAX_DELAY after the first event.
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                let wait =
                    SETTLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                    Ok(Some(())) => break,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let _ = ctl
                .reload_overrides(&Actor {
                    request_id: "watcher".into(),
                })
                .await;
        }
    });
    tracing::info!(path = %path.display(), "Watching the overrides file");
    Ok(watcher)
}

/// Reloads on SIGHUP.
#[cfg(unix)]
pub fn spawn_sighup(ctl: Arc<Controller>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("Cannot listen for SIGHUP");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading overrides");
            let _ = ctl
                .reload_overrides(&Actor {
                    request_id: "sighup".into(),
                })
                .await;
        }
    });
}

#[cfg(not(unix))]
pub fn spawn_sighup(_ctl: Arc<Controller>) {}
