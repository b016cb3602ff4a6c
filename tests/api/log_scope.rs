//! Log assertions see only their own test's lines: tests run in parallel in one
//! process, and another test logging the same message must not satisfy them.

use crate::support::logs;
use crate::support::portal::{installed, robot_link};

const LINE: &str = "Получен вебхук от Битрикс24";

/// A whole robot run on a runtime and a thread of its own, as a parallel test has.
fn another_test_runs_the_robot() {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (fake, app) = installed().await;
            robot_link(&fake, &app).await;
        });
    })
    .join()
    .expect("the other test ran");
}

#[tokio::test]
async fn a_line_another_test_logged_does_not_satisfy_this_one() {
    let log = logs::capture();
    another_test_runs_the_robot();
    let everything = logs::capture_all();
    assert!(
        everything.contains(LINE),
        "the other test's line was captured"
    );
    assert!(
        !log.text().contains(LINE),
        "another test's line reached this test's view"
    );

    let (fake, app) = installed().await;
    robot_link(&fake, &app).await;
    assert!(log.text().contains(LINE), "this test's own line is seen");
}
