//! How each kind of CRM document is named and read in Bitrix24 (bitrix24-automation.md
//! §A7): deals and leads by their own methods, smart-process items by `crm.item.*`,
//! whose fields are camelCase. Everything that differs by kind is here, so the
//! handlers and the outbox treat a document as one thing.

use serde_json::{Map, Value, json};

use super::{EntityRef, EntityType};

impl EntityType {
    /// `OWNER_TYPE_ID` / `ownerTypeId` (`crm.enum.ownertype`, §A1): 1 lead, 2 deal,
    /// a smart process's own `entityTypeId`.
    pub fn owner_type_id(self) -> u32 {
        match self {
            EntityType::Lead => 1,
            EntityType::Deal => 2,
            EntityType::Dynamic(t) => t,
        }
    }

    /// The kind an `OWNER_TYPE_ID` / `entityTypeId` names, if opros serves it.
    pub fn from_owner_type_id(id: i64) -> Option<Self> {
        match id {
            1 => Some(EntityType::Lead),
            2 => Some(EntityType::Deal),
            other => u32::try_from(other).ok().and_then(EntityType::dynamic),
        }
    }

    /// The card tab's placement (§A7, widgets/crm/detail-tab.md).
    pub fn tab_placement(self) -> String {
        match self {
            EntityType::Deal => "CRM_DEAL_DETAIL_TAB".to_owned(),
            EntityType::Lead => "CRM_LEAD_DETAIL_TAB".to_owned(),
            EntityType::Dynamic(t) => format!("CRM_DYNAMIC_{t}_DETAIL_TAB"),
        }
    }

    /// The kind a tab's `PLACEMENT` names: the smart-process type id comes only from
    /// the placement code (§A7).
    pub fn from_tab_placement(placement: &str) -> Option<Self> {
        match placement {
            "CRM_DEAL_DETAIL_TAB" => Some(EntityType::Deal),
            "CRM_LEAD_DETAIL_TAB" => Some(EntityType::Lead),
            other => {
                let id = other
                    .strip_prefix("CRM_DYNAMIC_")?
                    .strip_suffix("_DETAIL_TAB")?;
                if !id.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                EntityType::dynamic(id.parse().ok()?)
            }
        }
    }

    /// «к сделке», «к лиду», «к элементу смарт-процесса»: the document after «к».
    pub fn to_whom(self) -> &'static str {
        match self {
            EntityType::Deal => "сделке",
            EntityType::Lead => "лиду",
            EntityType::Dynamic(_) => "элементу смарт-процесса",
        }
    }

    /// Whether the document gets the link field (`OPROS_LINK_FIELD`). A smart-process
    /// item does not: its user fields need the `userfieldconfig` scope and names of
    /// their own (`UF_CRM_<id>_…`, rest_help/crm/dynamic/settings.php), so its link
    /// reaches the workflow as the robot's `survey_url` and the card's tab.
    pub fn has_link_field(self) -> bool {
        !matches!(self, EntityType::Dynamic(_))
    }

    /// The document's name for people: «Сделка», «Лид», «Элемент смарт-процесса».
    pub fn label(self) -> &'static str {
        match self {
            EntityType::Deal => "Сделка",
            EntityType::Lead => "Лид",
            EntityType::Dynamic(_) => "Элемент смарт-процесса",
        }
    }
}

impl EntityRef {
    /// The method and parameters that read the document (§A7).
    pub fn read_call(self) -> (String, Value) {
        match self.kind {
            EntityType::Deal => ("crm.deal.get".into(), json!({"id": self.id})),
            EntityType::Lead => ("crm.lead.get".into(), json!({"id": self.id})),
            EntityType::Dynamic(t) => (
                "crm.item.get".into(),
                json!({"entityTypeId": t, "id": self.id}),
            ),
        }
    }

    /// The reference a later `batch` command uses for the document's contact id,
    /// `name` being the command that read the document (protocol §13).
    pub fn contact_ref(self, name: &str) -> Option<String> {
        match self.kind {
            EntityType::Deal => Some(format!("$result[{name}][CONTACT_ID]")),
            EntityType::Lead => None,
            EntityType::Dynamic(_) => Some(format!("$result[{name}][item][contactId]")),
        }
    }
}

/// What [`EntityRef::read_call`] returned, in the deal's shape: `crm.item.get`'s
/// `{item: {assignedById, contactId, title}}` becomes `{ASSIGNED_BY_ID, CONTACT_ID,
/// TITLE}`, so a reader looks for one set of names.
pub fn record(kind: EntityType, read: Value) -> Value {
    match (kind, read) {
        (EntityType::Dynamic(_), Value::Object(mut outer)) => match outer.remove("item") {
            Some(Value::Object(item)) => Value::Object(
                item.into_iter()
                    .map(|(key, value)| (upper_snake(&key), value))
                    .collect::<Map<_, _>>(),
            ),
            _ => Value::Null,
        },
        (_, read) => read,
    }
}

/// `assignedById` → `ASSIGNED_BY_ID`.
fn upper_snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_process_names_round_trip() {
        let item = EntityType::Dynamic(1038);
        assert_eq!(item.to_string(), "DYNAMIC_1038");
        assert_eq!(EntityType::parse("dynamic_1038"), Some(item));
        assert_eq!(item.timeline_name(), "dynamic_1038");
        assert_eq!(item.owner_type_id(), 1038);
        assert_eq!(EntityType::from_owner_type_id(1038), Some(item));
        assert_eq!(
            EntityType::from_tab_placement("CRM_DYNAMIC_1038_DETAIL_TAB"),
            Some(item)
        );
        assert_eq!(item.tab_placement(), "CRM_DYNAMIC_1038_DETAIL_TAB");
        // Below 128 are the CRM's own kinds (quote 7, smart invoice 31), not ours.
        for refused in ["DYNAMIC_31", "DYNAMIC_", "DYNAMIC_+130", "DYNAMIC_1_2"] {
            assert_eq!(EntityType::parse(refused), None, "{refused}");
        }
        assert_eq!(
            EntityType::from_tab_placement("CRM_DYNAMIC_7_DETAIL_TAB"),
            None
        );
        assert_eq!(EntityType::from_owner_type_id(31), None);
        assert_eq!("dynamic_1038".parse::<EntityType>().ok(), None);
        assert_eq!("DYNAMIC_1038".parse::<EntityType>().ok(), Some(item));
        assert_eq!(
            EntityRef::from_document_id("DYNAMIC_128_5"),
            Some(EntityRef {
                kind: EntityType::Dynamic(128),
                id: 5
            })
        );
    }

    #[test]
    fn an_item_reads_like_a_deal() {
        let read = json!({"item": {"id": 5, "title": "Приём", "assignedById": 7, "contactId": 9}});
        let doc = record(EntityType::Dynamic(128), read);
        assert_eq!(doc["TITLE"], "Приём");
        assert_eq!(doc["ASSIGNED_BY_ID"], 7);
        assert_eq!(doc["CONTACT_ID"], 9);
        assert_eq!(
            record(EntityType::Dynamic(128), json!({"nothing": 1})),
            Value::Null
        );
    }
}
