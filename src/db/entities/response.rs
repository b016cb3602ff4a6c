use sea_orm::entity::prelude::*;

/// The patient's draft and final answers for one invitation, and the PDF built from them.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "response")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub invitation_id: String,
    pub draft: Option<Json>,
    pub draft_saved_at: Option<DateTimeUtc>,
    pub answers: Option<Json>,
    pub submitted_at: Option<DateTimeUtc>,
    pub report_sha256: Option<String>,
    pub report_pdf: Option<Vec<u8>>,
    /// `{"scores": [...], "patient_messages": [...]}` computed at submit from the
    /// pinned questionnaire: what the doctor's scores were and what the patient was
    /// shown. Never sent anywhere.
    pub outcome: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
