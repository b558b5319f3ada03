//! contrib/pg/vassals.sql, the schema users load to run vassals from PostgreSQL, against a real server
//! (tests/util/pg.rs): it loads again over itself, its triggers bump ts and record hand-overs, every kind of change
//! is notified on emperor_vassals, and the per-host query its comments give selects what each host runs.

use std::time::Duration;

use crate::util::pg::{Listener, Postgres};

const CHANNEL: &str = "emperor_vassals";

/// A server with the schema loaded.
/// The query an emperor on `host` runs (contrib/pg/vassals.sql's comments), as rows `name|config|epoch|uid|gid|t`.
fn per_host(pg: &Postgres, host: &str) -> Vec<String> {
    pg.sql(&format!(
        "SELECT name, config, EXTRACT(epoch FROM ts), uid, gid, host IS DISTINCT FROM '{host}' \
         FROM vassals WHERE host = '{host}' OR prev_host = '{host}' ORDER BY name"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// The vassal's ts as seconds since the epoch, with its microseconds.
fn epoch(pg: &Postgres, name: &str) -> f64 {
    let out = pg.sql(&format!(
        "SELECT EXTRACT(epoch FROM ts) FROM vassals WHERE name = '{name}'"
    ));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("ts of {name}: {out:?}: {e}"))
}

/// Waits for the next notification and checks its payload.
#[track_caller]
fn expect_notified(l: &Listener, payload: &str, after: &str) {
    match l.recv(Duration::from_secs(10)) {
        Some(p) => assert_eq!(p, payload, "the notification after {after}"),
        None => panic!("no notification on {CHANNEL} within 10 s after {after}"),
    }
}

#[test]
fn pg_schema_loads_again_over_itself_keeping_rows() {
    let pg = Postgres::with_schema();
    pg.sql("INSERT INTO vassals (name, config) VALUES ('a.ini', 'x')");
    pg.sql(&crate::util::pg::schema());
    pg.sql(&crate::util::pg::schema());
    assert_eq!(pg.sql("SELECT name, config FROM vassals"), "a.ini|x\n");
    let triggers = pg
        .sql("SELECT tgname FROM pg_trigger WHERE tgrelid = 'vassals'::regclass AND NOT tgisinternal ORDER BY tgname");
    assert_eq!(
        triggers, "vassals_before_write\nvassals_notify_row\nvassals_notify_truncate\n",
        "each trigger once after three loads"
    );
    // Still working after the reloads: one bump, one notification per change.
    let l = pg.listen(CHANNEL);
    let before = epoch(&pg, "a.ini");
    pg.sql("UPDATE vassals SET config = 'y' WHERE name = 'a.ini'");
    expect_notified(&l, "a.ini", "an update after reloading the schema");
    assert!(epoch(&pg, "a.ini") > before);
    assert_eq!(
        l.drain(Duration::from_millis(300)),
        Vec::<String>::new(),
        "one notification per change"
    );
}

#[test]
fn pg_schema_notifies_every_change_with_the_name() {
    let pg = Postgres::with_schema();
    let l = pg.listen(CHANNEL);

    pg.sql("INSERT INTO vassals (name, config, host) VALUES ('app.ini', E'[emperor]\\nexec = a\\n', 'h1')");
    expect_notified(&l, "app.ini", "an INSERT");

    pg.sql("UPDATE vassals SET config = 'changed' WHERE name = 'app.ini'");
    expect_notified(&l, "app.ini", "an UPDATE of config");

    pg.sql("UPDATE vassals SET host = 'h2' WHERE name = 'app.ini'");
    expect_notified(&l, "app.ini", "an UPDATE of host");

    // A rename tells both names (in this order: the old row goes, the new one comes).
    pg.sql("UPDATE vassals SET name = 'renamed.ini' WHERE name = 'app.ini'");
    expect_notified(&l, "app.ini", "a rename (old name)");
    expect_notified(&l, "renamed.ini", "a rename (new name)");

    pg.sql("DELETE FROM vassals WHERE name = 'renamed.ini'");
    expect_notified(&l, "renamed.ini", "a DELETE");

    pg.sql("INSERT INTO vassals (name, config) VALUES ('b.ini', 'b'), ('c.ini', 'c')");
    expect_notified(&l, "b.ini", "a two-row INSERT (first row)");
    expect_notified(&l, "c.ini", "a two-row INSERT (second row)");

    pg.sql("TRUNCATE vassals");
    expect_notified(&l, "", "a TRUNCATE");

    // Several changes to one row in a transaction: one notification, at commit.
    pg.sql("BEGIN; INSERT INTO vassals (name, config) VALUES ('d.ini', '1'); UPDATE vassals SET config = '2'; COMMIT;");
    expect_notified(&l, "d.ini", "a transaction changing d.ini twice");
    // A rolled back change tells nothing.
    pg.sql("BEGIN; DELETE FROM vassals; ROLLBACK;");
    assert_eq!(
        l.drain(Duration::from_millis(300)),
        Vec::<String>::new(),
        "no other notification"
    );
    assert_eq!(pg.sql("SELECT count(*) FROM vassals"), "1\n");
}

#[test]
fn pg_schema_bumps_ts_when_what_runs_changes() {
    let pg = Postgres::with_schema();
    pg.sql("INSERT INTO vassals (name, config) VALUES ('app.ini', 'one')");
    let inserted = epoch(&pg, "app.ini");

    pg.sql("UPDATE vassals SET config = 'two' WHERE name = 'app.ini'");
    let after_config = epoch(&pg, "app.ini");
    assert!(
        after_config > inserted,
        "a config update moves ts forward: {inserted} -> {after_config}"
    );

    pg.sql("UPDATE vassals SET uid = 1000, gid = 1000 WHERE name = 'app.ini'");
    let after_uid = epoch(&pg, "app.ini");
    assert!(
        after_uid > after_config,
        "a uid/gid update moves ts forward: {after_config} -> {after_uid}"
    );

    // Neither a move nor an update that changes nothing a vassal runs is a reload.
    pg.sql("UPDATE vassals SET host = 'h1' WHERE name = 'app.ini'");
    pg.sql("UPDATE vassals SET config = config WHERE name = 'app.ini'");
    assert_eq!(epoch(&pg, "app.ini"), after_uid, "ts left alone");

    // A ts the UPDATE sets itself is kept, with a config change too.
    pg.sql("UPDATE vassals SET config = 'three', ts = '2001-02-03 04:05:06+00' WHERE name = 'app.ini'");
    assert_eq!(epoch(&pg, "app.ini"), 981173106.0, "an explicit ts is kept");
    // And a bump always goes forward, even from a ts in the future.
    // (Compared in SQL: a year-2999 epoch with microseconds has more digits than an f64 keeps.)
    pg.sql("UPDATE vassals SET ts = '2999-01-01 00:00:00+00' WHERE name = 'app.ini'");
    pg.sql("UPDATE vassals SET config = 'four' WHERE name = 'app.ini'");
    assert_eq!(
        pg.sql("SELECT ts > '2999-01-01 00:00:00+00' FROM vassals WHERE name = 'app.ini'"),
        "t\n",
        "bumped forward from a future ts"
    );

    // An INSERT takes the current time unless it says otherwise.
    let now: f64 = pg
        .sql("SELECT EXTRACT(epoch FROM clock_timestamp())")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (now - inserted).abs() < 60.0,
        "default ts {inserted} is about now ({now})"
    );
}

#[test]
fn pg_schema_move_between_hosts_is_a_handoff() {
    let pg = Postgres::with_schema();
    pg.sql("INSERT INTO vassals (name, config, host) VALUES ('app.ini', 'cfg', 'h1'), ('other.ini', 'o', 'h2')");
    let ts = pg.sql("SELECT EXTRACT(epoch FROM ts) FROM vassals WHERE name = 'app.ini'");
    let ts = ts.trim();
    let other_ts = pg.sql("SELECT EXTRACT(epoch FROM ts) FROM vassals WHERE name = 'other.ini'");
    let other_ts = other_ts.trim();
    assert_eq!(per_host(&pg, "h1"), [format!("app.ini|cfg|{ts}|||f")]);
    assert_eq!(per_host(&pg, "h2"), [format!("other.ini|o|{other_ts}|||f")]);
    assert_eq!(
        pg.sql("SELECT prev_host IS NULL FROM vassals WHERE name = 'app.ini'"),
        "t\n"
    );

    pg.sql("UPDATE vassals SET host = 'h2' WHERE name = 'app.ini'");
    assert_eq!(
        pg.sql("SELECT host, prev_host FROM vassals WHERE name = 'app.ini'"),
        "h2|h1\n"
    );
    // The old host still sees it, handing it over; the new one runs it; ts did not move (no reload).
    assert_eq!(per_host(&pg, "h1"), [format!("app.ini|cfg|{ts}|||t")]);
    assert_eq!(
        per_host(&pg, "h2"),
        [format!("app.ini|cfg|{ts}|||f"), format!("other.ini|o|{other_ts}|||f")]
    );
    assert_eq!(per_host(&pg, "h3"), Vec::<String>::new());

    // Once the move is done prev_host may be cleared: the old host no longer sees it.
    pg.sql("UPDATE vassals SET prev_host = NULL WHERE name = 'app.ini'");
    assert_eq!(per_host(&pg, "h1"), Vec::<String>::new());
    assert_eq!(
        pg.sql("SELECT host, prev_host IS NULL FROM vassals WHERE name = 'app.ini'"),
        "h2|t\n"
    );

    // Parked (host NULL): only the host it leaves sees it, as a hand-over.
    pg.sql("UPDATE vassals SET host = NULL WHERE name = 'app.ini'");
    assert_eq!(
        per_host(&pg, "h2"),
        [format!("app.ini|cfg|{ts}|||t"), format!("other.ini|o|{other_ts}|||f")]
    );
}

#[test]
fn pg_schema_names_must_be_file_names() {
    let pg = Postgres::with_schema();
    for good in ["a.ini", "App-1_x.v2.ini", "0.ini"] {
        pg.sql(&format!("INSERT INTO vassals (name, config) VALUES ('{good}', '')"));
    }
    let long = format!("{}.ini", "a".repeat(251));
    for bad in [
        "",
        ".ini",
        ".hidden.ini",
        "a/b.ini",
        "../a.ini",
        "a.yaml",
        "a.ini/",
        "a b.ini",
        "é.ini",
        &long,
    ] {
        let err = pg
            .try_sql(&format!("INSERT INTO vassals (name, config) VALUES ('{bad}', '')"))
            .expect_err(&format!("the name {bad:?} must be refused"));
        assert!(err.contains("vassals_name_is_a_file_name"), "{bad:?}: {err}");
    }
    let longest = format!("{}.ini", "a".repeat(250));
    pg.sql(&format!("INSERT INTO vassals (name, config) VALUES ('{longest}', '')"));
    assert!(
        pg.try_sql("INSERT INTO vassals (name) VALUES ('x.ini')").is_err(),
        "config is required"
    );
}
