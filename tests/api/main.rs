//! One integration binary: every flow over real HTTP on loopback.

mod support;

mod bitrix24_client;
mod completion;
mod config_cli;
mod install;
mod legacy;
mod robot;
mod survey_flow;
