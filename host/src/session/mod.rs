//! Durable key-value state for a job, kept across redeliveries once checkpointed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use crate::bindings::session::SessionError;

/// Default cap on a session's total size (keys plus values).
pub const DEFAULT_MAX_SESSION_BYTES: usize = 4 << 20;

/// The key-value state of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    values: BTreeMap<String, Vec<u8>>,
    bytes: usize,
    max_bytes: usize,
}

impl Session {
    /// An empty session holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            values: BTreeMap::new(),
            bytes: 0,
            max_bytes,
        }
    }

    fn restored(values: BTreeMap<String, Vec<u8>>, max_bytes: usize) -> Self {
        let bytes = values.iter().map(|(k, v)| k.len() + v.len()).sum();
        Self {
            values,
            bytes,
            max_bytes,
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    /// Store `value` under `key`, unless the session would outgrow its cap.
    pub fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), SessionError> {
        let replaced = self.values.get(&key).map_or(0, |old| key.len() + old.len());
        let bytes = self.bytes - replaced + key.len() + value.len();
        if bytes > self.max_bytes {
            return Err(SessionError::TooLarge(format!(
                "session would hold {bytes} bytes, over its {} byte limit",
                self.max_bytes
            )));
        }
        self.bytes = bytes;
        self.values.insert(key, value);
        Ok(())
    }

    /// Remove `key`.
    pub fn delete(&mut self, key: &str) {
        if let Some(old) = self.values.remove(key) {
            self.bytes -= key.len() + old.len();
        }
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.values.keys().cloned().collect()
    }
}

/// Where checkpointed sessions are kept, by request id.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The last checkpoint for `request_id`, or an empty session.
    async fn load(&self, request_id: &str) -> Session;
    /// Replace the checkpoint for `request_id`.
    async fn save(&self, request_id: &str, session: &Session) -> Result<(), SessionError>;
    /// Drop the checkpoint for `request_id`: its job is finished and will not
    /// be delivered again. Default: keep it.
    async fn forget(&self, _request_id: &str) {}
}

/// Sessions kept in process memory: survive redelivery within one process.
#[derive(Debug)]
pub struct MemorySessionStore {
    sessions: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
    max_bytes: usize,
}

impl MemorySessionStore {
    /// A store whose sessions hold at most `max_bytes` each.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            max_bytes,
        }
    }
}

impl Default for MemorySessionStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SESSION_BYTES)
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn load(&self, request_id: &str) -> Session {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        match sessions.get(request_id) {
            Some(values) => Session::restored(values.clone(), self.max_bytes),
            None => Session::new(self.max_bytes),
        }
    }

    async fn save(&self, request_id: &str, session: &Session) -> Result<(), SessionError> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id.to_owned(), session.values.clone());
        Ok(())
    }

    async fn forget(&self, request_id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_the_size_cap_counting_replacements() {
        let mut session = Session::new(10);
        assert!(session.set("k".into(), vec![0; 9]).is_ok());
        assert!(matches!(
            session.set("j".into(), vec![0; 1]),
            Err(SessionError::TooLarge(_))
        ));
        // Replacing a value frees the old one first.
        assert!(session.set("k".into(), vec![1; 9]).is_ok());
        session.delete("k");
        assert!(session.set("j".into(), vec![0; 9]).is_ok());
        assert_eq!(session.keys(), vec!["j".to_owned()]);
    }

    #[tokio::test]
    async fn checkpoints_survive_a_reload() {
        let store = MemorySessionStore::default();
        let mut session = store.load("r1").await;
        assert!(session.set("step".into(), b"2".to_vec()).is_ok());
        assert!(store.save("r1", &session).await.is_ok());
        assert_eq!(store.load("r1").await.get("step"), Some(&b"2"[..]));
        assert_eq!(store.load("r2").await.get("step"), None);
    }
}
