//! What Bitrix24 sends to the service: form-encoded POSTs with percent-encoded
//! bracket keys, exactly like the fixtures.

use serde_json::Value;
use url::Url;

use super::automation::Document;
use super::state::{State, random_hex, unix_now};
use super::{FakePortal, FakePortalError};
use crate::bitrix24::form;

type Delivery = Result<reqwest::Response, FakePortalError>;

fn pairs(items: &[(&str, String)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Handlers bound to an event (upper-case name) with their ids (§7.1).
fn bound_handlers(state: &State, event: &str) -> Vec<(String, String)> {
    state
        .events
        .iter()
        .filter(|e| e.get("event").and_then(Value::as_str) == Some(event))
        .filter_map(|e| {
            Some((
                e.get("handler")?.as_str()?.to_owned(),
                e.get("id")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Appends the iframe query string (§3.2, §6.2) to a handler URL.
fn with_frame_query(url: &str, domain: &str) -> Result<Url, FakePortalError> {
    let mut url =
        Url::parse(url).map_err(|e| FakePortalError::NotBound(format!("bad URL: {e}")))?;
    // A portal on loopback serves plain http: PROTOCOL=0.
    url.query_pairs_mut()
        .append_pair("DOMAIN", domain)
        .append_pair("PROTOCOL", "0")
        .append_pair("LANG", "ru")
        .append_pair("APP_SID", &random_hex(16));
    Ok(url)
}

impl FakePortal {
    async fn post_form(&self, url: Url, body: &[(String, String)]) -> Delivery {
        Ok(self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form::encode(body))
            .send()
            .await?)
    }

    async fn post_form_str(&self, url: &str, body: &[(String, String)]) -> Delivery {
        let url =
            Url::parse(url).map_err(|e| FakePortalError::NotBound(format!("bad URL: {e}")))?;
        self.post_form(url, body).await
    }

    /// The iframe POST of the admin with fresh tokens (§3.2, fixture install-post):
    /// the install page's host becomes the app's domain for robot handlers (§4.1).
    pub async fn post_install(&self, install_url: &str) -> Delivery {
        let url = with_frame_query(install_url, &self.domain())?;
        let body = {
            let mut state = self.state();
            state.app_host = url.host_str().map(str::to_owned);
            self.frame_body(&mut state, 1, "DEFAULT", None)
        };
        self.post_form(url, &body).await
    }

    /// Sets the app's main handler URL used by [`FakePortal::open_app`].
    pub fn set_app_url(&self, url: &str) {
        self.state().app_url = Some(url.to_owned());
    }

    /// A user opens the app (main handler POST, like the install POST with
    /// `PLACEMENT=DEFAULT`).
    pub async fn open_app(&self, user_id: u32) -> Delivery {
        let app_url = self
            .state()
            .app_url
            .clone()
            .ok_or_else(|| FakePortalError::NotBound("set_app_url first".into()))?;
        let url = with_frame_query(&app_url, &self.domain())?;
        let body = {
            let mut state = self.state();
            self.frame_body(&mut state, user_id, "DEFAULT", None)
        };
        self.post_form(url, &body).await
    }

    fn frame_body(
        &self,
        state: &mut super::State,
        user_id: u32,
        placement: &str,
        options: Option<String>,
    ) -> Vec<(String, String)> {
        let (access, refresh) = state.frame_tokens(user_id);
        let mut body = pairs(&[
            ("AUTH_ID", access),
            // §3.2: a lifetime in seconds, not a timestamp.
            ("AUTH_EXPIRES", state.cfg.token_ttl.as_secs().to_string()),
            ("REFRESH_ID", refresh),
            // §3.2: the OAuth server's REST base (this server serves both).
            ("SERVER_ENDPOINT", self.server_endpoint()),
            ("APPLICATION_TOKEN", state.application_token.clone()),
            ("APPLICATION_SCOPE", state.scope()),
            ("member_id", state.cfg.member_id.clone()),
            ("status", "L".to_owned()),
            ("PLACEMENT", placement.to_owned()),
        ]);
        if let Some(options) = options {
            body.push(("PLACEMENT_OPTIONS".into(), options));
        }
        body
    }

    /// What `BX24.installFinish()` achieves (§3.1): the app is installed, `app.info`
    /// says so, and a bound `ONAPPINSTALL` is delivered (§3.3) unless dropped.
    pub async fn finish_install(&self) -> Option<Delivery> {
        let (handler, body) = {
            let mut state = self.state();
            state.installed = true;
            let handler = state
                .events
                .iter()
                .find(|e| e.get("event").and_then(Value::as_str) == Some("ONAPPINSTALL"))
                .and_then(|e| e.get("handler").and_then(Value::as_str).map(str::to_owned));
            let handler = handler.filter(|_| !state.drop_onappinstall)?;
            let mut body = pairs(&[
                ("event", "ONAPPINSTALL".into()),
                ("event_handler_id", "311".into()),
                ("data[VERSION]", state.version.to_string()),
                ("data[ACTIVE]", "Y".into()),
                ("data[INSTALLED]", "Y".into()),
                ("data[LANGUAGE_ID]", "ru".into()),
                ("ts", unix_now().to_string()),
            ]);
            body.extend(Self::auth_block(&mut state, &self.shared, Some((1, true))));
            (handler, body)
        };
        Some(self.post_form_str(&handler, &body).await)
    }

    /// The app is updated to a new version (§3.4): with `new_application_token` the
    /// update brings a new application token. Registrations are removed, then
    /// `ONAPPUPDATE` goes to the handler bound for it (if any) with the admin's
    /// tokens (user 1, §7.1) and `data[VERSION]`/`data[PREVIOUS_VERSION]`.
    pub async fn update_app(&self, new_application_token: bool) -> Option<Delivery> {
        let (handler, body) = {
            let mut state = self.state();
            let handler = state
                .events
                .iter()
                .find(|e| e.get("event").and_then(Value::as_str) == Some("ONAPPUPDATE"))
                .and_then(|e| e.get("handler").and_then(Value::as_str).map(str::to_owned));
            if new_application_token {
                state.application_token = random_hex(16);
            }
            let previous = state.version;
            drop(state);
            self.app_update();
            let mut state = self.state();
            let handler = handler?;
            let mut body = pairs(&[
                ("event", "ONAPPUPDATE".into()),
                ("event_handler_id", "313".into()),
                ("data[VERSION]", state.version.to_string()),
                ("data[PREVIOUS_VERSION]", previous.to_string()),
                ("data[LANGUAGE_ID]", "ru".into()),
                ("ts", unix_now().to_string()),
            ]);
            body.extend(Self::auth_block(&mut state, &self.shared, Some((1, false))));
            (handler, body)
        };
        Some(self.post_form_str(&handler, &body).await)
    }

    /// Automation reaches the robot on a deal (§4.3, fixture robot-call): a POST to
    /// its HANDLER with a fresh `event_token` and the AUTH_USER_ID's tokens.
    pub async fn run_robot(
        &self,
        code: &str,
        deal_id: u64,
        properties: &[(&str, &str)],
    ) -> Result<(String, reqwest::Response), FakePortalError> {
        self.run_robot_on(code, Document::Deal(deal_id), properties)
            .await
    }

    /// A robot on any CRM document (§A4 `DOCUMENT_TYPE`, §A7): a deal, a lead or a
    /// smart-process item.
    pub async fn run_robot_on(
        &self,
        code: &str,
        document: Document,
        properties: &[(&str, &str)],
    ) -> Result<(String, reqwest::Response), FakePortalError> {
        let (handler, token, body) = {
            let mut state = self.state();
            let robot = state
                .robots
                .iter()
                .find(|r| r.get("CODE").and_then(Value::as_str) == Some(code))
                .cloned()
                .ok_or_else(|| FakePortalError::NotBound(format!("no robot {code}")))?;
            // bizproc-robot-add.md (§A4): `FILTER.INCLUDE` lists the full or partial
            // document types the robot is offered for; elsewhere it cannot be placed.
            if !super::automation::robot_offered_for(&robot, &document) {
                return Err(FakePortalError::NotBound(format!(
                    "robot {code} is not offered for {:?}",
                    document.document_type()
                )));
            }
            let handler = robot
                .get("HANDLER")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let user_id = robot
                .get("AUTH_USER_ID")
                .and_then(|v| match v {
                    Value::String(s) => s.parse().ok(),
                    Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                    _ => None,
                })
                .unwrap_or(1);
            let workflow = format!("{}.{}", random_hex(7), rand::random::<u32>() % 100_000_000);
            // §4.3: opaque, contains `|`.
            let token = format!(
                "{workflow}|A{}_{}|{}",
                rand::random::<u16>(),
                rand::random::<u16>(),
                random_hex(32)
            );
            state.event_tokens.insert(
                token.clone(),
                super::state::EventToken {
                    robot_code: code.to_owned(),
                    used: false,
                },
            );
            let subscription = robot
                .get("USE_SUBSCRIPTION")
                .and_then(Value::as_str)
                .unwrap_or("Y")
                .to_owned();
            let mut body = pairs(&[("workflow_id", workflow), ("code", code.to_owned())]);
            let [module, class, id] = document.document_id();
            let [_, _, kind] = document.document_type();
            body.extend(pairs(&[
                ("document_id[0]", module.clone()),
                ("document_id[1]", class.clone()),
                ("document_id[2]", id),
                ("document_type[0]", module),
                ("document_type[1]", class),
                ("document_type[2]", kind),
                ("event_token", token.clone()),
            ]));
            for (k, v) in properties {
                body.push((format!("properties[{k}]"), (*v).to_owned()));
            }
            body.extend(pairs(&[
                ("use_subscription", subscription),
                ("timeout_duration", "0".into()),
                ("ts", unix_now().to_string()),
            ]));
            body.extend(Self::auth_block(
                &mut state,
                &self.shared,
                Some((user_id, true)),
            ));
            (handler, token, body)
        };
        let response = self.post_form_str(&handler, &body).await?;
        Ok((token, response))
    }

    /// A user opens the deal tab (§6.2, fixture placement-deal-tab): the iframe POST
    /// to the bound handler with that user's fresh token. Only after installFinish.
    pub async fn open_deal_tab(&self, user_id: u32, deal_id: u64) -> Delivery {
        self.open_tab(user_id, "CRM_DEAL_DETAIL_TAB", deal_id).await
    }

    /// A user opens a card tab bound at `placement` (`CRM_DEAL_DETAIL_TAB`,
    /// `CRM_LEAD_DETAIL_TAB`, §6.2; bitrix24-automation.md §A7) for record `id`:
    /// `PLACEMENT` names the card, `PLACEMENT_OPTIONS[ID]` the record.
    pub async fn open_tab(&self, user_id: u32, placement: &str, id: u64) -> Delivery {
        let (url, body) = {
            let mut state = self.state();
            if !state.installed {
                // §6.2: the tab is not shown until the install is finished.
                return Err(FakePortalError::NotBound("app not installed".into()));
            }
            let handler = state
                .placements
                .iter()
                .find(|p| p.get("placement").and_then(Value::as_str) == Some(placement))
                .and_then(|p| p.get("handler").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| FakePortalError::NotBound(placement.to_owned()))?;
            let url = with_frame_query(&handler, &self.shared.portal_domain(&state))?;
            let card = match placement {
                "CRM_LEAD_DETAIL_TAB" => "lead",
                _ => "deal",
            };
            let options = format!(
                r#"{{"ID":"{id}","URI":"\/crm\/{card}\/details\/{id}\/?IFRAME=Y&IFRAME_TYPE=SIDE_SLIDER"}}"#
            );
            let body = self.frame_body(&mut state, user_id, placement, Some(options));
            (url, body)
        };
        self.post_form(url, &body).await
    }

    /// A forged placement POST: exactly these fields to this URL (negative tests).
    pub async fn open_placement_forged(&self, handler: &str, fields: &[(&str, &str)]) -> Delivery {
        let body: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.post_form_str(handler, &body).await
    }

    /// The app is deleted (§7.3): every token and refresh token dies, then
    /// `ONAPPUNINSTALL` without tokens goes to the bound handler, if any.
    pub async fn uninstall(&self, clean: bool) -> Delivery {
        let (handler, body) = {
            let mut state = self.state();
            state.uninstalled = true;
            state.installed = false;
            state.tokens.clear();
            for entry in state.refresh_tokens.values_mut() {
                entry.used = true;
            }
            let handler = state
                .events
                .iter()
                .find(|e| e.get("event").and_then(Value::as_str) == Some("ONAPPUNINSTALL"))
                .and_then(|e| e.get("handler").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| FakePortalError::NotBound("ONAPPUNINSTALL".into()))?;
            let mut body = pairs(&[
                ("event", "ONAPPUNINSTALL".into()),
                ("event_handler_id", "312".into()),
                ("data[LANGUAGE_ID]", "ru".into()),
                ("data[CLEAN]", if clean { "1" } else { "0" }.into()),
                ("ts", unix_now().to_string()),
            ]);
            body.extend(Self::auth_block(&mut state, &self.shared, None));
            (handler, body)
        };
        self.post_form_str(&handler, &body).await
    }

    /// Delivers an app-bound event about a deal to every handler bound to it (§7.1):
    /// with the acting user's tokens, or without tokens (automation). Nothing before
    /// installFinish (§3.1); no retries.
    pub async fn fire_event(
        &self,
        event: &str,
        deal_id: u64,
        with_user_tokens: bool,
    ) -> Vec<Delivery> {
        let event = event.to_ascii_uppercase();
        let deliveries: Vec<(String, Vec<(String, String)>)> = {
            let mut state = self.state();
            if !state.installed {
                return Vec::new();
            }
            bound_handlers(&state, &event)
                .into_iter()
                .map(|(handler, id)| {
                    let mut body = pairs(&[
                        ("event", event.clone()),
                        ("event_handler_id", id),
                        ("data[FIELDS][ID]", deal_id.to_string()),
                        ("ts", unix_now().to_string()),
                    ]);
                    let user = with_user_tokens.then_some((1, false));
                    let mut auth = Self::auth_block(&mut state, &self.shared, user);
                    if !with_user_tokens {
                        auth.insert(0, ("auth[scope]".into(), state.scope()));
                        auth.insert(1, ("auth[status]".into(), "L".into()));
                    }
                    body.extend(auth);
                    (handler, body)
                })
                .collect()
        };
        let mut out = Vec::new();
        for (handler, body) in deliveries {
            out.push(self.post_form_str(&handler, &body).await);
        }
        out
    }

    /// A user presses a `restEvent` button of a configurable activity (§A2,
    /// configurable/structure/action.md): `ONCRMTIMELINEITEMACTION` goes only to the
    /// app that created the activity, with `id, entityTypeId, entityId, activityId,
    /// userId` plus the action's `actionParams`, and the pressing user's tokens. The
    /// product's `ConfigurableRestApp\EventHandler` passes the signed parameters on
    /// unchanged.
    pub async fn press_activity_button(
        &self,
        activity_id: u64,
        user_id: u32,
        action_id: &str,
        action_params: &[(&str, &str)],
    ) -> Result<Vec<Delivery>, FakePortalError> {
        let deliveries: Vec<(String, Vec<(String, String)>)> = {
            let mut state = self.state();
            let activity = state
                .automation
                .activities
                .get(&activity_id)
                .cloned()
                .ok_or_else(|| FakePortalError::NotBound(format!("no activity {activity_id}")))?;
            bound_handlers(&state, "ONCRMTIMELINEITEMACTION")
                .into_iter()
                .map(|(handler, id)| {
                    let mut body = pairs(&[
                        ("event", "ONCRMTIMELINEITEMACTION".to_owned()),
                        ("event_handler_id", id),
                        ("data[id]", action_id.to_owned()),
                        ("data[entityTypeId]", activity.owner_type_id.to_string()),
                        ("data[entityId]", activity.owner_id.to_string()),
                        ("data[activityId]", activity_id.to_string()),
                        ("data[userId]", user_id.to_string()),
                    ]);
                    for (k, v) in action_params {
                        body.push((format!("data[{k}]"), (*v).to_owned()));
                    }
                    body.push(("ts".into(), unix_now().to_string()));
                    body.extend(Self::auth_block(
                        &mut state,
                        &self.shared,
                        Some((user_id, false)),
                    ));
                    (handler, body)
                })
                .collect()
        };
        let mut out = Vec::new();
        for (handler, body) in deliveries {
            out.push(self.post_form_str(&handler, &body).await);
        }
        Ok(out)
    }

    /// The portal's outgoing webhook (§8, fixture outgoing-oncrmdealadd): its own
    /// token, no OAuth data.
    pub async fn post_outgoing_webhook(
        &self,
        url: &str,
        event: &str,
        deal_id: u64,
        token: &str,
    ) -> Delivery {
        let base = self.client_endpoint().to_string();
        let server = self.server_endpoint();
        let body = pairs(&[
            ("event", event.to_ascii_uppercase()),
            ("event_handler_id", "975".into()),
            ("data[FIELDS][ID]", deal_id.to_string()),
            ("ts", unix_now().to_string()),
            ("auth[domain]", self.domain()),
            ("auth[client_endpoint]", base.clone()),
            ("auth[server_endpoint]", server),
            ("auth[member_id]", self.member_id()),
            ("auth[application_token]", token.to_owned()),
        ]);
        self.post_form_str(url, &body).await
    }

    /// The built-in "Webhook" robot (§5.2): only `document_id[*]`, the URL as
    /// configured (templates already resolved by the test).
    pub async fn post_webhook_robot(&self, url_with_query: &str, deal_id: u64) -> Delivery {
        self.post_webhook_robot_on(url_with_query, Document::Deal(deal_id))
            .await
    }

    /// The robot «Вебхук» on any CRM document: it posts the document's
    /// `document_id[*]` (a smart-process item: `…\Document\Dynamic`, `DYNAMIC_<type>_<id>`).
    pub async fn post_webhook_robot_on(
        &self,
        url_with_query: &str,
        document: Document,
    ) -> Delivery {
        let [module, class, id] = document.document_id();
        let body = pairs(&[
            ("document_id[0]", module),
            ("document_id[1]", class),
            ("document_id[2]", id),
        ]);
        self.post_form_str(url_with_query, &body).await
    }
}
