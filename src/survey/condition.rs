//! Conditions on answers: `show_if`, `flag_if` and a message's `when`.
//!
//! A definition writes a condition as one flat object (`{"question": "q", "gte": 1}`,
//! `{"all": [...]}`); it is read into [`Condition`] once, so a condition naming two
//! tests, or none, is refused while the file is read, with the reason in Russian.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A test of one question's answer, or a group of conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCondition", into = "RawCondition")]
pub enum Condition {
    /// Every condition holds (an empty list always holds).
    All(Vec<Condition>),
    /// At least one condition holds (an empty list never holds).
    Any(Vec<Condition>),
    /// The answer to `question` passes `test`.
    Answer { question: String, test: Test },
}

/// What is asked of one answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// The answer equals the value (a `multi` answer: contains it).
    Equals(Value),
    /// The question is answered and the answer does not equal the value.
    NotEquals(Value),
    /// The answer equals (contains) one of the values.
    In(Vec<Value>),
    /// The answer's number is at least this: a `number` or `scale` answer, or the
    /// option score of a `single` / `multi` answer.
    Gte(f64),
    /// The answer's number is at most this.
    Lte(f64),
    /// `true`: the question has an answer; `false`: it has none.
    Answered(bool),
}

impl Test {
    /// The test's name as definitions write it.
    pub fn name(&self) -> &'static str {
        match self {
            Test::Equals(_) => "equals",
            Test::NotEquals(_) => "not_equals",
            Test::In(_) => "in",
            Test::Gte(_) => "gte",
            Test::Lte(_) => "lte",
            Test::Answered(_) => "answered",
        }
    }

    /// The values the test compares an answer with, as strings.
    pub fn values(&self) -> Vec<String> {
        match self {
            Test::Equals(v) | Test::NotEquals(v) => vec![value_text(v)],
            Test::In(list) => list.iter().map(value_text).collect(),
            Test::Gte(_) | Test::Lte(_) | Test::Answered(_) => Vec::new(),
        }
    }
}

/// A compared value as the answer's normal form spells it: `true` is `"yes"`.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    }
}

impl Condition {
    /// Every question the condition reads, in order of mention.
    pub fn questions(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |question, _| out.push(question));
        out
    }

    /// Calls `f` with every (question, test) pair inside the condition.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a str, &'a Test)) {
        match self {
            Condition::All(list) | Condition::Any(list) => {
                for c in list {
                    c.walk(f);
                }
            }
            Condition::Answer { question, test } => f(question, test),
        }
    }

    /// The one-test form every version of opros understands:
    /// `{"question": q, "equals": v}`.
    pub fn as_simple_equals(&self) -> Option<(&str, String)> {
        match self {
            Condition::Answer {
                question,
                test: Test::Equals(v),
            } => Some((question, value_text(v))),
            _ => None,
        }
    }
}

/// A `flag_if`: a test of the question's own answer, with an optional label for the
/// doctor (the question's title when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFlagIf", into = "RawFlagIf")]
pub struct FlagIf {
    pub test: Test,
    pub label: Option<String>,
}

/// The flat form a definition uses for a condition.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    all: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    question: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    in_: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answered: Option<bool>,
}

/// The flat form of a test: exactly one key may be set.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RawTest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    in_: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answered: Option<bool>,
}

impl RawTest {
    fn into_test(self, allowed: &[&str]) -> Result<Option<Test>, String> {
        let mut found = Vec::new();
        if let Some(v) = self.equals {
            found.push(Test::Equals(v));
        }
        if let Some(v) = self.not_equals {
            found.push(Test::NotEquals(v));
        }
        if let Some(v) = self.in_ {
            found.push(Test::In(v));
        }
        if let Some(v) = self.gte {
            found.push(Test::Gte(v));
        }
        if let Some(v) = self.lte {
            found.push(Test::Lte(v));
        }
        if let Some(v) = self.answered {
            found.push(Test::Answered(v));
        }
        if let Some(bad) = found.iter().find(|t| !allowed.contains(&t.name())) {
            return Err(format!(
                "условие «{}» здесь не поддерживается; допустимы: {}",
                bad.name(),
                allowed.join(", ")
            ));
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(format!(
                "в одном условии может быть только одна проверка из: {}",
                allowed.join(", ")
            )),
        }
    }

    fn from_test(test: Test) -> Self {
        let mut raw = RawTest::default();
        match test {
            Test::Equals(v) => raw.equals = Some(v),
            Test::NotEquals(v) => raw.not_equals = Some(v),
            Test::In(v) => raw.in_ = Some(v),
            Test::Gte(v) => raw.gte = Some(v),
            Test::Lte(v) => raw.lte = Some(v),
            Test::Answered(v) => raw.answered = Some(v),
        }
        raw
    }
}

const CONDITION_TESTS: &[&str] = &["equals", "not_equals", "in", "gte", "lte", "answered"];
const FLAG_TESTS: &[&str] = &["equals", "in", "gte", "lte"];

impl TryFrom<RawCondition> for Condition {
    type Error = String;

    fn try_from(raw: RawCondition) -> Result<Self, String> {
        let test = RawTest {
            equals: raw.equals,
            not_equals: raw.not_equals,
            in_: raw.in_,
            gte: raw.gte,
            lte: raw.lte,
            answered: raw.answered,
        }
        .into_test(CONDITION_TESTS)?;
        match (raw.all, raw.any, raw.question, test) {
            (Some(all), None, None, None) => Ok(Condition::All(all)),
            (None, Some(any), None, None) => Ok(Condition::Any(any)),
            (None, None, Some(question), Some(test)) => Ok(Condition::Answer { question, test }),
            (None, None, Some(question), None) => Err(format!(
                "в условии на «{question}» нет проверки: нужна одна из {}",
                CONDITION_TESTS.join(", ")
            )),
            _ => Err(
                "условие — это либо {\"all\": [...]}, либо {\"any\": [...]}, либо {\"question\": id и одна проверка}"
                    .into(),
            ),
        }
    }
}

impl From<Condition> for RawCondition {
    fn from(c: Condition) -> Self {
        match c {
            Condition::All(list) => RawCondition {
                all: Some(list),
                ..RawCondition::default()
            },
            Condition::Any(list) => RawCondition {
                any: Some(list),
                ..RawCondition::default()
            },
            Condition::Answer { question, test } => {
                let t = RawTest::from_test(test);
                RawCondition {
                    question: Some(question),
                    equals: t.equals,
                    not_equals: t.not_equals,
                    in_: t.in_,
                    gte: t.gte,
                    lte: t.lte,
                    answered: t.answered,
                    ..RawCondition::default()
                }
            }
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlagIf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    in_: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lte: Option<f64>,
}

impl TryFrom<RawFlagIf> for FlagIf {
    type Error = String;

    fn try_from(raw: RawFlagIf) -> Result<Self, String> {
        let test = RawTest {
            equals: raw.equals,
            in_: raw.in_,
            gte: raw.gte,
            lte: raw.lte,
            ..RawTest::default()
        };
        match test.into_test(FLAG_TESTS)? {
            Some(test) => Ok(FlagIf {
                test,
                label: raw.label,
            }),
            None => Err(format!(
                "в flag_if нужна одна проверка из: {}",
                FLAG_TESTS.join(", ")
            )),
        }
    }
}

impl From<FlagIf> for RawFlagIf {
    fn from(f: FlagIf) -> Self {
        let t = RawTest::from_test(f.test);
        RawFlagIf {
            label: f.label,
            equals: t.equals,
            in_: t.in_,
            gte: t.gte,
            lte: t.lte,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_form_reads_and_writes_back_the_same() {
        for text in [
            json!({"question": "a", "equals": "yes"}),
            json!({"question": "a", "not_equals": 2}),
            json!({"question": "a", "in": ["x", "y"]}),
            json!({"question": "a", "gte": 1.0}),
            json!({"question": "a", "lte": 3.0}),
            json!({"question": "a", "answered": true}),
            json!({"all": [{"question": "a", "equals": "yes"}, {"any": [{"question": "b", "gte": 2.0}]}]}),
        ] {
            let c: Condition = serde_json::from_value(text.clone()).expect("reads");
            assert_eq!(serde_json::to_value(&c).expect("writes"), text);
        }
        let f: FlagIf = serde_json::from_value(json!({"gte": 1, "label": "Мысли"})).expect("flag");
        assert_eq!(f.test, Test::Gte(1.0));
    }

    #[test]
    fn malformed_conditions_are_refused_in_russian() {
        let err = |v: Value| {
            serde_json::from_value::<Condition>(v)
                .expect_err("refused")
                .to_string()
        };
        assert!(err(json!({"question": "a"})).contains("нет проверки"));
        assert!(err(json!({"question": "a", "equals": 1, "gte": 1})).contains("только одна"));
        assert!(err(json!({"all": [], "question": "a", "equals": 1})).contains("либо"));
        assert!(err(json!({"question": "a", "like": 1})).contains("like"));
        let flag = serde_json::from_value::<FlagIf>(json!({"label": "x"}))
            .expect_err("refused")
            .to_string();
        assert!(flag.contains("нужна одна проверка"), "{flag}");
        assert!(serde_json::from_value::<FlagIf>(json!({"answered": true})).is_err());
    }
}
