use std::path::{Path, PathBuf};
use std::process::Command;

use super::fonts::{Fonts, Style};
use super::sample::sample_input;
use super::wrap::{EMPTY_ANSWER, Span, answer_text, wrap_spans};
use super::*;

const SIZE: f32 = 10.0;

fn fonts() -> &'static Fonts {
    Fonts::get().expect("embedded fonts parse")
}

/// Whether `name` can be run; otherwise reports the skip, or fails under `OPROS_STRICT_SKIPS=1`.
fn require_tool(name: &str, package: &str) -> bool {
    if Command::new(name).arg("-v").output().is_ok() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("report test");
    let message = format!("SKIP {test}: {name} not installed (apt-get install {package})");
    if std::env::var("OPROS_STRICT_SKIPS").is_ok_and(|v| v == "1") {
        panic!("{message}");
    }
    eprintln!("{message}");
    false
}

/// Where rendered pages are kept for people to look at.
fn artefacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts/report");
    std::fs::create_dir_all(&dir).expect("create artefacts dir");
    dir
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("spawn tool");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Wraps text in one face and returns the lines as plain strings.
fn wrap_plain(style: Style, text: &str, width: f32) -> Vec<String> {
    wrap_spans(fonts(), &[Span::new(style, text)], SIZE, width)
        .into_iter()
        .map(|line| line.into_iter().map(|span| span.text).collect())
        .collect()
}

#[test]
fn long_cyrillic_sentence_wraps_within_width() {
    let text = "Около трёх недель беспокоят давящие боли за грудиной при быстрой ходьбе и \
                подъёме по лестнице, проходят в покое через несколько минут";
    let width = 150.0;
    let lines = wrap_plain(Style::Regular, text, width);
    assert!(lines.len() >= 3, "expected several lines, got {lines:?}");
    for line in &lines {
        let w = fonts().text_width(Style::Regular, line, SIZE);
        assert!(w <= width + 0.01, "line {line:?} is {w} pt wide");
        assert!(!line.starts_with(' ') && !line.ends_with(' '), "{line:?}");
    }
    // Breaks fall only between words: rejoining gives the sentence back.
    assert_eq!(lines.join(" "), text);
}

#[test]
fn word_wider_than_line_is_broken_by_characters() {
    let word = "Ацетилсалициловаякислотаметилпреднизолонгемисукцинат";
    let width = 80.0;
    let lines = wrap_plain(Style::Bold, &format!("Препарат {word}"), width);
    assert_eq!(lines[0], "Препарат", "the short word keeps its own line");
    assert!(lines.len() >= 4, "{lines:?}");
    for line in &lines {
        let w = fonts().text_width(Style::Bold, line, SIZE);
        assert!(w <= width + 0.01, "line {line:?} is {w} pt wide");
    }
    assert_eq!(lines[1..].concat(), word);
}

#[test]
fn mixed_faces_and_line_breaks_wrap_together() {
    let spans = [
        Span::new(Style::Bold, "Аллергия на лекарства"),
        Span::new(Style::Regular, " — пенициллин\nкрапивница"),
    ];
    let lines = wrap_spans(fonts(), &spans, SIZE, 400.0);
    assert_eq!(
        lines,
        vec![
            vec![
                Span::new(Style::Bold, "Аллергия на лекарства"),
                Span::new(Style::Regular, " — пенициллин"),
            ],
            vec![Span::new(Style::Regular, "крапивница")],
        ]
    );
}

#[test]
fn empty_answer_is_a_dash() {
    assert_eq!(answer_text(""), EMPTY_ANSWER);
    assert_eq!(answer_text("  \n "), "—");
    assert_eq!(answer_text("  Да "), "Да");
}

#[test]
fn unprintable_characters_are_replaced_or_dropped() {
    assert_eq!(
        fonts().printable("Да\tнет\u{7}\nещё \u{6F22}"),
        "Да нет\nещё ?"
    );
}

#[test]
fn realistic_report_is_small_multi_page_pdf() {
    let input = sample_input();
    let items: usize = input.sections.iter().map(|s| s.items.len()).sum();
    assert_eq!(
        (input.sections.len(), items, input.flagged.len()),
        (5, 30, 2)
    );
    assert!(
        input
            .sections
            .iter()
            .flat_map(|s| &s.items)
            .any(|i| i.answer.chars().count() >= 550)
    );

    let report = render(&input).expect("render");
    assert!(report.pdf.starts_with(b"%PDF"));
    assert!(report.pages >= 2, "{} pages", report.pages);
    assert!(
        report.pdf.len() < 60 * 1024,
        "PDF is {} bytes: fonts not subset?",
        report.pdf.len()
    );
    assert_eq!(report.sha256, content_sha256(&input));
    assert_eq!(report.sha256.len(), 64);
}

#[test]
fn checksum_is_stable_and_tracks_every_change() {
    let input = sample_input();
    let hash = content_sha256(&input);
    assert_eq!(hash, content_sha256(&input.clone()));

    let mut answer_changed = input.clone();
    answer_changed.sections[2].items[1].answer = "амоксициллин — крапивница".into();
    let mut patient_changed = input.clone();
    patient_changed.patient = "Смирнова Анна Павловна".into();
    // Moving text across a field boundary must not collide.
    let mut shifted = input.clone();
    shifted.flagged[0].question.push_str(" Да:");
    shifted.flagged[0].answer = " пенициллин — крапивница".into();
    for changed in [answer_changed, patient_changed, shifted] {
        assert_ne!(content_sha256(&changed), hash);
    }
}

#[test]
fn empty_report_renders_one_page() {
    let input = ReportInput {
        clinic: String::new(),
        title: String::new(),
        patient: String::new(),
        completed_at: String::new(),
        scores: Vec::new(),
        flagged: Vec::new(),
        sections: Vec::new(),
    };
    let report = render(&input).expect("render");
    assert_eq!(report.pages, 1);
    assert!(report.pdf.starts_with(b"%PDF"));
}

#[test]
fn absurdly_long_report_is_refused() {
    let mut input = sample_input();
    let long = input.sections[0].items[1].clone();
    input.sections[0].items = vec![long; 2000];
    match render(&input) {
        Err(ReportError::TooManyPages { max, .. }) => assert_eq!(max, MAX_PAGES),
        other => panic!("expected TooManyPages, got {:?}", other.map(|r| r.pages)),
    }
}

#[test]
#[ignore = "needs pdftotext from poppler-utils (see README)"]
fn text_extracts_with_pdftotext() {
    if !require_tool("pdftotext", "poppler-utils") {
        return;
    }
    let report = render(&sample_input()).expect("render");
    let dir = tempfile::tempdir().expect("temp dir");
    let pdf = dir.path().join("report.pdf");
    std::fs::write(&pdf, &report.pdf).expect("write pdf");
    let text = run(Command::new("pdftotext").arg("-layout").arg(&pdf).arg("-"));
    for expected in [
        "Смирнова Анна Петровна",
        "Обратите внимание",
        "пенициллин — крапивница",
        "варфарин 5 мг вечером",
        "Контрольная сумма SHA-256",
        report.sha256.as_str(),
        &format!("стр. 1 из {}", report.pages),
        &format!("стр. {0} из {0}", report.pages),
        "Вопросы, которые вы хотите задать врачу",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    assert_eq!(text.matches(&report.sha256).count(), report.pages);
}

#[test]
#[ignore = "needs pdftoppm and tesseract with Russian (see README)"]
fn ocr_reads_first_page_like_a_doctor() {
    if !require_tool("pdftoppm", "poppler-utils")
        || !require_tool("tesseract", "tesseract-ocr tesseract-ocr-rus")
    {
        return;
    }
    let report = render(&sample_input()).expect("render");
    let dir = artefacts_dir();
    let pdf = dir.join("sample.pdf");
    std::fs::write(&pdf, &report.pdf).expect("write pdf");
    // Every page is kept as a picture for people; OCR reads the first one.
    run(Command::new("pdftoppm")
        .args(["-r", "150", "-png"])
        .arg(&pdf)
        .arg(dir.join("page")));
    run(Command::new("pdftoppm")
        .args(["-r", "150", "-png", "-f", "1", "-l", "1", "-singlefile"])
        .arg(&pdf)
        .arg(dir.join("ocr-page")));
    run(Command::new("tesseract")
        .arg(dir.join("ocr-page.png"))
        .arg(dir.join("ocr-page"))
        .args(["-l", "rus"]));
    let text = std::fs::read_to_string(dir.join("ocr-page.txt")).expect("read OCR output");
    for expected in ["Смирнова", "пенициллин", "варфарин", "Обратите внимание"]
    {
        assert!(text.contains(expected), "OCR missed {expected:?}:\n{text}");
    }
}
