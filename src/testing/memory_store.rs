//! An in-memory [`TokenStore`] for tests.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use crate::bitrix24::{PortalAuth, StoreError, TokenStore};

/// Tokens in a map; counts saves so tests can see each refresh persisted.
#[derive(Default)]
pub struct MemoryTokenStore {
    portals: Mutex<HashMap<String, PortalAuth>>,
    saves: Mutex<u64>,
    failing_saves: Mutex<u32>,
}

impl MemoryTokenStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a portal's tokens directly (what the install step would do).
    pub fn insert(&self, member_id: &str, auth: PortalAuth) {
        self.portals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(member_id.to_owned(), auth);
    }

    /// Forgets a portal (uninstalled).
    pub fn remove(&self, member_id: &str) {
        self.portals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(member_id);
    }

    /// The stored tokens of a portal.
    pub fn get(&self, member_id: &str) -> Option<PortalAuth> {
        self.portals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(member_id)
            .cloned()
    }

    /// The next `n` saves fail, as a database that went away would.
    pub fn fail_next_saves(&self, n: u32) {
        *self
            .failing_saves
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = n;
    }

    /// How many times `save` was called.
    pub fn save_count(&self) -> u64 {
        *self.saves.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self, member_id: &str) -> Result<Option<PortalAuth>, StoreError> {
        Ok(self.get(member_id))
    }

    async fn save(&self, member_id: &str, auth: &PortalAuth) -> Result<(), StoreError> {
        *self.saves.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        {
            let mut failing = self
                .failing_saves
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *failing > 0 {
                *failing -= 1;
                return Err(StoreError::new("database unavailable"));
            }
        }
        self.insert(member_id, auth.clone());
        Ok(())
    }
}
