//! The questionnaires a portal owns: its catalog in the database (`store`), the
//! versions it publishes, and which definition a robot run or an invitation uses
//! (`resolve`). The built-ins and the `SURVEYS_DIR` files (`survey::Catalog`) are
//! every portal's templates. Definitions are checked by the one validator
//! (`Questionnaire::check`); nothing published is changed or deleted.

mod resolve;
mod select;
mod store;

pub use resolve::{Cache, REFRESH_AFTER, Resolved, of_invitation, resolve};
pub use select::robot_options;
pub use store::{
    Detail, Problem, Source, StoreError, Summary, Template, VersionInfo, archive, checked, create,
    export, get, list, publish, templates,
};
