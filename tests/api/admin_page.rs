//! The application page (`POST /b24/app`): administrators only, verified with the
//! portal; status, reinstall, settings and the outbox's «Повторить».

use opros::testing::Fault;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::html::Doc;
use crate::support::portal::{installed_on, patient_deal};

async fn page(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn session_of(body: &str) -> String {
    Doc::parse(body)
        .attr("input[name=s]", "value")
        .expect("session field")
}

on_both_databases!(admin_sees_status_and_can_reinstall_change_settings_and_retry);
async fn admin_sees_status_and_can_reinstall_change_settings_and_retry(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    fake.set_app_url(&app.url("/b24/app"));
    let (status, body) = page(fake.open_app(1).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    for expected in [
        "Состояние установки",
        "Приложение установлено и работает",
        "Робот «Отправить опрос»",
        "Переустановить",
        "/b24/placement/deal-tab",
        "Анкета пациента перед приёмом",
        "Очередь пуста",
    ] {
        assert!(
            Doc::parse(&body).text().contains(expected),
            "«{expected}» missing: {body}"
        );
    }
    let session = session_of(&body);

    // An application update drops the registrations; «Переустановить» restores them.
    fake.app_update();
    assert!(fake.placements().is_empty());
    let r = app
        .http
        .post(app.url("/b24/app/action"))
        .form(&[("s", session.as_str()), ("action", "reinstall")])
        .send()
        .await
        .unwrap();
    let (status, body) = page(r).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        Doc::parse(&body).text().contains("Регистрации проверены"),
        "{body}"
    );
    assert!(!fake.placements().is_empty());
    assert!(!fake.robots().is_empty());

    // Settings are kept per portal.
    let r = app
        .http
        .post(app.url("/b24/app/action"))
        .form(&[
            ("s", session.as_str()),
            ("action", "settings"),
            ("link_days", "14"),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = page(r).await;
    assert_eq!(status, 200);
    assert!(
        Doc::parse(&body).text().contains("Настройки сохранены"),
        "{body}"
    );
    let doc = Doc::parse(&body);
    assert_eq!(
        doc.attr("input[name=link_days]", "value").as_deref(),
        Some("14")
    );
    assert_eq!(doc.count("input[name=reuse_active][checked]"), 0);
    let r = app
        .http
        .post(app.url("/b24/app/action"))
        .form(&[
            ("s", session.as_str()),
            ("action", "settings"),
            ("link_days", "0"),
        ])
        .send()
        .await
        .unwrap();
    let (_, body) = page(r).await;
    assert!(Doc::parse(&body).text().contains("от 1 до 365"), "{body}");
    assert_eq!(
        Doc::parse(&body)
            .attr("input[name=link_days]", "value")
            .as_deref(),
        Some("14"),
        "a bad value changes nothing"
    );

    // Jobs the portal refused for good are listed with «Повторить», which re-queues them.
    let deal = patient_deal(&fake);
    fake.fail_next(
        "batch",
        Fault::error(400, "ERROR_WRONG_PARAMS", "Wrong params"),
        1,
    );
    fake.fail_next(
        "bizproc.event.send",
        Fault::error(400, "ERROR_WRONG_PARAMS", "Wrong params"),
        1,
    );
    fake.run_robot("opros_send_survey", deal, &[])
        .await
        .unwrap();
    app.run_outbox().await;
    assert!(fake.event_sends().is_empty());
    let (_, body) = page(fake.open_app(1).await.unwrap()).await;
    assert!(Doc::parse(&body).text().contains("не удалось"), "{body}");
    let jobs: Vec<String> = Doc::parse(&body).attrs("input[name=job]", "value");
    assert!(!jobs.is_empty(), "{body}");
    let session = session_of(&body);
    for job in &jobs {
        let r = app
            .http
            .post(app.url("/b24/app/action"))
            .form(&[
                ("s", session.as_str()),
                ("action", "retry"),
                ("job", job.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let (_, body) = page(r).await;
        assert!(
            Doc::parse(&body)
                .text()
                .contains("поставлено в очередь повторно"),
            "{body}"
        );
    }
    app.run_outbox().await;
    assert_eq!(fake.event_sends().len(), 1);
    let (_, body) = page(fake.open_app(1).await.unwrap()).await;
    assert!(Doc::parse(&body).text().contains("Очередь пуста"), "{body}");
}

on_both_databases!(non_admins_and_foreign_sessions_are_refused);
async fn non_admins_and_foreign_sessions_are_refused(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    fake.set_app_url(&app.url("/b24/app"));
    fake.add_user(7, "Игорь", "Воронцов", false);
    let (status, body) = page(fake.open_app(7).await.unwrap()).await;
    assert_eq!(status, 403);
    let doc = Doc::parse(&body);
    assert!(
        doc.text()
            .contains("Доступно только администратору портала"),
        "{body}"
    );
    assert!(!doc.text().contains("Переустановить"));
    assert_eq!(doc.count("input[name=s]"), 0, "no session for a non-admin");

    // A forged token.
    let member = fake.member_id();
    let r = fake
        .open_placement_forged(
            &app.url(&format!("/b24/app?DOMAIN={}&PROTOCOL=0", fake.domain())),
            &[("AUTH_ID", "forged"), ("member_id", &member)],
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A deal tab's session cannot drive the admin actions.
    let deal = patient_deal(&fake);
    let (_, tab) = page(fake.open_deal_tab(7, deal).await.unwrap()).await;
    let tab_session = session_of(&tab);
    let robots_before = fake.calls_of("bizproc.robot.update").len();
    for s in [tab_session.as_str(), "1.1.A.99999999999.00"] {
        let r = app
            .http
            .post(app.url("/b24/app/action"))
            .form(&[("s", s), ("action", "reinstall")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert_eq!(fake.calls_of("bizproc.robot.update").len(), robots_before);
}

on_both_databases!(a_portal_over_its_limit_shows_as_waiting_and_retry_now_sends_at_once);
async fn a_portal_over_its_limit_shows_as_waiting_and_retry_now_sends_at_once(db: TestDb) {
    use opros::db::entities::outbox_job;
    use sea_orm::EntityTrait;

    let (fake, app) = installed_on(&db.url).await;
    fake.set_app_url(&app.url("/b24/app"));
    // The portal answers QUERY_LIMIT_EXCEEDED to the batch the robot run's jobs go in.
    fake.fail_next("batch", Fault::QueryLimit, 10_000);
    let deal = patient_deal(&fake);
    fake.run_robot("opros_send_survey", deal, &[])
        .await
        .unwrap();
    app.run_outbox().await;
    assert!(fake.event_sends().is_empty());
    let (_, body) = page(fake.open_app(1).await.unwrap()).await;
    for expected in [
        "не удалось: 0",
        "Следующая попытка",
        "Превышен лимит запросов к Битрикс24",
        "Повторить сейчас",
    ] {
        assert!(
            Doc::parse(&body).text().contains(expected),
            "«{expected}» missing: {body}"
        );
    }
    assert!(
        Doc::parse(&body).text().contains("повторяется: 3"),
        "{body}"
    );
    let session = session_of(&body);

    // A deal tab's session or a forged one cannot drive «Повторить сейчас».
    let (_, tab) = page(fake.open_deal_tab(1, deal).await.unwrap()).await;
    let waiting = |rows: Vec<outbox_job::Model>| {
        rows.into_iter()
            .filter(|j| j.done_at.is_none())
            .map(|j| (j.id, j.run_at))
            .collect::<Vec<_>>()
    };
    let before = waiting(outbox_job::Entity::find().all(&app.state.db).await.unwrap());
    for s in [session_of(&tab).as_str(), "1.1.A.99999999999.00"] {
        let r = app
            .http
            .post(app.url("/b24/app/action"))
            .form(&[("s", s), ("action", "retry_now")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    let after = waiting(outbox_job::Entity::find().all(&app.state.db).await.unwrap());
    assert_eq!(before, after, "a refused action changes nothing");

    // The portal is back; the administrator does not wait for the next probe.
    fake.clear_faults("batch");
    let r = app
        .http
        .post(app.url("/b24/app/action"))
        .form(&[("s", session.as_str()), ("action", "retry_now")])
        .send()
        .await
        .unwrap();
    let (status, body) = page(r).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        ["Заданий отправляется сейчас", "Ожидающих заданий нет"]
            .iter()
            .any(|notice| Doc::parse(&body).text().contains(notice)),
        "{body}"
    );
    crate::support::eventually(
        "the robot's values after «Повторить сейчас»",
        || async {
            app.run_outbox().await;
            fake.event_sends().len() == 1
        },
    )
    .await;
    let (_, body) = page(fake.open_app(1).await.unwrap()).await;
    assert!(Doc::parse(&body).text().contains("Очередь пуста"), "{body}");
}
