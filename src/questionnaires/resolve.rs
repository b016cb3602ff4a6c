//! Which definition a robot run sends and an invitation shows.
//!
//! A robot run takes the portal's own latest non-archived version of the code, else
//! the template of that code. The robot is the hot path (issue 19), so a portal's own
//! catalog (code → latest version id) is kept in memory: forgotten at once when this
//! instance creates, publishes or archives, and read again after [`REFRESH_AFTER`] at
//! most, so another instance's change behind the same PostgreSQL database is seen
//! within seconds. An invitation takes exactly the version it was sent with;
//! versions never change, so a parsed one is kept by id.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};

use crate::db::entities::{invitation, questionnaire, questionnaire_version};
use crate::state::AppState;
use crate::survey::Questionnaire;

/// How long a portal's catalog read from the database is used without reading it
/// again (the delay another instance's change may take to reach this one).
pub const REFRESH_AFTER: Duration = Duration::from_secs(3);

/// Parsed versions kept at most; a versions map this large is simply emptied.
const MAX_VERSIONS: usize = 4096;

/// A questionnaire chosen for a new link.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub questionnaire: Arc<Questionnaire>,
    /// The portal's own version; `None` for a template.
    pub version_id: Option<i64>,
}

/// The in-process memory of portals' catalogs and parsed versions (`AppState`).
#[derive(Default)]
pub struct Cache {
    portals: RwLock<HashMap<i64, Slot>>,
    /// version id → (its portal, the definition).
    versions: RwLock<HashMap<i64, (i64, Arc<Questionnaire>)>>,
}

#[derive(Default)]
struct Slot {
    /// Bumped by every `forget`: a read that began before it is not stored.
    generation: u64,
    entry: Option<Arc<Own>>,
}

/// A portal's own non-archived questionnaires: code → latest version.
struct Own {
    loaded_at: Instant,
    latest: HashMap<String, (i64, Arc<Questionnaire>)>,
}

impl Cache {
    /// Drops what is known of `portal`'s catalog: the next robot run reads it again.
    pub fn forget(&self, portal: i64) {
        let mut portals = self.portals.write().unwrap_or_else(|e| e.into_inner());
        let slot = portals.entry(portal).or_default();
        slot.generation = slot.generation.wrapping_add(1);
        slot.entry = None;
    }

    fn fresh(&self, portal: i64) -> Result<Arc<Own>, u64> {
        let portals = self.portals.read().unwrap_or_else(|e| e.into_inner());
        match portals.get(&portal) {
            Some(Slot {
                entry: Some(own), ..
            }) if own.loaded_at.elapsed() < REFRESH_AFTER => Ok(Arc::clone(own)),
            Some(slot) => Err(slot.generation),
            None => Err(0),
        }
    }

    fn store(&self, portal: i64, generation: u64, own: Arc<Own>) {
        let mut portals = self.portals.write().unwrap_or_else(|e| e.into_inner());
        let slot = portals.entry(portal).or_default();
        if slot.generation == generation {
            slot.entry = Some(own);
        }
    }

    fn version(&self, id: i64) -> Option<(i64, Arc<Questionnaire>)> {
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        versions.get(&id).cloned()
    }

    fn keep_version(&self, id: i64, portal: i64, q: Arc<Questionnaire>) {
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        if versions.len() >= MAX_VERSIONS {
            versions.clear();
        }
        versions.insert(id, (portal, q));
    }
}

/// The questionnaire a new link of `portal` with `code` is sent with: the portal's
/// own latest non-archived version, else the template. `None`: neither exists (a
/// code of another portal is just that).
pub async fn resolve(
    state: &AppState,
    portal: Option<i64>,
    code: &str,
) -> Result<Option<Resolved>, DbErr> {
    if let Some(portal) = portal {
        let own = own_catalog(state, portal).await?;
        if let Some((id, q)) = own.latest.get(code) {
            return Ok(Some(Resolved {
                questionnaire: Arc::clone(q),
                version_id: Some(*id),
            }));
        }
    }
    Ok(state.catalog().latest(code).map(|q| Resolved {
        questionnaire: q,
        version_id: None,
    }))
}

/// Exactly the questionnaire `inv` was sent with. `None`: it is gone (a template
/// file removed from `SURVEYS_DIR`, or a version of another portal).
pub async fn of_invitation(
    state: &AppState,
    inv: &invitation::Model,
) -> Result<Option<Arc<Questionnaire>>, DbErr> {
    let Some(id) = inv.questionnaire_version_id else {
        return Ok(state
            .catalog()
            .get(&inv.questionnaire_code, inv.questionnaire_version as u32));
    };
    let Some(portal) = inv.portal_id else {
        return Ok(None);
    };
    if let Some((owner, q)) = state.questionnaires.version(id) {
        return Ok((owner == portal).then_some(q));
    }
    let Some(version) = questionnaire_version::Entity::find_by_id(id)
        .one(&state.db)
        .await?
    else {
        return Ok(None);
    };
    let Some(owner) = questionnaire::Entity::find_by_id(version.questionnaire_id)
        .one(&state.db)
        .await?
        .map(|q| q.portal_id)
    else {
        return Ok(None);
    };
    let q = Arc::new(parse_stored(&version)?);
    state.questionnaires.keep_version(id, owner, Arc::clone(&q));
    Ok((owner == portal).then_some(q))
}

/// A stored definition. It was checked before it was stored, so one that no longer
/// reads is an error, never an empty questionnaire.
pub(super) fn parse_stored(version: &questionnaire_version::Model) -> Result<Questionnaire, DbErr> {
    serde_json::from_str(&version.definition).map_err(|e| {
        DbErr::Custom(format!(
            "questionnaire version {} does not decode ({:?} error)",
            version.id,
            e.classify()
        ))
    })
}

/// The portal's own catalog, from memory while fresh.
async fn own_catalog(state: &AppState, portal: i64) -> Result<Arc<Own>, DbErr> {
    let generation = match state.questionnaires.fresh(portal) {
        Ok(own) => return Ok(own),
        Err(generation) => generation,
    };
    let own = Arc::new(load_own(state, portal).await?);
    state
        .questionnaires
        .store(portal, generation, Arc::clone(&own));
    Ok(own)
}

/// Reads the portal's non-archived questionnaires and their latest versions; only
/// versions not parsed before are read whole.
async fn load_own(state: &AppState, portal: i64) -> Result<Own, DbErr> {
    let loaded_at = Instant::now();
    let rows: Vec<(i64, String)> = questionnaire::Entity::find()
        .select_only()
        .columns([questionnaire::Column::Id, questionnaire::Column::Code])
        .filter(questionnaire::Column::PortalId.eq(portal))
        .filter(questionnaire::Column::Archived.eq(false))
        .into_tuple()
        .all(&state.db)
        .await?;
    if rows.is_empty() {
        return Ok(Own {
            loaded_at,
            latest: HashMap::new(),
        });
    }
    let versions: Vec<(i64, i64, i32)> = questionnaire_version::Entity::find()
        .select_only()
        .columns([
            questionnaire_version::Column::Id,
            questionnaire_version::Column::QuestionnaireId,
            questionnaire_version::Column::Number,
        ])
        .filter(
            questionnaire_version::Column::QuestionnaireId.is_in(rows.iter().map(|(id, _)| *id)),
        )
        .into_tuple()
        .all(&state.db)
        .await?;
    let mut newest: HashMap<i64, (i32, i64)> = HashMap::new();
    for (id, questionnaire_id, number) in versions {
        let slot = newest.entry(questionnaire_id).or_insert((number, id));
        if number > slot.0 {
            *slot = (number, id);
        }
    }
    let mut parsed: HashMap<i64, Arc<Questionnaire>> = HashMap::new();
    let mut missing = Vec::new();
    for (_, id) in newest.values() {
        match state.questionnaires.version(*id) {
            Some((_, q)) => {
                parsed.insert(*id, q);
            }
            None => missing.push(*id),
        }
    }
    if !missing.is_empty() {
        for version in questionnaire_version::Entity::find()
            .filter(questionnaire_version::Column::Id.is_in(missing))
            .all(&state.db)
            .await?
        {
            let q = Arc::new(parse_stored(&version)?);
            state
                .questionnaires
                .keep_version(version.id, portal, Arc::clone(&q));
            parsed.insert(version.id, q);
        }
    }
    let mut latest = HashMap::new();
    for (questionnaire_id, code) in rows {
        let Some((_, version_id)) = newest.get(&questionnaire_id) else {
            continue;
        };
        if let Some(q) = parsed.get(version_id) {
            latest.insert(code, (*version_id, Arc::clone(q)));
        }
    }
    Ok(Own { loaded_at, latest })
}
