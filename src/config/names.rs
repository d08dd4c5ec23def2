//! Names from the configuration that reach SQL: [`Ident`] and [`TableName`],
//! validated (`[A-Za-z0-9_$]`, 1 to 64 characters) and always
//! backtick-quoted.

use std::fmt;

/// A validated MySQL identifier (database, table, column or index name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Accepts 1 to 64 characters of `[A-Za-z0-9_$]`, the unquoted identifier
    /// alphabet every MySQL and MariaDB version agrees on.
    pub fn new(name: &str) -> std::result::Result<Ident, String> {
        if name.is_empty() || name.len() > 64 {
            return Err(format!(
                "identifier `{}` must be 1 to 64 characters long",
                name.escape_debug()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '$'))
        {
            return Err(format!(
                "identifier `{}` contains `{}`: only letters, digits, `_` and `$` are allowed",
                name.escape_debug(),
                bad.escape_debug()
            ));
        }
        Ok(Ident(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier quoted for SQL. Validation rules out backticks, so no
    /// escaping is needed.
    pub fn quoted(&self) -> String {
        format!("`{}`", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `database.table`, both parts validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub database: Ident,
    pub table: Ident,
}

impl TableName {
    pub fn parse(text: &str) -> std::result::Result<TableName, String> {
        let Some((database, table)) = text.split_once('.') else {
            return Err(format!(
                "table `{text}` must be written as `database.table`"
            ));
        };
        Ok(TableName {
            database: Ident::new(database)?,
            table: Ident::new(table)?,
        })
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", self.database.quoted(), self.table.quoted())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}
