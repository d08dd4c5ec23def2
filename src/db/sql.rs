//! The SQL text of every query the check runs, built from names that are
//! validated (`config::Ident`, `TableName`) or quoted (`ServerIdent`) and
//! integers the code computed. Each builder has an EXPLAIN test
//! (`tests/explain.rs`).

use super::schema::{BlobScan, ReferenceScan, ServerIdent};
use crate::config::{Ident, TableName};
use crate::plan::IdRange;
use crate::sketch::{self, Weights};

/// The online DDL that gives `column` the index the scan needs.
pub fn add_index_sql(table: &TableName, column: &Ident) -> String {
    format!(
        "ALTER TABLE {} ADD INDEX {} ({}), ALGORITHM=INPLACE, LOCK=NONE;",
        table.quoted(),
        column.quoted(),
        column.quoted()
    )
}

/// Whether the database `?` exists (as far as the account can see).
pub const DATABASE_EXISTS_SQL: &str =
    "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?";

/// Whether the table `?` (database, table) exists.
pub const TABLE_EXISTS_SQL: &str =
    "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";

/// One column `?` (database, table, column): its type, nullability and the
/// names as the server spells them.
pub const COLUMN_SQL: &str = "SELECT DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?";

/// The names and data types of a table's columns `?` (database, table),
/// in table order.
pub const COLUMN_TYPES_SQL: &str = "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
    WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";

/// Up to 21 tables of the database `?`, by name: 20 to show and one to tell
/// that there are more.
pub const TABLES_IN_SQL: &str = "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
    ORDER BY TABLE_NAME LIMIT 21";

/// The server's version and the account the session runs as.
pub const VERSION_AND_ACCOUNT_SQL: &str = "SELECT VERSION(), CURRENT_USER()";

/// The session's TLS cipher; empty when the connection is not encrypted.
pub const SSL_CIPHER_SQL: &str = "SHOW SESSION STATUS LIKE 'Ssl_cipher'";

/// How many connections the server accepts.
pub const MAX_CONNECTIONS_SQL: &str = "SELECT @@GLOBAL.max_connections";

/// The smallest value of `column`: one index dive when it leads an index.
pub fn smallest_sql(table: &TableName, column: &ServerIdent) -> String {
    format!("SELECT MIN({}) FROM {}", column.quoted(), table.quoted())
}

/// The server's plan for `sql`.
pub fn explain_sql(sql: &str) -> String {
    format!("EXPLAIN {sql}")
}

/// Indexes whose first column is `?` (database, table, column), best
/// first: the primary key, then unique, then by name; each row is (name,
/// unique, number of columns).
pub const LEADING_INDEXES_SQL: &str = "SELECT s.INDEX_NAME, s.NON_UNIQUE = 0, \
    (SELECT COUNT(*) FROM information_schema.STATISTICS c \
      WHERE c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME \
        AND c.INDEX_NAME = s.INDEX_NAME) \
    FROM information_schema.STATISTICS s \
    WHERE s.TABLE_SCHEMA = ? AND s.TABLE_NAME = ? AND s.COLUMN_NAME = ? AND s.SEQ_IN_INDEX = 1 \
    ORDER BY s.INDEX_NAME = 'PRIMARY' DESC, s.NON_UNIQUE, s.INDEX_NAME";

/// The primary-key columns of a table (database, table), in key order.
pub const PRIMARY_KEY_SQL: &str = "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
    WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
    ORDER BY SEQ_IN_INDEX";

/// `SELECT id, count … ORDER BY id LIMIT n` over the primary key.
pub fn blob_batch_sql(blobs: &BlobScan, range: IdRange, limit: u64) -> String {
    blob_batch_with(
        blobs,
        &range.start.to_string(),
        &range.end.to_string(),
        &limit.to_string(),
    )
}

/// `blob_batch_sql` as a prepared statement: start, end, limit.
pub fn blob_batch_statement(blobs: &BlobScan) -> String {
    blob_batch_with(blobs, "?", "?", "?")
}

fn blob_batch_with(blobs: &BlobScan, start: &str, end: &str, limit: &str) -> String {
    format!(
        "SELECT {id}, {count} FROM {table} FORCE INDEX ({index}) \
         WHERE {id} >= {start} AND {id} <= {end} ORDER BY {id} LIMIT {limit}",
        id = blobs.id.quoted(),
        count = blobs.count.quoted(),
        table = blobs.table.quoted(),
        index = blobs.index.quoted(),
    )
}

/// The smallest and largest blob id: two index dives
/// ("Select tables optimized away").
pub fn blob_id_span_sql(blobs: &BlobScan) -> String {
    format!(
        "SELECT MIN({id}), MAX({id}) FROM {table}",
        id = blobs.id.quoted(),
        table = blobs.table.quoted(),
    )
}

/// `SELECT column, COUNT(*) … GROUP BY column ORDER BY column LIMIT n`
/// through the column's index: an index-only range scan, and one row per
/// distinct id however many rows reference it.
pub fn reference_batch_sql(reference: &ReferenceScan, range: IdRange, limit: u64) -> String {
    reference_batch_with(
        reference,
        &range.start.to_string(),
        &range.end.to_string(),
        &limit.to_string(),
    )
}

/// `reference_batch_sql` as a prepared statement: start, end, limit.
pub fn reference_batch_statement(reference: &ReferenceScan) -> String {
    reference_batch_with(reference, "?", "?", "?")
}

fn reference_batch_with(reference: &ReferenceScan, start: &str, end: &str, limit: &str) -> String {
    format!(
        "SELECT {col}, COUNT(*) FROM {table} FORCE INDEX ({index}) \
         WHERE {col} >= {start} AND {col} <= {end} GROUP BY {col} ORDER BY {col} LIMIT {limit}",
        col = reference.column.quoted(),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
    )
}

/// The blob table's sums over a chunk (see `sketch`): `COUNT(*)`,
/// `Σ count`, `Σ count·t` with `t = id − start`, and the random sum
/// `Σ count·L·H`; one row, summed in DOUBLE (exact below
/// `sketch::EXACT_LIMIT`, see `sketch`).
pub fn blob_sketch_sql(blobs: &BlobScan, weights: &Weights, range: IdRange) -> String {
    sketch_sql(
        &blobs.table,
        &blobs.index,
        &blobs.id,
        Some((&blobs.count, blobs.count_nullable)),
        weights,
        Some(range),
    )
}

/// `blob_sketch_sql` as a prepared statement, bound with `sketch_params`.
pub fn blob_sketch_statement(blobs: &BlobScan, weights: &Weights) -> String {
    sketch_sql(
        &blobs.table,
        &blobs.index,
        &blobs.id,
        Some((&blobs.count, blobs.count_nullable)),
        weights,
        None,
    )
}

/// A reference column's sums over a chunk: `COUNT(*)` (which is also
/// `Σ 1`), `Σ t` and the random sum `Σ L·H`, one row, from an index-only
/// range scan.
pub fn reference_sketch_sql(
    reference: &ReferenceScan,
    weights: &Weights,
    range: IdRange,
) -> String {
    sketch_sql(
        &reference.table,
        &reference.index,
        &reference.column,
        None,
        weights,
        Some(range),
    )
}

/// `reference_sketch_sql` as a prepared statement, bound with
/// `sketch_params`.
pub fn reference_sketch_statement(reference: &ReferenceScan, weights: &Weights) -> String {
    sketch_sql(
        &reference.table,
        &reference.index,
        &reference.column,
        None,
        weights,
        None,
    )
}

/// A weight table looked up by one digit of `key`: `ELT(digit + 1, w₀, …)`,
/// which MariaDB and MySQL evaluate in constant time (the argument at that
/// position), as a DOUBLE in arithmetic.
fn weight_lookup(key: &str, shift: u32, table: &[u64]) -> String {
    let digit = if shift == 0 {
        format!("({key} & {mask})", mask = sketch::TABLE - 1)
    } else {
        format!("(({key} >> {shift}) & {mask})", mask = sketch::TABLE - 1)
    };
    let entries: Vec<String> = table.iter().map(u64::to_string).collect();
    format!("ELT({digit} + 1, {})", entries.join(","))
}

/// The sums of one table over `key BETWEEN start AND end`, each row weighed
/// by `weight` (the stored count) or by 1; with `range` as literals, or
/// `None` for placeholders.
///
/// Measured on MariaDB 10.11 (`BENCHMARKS.md`), each form here is the
/// cheaper of two: DOUBLE sums (`* 1e0`) against DECIMAL sums of integers,
/// `BETWEEN` against `>= AND <=` (one condition to evaluate per row, not
/// three), for a reference column `COUNT(*)` once against a second count
/// as `Σ 1`, and the random sums without a `MOD` per row (reduced mod p
/// by blobcheck: each blob term is below `count·p²`, each reference term
/// below p², and the sums stay exact where they are trusted, see `sketch`).
fn sketch_sql(
    table: &TableName,
    index: &ServerIdent,
    key: &Ident,
    weight: Option<(&Ident, bool)>,
    weights: &Weights,
    range: Option<IdRange>,
) -> String {
    let (start, end) = match range {
        Some(range) => (range.start.to_string(), range.end.to_string()),
        None => ("?".to_owned(), "?".to_owned()),
    };
    let key = key.quoted();
    let t = format!("({key} - {start})");
    let low = weight_lookup(&key, 0, weights.low());
    let high = weight_lookup(&key, sketch::DIGIT_BITS, weights.high());
    let sums = match weight {
        Some((weight, nullable)) => {
            // SUM skips NULL, which would pass a NULL count as consistent;
            // summed as 10¹⁶ (past `sketch::EXACT_LIMIT`) it sends the chunk
            // to be read row by row, where the NULL is named, as the exact
            // method names it.
            let w = if nullable {
                format!("COALESCE({} * 1e0, 1e16)", weight.quoted())
            } else {
                format!("{} * 1e0", weight.quoted())
            };
            format!("SUM({w}), SUM({w} * {t}), SUM({w} * {low} * {high})")
        }
        None => format!("SUM({t} * 1e0), SUM({low} * {high})"),
    };
    format!(
        "SELECT COUNT(*), {sums} \
         FROM {table} FORCE INDEX ({index}) WHERE {key} BETWEEN {start} AND {end}",
        table = table.quoted(),
        index = index.quoted(),
    )
}

/// The key of the `(rows + 1)`-th row of `range` through the table's index:
/// `SELECT key … WHERE key >= start AND key <= end ORDER BY key LIMIT rows, 1`,
/// an index-only range scan that reads at most `rows + 1` entries and
/// returns one. A sketch of `range` cut before that key reads at most
/// `rows` rows of the table (`scan::sketch_range`).
pub fn sketch_cut_sql(
    table: &TableName,
    index: &ServerIdent,
    key: &Ident,
    range: IdRange,
    rows: u64,
) -> String {
    sketch_cut_with(
        table,
        index,
        key,
        &range.start.to_string(),
        &range.end.to_string(),
        &rows.to_string(),
    )
}

pub(super) fn sketch_cut_with(
    table: &TableName,
    index: &ServerIdent,
    key: &Ident,
    start: &str,
    end: &str,
    rows: &str,
) -> String {
    format!(
        "SELECT {key} FROM {table} FORCE INDEX ({index}) \
         WHERE {key} >= {start} AND {key} <= {end} ORDER BY {key} LIMIT {rows}, 1",
        key = key.quoted(),
        table = table.quoted(),
        index = index.quoted(),
    )
}

/// The parameters of a sketch statement, in placeholder order: the start
/// for `t` and the lower bound, then the end.
pub(super) fn sketch_params(range: IdRange) -> Vec<u64> {
    vec![range.start, range.start, range.end]
}

/// `column IN (…)` for `ids`. Literals above 2⁶³−1 are DECIMAL to the
/// server, and an IN list that mixes them with BIGINT literals is not used
/// for a range scan (MariaDB falls back to a full scan), so the two kinds go
/// into separate lists.
fn in_condition(column: &Ident, ids: &[u64]) -> String {
    let list = |ids: &mut dyn Iterator<Item = &u64>| -> String {
        let ids: Vec<String> = ids.map(u64::to_string).collect();
        format!("{} IN ({})", column.quoted(), ids.join(","))
    };
    let small = ids.iter().filter(|&&id| id <= i64::MAX as u64).count();
    match (small, ids.len() - small) {
        (0, 0) => "FALSE".to_owned(),
        (_, 0) | (0, _) => list(&mut ids.iter()),
        _ => format!(
            "({} OR {})",
            list(&mut ids.iter().filter(|&&id| id <= i64::MAX as u64)),
            list(&mut ids.iter().filter(|&&id| id > i64::MAX as u64))
        ),
    }
}

/// Point reads of stored counts for confirmation. No ORDER BY: the caller
/// sorts, so the server never needs a sort.
pub fn blob_points_sql(blobs: &BlobScan, ids: &[u64]) -> String {
    format!(
        "SELECT {id}, {count} FROM {table} FORCE INDEX ({index}) WHERE {condition}",
        id = blobs.id.quoted(),
        count = blobs.count.quoted(),
        table = blobs.table.quoted(),
        index = blobs.index.quoted(),
        condition = in_condition(&blobs.id, ids),
    )
}

/// Point reads of one column's reference counts for confirmation.
///
/// The third and fourth columns fingerprint which rows reference each id:
/// `Σ c` and `Σ c²` over the rows, where `c` is the CRC32 of the row's
/// primary key (read from the same index: an InnoDB secondary index holds
/// the primary key) salted with `salt`, a number drawn once per run.
/// Confirmation uses them to tell a blob whose references were replaced by
/// as many others (a draft saved again: one reference added, one removed)
/// from one that held still.
///
/// Why these sums: a CRC32 is affine over GF(2), so an XOR of CRC32s
/// cancels for patterns of keys (the CRC32s of `10` and `13` XOR to that of
/// `11` and `12`, and any four keys that differ only in their last digit,
/// 0 to 3, XOR to 0). Whole-number sums of them do not: two sets of rows
/// give the same `Σ c` and `Σ c²` only by an arithmetic coincidence
/// between 32-bit values, and one replaced row is always seen (CRC32 tells
/// apart any two keys of the same length that differ in at most 32 bits).
/// The salt changes every `c` by an XOR with a per-run constant, so a
/// coincidence in one run is not repeated in the next. This costs the
/// server about a third of an `MD5` per row (BENCHMARKS.md, "Cheaper row
/// fingerprints"). The sums are exact: `c² < 2⁶⁴` and `SUM` of an integer
/// is a `DECIMAL`. Each key part is prefixed by its length, so that no two
/// keys spell the same text. Both sums are 0 when the table has no primary
/// key.
pub fn reference_points_sql(reference: &ReferenceScan, ids: &[u64], salt: u32) -> String {
    let fingerprint = if reference.primary_key.is_empty() {
        "0, 0".to_owned()
    } else {
        let key: Vec<String> = reference
            .primary_key
            .iter()
            .map(|part| format!("LENGTH({0}), {0}", part.quoted()))
            .collect();
        let crc = format!("CRC32(CONCAT_WS(',', {salt}, {}))", key.join(", "));
        format!("SUM({crc}), SUM({crc} * {crc})")
    };
    format!(
        "SELECT {col}, COUNT(*), {fingerprint} FROM {table} FORCE INDEX ({index}) WHERE {condition} GROUP BY {col}",
        col = reference.column.quoted(),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
        condition = in_condition(&reference.column, ids),
    )
}

/// The fingerprint of a set of rows from the two sums
/// `reference_points_sql` returns, folded into 64 bits.
pub fn row_fingerprint(sum: u128, sum_of_squares: u128) -> u64 {
    // SplitMix64's finalizer over each half: any change of either sum
    // changes the result, but for a 2⁻⁶⁴ chance.
    let mix = |mut x: u64| {
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    let fold = |v: u128| mix(v as u64 ^ mix((v >> 64) as u64));
    mix(fold(sum) ^ fold(sum_of_squares).rotate_left(17))
}

/// The primary keys of up to `limit` rows that reference `id`: an
/// index-only lookup, since an InnoDB secondary index holds the primary key.
pub fn affected_rows_sql(reference: &ReferenceScan, id: u64, limit: u64) -> Option<String> {
    if reference.primary_key.is_empty() {
        return None;
    }
    let key: Vec<String> = reference
        .primary_key
        .iter()
        .map(ServerIdent::quoted)
        .collect();
    Some(format!(
        "SELECT {key} FROM {table} FORCE INDEX ({index}) WHERE {col} = {id} LIMIT {limit}",
        key = key.join(", "),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
        col = reference.column.quoted(),
    ))
}

/// Values of a reference column that are no reference: NULL, or in a
/// signed column a negative number (never a blob id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Null,
    Negative,
}

/// The columns one batch of `kind` rows is ordered and resumed by: the
/// table's primary key, behind the column itself for negative values (the
/// order of the column's index, which InnoDB extends with the primary key).
pub(super) fn unusable_keys(reference: &ReferenceScan, kind: Unusable) -> Vec<String> {
    let mut keys = Vec::with_capacity(reference.primary_key.len() + 1);
    if kind == Unusable::Negative {
        keys.push(reference.column.quoted());
    }
    keys.extend(reference.primary_key.iter().map(ServerIdent::quoted));
    keys
}

/// Whether a column can hold `kind` values at all.
pub fn can_hold(reference: &ReferenceScan, kind: Unusable) -> bool {
    match kind {
        Unusable::Null => reference.info.nullable,
        Unusable::Negative => !reference.info.unsigned,
    }
}

/// One bounded batch of the rows whose value is `kind`, by keyset over the
/// column's index: `SELECT keys … WHERE col IS NULL [AND keys > after]
/// ORDER BY keys LIMIT n` (for negative values `col < 0`, with the column
/// as the first key). `after` holds one value (SQL literal or `?`) per key,
/// the last row of the previous batch. `None` when the column cannot hold
/// such values or the table has no primary key to resume by.
pub fn unusable_batch_sql(
    reference: &ReferenceScan,
    kind: Unusable,
    after: Option<&[String]>,
    limit: u64,
) -> Option<String> {
    if !can_hold(reference, kind) || reference.primary_key.is_empty() {
        return None;
    }
    let col = reference.column.quoted();
    let keys = unusable_keys(reference, kind);
    let mut condition = match kind {
        Unusable::Null => format!("{col} IS NULL"),
        Unusable::Negative => format!("{col} < 0"),
    };
    if let Some(after) = after {
        // (k1, k2, …) > (v1, v2, …), spelled out so that every MySQL and
        // MariaDB version turns it into index ranges.
        let alternatives: Vec<String> = (0..keys.len())
            .map(|i| {
                let mut terms: Vec<String> = (0..i)
                    .map(|j| format!("{} = {}", keys[j], after[j]))
                    .collect();
                terms.push(format!("{} > {}", keys[i], after[i]));
                terms.join(" AND ")
            })
            .collect();
        condition = format!("{condition} AND ({})", alternatives.join(" OR "));
    }
    Some(format!(
        "SELECT {keys} FROM {table} FORCE INDEX ({index}) WHERE {condition} ORDER BY {keys} LIMIT {limit}",
        keys = keys.join(", "),
        table = reference.table.quoted(),
        index = reference.index.quoted(),
    ))
}

/// The parameters of `unusable_batch_sql` with `?` for `after`, in
/// placeholder order, from the previous batch's last row.
pub(super) fn unusable_params(last: &[mysql_async::Value]) -> Vec<mysql_async::Value> {
    (0..last.len())
        .flat_map(|i| last[..=i].iter().cloned())
        .collect()
}

/// Rows whose reference is `kind`, in one unbounded count: only for a table
/// without a primary key, which no keyset can resume.
pub fn unusable_count_sql(reference: &ReferenceScan, kind: Unusable) -> Option<String> {
    if !can_hold(reference, kind) {
        return None;
    }
    let condition = match kind {
        Unusable::Null => format!("{} IS NULL", reference.column.quoted()),
        Unusable::Negative => format!("{} < 0", reference.column.quoted()),
    };
    Some(format!(
        "SELECT COUNT(*) FROM {} FORCE INDEX ({}) WHERE {condition}",
        reference.table.quoted(),
        reference.index.quoted(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ColumnInfo;
    use mysql_async::Value;

    fn reference(nullable: bool, unsigned: bool, primary_key: &[&str]) -> ReferenceScan {
        ReferenceScan {
            server: 0,
            table: TableName::parse("d.t").unwrap(),
            column: Ident::new("c").unwrap(),
            index: ServerIdent("c".into()),
            info: ColumnInfo {
                data_type: "bigint".into(),
                unsigned,
                nullable,
            },
            label: "c".into(),
            primary_key: primary_key
                .iter()
                .map(|k| ServerIdent((*k).into()))
                .collect(),
        }
    }

    #[test]
    fn unusable_values_are_read_in_keyset_batches_after_the_last_row() {
        let two = reference(true, false, &["a", "b"]);
        assert_eq!(
            unusable_batch_sql(&two, Unusable::Null, None, 100).unwrap(),
            "SELECT `a`, `b` FROM `d`.`t` FORCE INDEX (`c`) WHERE `c` IS NULL ORDER BY `a`, `b` LIMIT 100"
        );
        let after = ["?".to_owned(), "?".to_owned(), "?".to_owned()];
        assert_eq!(
            unusable_batch_sql(&two, Unusable::Negative, Some(&after), 100).unwrap(),
            "SELECT `c`, `a`, `b` FROM `d`.`t` FORCE INDEX (`c`) WHERE `c` < 0 AND \
             (`c` > ? OR `c` = ? AND `a` > ? OR `c` = ? AND `a` = ? AND `b` > ?) ORDER BY `c`, `a`, `b` LIMIT 100"
        );
        // The placeholders above, from the last row (c, a, b) = (-3, 7, 9).
        let last = [Value::Int(-3), Value::Int(7), Value::Int(9)];
        assert_eq!(
            unusable_params(&last),
            [-3, -3, 7, -3, 7, 9].map(Value::Int).to_vec()
        );
        // What a column cannot hold is not read; without a primary key
        // nothing resumes a batch.
        assert!(
            unusable_batch_sql(&reference(false, false, &["a"]), Unusable::Null, None, 1).is_none()
        );
        assert!(
            unusable_batch_sql(&reference(true, true, &["a"]), Unusable::Negative, None, 1)
                .is_none()
        );
        assert!(
            unusable_batch_sql(&reference(true, false, &[]), Unusable::Null, None, 1).is_none()
        );
        assert!(unusable_count_sql(&reference(true, false, &[]), Unusable::Null).is_some());
    }
}
