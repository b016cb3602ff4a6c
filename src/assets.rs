//! Every file a page loads from this service, embedded in the binary, and the one
//! cache-busting scheme: a page names an asset as `<path>?v=<content hash>`, so the
//! asset can be cached for long and a new build is never met by a stale copy.
//!
//! Pages (`views`) ask for URLs, `web::asset` and the demo serve the bodies; neither
//! `web` nor `local_app` owns another's files.

use poem::Response;

/// One embedded file.
pub struct Asset {
    /// The file name under its route (`/assets/{name}`).
    pub name: &'static str,
    pub body: &'static str,
    pub content_type: &'static str,
    /// Where it is served, without the version.
    path: &'static str,
    hash: u32,
}

impl Asset {
    const fn new(
        name: &'static str,
        path: &'static str,
        body: &'static str,
        content_type: &'static str,
    ) -> Asset {
        Asset {
            name,
            body,
            content_type,
            path,
            hash: fnv1a(body.as_bytes()),
        }
    }

    /// The URL pages use: the path with the content hash as its version.
    pub fn url(&self) -> String {
        format!("{}?v={:08x}", self.path, self.hash)
    }

    /// The file with its one content type (a `&str` body would answer `text/plain`
    /// and `with_header` add the real type as a second header), never sniffed.
    pub fn response(&self) -> Response {
        Response::builder()
            .content_type(self.content_type)
            .header("x-content-type-options", "nosniff")
            .body(self.body)
    }
}

const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The patient's page and the operator's page.
pub const APP_CSS: Asset = Asset::new(
    "app.css",
    "/assets/app.css",
    include_str!("web/assets/app.css"),
    CSS,
);
pub const APP_JS: Asset = Asset::new(
    "app.js",
    "/assets/app.js",
    include_str!("web/assets/app.js"),
    JS,
);
/// Every page shown in a Bitrix24 frame (install result, errors, tab, admin page).
pub const FRAME_CSS: Asset = Asset::new(
    "b24-frame.css",
    "/assets/b24-frame.css",
    include_str!("local_app/assets/b24-frame.css"),
    CSS,
);
pub const FRAME_JS: Asset = Asset::new(
    "b24-frame.js",
    "/assets/b24-frame.js",
    include_str!("local_app/assets/b24-frame.js"),
    JS,
);
/// The deal tab and the admin page, on top of the frame's files.
pub const TAB_CSS: Asset = Asset::new(
    "deal-tab.css",
    "/assets/deal-tab.css",
    include_str!("../placement/deal-tab.css"),
    CSS,
);
pub const TAB_JS: Asset = Asset::new(
    "deal-tab.js",
    "/assets/deal-tab.js",
    include_str!("../placement/deal-tab.js"),
    JS,
);

/// The questionnaire editor of the admin page, on top of the tab's files.
pub const EDITOR_CSS: Asset = Asset::new(
    "questionnaire-editor.css",
    "/assets/questionnaire-editor.css",
    include_str!("local_app/assets/questionnaire-editor.css"),
    CSS,
);
pub const EDITOR_JS: Asset = Asset::new(
    "questionnaire-editor.js",
    "/assets/questionnaire-editor.js",
    include_str!("local_app/assets/questionnaire-editor.js"),
    JS,
);

/// The demo's deal card, served by the demo alone under `/demo/assets/`.
#[cfg(feature = "demo")]
pub const CARD_CSS: Asset = Asset::new(
    "demo-card.css",
    "/demo/assets/demo-card.css",
    include_str!("../placement/demo-card.css"),
    CSS,
);
#[cfg(feature = "demo")]
pub const CARD_JS: Asset = Asset::new(
    "demo-card.js",
    "/demo/assets/demo-card.js",
    include_str!("../placement/demo-card.js"),
    JS,
);

/// What `/assets/{name}` serves.
const SERVED: [&Asset; 8] = [
    &APP_CSS,
    &APP_JS,
    &FRAME_CSS,
    &FRAME_JS,
    &TAB_CSS,
    &TAB_JS,
    &EDITOR_CSS,
    &EDITOR_JS,
];

/// The asset `/assets/{name}` serves, if any.
pub fn served(name: &str) -> Option<&'static Asset> {
    SERVED.into_iter().find(|a| a.name == name)
}

/// The demo's files under `/demo/assets/{name}`.
#[cfg(feature = "demo")]
pub fn demo(name: &str) -> Option<&'static Asset> {
    [&CARD_CSS, &CARD_JS].into_iter().find(|a| a.name == name)
}

/// FNV-1a: small, `const`, and enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_content_hash() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        let url = APP_CSS.url();
        assert_eq!(
            url,
            format!("/assets/app.css?v={:08x}", fnv1a(APP_CSS.body.as_bytes()))
        );
        assert_ne!(APP_CSS.url(), APP_JS.url().replace("app.js", "app.css"));
    }

    #[test]
    fn every_served_name_is_found_and_nothing_else() {
        for asset in SERVED {
            let found = served(asset.name).map(|a| a.url());
            assert_eq!(found, Some(asset.url()));
            assert!(
                asset
                    .url()
                    .starts_with(&format!("/assets/{}?v=", asset.name))
            );
        }
        for name in ["", "../Cargo.toml", "app.css/", "APP.CSS", "demo-card.css"] {
            assert!(served(name).is_none(), "{name}");
        }
    }
}
