//! The robot's portal check without a database round trip per call (issue 19): the
//! portal row and settings a robot call needs ([`PortalCaller`]), kept per
//! `member_id` for at most [`TTL`]. The application token is still compared with
//! every call's, in constant time, by the caller; only the row is remembered.
//!
//! Whatever changes what the check reads (an install, an application update with a
//! new token, an uninstall, a token refresh that moves the portal, the admin's
//! settings) calls [`PortalCache::forget_all`] on this instance, which counts from
//! the next call. Other instances sharing the database see the change within
//! [`TTL`]. A read that began before a `forget_all` is not kept (the generation
//! check), so it cannot put the old row back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbErr};

use super::prepared::{PortalCaller, portal_caller};

/// How long a row read for one robot call serves the next ones: the bound on how
/// late another instance's uninstall or new application token counts here.
pub const TTL: Duration = Duration::from_secs(1);
/// Portals remembered at most; a full map starts over.
const MAX_PORTALS: usize = 10_000;

#[derive(Default)]
pub struct PortalCache {
    entries: Mutex<HashMap<String, (Instant, Arc<PortalCaller>)>>,
    /// Bumped by every `forget_all`.
    generation: AtomicU64,
}

impl PortalCache {
    /// The portal `member_id` names, from memory if read within [`TTL`], else read
    /// now (`db::prepared::portal_caller`). An unknown portal is never remembered.
    pub async fn portal<C: ConnectionTrait>(
        &self,
        db: &C,
        member_id: &str,
    ) -> Result<Option<Arc<PortalCaller>>, DbErr> {
        if let Some((read_at, caller)) = self.entries().get(member_id)
            && read_at.elapsed() < TTL
        {
            return Ok(Some(Arc::clone(caller)));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(caller) = portal_caller(db, member_id).await? else {
            return Ok(None);
        };
        let caller = Arc::new(caller);
        let mut entries = self.entries();
        // Checked under the lock `forget_all` clears under: a change committed
        // while this row was being read leaves it out.
        if self.generation.load(Ordering::Acquire) == generation {
            if entries.len() >= MAX_PORTALS {
                entries.clear();
            }
            entries.insert(member_id.to_owned(), (Instant::now(), Arc::clone(&caller)));
        }
        Ok(Some(caller))
    }

    /// Forgets every portal: call after committing any change to a portal's row or
    /// its settings.
    pub fn forget_all(&self) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, (Instant, Arc<PortalCaller>)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
