//! One integration binary: every flow over real HTTP on loopback.

mod support;

mod admin_page;
mod assets;
mod attacks_events;
mod attacks_identity;
mod attacks_resources;
mod automation;
mod await_robot;
mod bitrix24_client;
mod browser;
mod completion;
mod config_cli;
mod deal_tab;
mod delivery;
mod demo;
mod fake_automation;
mod home;
mod identity_repairs;
mod install;
mod instances;
mod leads;
mod legacy;
mod log_scope;
mod module_graph;
mod openapi_routes;
mod pages_xss;
mod questionnaire_preview;
mod questionnaires;
mod recovery;
mod robot;
mod scales;
mod smart_processes;
mod storage;
mod stored_state;
mod survey_flow;
