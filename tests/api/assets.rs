//! Every file a page links is served from `/assets/*` under the URL the page names:
//! the same bytes as embedded, the version in the URL taken from those bytes.

use crate::support::html::Doc;
use crate::support::portal::{install, installed, robot_link};

#[tokio::test]
async fn every_linked_asset_is_served_under_its_versioned_url() {
    let (fake, app) = installed().await;
    let (deal, token) = robot_link(&fake, &app).await;
    fake.set_app_url(&app.url("/b24/app"));
    let get = |path: String| {
        let url = app.url(&path);
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let pages = [
        ("operator", get("/".to_owned()).await),
        ("patient", get(format!("/s/{token}")).await),
        ("install", install(&fake, &app).await),
        (
            "tab",
            fake.open_deal_tab(1, deal)
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        ),
        (
            "admin",
            fake.open_app(1).await.unwrap().text().await.unwrap(),
        ),
    ];
    let mut checked = 0;
    for (page, html) in &pages {
        let doc = Doc::parse(html);
        let mut linked = doc.attrs("link[rel=stylesheet]", "href");
        linked.extend(doc.attrs("script[src]", "src"));
        // The portal's own BX24 library (`//api.bitrix24.com/…`) is not ours.
        linked.retain(|url| url.starts_with("/assets/"));
        assert!(!linked.is_empty(), "{page} links no asset: {html}");
        for url in linked {
            let name = url["/assets/".len()..]
                .split('?')
                .next()
                .unwrap_or_default();
            let asset = opros::assets::served(name).unwrap_or_else(|| panic!("{page}: {url}"));
            assert_eq!(url, asset.url(), "{page} names another version");
            let r = app.http.get(app.url(&url)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            let types: Vec<_> = r.headers().get_all("content-type").iter().collect();
            assert_eq!(types, [asset.content_type], "{url}");
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
            assert_eq!(r.text().await.unwrap(), asset.body, "{url}");
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} links checked");

    // Nothing else is served from there.
    for name in [
        "..%2FCargo.toml",
        "app.css.map",
        "APP.CSS",
        "demo-card.css",
        "",
    ] {
        let r = app
            .http
            .get(app.url(&format!("/assets/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{name}");
    }
}
