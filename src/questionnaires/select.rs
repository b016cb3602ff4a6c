//! The choices of the robot's «Анкета» select for one portal.

use std::collections::BTreeSet;

use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::db::entities::questionnaire;
use crate::state::AppState;

/// `(code, title)` of every questionnaire a robot of `portal` may send: the portal's
/// own non-archived ones, then the templates no own one shadows (an own code wins,
/// as in `resolve`). Read from the database, not from the robot's cache, so a select
/// refreshed right after a change shows it. Without a portal: the templates.
pub async fn robot_options(
    state: &AppState,
    portal: Option<i64>,
) -> Result<Vec<(String, String)>, DbErr> {
    let own: Vec<(String, String)> = match portal {
        Some(portal) => {
            questionnaire::Entity::find()
                .select_only()
                .columns([questionnaire::Column::Code, questionnaire::Column::Title])
                .filter(questionnaire::Column::PortalId.eq(portal))
                .filter(questionnaire::Column::Archived.eq(false))
                .order_by_asc(questionnaire::Column::Title)
                .into_tuple()
                .all(&state.db)
                .await?
        }
        None => Vec::new(),
    };
    let codes: BTreeSet<String> = own.iter().map(|(code, _)| code.clone()).collect();
    let templates = state.catalog().templates();
    let mut options = own;
    options.extend(
        templates
            .into_iter()
            .filter(|(q, _)| !codes.contains(&q.code))
            .map(|(q, _)| (q.code.clone(), q.title.clone())),
    );
    Ok(options)
}
