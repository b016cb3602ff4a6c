//! `/b24/*`: what Bitrix24 calls when the service is installed as a local application —
//! install, the robot, events, the deal tab and the admin page.

pub mod admin;
pub mod admin_view;
pub mod await_robot;
pub mod events;
pub mod frame_auth;
pub mod frame_post;
pub mod inbound;
pub mod install;
pub mod page;
pub mod placement;
pub mod portals;
pub mod questionnaire_api;
pub mod questionnaire_preview;
pub mod registration;
pub mod robot;
pub mod seen;
pub mod session;
pub mod tab_view;
pub mod token_upkeep;
pub mod verify_guard;

// The admin page reads and saves the link policy, which `invitations` owns.
pub use crate::invitations::portal_settings;
