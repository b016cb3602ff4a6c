//! Where questionnaires come from: the built-in one and a directory of files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::model::{DefinitionProblem, Questionnaire};

/// The built-in questionnaires (file name for problems, text): the pre-visit one,
/// used when nothing else is configured, and the PHQ-9 and GAD-7 scales.
const BUILTINS: [(&str, &str); 3] = [
    (
        "встроенная анкета pre_visit.yaml",
        include_str!("builtin/pre_visit.yaml"),
    ),
    (
        "встроенная анкета phq9.yaml",
        include_str!("builtin/phq9.yaml"),
    ),
    (
        "встроенная анкета gad7.yaml",
        include_str!("builtin/gad7.yaml"),
    ),
];
/// The code of the questionnaire sent when none is asked for.
pub const DEFAULT_CODE: &str = "pre_visit";
/// Questionnaire files larger than this are refused: a definition is a few KB.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Every loaded questionnaire, by code and version. Versions of one code coexist:
/// an invitation keeps the version it was sent with.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    items: BTreeMap<(String, u32), Arc<Questionnaire>>,
    /// The `(code, version)` pairs that came with the service, not from a file.
    builtin: std::collections::BTreeSet<(String, u32)>,
}

/// Where a template came from, for the editor's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource {
    Builtin,
    File,
}

impl TemplateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateSource::Builtin => "builtin",
            TemplateSource::File => "file",
        }
    }
}

/// A questionnaire file that could not be used, and why. The others still load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub file: String,
    pub place: String,
    /// Stable: a [`DefinitionProblem`]'s code, or `unreadable`, `parse_error`,
    /// `version_taken`.
    pub code: &'static str,
    pub reason: String,
}

impl fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "файл {}: {} [{}]", self.file, self.reason, self.code)
        } else {
            write!(
                f,
                "файл {}, {}: {} [{}]",
                self.file, self.place, self.reason, self.code
            )
        }
    }
}

/// Problems one per line, for the message that stops the start.
pub fn join_load_problems(problems: &[LoadProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why [`Catalog::insert`] refused a questionnaire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("анкета содержит ошибки: {}", join_problems(.0))]
    Invalid(Vec<DefinitionProblem>),
    #[error("анкета {code} версии {version} уже есть и отличается; измените номер версии")]
    VersionTaken { code: String, version: u32 },
}

fn join_problems(problems: &[DefinitionProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.place, p.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Catalog {
    /// The built-in questionnaires plus every `*.yaml`, `*.yml` and `*.json` file in
    /// `dir` (not recursive, in file-name order). Broken files become problems.
    pub fn load(dir: Option<&Path>) -> (Catalog, Vec<LoadProblem>) {
        let mut catalog = Catalog::default();
        let mut problems = Vec::new();
        for (name, text) in BUILTINS {
            catalog.add_text(name, text, Format::Yaml, &mut problems);
        }
        catalog.builtin = catalog.items.keys().cloned().collect();
        if let Some(dir) = dir {
            catalog.load_dir(dir, &mut problems);
        }
        (catalog, problems)
    }

    fn load_dir(&mut self, dir: &Path, problems: &mut Vec<LoadProblem>) {
        let whole_dir = |reason: String| LoadProblem {
            file: dir.display().to_string(),
            place: String::new(),
            code: "unreadable",
            reason,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                problems.push(whole_dir(format!("каталог не читается: {e}")));
                return;
            }
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| Format::of(&p).map(|f| (p, f)))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, format) in files {
            let name = path.display().to_string();
            let text = std::fs::metadata(&path)
                .and_then(|m| {
                    if m.len() > MAX_FILE_BYTES {
                        Err(std::io::Error::other("файл больше 1 МБ"))
                    } else {
                        std::fs::read_to_string(&path)
                    }
                })
                .map_err(|e| LoadProblem {
                    file: name.clone(),
                    place: String::new(),
                    code: "unreadable",
                    reason: format!("не удалось прочитать: {e}"),
                });
            match text {
                Ok(text) => self.add_text(&name, &text, format, problems),
                Err(problem) => problems.push(problem),
            }
        }
    }

    fn add_text(&mut self, file: &str, text: &str, format: Format, out: &mut Vec<LoadProblem>) {
        let problem = |place: String, code: &'static str, reason: String| LoadProblem {
            file: file.to_string(),
            place,
            code,
            reason,
        };
        let parsed = match format {
            Format::Yaml => serde_yaml_ng::from_str::<Questionnaire>(text).map_err(|e| {
                let place = e
                    .location()
                    .map(|l| format!("строка {}, столбец {}", l.line(), l.column()))
                    .unwrap_or_default();
                problem(place, "parse_error", format!("ошибка разбора YAML: {e}"))
            }),
            Format::Json => serde_json::from_str::<Questionnaire>(text).map_err(|e| {
                problem(
                    format!("строка {}, столбец {}", e.line(), e.column()),
                    "parse_error",
                    format!("ошибка разбора JSON: {e}"),
                )
            }),
        };
        let questionnaire = match parsed {
            Ok(q) => q,
            Err(p) => {
                out.push(p);
                return;
            }
        };
        match self.insert(questionnaire) {
            Ok(()) => {}
            Err(InsertError::Invalid(list)) => {
                out.extend(list.into_iter().map(|p| problem(p.place, p.code, p.reason)));
            }
            Err(e @ InsertError::VersionTaken { .. }) => {
                out.push(problem("version".into(), "version_taken", e.to_string()));
            }
        }
    }

    /// Adds a questionnaire after checking its definition. Re-adding an identical
    /// one is harmless; a different one under a taken `(code, version)` is refused,
    /// because invitations already sent rely on that version's meaning.
    pub fn insert(&mut self, q: Questionnaire) -> Result<(), InsertError> {
        let problems = q.check();
        if !problems.is_empty() {
            return Err(InsertError::Invalid(problems));
        }
        let key = (q.code.clone(), q.version);
        match self.items.get(&key) {
            Some(existing) if **existing == q => Ok(()),
            Some(_) => Err(InsertError::VersionTaken {
                code: q.code,
                version: q.version,
            }),
            None => {
                self.items.insert(key, Arc::new(q));
                Ok(())
            }
        }
    }

    /// One exact version.
    pub fn get(&self, code: &str, version: u32) -> Option<Arc<Questionnaire>> {
        self.items.get(&(code.to_string(), version)).cloned()
    }

    /// The highest version of a code: what new invitations are sent with.
    pub fn latest(&self, code: &str) -> Option<Arc<Questionnaire>> {
        self.items
            .range((code.to_string(), 0)..=(code.to_string(), u32::MAX))
            .next_back()
            .map(|(_, q)| Arc::clone(q))
    }

    /// Every questionnaire, by code then version.
    pub fn list(&self) -> Vec<Arc<Questionnaire>> {
        self.items.values().cloned().collect()
    }

    /// The latest version of every code, with where it came from: the templates a
    /// portal may start its own questionnaires from.
    pub fn templates(&self) -> Vec<(Arc<Questionnaire>, TemplateSource)> {
        let mut latest: BTreeMap<&str, &Arc<Questionnaire>> = BTreeMap::new();
        for ((code, _), q) in &self.items {
            latest.insert(code.as_str(), q);
        }
        latest
            .into_values()
            .map(|q| {
                let source = if self.builtin.contains(&(q.code.clone(), q.version)) {
                    TemplateSource::Builtin
                } else {
                    TemplateSource::File
                };
                (Arc::clone(q), source)
            })
            .collect()
    }

    /// The code used when an invitation names no questionnaire.
    pub fn default_code(&self) -> &'static str {
        DEFAULT_CODE
    }
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Yaml,
    Json,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
code: follow_up
version: 2
title: Повторный приём
sections:
  - id: main
    title: Самочувствие
    questions:
      - id: better
        type: yes_no
        title: Стало ли лучше?
        required: true
"#;

    #[test]
    fn builtin_questionnaire_loads_cleanly() {
        let (catalog, problems) = Catalog::load(None);
        assert!(problems.is_empty(), "{problems:?}");
        let q = catalog.latest(catalog.default_code()).expect("pre_visit");
        assert_eq!((q.code.as_str(), q.version), ("pre_visit", 1));
        assert_eq!(catalog.get("pre_visit", 1), Some(q.clone()));
        assert!(catalog.get("pre_visit", 2).is_none());
        let last = q.questions().last().expect("questions");
        assert_eq!(last.kind, crate::survey::QuestionType::Consent);
        assert!(last.required);
    }

    #[test]
    fn a_broken_file_is_reported_and_the_rest_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("good.yaml"), GOOD).expect("write");
        let broken = GOOD.replace("type: yes_no", "type: [yes_no");
        std::fs::write(dir.path().join("broken.yml"), broken).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");

        let (catalog, problems) = Catalog::load(Some(dir.path()));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].file.ends_with("broken.yml"));
        assert!(
            problems[0].place.starts_with("строка "),
            "{:?}",
            problems[0]
        );
        assert!(problems[0].to_string().contains("broken.yml"));
        assert!(catalog.get("follow_up", 2).is_some());
        assert!(catalog.get("pre_visit", 1).is_some());
    }

    #[test]
    fn definition_problems_name_the_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let json = r#"{"code": "bad", "version": 1, "title": "Плохая", "sections": [
            {"id": "s", "title": "Раздел", "questions": [
              {"id": "a", "type": "single", "title": "A"},
              {"id": "a", "type": "text", "title": "B", "show_if": {"question": "later", "equals": "x"}},
              {"id": "later", "type": "multi", "title": "C",
               "options": [{"value": "x", "label": "X"}, {"value": "x", "label": "Y"}]},
              {"id": "c1", "type": "consent", "title": "Согласие"},
              {"id": "c2", "type": "consent", "title": "Ещё согласие"}
            ]}]}"#;
        std::fs::write(dir.path().join("bad.json"), json).expect("write");
        let (catalog, problems) = Catalog::load(Some(dir.path()));
        assert!(catalog.latest("bad").is_none());
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let has = |place: &str, reason: &str| {
            problems
                .iter()
                .any(|p| p.place.contains(place) && p.reason.contains(reason))
        };
        assert!(has("questions[0] (a)", "нужны варианты"), "{text:?}");
        assert!(has("questions[1] (a)", "уже встречался"), "{text:?}");
        assert!(has("questions[1] (a)", "этот вопрос ниже"), "{text:?}");
        assert!(has("questions[2] (later)", "повторяется"), "{text:?}");
        assert!(has("questions[4] (c2)", "только одно согласие"), "{text:?}");
    }

    #[test]
    fn templates_are_the_latest_of_each_code_with_their_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("good.yaml"), GOOD).expect("write");
        let gad7_v2 = serde_json::to_string(&{
            let (catalog, _) = Catalog::load(None);
            let mut q = Questionnaire::clone(&catalog.latest("gad7").expect("gad7"));
            q.version = 2;
            q
        })
        .expect("json");
        std::fs::write(dir.path().join("gad7.json"), gad7_v2).expect("write");
        let (catalog, problems) = Catalog::load(Some(dir.path()));
        assert!(problems.is_empty(), "{problems:?}");
        let templates: Vec<(String, u32, &str)> = catalog
            .templates()
            .into_iter()
            .map(|(q, source)| (q.code.clone(), q.version, source.as_str()))
            .collect();
        assert_eq!(
            templates,
            vec![
                ("follow_up".to_owned(), 2, "file"),
                ("gad7".to_owned(), 2, "file"),
                ("phq9".to_owned(), 1, "builtin"),
                ("pre_visit".to_owned(), 1, "builtin"),
            ]
        );
    }

    #[test]
    fn versions_coexist_and_a_changed_version_is_refused() {
        let mut catalog = Catalog::default();
        let v2: Questionnaire = serde_yaml_ng::from_str(GOOD).expect("yaml");
        let mut v3 = v2.clone();
        v3.version = 3;
        v3.title = "Повторный приём, новая редакция".into();
        catalog.insert(v2.clone()).expect("v2");
        catalog.insert(v3.clone()).expect("v3");
        catalog.insert(v2.clone()).expect("identical again is fine");
        assert_eq!(catalog.latest("follow_up").map(|q| q.version), Some(3));
        assert_eq!(
            catalog.get("follow_up", 2).map(|q| q.title.clone()),
            Some(v2.title)
        );
        let mut changed = v3;
        changed.title = "Другое".into();
        assert!(matches!(
            catalog.insert(changed),
            Err(InsertError::VersionTaken { version: 3, .. })
        ));
        assert_eq!(catalog.list().len(), 2);
    }
}
