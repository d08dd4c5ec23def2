//! What differs between MySQL 5.7, MySQL 8.x and MariaDB, and the statements
//! whose answers are parsed rather than read as rows of data: `SHOW GRANTS`.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

/// Privileges that only read (or only show status): anything else on any
/// object means the account could write.
pub const READ_PRIVILEGES: [&str; 9] = [
    "SELECT",
    "USAGE",
    "SHOW VIEW",
    "SHOW DATABASES",
    "PROCESS",
    "REPLICATION CLIENT",
    "SLAVE MONITOR",
    "BINLOG MONITOR",
    "REPLICA MONITOR",
];

/// Privileges beyond reading that the account holds, from `SHOW GRANTS`:
/// a checker needs SELECT only, and an account that could write is one
/// mistake away from harm.
pub async fn write_privileges(
    conn: &mut Conn,
) -> std::result::Result<Vec<String>, mysql_async::Error> {
    let grants: Vec<String> = conn.query("SHOW GRANTS").await?;
    Ok(privileges_beyond_reading(&grants))
}

/// The privileges beyond reading in `SHOW GRANTS` lines, parsed as `doctor`
/// parses them (column lists such as `SELECT (a, b)` are not privileges).
fn privileges_beyond_reading(grants: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for grant in grants {
        // `None`: a role granted to the account; its privileges show separately.
        let Some((privileges, _, grant_option)) = crate::doctor::parse_grant(grant) else {
            continue;
        };
        for privilege in privileges {
            if !READ_PRIVILEGES.contains(&privilege.as_str()) && !found.contains(&privilege) {
                found.push(privilege);
            }
        }
        if grant_option && !found.iter().any(|p| p == "GRANT OPTION") {
            found.push("GRANT OPTION".to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_lists_in_grants_are_not_privileges() {
        let grants = |lines: &[&str]| {
            privileges_beyond_reading(&lines.iter().map(|l| l.to_string()).collect::<Vec<_>>())
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
            ]),
            ["UPDATE", "INSERT", "GRANT OPTION"]
        );
        assert_eq!(
            grants(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"]),
            ["ALL PRIVILEGES"]
        );
    }
}
