//! `/b24/*`: what Bitrix24 calls when the service is installed as a local application —
//! install, the robot, events, the deal tab and the admin page.

pub mod events;
pub mod inbound;
pub mod install;
pub mod page;
pub mod portals;
pub mod registration;
pub mod robot;
