//! What differs between MySQL 5.7, MySQL 8.x and MariaDB ([`ServerVersion`],
//! the spellings of a statement or a column one version knows and another
//! does not), and the statements whose answers are parsed rather than read
//! as rows of data: `SHOW GRANTS` and the replica status.
//!
//! Every `SHOW GRANTS` line is read by [`Grant::parse`], by `check` (the
//! warning about an account that could write) and by `doctor` alike. The
//! replica status is read with [`REPLICA_STATUS_SQL`] and its columns named
//! by [`LAG_COLUMNS`] and its neighbours, by the throttle and by `doctor`.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

/// What a server says it is (`SELECT VERSION()`), as far as blobcheck
/// treats servers differently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerVersion {
    pub mariadb: bool,
    /// (major, minor); `None` when the version string has no such numbers.
    pub number: Option<(u32, u32)>,
}

impl ServerVersion {
    /// From a version string such as `10.11.6-MariaDB-log` or `8.0.36`.
    pub fn parse(version: &str) -> ServerVersion {
        ServerVersion {
            mariadb: version.contains("MariaDB"),
            number: parse_version(version),
        }
    }

    /// Whether the server is at least as new as the oldest blobcheck is
    /// tested with: MySQL 5.7, MariaDB 10.3 (an unknown version passes).
    pub fn is_tested(&self) -> bool {
        match (self.mariadb, self.number) {
            (true, Some(v)) => v >= (10, 3),
            (false, Some(v)) => v >= (5, 7),
            (_, None) => true,
        }
    }

    /// The privilege to grant so that the account may read the replica
    /// status: SLAVE MONITOR on MariaDB 10.5 and later, REPLICATION CLIENT
    /// on MySQL and older MariaDB (and when the version is unknown).
    pub fn replica_monitor_privilege(&self) -> &'static str {
        match (self.mariadb, self.number) {
            (true, Some(v)) if v >= (10, 5) => "SLAVE MONITOR",
            _ => "REPLICATION CLIENT",
        }
    }
}

/// `(major, minor)` of a version string such as `10.11.6-MariaDB-log`.
fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the session is READ ONLY, and the server's `read_only`, tried in
/// this order: MySQL 8 knows the session's only as `transaction_read_only`,
/// MariaDB and MySQL 5.7 as `tx_read_only`.
pub const READ_ONLY_SQL: [&str; 2] = [
    "SELECT @@SESSION.tx_read_only, @@GLOBAL.read_only",
    "SELECT @@SESSION.transaction_read_only, @@GLOBAL.read_only",
];

/// A statement the server does not parse: here, a form of a statement
/// another version spells differently.
pub const ER_PARSE_ERROR: u16 = 1064;

/// Access denied: to the database (1044), for lack of a privilege (1227),
/// to a table or column (1142, 1143), to a routine (1370).
pub const ACCESS_DENIED: [u16; 5] = [1044, 1227, 1142, 1143, 1370];

/// The server's error code, if the server refused.
pub fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// The server does not know this form of the statement (try the next).
pub fn is_parse_error(e: &mysql_async::Error) -> bool {
    server_code(e) == Some(ER_PARSE_ERROR)
}

/// The account lacks a privilege for what it asked.
pub fn is_access_denied(e: &mysql_async::Error) -> bool {
    server_code(e).is_some_and(|c| ACCESS_DENIED.contains(&c))
}

/// Statements that show replication status, tried in this order: the first
/// that the server parses is kept. MariaDB's `SHOW ALL SLAVES STATUS` lists
/// every replication connection (plain `SHOW SLAVE STATUS` only the default
/// one); MySQL answers `SHOW SLAVE STATUS` with a row per channel, and 8.4
/// knows only `SHOW REPLICA STATUS`.
pub const REPLICA_STATUS_SQL: [&str; 3] = [
    "SHOW ALL SLAVES STATUS",
    "SHOW SLAVE STATUS",
    "SHOW REPLICA STATUS",
];

/// What to say of a server that parses none of [`REPLICA_STATUS_SQL`].
pub fn no_replica_status_statement() -> String {
    format!("the server knows none of {}", REPLICA_STATUS_SQL.join(", "))
}

/// The columns of a replica status row, under the names MariaDB and MySQL
/// before 8.0.22 give them first, then MySQL's later names: the first the
/// row has is the one. The replica lag in seconds, NULL while replication
/// does not run.
pub const LAG_COLUMNS: [&str; 2] = ["Seconds_Behind_Master", "Seconds_Behind_Source"];
/// The replication connection (MariaDB) or channel (MySQL).
pub const CHANNEL_COLUMNS: [&str; 2] = ["Connection_name", "Channel_Name"];
/// Whether the IO thread runs.
pub const IO_RUNNING_COLUMNS: [&str; 2] = ["Slave_IO_Running", "Replica_IO_Running"];
/// Whether the SQL thread runs.
pub const SQL_RUNNING_COLUMNS: [&str; 2] = ["Slave_SQL_Running", "Replica_SQL_Running"];
/// The last replication error, whichever thread it stopped.
pub const LAST_ERROR_COLUMNS: [&str; 3] = ["Last_Error", "Last_IO_Error", "Last_SQL_Error"];

/// Privileges that only read (or only show status): anything else on any
/// object means the account could write.
pub const READ_PRIVILEGES: [&str; 10] = [
    "SELECT",
    "USAGE",
    "SHOW VIEW",
    "SHOW DATABASES",
    "PROCESS",
    "REPLICATION CLIENT",
    // Reads the binary log (`watch`); writes nothing.
    "REPLICATION SLAVE",
    "SLAVE MONITOR",
    "BINLOG MONITOR",
    "REPLICA MONITOR",
];

/// The account's own grants, one statement per line.
pub const SHOW_GRANTS_SQL: &str = "SHOW GRANTS";

/// One line of `SHOW GRANTS` that grants privileges (not roles), such as
/// ``GRANT SELECT (`a`, `b`), INSERT ON `db`.`t` TO `u`@`%` WITH GRANT OPTION``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Upper case, words one space apart, column lists dropped: `SELECT`,
    /// `ALL PRIVILEGES`, MySQL 8's dynamic `BACKUP_ADMIN`.
    pub privileges: Vec<String>,
    /// What they are granted on, as the server wrote it: `*.*`,
    /// `` `db`.* ``, `` `db`.`t` ``, `''@'%'` for PROXY.
    pub object: String,
    /// `WITH GRANT OPTION`: the account may pass its privileges on.
    pub grant_option: bool,
}

/// The byte positions and characters of `text` outside quotes (`` ` ``,
/// `'`, `"`) and parentheses: where the words of a GRANT statement are,
/// as opposed to names and column lists. A quote doubled inside a quoted
/// name closes and reopens it, so it needs no case of its own.
fn top_level(text: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    text.char_indices().filter(move |&(_, c)| match (quote, c) {
        (Some(q), c) if c == q => {
            quote = None;
            false
        }
        (Some(_), _) => false,
        (None, '`' | '\'' | '"') => {
            quote = Some(c);
            false
        }
        (None, '(') => {
            depth += 1;
            false
        }
        (None, ')') => {
            depth = depth.saturating_sub(1);
            false
        }
        (None, _) => depth == 0,
    })
}

/// Where `word` (upper case, with its surrounding spaces) first starts in
/// `text` outside quotes and parentheses, any case.
fn find_word(text: &str, word: &str) -> Option<usize> {
    top_level(text)
        .filter(|&(_, c)| c == ' ')
        .map(|(i, _)| i)
        .find(|&i| {
            text.as_bytes()
                .get(i..i + word.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(word.as_bytes()))
        })
}

impl Grant {
    /// `None` for lines that grant a role (`` GRANT `reader` TO `u`@`%` ``;
    /// its privileges show on lines of their own), and for anything that is
    /// no GRANT (`SET DEFAULT ROLE`, MySQL 8's partial `REVOKE`).
    pub fn parse(line: &str) -> Option<Grant> {
        let rest = line.trim().strip_prefix("GRANT ")?;
        let to = find_word(rest, " TO ")?;
        let on = find_word(&rest[..to], " ON ")?;
        let mut privileges = vec![String::new()];
        for (_, c) in top_level(&rest[..on]) {
            match c {
                ',' => privileges.push(String::new()),
                c => privileges.last_mut().expect("never empty").push(c),
            }
        }
        let privileges = privileges
            .iter()
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .map(|p| p.to_ascii_uppercase())
            .filter(|p| !p.is_empty())
            .collect();
        let object = rest[on + " ON ".len()..to].trim().to_owned();
        // Outside quotes: an account name may spell anything.
        let options: String = top_level(&rest[to..]).map(|(_, c)| c).collect();
        let grant_option = options.to_ascii_uppercase().contains("WITH GRANT OPTION");
        Some(Grant {
            privileges,
            object,
            grant_option,
        })
    }

    /// The privileges that only read, but for `USAGE` (which is none).
    pub fn reads(&self) -> impl Iterator<Item = &str> {
        self.privileges
            .iter()
            .map(String::as_str)
            .filter(|p| READ_PRIVILEGES.contains(p) && *p != "USAGE")
    }

    /// What goes beyond reading: the other privileges, then `GRANT OPTION`
    /// if the line carries it.
    pub fn beyond_reading(&self) -> impl Iterator<Item = &str> {
        self.privileges
            .iter()
            .map(String::as_str)
            .filter(|p| !READ_PRIVILEGES.contains(p))
            .chain(self.grant_option.then_some("GRANT OPTION"))
    }
}

/// The account's privilege grants (`SHOW GRANTS`), role lines left out.
pub async fn grants(conn: &mut Conn) -> std::result::Result<Vec<Grant>, mysql_async::Error> {
    let lines: Vec<String> = conn.query(SHOW_GRANTS_SQL).await?;
    Ok(lines.iter().filter_map(|line| Grant::parse(line)).collect())
}

/// Privileges beyond reading that the account holds, from `SHOW GRANTS`:
/// a checker needs SELECT only, and an account that could write is one
/// mistake away from harm.
pub async fn write_privileges(
    conn: &mut Conn,
) -> std::result::Result<Vec<String>, mysql_async::Error> {
    Ok(privileges_beyond_reading(&grants(conn).await?))
}

/// The privileges beyond reading of all `grants`, each named once.
fn privileges_beyond_reading(grants: &[Grant]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for privilege in grants.iter().flat_map(Grant::beyond_reading) {
        if !found.iter().any(|p| p == privilege) {
            found.push(privilege.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(line: &str) -> Grant {
        Grant::parse(line).unwrap_or_else(|| panic!("not a privilege grant: {line}"))
    }

    #[test]
    fn grants_are_parsed() {
        let usage = grant(
            "GRANT USAGE ON *.* TO `blobcheck`@`%` IDENTIFIED BY PASSWORD '*0123456789ABCDEF'",
        );
        assert_eq!(usage.privileges, ["USAGE"]);
        assert_eq!(usage.object, "*.*");
        assert!(!usage.grant_option);
        assert_eq!(usage.reads().count(), 0);
        assert_eq!(usage.beyond_reading().count(), 0);

        let all = grant("GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION");
        assert_eq!(all.privileges, ["ALL PRIVILEGES"]);
        assert_eq!(all.object, "*.*");
        assert!(all.grant_option);
        assert_eq!(
            all.beyond_reading().collect::<Vec<_>>(),
            ["ALL PRIVILEGES", "GRANT OPTION"]
        );

        let proxy = grant("GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION");
        assert_eq!(proxy.privileges, ["PROXY"]);
        assert_eq!(proxy.object, "''@'%'");
        assert!(proxy.grant_option);

        // MySQL 5.7 quotes with ', MariaDB and MySQL 8 with `; either way
        // a name may hold the words the parser looks for.
        let weird = grant("GRANT SELECT ON `we ird TO x`.* TO `u`@`%`");
        assert_eq!(weird.object, "`we ird TO x`.*");
        let named = grant("GRANT SELECT ON `db`.* TO 'x WITH GRANT OPTION'@'%'");
        assert!(!named.grant_option);
        let lower = grant("GRANT SELECT ON `db`.* TO `u`@`%` with grant option");
        assert!(lower.grant_option);
    }

    #[test]
    fn column_lists_are_no_privileges() {
        let columns = grant("GRANT SELECT (a, b), INSERT (c) ON `db`.`t` TO `u`@`%`");
        assert_eq!(columns.privileges, ["SELECT", "INSERT"]);
        assert_eq!(columns.object, "`db`.`t`");
        assert_eq!(columns.reads().collect::<Vec<_>>(), ["SELECT"]);
        assert_eq!(columns.beyond_reading().collect::<Vec<_>>(), ["INSERT"]);

        // Backquoted column names holding commas, parentheses, quotes and
        // the word ON.
        let quoted =
            grant("GRANT SELECT (`a`, `b ON x`), INSERT (`c`), SHOW VIEW ON `db`.`t` TO 'u'@'%'");
        assert_eq!(quoted.privileges, ["SELECT", "INSERT", "SHOW VIEW"]);
        assert_eq!(quoted.object, "`db`.`t`");
        let odd =
            grant("GRANT SELECT (`a)b`, `c,d`, `e``(f`), UPDATE (`g'h`) ON `d(b`.`t,1` TO `u`@`%`");
        assert_eq!(odd.privileges, ["SELECT", "UPDATE"]);
        assert_eq!(odd.object, "`d(b`.`t,1`");
    }

    #[test]
    fn roles_and_other_lines_are_no_privilege_grants() {
        assert_eq!(Grant::parse("GRANT `reader` TO `u`@`%`"), None);
        assert_eq!(
            Grant::parse("GRANT `reader` TO `u`@`%` WITH ADMIN OPTION"),
            None
        );
        // MySQL 8: roles with hosts, several at once.
        assert_eq!(Grant::parse("GRANT `r1`@`%`,`r2`@`%` TO `u`@`%`"), None);
        assert_eq!(Grant::parse("GRANT `role ON x` TO `u`@`%`"), None);
        assert_eq!(Grant::parse("SET DEFAULT ROLE `reader` FOR `u`@`%`"), None);
        assert_eq!(
            Grant::parse("REVOKE INSERT ON `mysql`.* FROM `u`@`%`"),
            None
        );
    }

    #[test]
    fn mysql_8_dynamic_privileges_are_privileges() {
        let dynamic = grant(
            "GRANT BACKUP_ADMIN,BINLOG_ADMIN,REPLICATION_SLAVE_ADMIN ON *.* TO `root`@`localhost` WITH GRANT OPTION",
        );
        assert_eq!(
            dynamic.privileges,
            ["BACKUP_ADMIN", "BINLOG_ADMIN", "REPLICATION_SLAVE_ADMIN"]
        );
        assert!(dynamic.grant_option);
        let static_ones =
            grant("GRANT SELECT, RELOAD, PROCESS, REPLICATION CLIENT ON *.* TO `monitor`@`%`");
        assert_eq!(
            static_ones.reads().collect::<Vec<_>>(),
            ["SELECT", "PROCESS", "REPLICATION CLIENT"]
        );
        assert_eq!(static_ones.beyond_reading().collect::<Vec<_>>(), ["RELOAD"]);
    }

    #[test]
    fn a_server_without_replica_status_is_told_every_form_tried() {
        assert_eq!(
            no_replica_status_statement(),
            "the server knows none of SHOW ALL SLAVES STATUS, SHOW SLAVE STATUS, SHOW REPLICA STATUS"
        );
    }

    #[test]
    fn versions_are_parsed() {
        assert_eq!(parse_version("10.11.6-MariaDB-0+deb12u1"), Some((10, 11)));
        assert_eq!(parse_version("8.0.36"), Some((8, 0)));
        assert_eq!(parse_version("x"), None);
        let mariadb = ServerVersion::parse("10.11.6-MariaDB-0+deb12u1");
        assert_eq!(
            mariadb,
            ServerVersion {
                mariadb: true,
                number: Some((10, 11))
            }
        );
        assert!(mariadb.is_tested());
        assert_eq!(mariadb.replica_monitor_privilege(), "SLAVE MONITOR");
        let old_mariadb = ServerVersion::parse("10.4.34-MariaDB-log");
        assert!(old_mariadb.is_tested());
        assert_eq!(
            old_mariadb.replica_monitor_privilege(),
            "REPLICATION CLIENT"
        );
        assert!(!ServerVersion::parse("10.2.44-MariaDB").is_tested());
        let mysql = ServerVersion::parse("8.0.36");
        assert!(!mysql.mariadb);
        assert!(mysql.is_tested());
        assert_eq!(mysql.replica_monitor_privilege(), "REPLICATION CLIENT");
        assert!(!ServerVersion::parse("5.6.51-log").is_tested());
        assert!(ServerVersion::parse("5.7.44").is_tested());
        let unknown = ServerVersion::parse("x");
        assert!(unknown.is_tested());
        assert_eq!(unknown.replica_monitor_privilege(), "REPLICATION CLIENT");
    }

    #[test]
    fn column_lists_in_grants_are_not_privileges() {
        let grants = |lines: &[&str]| {
            let grants: Vec<Grant> = lines.iter().filter_map(|l| Grant::parse(l)).collect();
            privileges_beyond_reading(&grants)
        };
        let select_only = [
            "GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'",
            "GRANT SELECT (`Size`, `BlobStorageID`) ON `db`.`BlobStorage` TO `u`@`%`",
            "GRANT SELECT ON `db`.* TO `u`@`%`",
            "GRANT `reader` TO `u`@`%`",
        ];
        assert_eq!(grants(&select_only), Vec::<String>::new());
        assert_eq!(
            grants(&[
                "GRANT SELECT (`a`, `b`), UPDATE (`c`, `d`), INSERT ON `db`.`t` TO `u`@`%`",
                "GRANT SELECT ON `db`.* TO `u`@`%` WITH GRANT OPTION",
                "GRANT INSERT ON `other`.* TO `u`@`%` WITH GRANT OPTION",
            ]),
            ["UPDATE", "INSERT", "GRANT OPTION"]
        );
        assert_eq!(
            grants(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"]),
            ["ALL PRIVILEGES"]
        );
    }
}
