//! A portal's own questionnaires in the database: list, read, create (from a
//! template, as a copy, or imported), publish a new version, archive, export.
//! Writes take the caller's transaction, so the caller can queue its outbox work
//! (the robot's select) in the same commit; every write is audited with the
//! administrator's Bitrix24 user id. Published versions are never changed.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, sea_query::LockType,
};
use serde::Serialize;
use serde_json::Value;

use super::resolve::parse_stored;
use crate::db::entities::{questionnaire, questionnaire_version};
use crate::survey::{Catalog, DefinitionProblem, MAX_CODE_LEN, Questionnaire};

/// The longest title the list keeps (the definition keeps the whole one).
const MAX_TITLE_CHARS: usize = 255;

/// One thing wrong with a definition, as the editor shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub place: String,
    pub code: String,
    /// Russian.
    pub reason: String,
}

impl From<DefinitionProblem> for Problem {
    fn from(p: DefinitionProblem) -> Self {
        Problem {
            place: p.place,
            code: p.code.to_owned(),
            reason: p.reason,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such questionnaire in this portal (another portal's is the same).
    #[error("questionnaire not found")]
    NotFound,
    /// The portal already has a questionnaire with this code.
    #[error("code {0} taken")]
    CodeTaken(String),
    /// The definition has problems; nothing was stored.
    #[error("{} definition problems", .0.len())]
    Invalid(Vec<Problem>),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A published version, without its definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub version: i32,
    pub published_at: DateTime<Utc>,
    pub published_by: i64,
}

/// A line of the portal's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub id: i64,
    pub code: String,
    pub title: String,
    pub archived: bool,
    pub version: i32,
    pub published_at: DateTime<Utc>,
    pub published_by: i64,
}

/// A template every portal may start from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Template {
    pub code: String,
    pub title: String,
    /// `builtin` or `file`.
    pub source: &'static str,
}

/// One questionnaire with its versions and its latest definition.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    pub id: i64,
    pub code: String,
    pub title: String,
    pub archived: bool,
    pub versions: Vec<VersionInfo>,
    pub definition: Questionnaire,
}

/// What a new questionnaire starts from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A built-in or `SURVEYS_DIR` template, by code.
    Template(String),
    /// Another questionnaire of the same portal: a copy under a new code.
    Duplicate(i64),
    /// A definition as a `SURVEYS_DIR` file has it.
    Import(Value),
}

/// The portal's own questionnaires, by code, each with its latest version.
pub async fn list<C: ConnectionTrait>(db: &C, portal: i64) -> Result<Vec<Summary>, DbErr> {
    let rows = questionnaire::Entity::find()
        .filter(questionnaire::Column::PortalId.eq(portal))
        .order_by_asc(questionnaire::Column::Code)
        .all(db)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let versions: Vec<(i64, i32, DateTime<Utc>, i64)> = questionnaire_version::Entity::find()
        .select_only()
        .columns([
            questionnaire_version::Column::QuestionnaireId,
            questionnaire_version::Column::Number,
            questionnaire_version::Column::PublishedAt,
            questionnaire_version::Column::PublishedBy,
        ])
        .filter(questionnaire_version::Column::QuestionnaireId.is_in(rows.iter().map(|r| r.id)))
        .into_tuple()
        .all(db)
        .await?;
    let mut latest: std::collections::HashMap<i64, VersionInfo> = Default::default();
    for (questionnaire_id, version, published_at, published_by) in versions {
        let newer = latest
            .get(&questionnaire_id)
            .is_none_or(|v| version > v.version);
        if newer {
            latest.insert(
                questionnaire_id,
                VersionInfo {
                    version,
                    published_at,
                    published_by,
                },
            );
        }
    }
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let v = latest.remove(&row.id)?;
            Some(Summary {
                id: row.id,
                code: row.code,
                title: row.title,
                archived: row.archived,
                version: v.version,
                published_at: v.published_at,
                published_by: v.published_by,
            })
        })
        .collect())
}

/// The templates: built-ins and `SURVEYS_DIR` files, the latest version of each.
pub fn templates(catalog: &Catalog) -> Vec<Template> {
    catalog
        .templates()
        .into_iter()
        .map(|(q, source)| Template {
            code: q.code.clone(),
            title: q.title.clone(),
            source: source.as_str(),
        })
        .collect()
}

/// One questionnaire of `portal`; `None` for a missing one and another portal's.
pub async fn get<C: ConnectionTrait>(
    db: &C,
    portal: i64,
    id: i64,
) -> Result<Option<Detail>, DbErr> {
    let Some(row) = own(db, portal, id).await? else {
        return Ok(None);
    };
    detail(db, row).await.map(Some)
}

/// The latest definition of one questionnaire as a `SURVEYS_DIR` JSON file: its
/// code (for the file name) and the text.
pub async fn export<C: ConnectionTrait>(
    db: &C,
    portal: i64,
    id: i64,
) -> Result<Option<(String, String)>, DbErr> {
    let Some(row) = own(db, portal, id).await? else {
        return Ok(None);
    };
    let version = latest_version(db, row.id).await?;
    Ok(Some((row.code, version.definition)))
}

/// Creates a questionnaire with its version 1; `templates` finds a template by code
/// (`Catalog::latest`).
pub async fn create<C: ConnectionTrait, T>(
    txn: &C,
    templates: &T,
    portal: i64,
    user: i64,
    source: Source,
) -> Result<Detail, StoreError>
where
    T: Fn(&str) -> Option<Arc<Questionnaire>> + Sync,
{
    let definition = match source {
        Source::Template(code) => {
            let template = templates(&code).ok_or_else(|| {
                StoreError::Invalid(vec![Problem {
                    place: "from_template".into(),
                    code: "unknown_template".into(),
                    reason: format!("шаблона «{code}» нет"),
                }])
            })?;
            let mut q = Questionnaire::clone(&template);
            q.version = 1;
            q
        }
        Source::Duplicate(id) => {
            let original = own(txn, portal, id).await?.ok_or(StoreError::NotFound)?;
            let mut q = parse_stored(&latest_version(txn, original.id).await?)?;
            q.code = free_code(txn, portal, &original.code).await?;
            q.title = format!("{} (копия)", q.title);
            q.version = 1;
            q
        }
        Source::Import(value) => checked(value, 1, None)?,
    };
    let problems: Vec<Problem> = definition.check().into_iter().map(Problem::from).collect();
    if !problems.is_empty() {
        return Err(StoreError::Invalid(problems));
    }
    if code_taken(txn, portal, &definition.code).await? {
        return Err(StoreError::CodeTaken(definition.code));
    }
    let now = Utc::now().trunc_subsecs(6);
    let inserted = questionnaire::ActiveModel {
        portal_id: Set(portal),
        code: Set(definition.code.clone()),
        title: Set(list_title(&definition.title)),
        archived: Set(false),
        created_at: Set(now),
        created_by: Set(user),
        ..Default::default()
    }
    .insert(txn)
    .await;
    let row = match inserted {
        Ok(row) => row,
        // Another request took the code between the check and the insert.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            return Err(StoreError::CodeTaken(definition.code));
        }
        Err(e) => return Err(e.into()),
    };
    insert_version(txn, row.id, &definition, now, user).await?;
    audit(txn, portal, user, "questionnaire_create", row.id, 1).await?;
    Ok(detail(txn, row).await?)
}

/// Publishes `definition` as the next version of questionnaire `id`, after the one
/// validator found nothing wrong. Its `version` is ignored (the server numbers
/// versions) and its `code` must stay the questionnaire's.
pub async fn publish<C: ConnectionTrait>(
    txn: &C,
    portal: i64,
    id: i64,
    user: i64,
    definition: Value,
) -> Result<VersionInfo, StoreError> {
    // The row's lock makes concurrent publishes (PostgreSQL) take numbers in turn;
    // SQLite's writers already do (`AppState::begin_write`).
    let row = questionnaire::Entity::find_by_id(id)
        .filter(questionnaire::Column::PortalId.eq(portal))
        .lock(LockType::Update)
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound)?;
    let number = latest_version(txn, row.id).await?.number + 1;
    let q = checked(definition, number as u32, Some(&row.code))?;
    let now = Utc::now().trunc_subsecs(6);
    insert_version(txn, row.id, &q, now, user).await?;
    let title = list_title(&q.title);
    if title != row.title {
        let mut update: questionnaire::ActiveModel = row.clone().into();
        update.title = Set(title);
        update.update(txn).await?;
    }
    audit(txn, portal, user, "questionnaire_publish", row.id, number).await?;
    Ok(VersionInfo {
        version: number,
        published_at: now,
        published_by: user,
    })
}

/// Archives (or brings back) questionnaire `id`: an archived one is not offered to
/// robots; links already sent keep their version.
pub async fn archive<C: ConnectionTrait>(
    txn: &C,
    portal: i64,
    id: i64,
    user: i64,
    archived: bool,
) -> Result<Detail, StoreError> {
    let row = own(txn, portal, id).await?.ok_or(StoreError::NotFound)?;
    let row = if row.archived == archived {
        row
    } else {
        let mut update: questionnaire::ActiveModel = row.into();
        update.archived = Set(archived);
        update.update(txn).await?
    };
    let version = latest_version(txn, row.id).await?.number;
    let action = if archived {
        "questionnaire_archive"
    } else {
        "questionnaire_unarchive"
    };
    audit(txn, portal, user, action, row.id, version).await?;
    Ok(detail(txn, row).await?)
}

/// A definition from the editor: numbered `number` whatever it says, read as the
/// schema and checked by the one validator; with `code`, it must keep that code.
pub fn checked(
    mut value: Value,
    number: u32,
    code: Option<&str>,
) -> Result<Questionnaire, StoreError> {
    if let Some(obj) = value.as_object_mut() {
        obj.insert("version".into(), Value::from(number));
    }
    let q: Questionnaire = serde_json::from_value(value).map_err(|e| {
        StoreError::Invalid(vec![Problem {
            place: "definition".into(),
            code: "bad_shape".into(),
            reason: format!("определение не соответствует схеме анкеты: {e}"),
        }])
    })?;
    let mut problems: Vec<Problem> = q.check().into_iter().map(Problem::from).collect();
    if let Some(code) = code
        && q.code != code
    {
        problems.push(Problem {
            place: "code".into(),
            code: "code_changed".into(),
            reason: format!(
                "код анкеты менять нельзя: был «{code}», стал «{}»; чтобы получить другой код, создайте копию",
                q.code
            ),
        });
    }
    if problems.is_empty() {
        Ok(q)
    } else {
        Err(StoreError::Invalid(problems))
    }
}

async fn own<C: ConnectionTrait>(
    db: &C,
    portal: i64,
    id: i64,
) -> Result<Option<questionnaire::Model>, DbErr> {
    questionnaire::Entity::find_by_id(id)
        .filter(questionnaire::Column::PortalId.eq(portal))
        .one(db)
        .await
}

async fn versions_of<C: ConnectionTrait>(db: &C, id: i64) -> Result<Vec<VersionInfo>, DbErr> {
    let rows: Vec<(i32, DateTime<Utc>, i64)> = questionnaire_version::Entity::find()
        .select_only()
        .columns([
            questionnaire_version::Column::Number,
            questionnaire_version::Column::PublishedAt,
            questionnaire_version::Column::PublishedBy,
        ])
        .filter(questionnaire_version::Column::QuestionnaireId.eq(id))
        .order_by_asc(questionnaire_version::Column::Number)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(version, published_at, published_by)| VersionInfo {
            version,
            published_at,
            published_by,
        })
        .collect())
}

async fn latest_version<C: ConnectionTrait>(
    db: &C,
    id: i64,
) -> Result<questionnaire_version::Model, DbErr> {
    questionnaire_version::Entity::find()
        .filter(questionnaire_version::Column::QuestionnaireId.eq(id))
        .order_by_desc(questionnaire_version::Column::Number)
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("questionnaire {id} has no version")))
}

async fn detail<C: ConnectionTrait>(db: &C, row: questionnaire::Model) -> Result<Detail, DbErr> {
    let definition = parse_stored(&latest_version(db, row.id).await?)?;
    Ok(Detail {
        id: row.id,
        code: row.code,
        title: row.title,
        archived: row.archived,
        versions: versions_of(db, row.id).await?,
        definition,
    })
}

async fn insert_version<C: ConnectionTrait>(
    txn: &C,
    questionnaire_id: i64,
    q: &Questionnaire,
    now: DateTime<Utc>,
    user: i64,
) -> Result<(), DbErr> {
    let text = serde_json::to_string_pretty(q).map_err(|e| DbErr::Custom(e.to_string()))?;
    questionnaire_version::ActiveModel {
        questionnaire_id: Set(questionnaire_id),
        number: Set(q.version as i32),
        definition: Set(text),
        published_at: Set(now),
        published_by: Set(user),
        ..Default::default()
    }
    .insert(txn)
    .await
    .map(|_| ())
}

async fn code_taken<C: ConnectionTrait>(db: &C, portal: i64, code: &str) -> Result<bool, DbErr> {
    let found: Option<i64> = questionnaire::Entity::find()
        .select_only()
        .column(questionnaire::Column::Id)
        .filter(questionnaire::Column::PortalId.eq(portal))
        .filter(questionnaire::Column::Code.eq(code))
        .into_tuple()
        .one(db)
        .await?;
    Ok(found.is_some())
}

/// `<code>_2`, `_3`…: the first code of the portal not taken, within the length a
/// code may have.
async fn free_code<C: ConnectionTrait>(db: &C, portal: i64, code: &str) -> Result<String, DbErr> {
    let mut n = 2u32;
    loop {
        let suffix = format!("_{n}");
        let base: String = code
            .chars()
            .take(MAX_CODE_LEN.saturating_sub(suffix.len()))
            .collect();
        let candidate = format!("{base}{suffix}");
        if !code_taken(db, portal, &candidate).await? {
            return Ok(candidate);
        }
        n += 1;
    }
}

fn list_title(title: &str) -> String {
    title.chars().take(MAX_TITLE_CHARS).collect()
}

async fn audit<C: ConnectionTrait>(
    txn: &C,
    portal: i64,
    user: i64,
    action: &str,
    id: i64,
    version: i32,
) -> Result<(), DbErr> {
    crate::db::audit(
        txn,
        Some(portal),
        &format!("user:{user}"),
        action,
        Some(&format!("questionnaire:{id} version:{version}")),
    )
    .await
}
