//! The ids of revoked tasks: a message whose id is here is not run; REVOKED is stored.
//!
//! Celery keeps them in a `LimitedSet` (at most 50,000 ids, each forgotten after three
//! hours) filled by the `revoke` remote-control command, and with `--statedb` writes them to
//! a file so revocations survive a restart. [`RevokedIds`] is that set and the hook remote
//! control will fill; [`RevokedIds::with_state_file`] keeps it in a JSON file.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Celery's `REVOKES_MAX`: ids kept at most.
pub const REVOKES_MAX: usize = 50_000;

/// Celery's `REVOKE_EXPIRES`: how long an id is kept.
pub const REVOKE_EXPIRES: Duration = Duration::from_secs(10_800);

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("revoked-tasks state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file this worker wrote.
    #[error("revoked-tasks state file {path} cannot be read: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What did not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// The set of revoked task ids; cheap to clone (clones share the set).
///
/// ```
/// use celeriac::worker::RevokedIds;
/// let revoked = RevokedIds::new();
/// revoked.revoke(["3b1c..."]).unwrap();
/// assert!(revoked.contains("3b1c..."));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RevokedIds {
    inner: Arc<Mutex<Set>>,
    file: Option<Arc<PathBuf>>,
}

#[derive(Debug, Default)]
struct Set {
    /// id → when it was revoked.
    ids: HashMap<String, DateTime<Utc>>,
}

/// The file's shape: `{"revoked": {"<id>": "<when, RFC 3339>"}}`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    revoked: BTreeMap<String, DateTime<Utc>>,
}

impl RevokedIds {
    /// An empty set kept in memory only.
    pub fn new() -> RevokedIds {
        RevokedIds::default()
    }

    /// A set kept in `path` (Celery's `--statedb`): read now (a missing file is an empty
    /// set; ids older than [`REVOKE_EXPIRES`] are dropped) and written on every change.
    pub fn with_state_file(path: impl AsRef<Path>) -> Result<RevokedIds, StateError> {
        let path = path.as_ref().to_path_buf();
        let mut set = Set::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state: StateFile =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Format {
                        path: path.clone(),
                        source,
                    })?;
                set.ids.extend(state.revoked);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Io { path, source }),
        }
        set.purge(Utc::now());
        Ok(RevokedIds {
            inner: Arc::new(Mutex::new(set)),
            file: Some(Arc::new(path)),
        })
    }

    /// Revoke these ids (and write the state file, when there is one).
    pub fn revoke<I, S>(&self, ids: I) -> Result<(), StateError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let now = Utc::now();
        let snapshot = {
            let mut set = self.lock();
            for id in ids {
                set.ids.insert(id.into(), now);
            }
            set.purge(now);
            self.file.as_ref().map(|_| set.ids.clone())
        };
        match (&self.file, snapshot) {
            (Some(path), Some(ids)) => write_state(path, ids),
            _ => Ok(()),
        }
    }

    /// Whether `id` was revoked (and not yet forgotten).
    pub fn contains(&self, id: &str) -> bool {
        self.lock()
            .ids
            .get(id)
            .is_some_and(|at| !expired(*at, Utc::now()))
    }

    /// How many ids are kept.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// Whether no id is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Set> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Set {
    /// Forget expired ids, then the oldest beyond [`REVOKES_MAX`].
    fn purge(&mut self, now: DateTime<Utc>) {
        self.ids.retain(|_, at| !expired(*at, now));
        if self.ids.len() > REVOKES_MAX {
            let mut by_age: Vec<(DateTime<Utc>, String)> =
                self.ids.iter().map(|(id, at)| (*at, id.clone())).collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(self.ids.len() - REVOKES_MAX) {
                self.ids.remove(&id);
            }
        }
    }
}

fn expired(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    (now - at).to_std().is_ok_and(|age| age > REVOKE_EXPIRES)
}

/// Write the file whole and rename it into place, so a crash never leaves half a file.
fn write_state(path: &Path, ids: HashMap<String, DateTime<Utc>>) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let state = StateFile {
        revoked: ids.into_iter().collect(),
    };
    let bytes = serde_json::to_vec(&state).expect("ids and times always serialize");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_survive_a_restart_through_the_state_file() {
        let dir = std::env::temp_dir().join(format!("celeriac-revoked-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let first = RevokedIds::with_state_file(&path).unwrap();
        assert!(first.is_empty());
        first.revoke(["a", "b"]).unwrap();
        assert!(first.contains("a") && !first.contains("c"));
        let again = RevokedIds::with_state_file(&path).unwrap();
        assert!(again.contains("a") && again.contains("b"));
        assert_eq!(again.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_ids_are_forgotten_and_the_set_is_bounded() {
        let mut set = Set::default();
        let now = Utc::now();
        set.ids
            .insert("old".into(), now - chrono::Duration::hours(4));
        for i in 0..REVOKES_MAX + 10 {
            set.ids.insert(
                format!("id{i}"),
                now - chrono::Duration::milliseconds(i as i64),
            );
        }
        set.purge(now);
        assert_eq!(set.ids.len(), REVOKES_MAX);
        assert!(!set.ids.contains_key("old"));
        assert!(set.ids.contains_key("id0"), "the newest are kept");
        assert!(!set.ids.contains_key(&format!("id{}", REVOKES_MAX + 9)));
    }

    #[test]
    fn a_file_that_is_not_a_state_file_is_an_error() {
        let path = std::env::temp_dir().join(format!("celeriac-bad-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            RevokedIds::with_state_file(&path),
            Err(StateError::Format { .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
