//! Storage on both backends: migrations up, down and up again; real connection errors.

use converra::config::Settings;
use converra::storage::{self, DbManager};

use crate::support::*;

#[test]
fn migrations_run_up_down_and_up_again() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let manager = DbManager::new(&settings).unwrap();
        let mut conn = manager.establish().unwrap();
        let applied = storage::run_migrations(&mut conn).unwrap();
        assert!(!applied.is_empty());
        assert!(
            storage::run_migrations(&mut conn).unwrap().is_empty(),
            "idempotent"
        );
        storage::revert_all_migrations(&mut conn).unwrap();
        assert_eq!(storage::run_migrations(&mut conn).unwrap(), applied);
    }
}

#[test]
fn a_bad_database_url_reports_the_real_reason() {
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = "postgres://nobody@127.0.0.1:1/none".into();
    let err = storage::connect(&settings).unwrap_err().to_string();
    assert!(
        err.contains("postgres") && (err.contains("refused") || err.contains("connect")),
        "{err}"
    );
    settings.database.url = "sqlite:///proc/definitely/not/writable/x.db".into();
    let err = storage::connect(&settings).unwrap_err().to_string();
    assert!(err.contains("/proc/definitely"), "{err}");
    settings.database.url = "mysql://x".into();
    let err = storage::connect(&settings).unwrap_err().to_string();
    assert!(err.contains("mysql"), "{err}");
}
