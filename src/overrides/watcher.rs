//! Watches the overrides file's folder (not the file: editors that save by
//! rename, `mv` over the file, files created after start and Kubernetes
//! ConfigMap mounts, which swap a `..data` symlink and never touch the file's
//! own name, all show up as events on the folder), waits for writes to
//! settle, then reloads through the control plane when the content differs
//! from what was last loaded or tried. Initial load and reload share that one
//! path.
//!
//! Events are only hints. Every burst, and a timer every [`RECHECK`], reads
//! the file and compares its hash, and re-arms the watch when the folder was
//! removed or replaced: an inotify watch dies with its folder, and some
//! changes (a write through a hard link elsewhere, a bind mount updated from
//! outside) raise no event in the folder at all.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{
    event::{AccessKind, AccessMode},
    EventKind, RecommendedWatcher, RecursiveMode, Watcher,
};
use tokio::sync::mpsc;
use xxhash_rust::xxh3::xxh3_64;

use crate::{
    control::{Controller, OverridesStatus},
    store::Actor,
};

/// How long the folder must be quiet before a reload: editors write in bursts.
pub const SETTLE: Duration = Duration::from_millis(200);
/// The longest a reload waits after the first change of a burst, so a file
/// that keeps changing is still picked up well within a second.
pub const MAX_DELAY: Duration = Duration::from_millis(700);
/// How often the file is re-read and the watch re-checked whatever the events
/// say, so a change no event reported is picked up within two periods.
pub const RECHECK: Duration = Duration::from_secs(5);
/// The pause before a watcher task that panicked or ended is started again,
/// so a task that fails at once does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Keeps the watcher running; dropping it stops the watcher.
pub struct WatcherHandle {
    _task: AbortOnDrop,
}

use crate::supervise::{supervise, AbortOnDrop};

/// Starts the watcher; it lives as long as the returned handle. Fails when the
/// folder cannot be watched at start; later failures are logged and retried.
pub fn spawn(ctl: Arc<Controller>) -> Result<WatcherHandle, notify::Error> {
    let path = ctl.overrides_status().path.clone();
    let dir = folder_of(&path);
    if let Err(error) = std::fs::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %error, "Cannot create the overrides folder");
    }
    let mut first = Watch::new(ctl.clone());
    first.arm()?;
    tracing::info!(path = %path.display(), "Watching the overrides file");
    let mut first = Some(first);
    let restarts = ctl.metrics.task_restarts.with_label_values(&["watcher"]);
    let task = supervise(
        "overrides watcher",
        RESTART_DELAY,
        || false,
        move || restarts.inc(),
        move || {
            first
                .take()
                .unwrap_or_else(|| Watch::new(ctl.clone()))
                .run()
        },
    );
    Ok(WatcherHandle {
        _task: AbortOnDrop(task),
    })
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What the file holds, as far as deciding to reload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fingerprint {
    Absent,
    /// xxh3 of the bytes, as `reload_overrides` computes the revision.
    Content(u64),
    /// The read failed; the same failure again is not a change.
    Unreadable(std::io::ErrorKind),
}

impl Fingerprint {
    /// Reads the file (through symlinks; only a regular file, within the
    /// size limit) on a blocking thread and hashes it.
    async fn of(path: &Path, max: u64) -> Fingerprint {
        let path = path.to_owned();
        let read = tokio::task::spawn_blocking(move || super::file::read(&path, max)).await;
        match read {
            Ok(Ok(Some(bytes))) => Fingerprint::Content(xxh3_64(&bytes)),
            Ok(Ok(None)) => Fingerprint::Absent,
            Ok(Err(super::file::ReadError::Io(kind))) => Fingerprint::Unreadable(kind),
            Ok(Err(_)) | Err(_) => Fingerprint::Unreadable(std::io::ErrorKind::InvalidData),
        }
    }

    /// The revision `reload_overrides` reports after loading this content.
    fn revision(self) -> Option<String> {
        match self {
            Fingerprint::Absent => Some(String::new()),
            Fingerprint::Content(hash) => Some(format!("{hash:016x}")),
            Fingerprint::Unreadable(_) => None,
        }
    }
}

/// The content the watcher last loaded or tried to load, good or bad, so the
/// same content is neither reloaded, logged nor counted twice.
#[derive(Debug, Default)]
struct LastSeen(Option<Fingerprint>);

impl LastSeen {
    /// Whether `now` needs a reload; remembers it either way.
    fn needs_reload(&mut self, now: Fingerprint, status: &OverridesStatus) -> bool {
        if self.0.replace(now) == Some(now) {
            return false;
        }
        // Already in effect: loaded at start, or by the admin API or SIGHUP.
        !(status.error.is_none() && now.revision().as_deref() == Some(status.revision.as_str()))
    }
}

/// What the notify watcher is set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The overrides folder. A folder removed and created again at the same
    /// path is another inode, which an inotify watch does not follow.
    Folder(FileId),
    /// The folder's parent while the folder is missing, to see it come back.
    Parent(FileId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

/// The identity of what `path` names now (following symlinks), if it exists.
#[cfg(unix)]
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileId(meta.dev(), meta.ino()))
}

/// Elsewhere only presence is tracked: a folder recreated between two checks
/// keeps its dead watch, and the timer alone sees changes in it.
#[cfg(not(unix))]
fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|_| FileId(0, 0))
}

/// One run of the watcher: its watch, its event channel and what it last saw.
/// A restart after a panic starts from a fresh one.
struct Watch {
    ctl: Arc<Controller>,
    path: PathBuf,
    tx: mpsc::UnboundedSender<()>,
    rx: mpsc::UnboundedReceiver<()>,
    armed: Option<(Target, RecommendedWatcher)>,
    last: LastSeen,
}

impl Watch {
    fn new(ctl: Arc<Controller>) -> Watch {
        let path = ctl.overrides_status().path.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        Watch {
            ctl,
            path,
            tx,
            rx,
            armed: None,
            last: LastSeen::default(),
        }
    }

    /// Sets the watch on the folder as it is now: again when it was replaced,
    /// on its parent while it is missing, and nowhere (the timer alone) when
    /// the parent is missing too. Does nothing when already set right.
    fn arm(&mut self) -> Result<(), notify::Error> {
        let dir = folder_of(&self.path);
        let wanted = match file_id(dir) {
            Some(id) => Some((Target::Folder(id), dir)),
            None => {
                let parent = folder_of(dir);
                file_id(parent).map(|id| (Target::Parent(id), parent))
            }
        };
        let current = self.armed.as_ref().map(|(target, _)| *target);
        if current == wanted.map(|(target, _)| target) {
            return Ok(());
        }
        // The old watch, if any, is dead or watching the wrong thing.
        self.armed = None;
        let Some((target, at)) = wanted else {
            tracing::warn!(dir = %dir.display(), "The overrides folder and its parent are missing; checking every few seconds");
            return Ok(());
        };
        let tx = self.tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    // Opening and reading (ours included) change nothing.
                    Ok(event)
                        if matches!(event.kind, EventKind::Access(kind)
                            if kind != AccessKind::Close(AccessMode::Write)) => {}
                    Ok(_) => {
                        let _ = tx.send(());
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "Overrides watcher error");
                        let _ = tx.send(());
                    }
                }
            })?;
        watcher.watch(at, RecursiveMode::NonRecursive)?;
        match (current, target) {
            (None, Target::Folder(_)) => {}
            (Some(_), Target::Folder(_)) => {
                tracing::info!(dir = %dir.display(), "Watching the overrides folder again");
            }
            (_, Target::Parent(_)) => {
                tracing::warn!(dir = %dir.display(), "The overrides folder is missing; waiting for it to come back");
            }
        }
        self.armed = Some((target, watcher));
        Ok(())
    }

    /// [`Watch::arm`], logging a failure: the next event or tick retries.
    fn rearm(&mut self) {
        if let Err(error) = self.arm() {
            tracing::error!(error = %error, "Cannot watch the overrides folder; checking every few seconds");
        }
    }

    async fn run(mut self) {
        self.rearm();
        // The watch is set before this read, so any later change is seen. A
        // failed load at start left no record of what it read: take the
        // content now as that attempt rather than log and count it again.
        if self.ctl.overrides_status().error.is_some() {
            self.last = LastSeen(Some(
                Fingerprint::of(&self.path, self.ctl.limits.max_overrides_bytes).await,
            ));
        }
        // The first tick is at once: a change between the load at start (or
        // a crash of the previous run) and the watch being set is seen now.
        let mut timer = tokio::time::interval(RECHECK);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    self.settle().await;
                }
                _ = timer.tick() => {}
            }
            self.rearm();
            self.reload_if_changed().await;
        }
    }

    /// Keeps draining events until the folder is quiet for SETTLE, but no
    /// longer than MAX_DELAY after the first one.
    async fn settle(&mut self) {
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let wait = SETTLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                _ => return,
            }
        }
    }

    /// A read and a hash; a reload only when the content is new. The reload
    /// reads the file again itself (and parses it on a blocking thread): a
    /// change in between is seen next time.
    async fn reload_if_changed(&mut self) {
        let now = Fingerprint::of(&self.path, self.ctl.limits.max_overrides_bytes).await;
        if self.last.needs_reload(now, &self.ctl.overrides_status()) {
            let _ = self
                .ctl
                .reload_overrides(&Actor {
                    request_id: "watcher".into(),
                    kind: crate::store::ActorKind::System,
                })
                .await;
        }
    }
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
                    kind: crate::store::ActorKind::System,
                })
                .await;
        }
    });
}

#[cfg(not(unix))]
pub fn spawn_sighup(_ctl: Arc<Controller>) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overrides::Overrides;

    fn status(revision: &str, error: Option<&str>) -> OverridesStatus {
        OverridesStatus {
            path: "overrides.yaml".into(),
            revision: revision.into(),
            loaded_at: None,
            error: error.map(Into::into),
            effective: Arc::new(Overrides::default()),
        }
    }

    #[test]
    fn the_same_content_is_tried_once_good_or_bad() {
        let mut last = LastSeen::default();
        let ok = status("", None);
        let bad = Fingerprint::Content(7);
        assert!(last.needs_reload(bad, &ok));
        let failed = status("", Some("pins.vip: unknown node"));
        assert!(!last.needs_reload(bad, &failed), "no retry every tick");
        assert!(last.needs_reload(Fingerprint::Absent, &failed));
        let unreadable = Fingerprint::Unreadable(std::io::ErrorKind::PermissionDenied);
        assert!(last.needs_reload(unreadable, &ok));
        assert!(!last.needs_reload(unreadable, &ok));
    }

    #[test]
    fn content_already_in_effect_is_not_reloaded() {
        let hash = xxh3_64(b"pins: {vip: gw-1}\n");
        let in_effect = status(&format!("{hash:016x}"), None);
        assert!(!LastSeen::default().needs_reload(Fingerprint::Content(hash), &in_effect));
        assert!(!LastSeen::default().needs_reload(Fingerprint::Absent, &status("", None)));
        // In effect but the last attempt failed: loading it again clears the error.
        let after_error = status(&format!("{hash:016x}"), Some("bad"));
        assert!(LastSeen::default().needs_reload(Fingerprint::Content(hash), &after_error));
    }
}
