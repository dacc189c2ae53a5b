//! Durable key-value state for the job, kept across crashes and redeliveries
//! once checkpointed.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AgentError;
use crate::agent::bindings::wink::agent::session as wire;

/// Why a session operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The value or the whole session is over its size limit.
    TooLarge(String),
    /// The host could not persist the checkpoint.
    Storage(String),
    /// A value could not be encoded to or decoded from JSON.
    Json(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(reason) => write!(f, "session too large: {reason}"),
            Self::Storage(reason) => write!(f, "session storage failed: {reason}"),
            Self::Json(reason) => write!(f, "session value is not the expected JSON: {reason}"),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<wire::SessionError> for SessionError {
    fn from(err: wire::SessionError) -> Self {
        match err {
            wire::SessionError::TooLarge(reason) => Self::TooLarge(reason),
            wire::SessionError::Storage(reason) => Self::Storage(reason),
        }
    }
}

impl From<SessionError> for AgentError {
    fn from(err: SessionError) -> Self {
        Self::Failed(err.to_string())
    }
}

/// The value stored under `key`, if any.
pub fn get(key: &str) -> Option<Vec<u8>> {
    wire::get(key)
}

/// Store `value` under `key`: visible at once, durable after [`checkpoint`].
pub fn set(key: &str, value: &[u8]) -> Result<(), SessionError> {
    wire::set(key, value).map_err(SessionError::from)
}

/// Remove `key`.
pub fn delete(key: &str) {
    wire::delete(key);
}

/// Every key currently set, sorted.
pub fn keys() -> Vec<String> {
    wire::keys()
}

/// Persist the session and the workspace so that a resumed job starts here.
pub fn checkpoint() -> Result<(), SessionError> {
    wire::checkpoint().map_err(SessionError::from)
}

/// The JSON value stored under `key`, deserialized as `T`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, SessionError> {
    get(key).map(|bytes| decode(&bytes)).transpose()
}

/// Store `value` under `key` as JSON.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), SessionError> {
    let bytes = serde_json::to_vec(value).map_err(|err| SessionError::Json(err.to_string()))?;
    set(key, &bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SessionError> {
    serde_json::from_slice(bytes).map_err(|err| SessionError::Json(err.to_string()))
}
