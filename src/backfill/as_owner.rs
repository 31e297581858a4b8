//! Everything pg_clip does to a user's table, done as the table's owner.
//!
//! Reading or writing a user's table evaluates code that its owner controls: the key's and the URL's types (a
//! domain's CHECK, a cast to text, an enum's `=`), the table's triggers, generated columns, index expressions
//! and row-level security policies. Run with more rights than the owner's (the auto-embed worker connects as
//! the bootstrap superuser; an administrator may `CALL clip_backfill` on an application's table), that code
//! would run with those rights. So every statement pg_clip runs on a user's table runs here, and nowhere
//! else, the way PostgreSQL runs user code in VACUUM, ANALYZE, REINDEX and REFRESH MATERIALIZED VIEW:
//!
//! * as the table's owner, in a security-restricted operation ([`as_table_owner`]): the code cannot `SET
//!   ROLE` back, create temporary objects, or leave deferred triggers or `WITH HOLD` cursors to run after the
//!   switch back (PostgreSQL refuses them inside such an operation);
//! * in a GUC nest level of its own with `search_path = pg_catalog, pg_temp`, undone on the way out: whatever
//!   the user's code sets, search_path included, does not outlive the statement;
//! * with SQL built from quoted identifiers, the key's type named with its schema, and the key's `=` and `>`
//!   named with theirs (taken from the type cache, the operators the key's btree index uses), so that nothing
//!   in the statement is found through a search_path.
//!
//! The caller must be allowed to act as the owner (a member of the owner's role; a superuser is): these
//! functions then do only what the owner could have done itself. They return plain text and booleans, so the
//! bookkeeping that follows (pg_clip's own tables, in sql/) never evaluates a user-defined type.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgLogLevel, PgRelation, PgSqlErrorCode, PgTryBuilder};
use std::ffi::{CStr, CString};

use crate::error::PgClipError;

/// Runs `f` as `owner`, in a security-restricted operation, with `search_path = pg_catalog, pg_temp` in a GUC
/// nest level of its own. On return the settings made inside are undone and the user id restored; if `f`
/// raises, the (sub)transaction's abort does both (the user id is also restored at once, on the way out).
pub fn as_table_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Restore {
        user: pg_sys::Oid,
        context: i32,
        nest_level: i32,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores what `as_table_owner` saved. While an ERROR unwinds, the GUC nest level is left
            // to the abort of the (sub)transaction, which pops it (and every level above it) itself.
            unsafe {
                if !std::thread::panicking() {
                    pg_sys::AtEOXact_GUC(false, self.nest_level);
                }
                pg_sys::SetUserIdAndSecContext(self.user, self.context);
            }
        }
    }
    let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
    // SAFETY: the switch PostgreSQL's own maintenance commands make (vacuum_rel, ExecRefreshMatView):
    // GetUserIdAndSecContext/SetUserIdAndSecContext save and set the user id, NewGUCNestLevel opens the level
    // that AtEOXact_GUC closes, and set_config_option with GUC_ACTION_SAVE is RestrictSearchPath (PostgreSQL 17).
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        );
        let nest_level = pg_sys::NewGUCNestLevel();
        let restore = Restore { user, context, nest_level };
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        restore
    };
    with_search_path_hint(f)
}

/// Under the restricted search_path, the table's own code (a trigger function, a policy, a default) that names
/// objects without their schema fails to find them. Such an error is raised again with a HINT that says why,
/// since the same code works in the owner's own sessions.
fn with_search_path_hint<R>(f: impl FnOnce() -> R) -> R {
    PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .catch_others(|caught| match caught {
            CaughtError::PostgresError(ref report)
                if matches!(
                    report.sql_error_code(),
                    PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE
                        | PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION
                        | PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT
                        | PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME
                ) && report.hint().is_none_or(|h| !h.contains("search_path")) =>
            {
                let mut again = ErrorReport::new(report.sql_error_code(), report.message().to_string(), "pg_clip");
                if let Some(detail) = report.detail() {
                    again = again.set_detail(detail.to_string());
                }
                again.set_hint(SEARCH_PATH_HINT).report(PgLogLevel::ERROR);
                unreachable!("ERROR does not return")
            }
            other => other.rethrow(),
        })
        .execute()
}

/// What the HINT of a name that did not resolve in the table owner's code says.
pub const SEARCH_PATH_HINT: &str = "pg_clip reads and writes a table as its owner with search_path = pg_catalog, \
     pg_temp, as PostgreSQL 17 runs maintenance commands: the table's trigger functions, policies and defaults must \
     name their tables and functions with the schema, or carry their own SET search_path.";

/// A SQL identifier, always double-quoted (valid for every name, keywords included).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// pg_clip's schema, quoted (where clip_embed_urls and clip_backfill_target live).
fn extension_schema() -> String {
    Spi::get_one::<String>(
        "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
         WHERE e.extname OPERATOR(pg_catalog.=) 'pg_clip'",
    )
    .unwrap_or_else(|e| spi_failed(e))
    .map(|name| quote_ident(&name))
    .unwrap_or_else(|| PgClipError::runtime("pg_clip", "the extension pg_clip is not installed").raise("pg_clip"))
}

/// A user's table as the statements below need it: names quoted, the key's type and operators qualified.
struct UserTable {
    relation: pg_sys::Oid,
    owner: pg_sys::Oid,
    display: String,
    name: String,
    url: String,
    vector: String,
    key: String,
    key_type: String,
    key_eq: String,
    key_gt: String,
    has_version: bool,
}

impl UserTable {
    /// Checks the caller's names (clip_backfill_target: every column, its type, the key, with a SQLSTATE
    /// each) and that the caller may act as the table's owner; then reads what the SQL needs from the
    /// catalogs, without a search_path.
    fn resolve(relation: &PgRelation, url_column: &str, vector_column: &str, key_column: Option<&str>) -> Self {
        let oid = relation.oid();
        // SAFETY: rd_rel of an open relation.
        let owner = unsafe { (*relation.rd_rel).relowner };
        let display = relation_display(oid);
        // SAFETY: GetUserId reads this backend's current user; has_privs_of_role reads the role graph.
        if !unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner) } {
            PgClipError::NotPermitted {
                what: format!("must be owner of table {display}"),
                hint: Some(
                    "pg_clip acts on a table as its owner: run this as the owner, or as a member of its role.".into(),
                ),
            }
            .raise("pg_clip");
        }
        let schema = extension_schema();
        let shape = Spi::connect(|client| {
            let row = client
                .select(
                    &format!("SELECT key_name::pg_catalog.text, has_version FROM {schema}.clip_backfill_target($1, $2, $3, $4)"),
                    Some(1),
                    &[
                        DatumWithOid::from(oid),
                        url_column.into(),
                        vector_column.into(),
                        key_column.into(),
                    ],
                )?
                .first();
            Ok::<_, pgrx::spi::SpiError>((row.get::<String>(1)?.unwrap_or_default(), row.get::<bool>(2)?.unwrap_or(false)))
        })
        .unwrap_or_else(|e| PgClipError::runtime("pg_clip", e).raise("pg_clip"));
        let (key_name, has_version) = shape;
        let key_type_oid = attribute_type(oid, &key_name);
        // SAFETY: a type that exists (the column's); lookup_type_cache returns a cache entry that lives as long
        // as the backend; format_type_be_qualified returns a palloc'd string.
        let (key_type, eq, gt) = unsafe {
            let entry =
                pg_sys::lookup_type_cache(key_type_oid, (pg_sys::TYPECACHE_EQ_OPR | pg_sys::TYPECACHE_GT_OPR) as i32);
            let name = CStr::from_ptr(pg_sys::format_type_be_qualified(key_type_oid)).to_string_lossy().into_owned();
            (name, (*entry).eq_opr, (*entry).gt_opr)
        };
        if eq == pg_sys::Oid::INVALID || gt == pg_sys::Oid::INVALID {
            PgClipError::NotPermitted {
                what: format!(
                    "the key column {} of table {display} has a type without a btree ordering",
                    quote_ident(&key_name)
                ),
                hint: Some(
                    "Name a key column of a type with a default btree operator class, e.g. the primary key.".into(),
                ),
            }
            .raise("pg_clip");
        }
        // SAFETY: the name of this backend's relation, read while we hold a lock on it.
        let name = unsafe {
            let namespace = pg_sys::get_namespace_name((*relation.rd_rel).relnamespace);
            format!("{}.{}", quote_ident(&CStr::from_ptr(namespace).to_string_lossy()), quote_ident(relation.name()))
        };
        UserTable {
            relation: oid,
            owner,
            display,
            name,
            url: quote_ident(url_column),
            vector: quote_ident(vector_column),
            key: quote_ident(&key_name),
            key_type,
            key_eq: qualified_operator(eq),
            key_gt: qualified_operator(gt),
            has_version,
        }
    }

    /// `t.model_version IS DISTINCT FROM <version>`, or false when the table has no such column.
    fn other_version(&self, version_param: &str) -> String {
        if self.has_version {
            format!("t.model_version IS DISTINCT FROM {version_param}::pg_catalog.text")
        } else {
            "false".into()
        }
    }

    /// `AND t.key > $n::type` after the given key, or nothing.
    fn after(&self, after_key: Option<&str>, param: &str) -> String {
        match after_key {
            Some(_) => format!("AND t.{} OPERATOR({}) {param}::{}", self.key, self.key_gt, self.key_type),
            None => String::new(),
        }
    }
}

/// The relation's name as regclass prints it for messages.
fn relation_display(relation: pg_sys::Oid) -> String {
    // SAFETY: regclassout of an existing relation returns a palloc'd C string.
    unsafe {
        let text = pgrx::direct_function_call::<&CStr>(pg_sys::regclassout, &[relation.into_datum()]);
        text.map(|t| t.to_string_lossy().into_owned()).unwrap_or_else(|| relation.to_u32().to_string())
    }
}

fn attribute_type(relation: pg_sys::Oid, column: &str) -> pg_sys::Oid {
    let name = CString::new(column).unwrap_or_default();
    // SAFETY: syscache lookups of an existing relation's attribute (clip_backfill_target checked it exists).
    unsafe {
        let attnum = pg_sys::get_attnum(relation, name.as_ptr());
        pg_sys::get_atttype(relation, attnum)
    }
}

/// `"schema".=` for OPERATOR(...), from the operator's OID: no search_path involved.
fn qualified_operator(operator: pg_sys::Oid) -> String {
    Spi::connect(|client| {
        let row = client
            .select(
                "SELECT n.nspname::pg_catalog.text, o.oprname::pg_catalog.text FROM pg_catalog.pg_operator o \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace \
                 WHERE o.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[operator.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::SpiError>(format!(
            "{}.{}",
            quote_ident(&row.get::<String>(1)?.unwrap_or_default()),
            row.get::<String>(2)?.unwrap_or_default()
        ))
    })
    .unwrap_or_else(|e| PgClipError::runtime("pg_clip", e).raise("pg_clip"))
}

fn spi_failed(e: pgrx::spi::SpiError) -> ! {
    PgClipError::runtime("pg_clip", e).raise("pg_clip")
}

/// Rows of the table that need a vector (a URL and no vector), in key order after `after_key`, at most
/// `max_rows`: their keys and URLs as text. Read as the table's owner (module docs). The backfill walks the
/// table with it, and the auto-embed worker's look for pending rows; the table's partial index of pending
/// rows (clip_auto_embed) serves it in key order.
#[pg_extern(volatile, parallel_unsafe, cost = 100)]
#[allow(clippy::type_complexity)]
fn clip_backfill_pending_rows(
    target: PgRelation,
    url_column: &str,
    vector_column: &str,
    key_column: &str,
    after_key: Option<&str>,
    max_rows: i64,
) -> TableIterator<'static, (name!(row_key, String), name!(url, String))> {
    let table = UserTable::resolve(&target, url_column, vector_column, Some(key_column));
    let sql = format!(
        "SELECT t.{key}::pg_catalog.text, t.{url}::pg_catalog.text FROM {name} t \
         WHERE t.{vector} IS NULL AND t.{url} IS NOT NULL {after} ORDER BY t.{key} LIMIT $1",
        key = table.key,
        url = table.url,
        vector = table.vector,
        name = table.name,
        after = table.after(after_key, "$2"),
    );
    let mut args: Vec<DatumWithOid> = vec![max_rows.max(0).into()];
    if let Some(after) = after_key {
        args.push(after.into());
    }
    let rows = as_table_owner(table.owner, || {
        Spi::connect(|client| {
            let mut rows = Vec::new();
            for row in client.select(&sql, None, &args)? {
                rows.push((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()));
            }
            Ok::<_, pgrx::spi::SpiError>(rows)
        })
    })
    .unwrap_or_else(|e| spi_failed(e));
    TableIterator::new(rows)
}

/// How many rows of the table need a vector (a URL and no vector), counted as the table's owner.
#[pg_extern(volatile, parallel_unsafe, cost = 100)]
fn clip_backfill_count_pending(target: PgRelation, url_column: &str, vector_column: &str, key_column: &str) -> i64 {
    let table = UserTable::resolve(&target, url_column, vector_column, Some(key_column));
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM {name} t WHERE t.{vector} IS NULL AND t.{url} IS NOT NULL",
        name = table.name,
        vector = table.vector,
        url = table.url
    );
    as_table_owner(table.owner, || Spi::get_one::<i64>(&sql)).unwrap_or_else(|e| spi_failed(e)).unwrap_or(0)
}

/// Rows whose vector was made by another model than `version` (their model_version), nor by one of
/// `keep_versions`, in key order after `after_key`, at most `max_rows`: for a re-embed after a model change.
/// Read as the table's owner.
#[pg_extern(volatile, parallel_unsafe, cost = 100)]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn clip_backfill_outdated_rows(
    target: PgRelation,
    url_column: &str,
    vector_column: &str,
    key_column: &str,
    version: &str,
    keep_versions: Vec<Option<String>>,
    after_key: Option<&str>,
    max_rows: i64,
) -> TableIterator<'static, (name!(row_key, String), name!(url, String))> {
    let table = UserTable::resolve(&target, url_column, vector_column, Some(key_column));
    if !table.has_version {
        PgClipError::ColumnMissing {
            column: "model_version".into(),
            hint: "Without it pg_clip cannot tell which model made a vector.".into(),
        }
        .raise("pg_clip");
    }
    let sql = format!(
        "SELECT t.{key}::pg_catalog.text, t.{url}::pg_catalog.text FROM {name} t \
         WHERE t.{url} IS NOT NULL AND t.{vector} IS NOT NULL AND {other} \
           AND NOT COALESCE(t.model_version::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($3::pg_catalog.text[]), false) \
           {after} ORDER BY t.{key} LIMIT $1",
        key = table.key,
        url = table.url,
        vector = table.vector,
        name = table.name,
        other = table.other_version("$2"),
        after = table.after(after_key, "$4"),
    );
    let keep: Vec<String> = keep_versions.into_iter().flatten().collect();
    let mut args: Vec<DatumWithOid> = vec![max_rows.max(0).into(), version.into(), keep.into()];
    if let Some(after) = after_key {
        args.push(after.into());
    }
    let rows = as_table_owner(table.owner, || {
        Spi::connect(|client| {
            let mut rows = Vec::new();
            for row in client.select(&sql, None, &args)? {
                rows.push((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()));
            }
            Ok::<_, pgrx::spi::SpiError>(rows)
        })
    })
    .unwrap_or_else(|e| spi_failed(e));
    TableIterator::new(rows)
}

/// What each of `keys` is now in the table, read as its owner: its URL (NULL: the row has none), whether it
/// has a vector, and whether that vector was made by another model than `version` (per model_version; false
/// without that column). Keys with no row are left out. The worker's pick uses it, and the clean-up of
/// failure records whose row is gone or has another photo.
#[pg_extern(volatile, parallel_unsafe, cost = 100)]
#[allow(clippy::type_complexity)]
fn clip_backfill_row_states(
    target: PgRelation,
    url_column: &str,
    vector_column: &str,
    key_column: &str,
    keys: Vec<Option<String>>,
    version: Option<&str>,
) -> TableIterator<
    'static,
    (name!(row_key, String), name!(url, Option<String>), name!(has_vector, bool), name!(other_version, bool)),
> {
    let table = UserTable::resolve(&target, url_column, vector_column, Some(key_column));
    let sql = format!(
        "SELECT k.k, t.{url}::pg_catalog.text, t.{vector} IS NOT NULL, {other} \
         FROM pg_catalog.unnest($1::pg_catalog.text[]) AS k(k) \
         JOIN {name} t ON t.{key} OPERATOR({eq}) k.k::{key_type}",
        url = table.url,
        vector = table.vector,
        other = table.other_version("$2"),
        name = table.name,
        key = table.key,
        eq = table.key_eq,
        key_type = table.key_type,
    );
    let keys: Vec<String> = keys.into_iter().flatten().collect();
    let args: Vec<DatumWithOid> = vec![keys.into(), version.into()];
    let rows = as_table_owner(table.owner, || {
        Spi::connect(|client| {
            let mut rows = Vec::new();
            for row in client.select(&sql, None, &args)? {
                rows.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?,
                    row.get::<bool>(3)?.unwrap_or(false),
                    row.get::<bool>(4)?.unwrap_or(false),
                ));
            }
            Ok::<_, pgrx::spi::SpiError>(rows)
        })
    })
    .unwrap_or_else(|e| spi_failed(e));
    TableIterator::new(rows)
}

/// One row out of clip_backfill_apply.
type ApplyRow = (String, Option<String>, String, Option<String>, Option<String>, Option<i32>, Option<bool>);

/// The engine's step 2, shared by CALL clip_backfill and the auto-embed worker: claims the batch's rows (a
/// transaction-level advisory lock on the table and the key, which the other caller respects), downloads and
/// embeds their photos while `prefetch` (the next batch's URLs) starts downloading, and writes each vector
/// only where the row still has the URL that was fetched and still has no vector (or, where `replace` says
/// so, a vector of another model than `version`). As the table's owner (module docs), who must be allowed to
/// run clip_embed_urls. One row out per key:
///   embedded  the vector was written;
///   failed    the photo could not be embedded (sqlstate, error, http_status, transient say why);
///   skipped   nothing written: the row changed meanwhile (another URL, a vector, or gone), another caller
///             holds its claim, or, with skip_locked, another transaction holds the row (the worker never
///             waits for an application's transaction).
#[pg_extern(volatile, parallel_unsafe, cost = 100)]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn clip_backfill_apply(
    target: PgRelation,
    url_column: &str,
    vector_column: &str,
    key_column: &str,
    keys: Vec<Option<String>>,
    urls: Vec<Option<String>>,
    prefetch: default!(Option<Vec<Option<String>>>, "NULL"),
    concurrency: default!(Option<i32>, "NULL"),
    version: default!(Option<&str>, "NULL"),
    replace: default!(Option<Vec<Option<bool>>>, "NULL"),
    skip_locked: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(row_key, String),
        name!(url, Option<String>),
        name!(outcome, String),
        name!(sqlstate, Option<String>),
        name!(error, Option<String>),
        name!(http_status, Option<i32>),
        name!(transient, Option<bool>),
    ),
> {
    let table = UserTable::resolve(&target, url_column, vector_column, Some(key_column));
    let schema = extension_schema();
    let replace = replace.unwrap_or_default();
    let prefetch: Vec<String> = prefetch.unwrap_or_default().into_iter().flatten().collect();
    let rows = as_table_owner(table.owner, || -> Result<Vec<ApplyRow>, pgrx::spi::SpiError> {
        let may_fetch = Spi::get_one::<bool>(&format!(
            "SELECT pg_catalog.has_function_privilege({}, 'EXECUTE')",
            quote_literal(&format!("{schema}.clip_embed_urls(pg_catalog.text[], pg_catalog.int4, pg_catalog.text[])"))
        ))?;
        if may_fetch != Some(true) {
            PgClipError::NotPermitted {
                what: format!("the owner of table {} may not run clip_embed_urls", table.display),
                hint: Some(format!(
                    "GRANT EXECUTE ON FUNCTION clip_embed_urls(text[], integer, text[]) TO {};",
                    quote_ident(&role_name(table.owner))
                )),
            }
            .raise("clip_backfill_apply");
        }
        // The claims: a row another caller (CALL clip_backfill, the worker) holds is skipped.
        let claimed_at: Vec<i64> = Spi::connect(|client| {
            let mut at = Vec::new();
            for row in client.select(
                "SELECT b.o FROM pg_catalog.unnest($2::pg_catalog.text[]) WITH ORDINALITY AS b(k, o) \
                 WHERE b.k IS NOT NULL \
                   AND pg_catalog.pg_try_advisory_xact_lock($1::pg_catalog.oid::pg_catalog.int4, pg_catalog.hashtext(b.k)) \
                 ORDER BY b.o",
                None,
                &[table.relation.into(), keys.clone().into()],
            )? {
                at.push(row.get::<i64>(1)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::SpiError>(at)
        })?;
        let mut claimed: Vec<(String, String, bool)> = Vec::new();
        let mut out: Vec<ApplyRow> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            if claimed_at.contains(&(i as i64 + 1)) {
                let url = urls.get(i).cloned().flatten().unwrap_or_default();
                claimed.push((key.clone(), url, replace.get(i).copied().flatten().unwrap_or(false)));
            } else {
                out.push((key.clone(), None, "skipped".into(), None, None, None, None));
            }
        }
        // One statement: the embeddings (materialized once), the rows that may take them, locked in key
        // order (conditions checked again on the newest row version by the lock), the UPDATE, each outcome.
        let sql = format!(
            "WITH e AS MATERIALIZED ( \
                 SELECT ($1::pg_catalog.text[])[x.ord] AS k, ($2::pg_catalog.text[])[x.ord] AS u, \
                        ($3::pg_catalog.bool[])[x.ord] AS r, x.embedding, x.sqlstate, x.error, x.http_status, x.transient \
                 FROM {schema}.clip_embed_urls($2, $4, $5) x), \
             w AS (SELECT t.{key} AS key FROM {name} t JOIN e ON t.{key} OPERATOR({eq}) e.k::{key_type} \
                   WHERE e.embedding IS NOT NULL AND t.{url}::pg_catalog.text OPERATOR(pg_catalog.=) e.u \
                     AND (t.{vector} IS NULL OR (e.r AND {other})) \
                   ORDER BY t.{key} FOR NO KEY UPDATE OF t {skip}), \
             ok AS (UPDATE {name} t SET {vector} = e.embedding {set_version} \
                    FROM e JOIN w ON w.key OPERATOR({eq}) e.k::{key_type} \
                    WHERE t.{key} OPERATOR({eq}) w.key AND t.{url}::pg_catalog.text OPERATOR(pg_catalog.=) e.u \
                      AND (t.{vector} IS NULL OR (e.r AND {other})) \
                    RETURNING e.k) \
             SELECT e.k, e.u, CASE WHEN e.embedding IS NULL THEN 'failed' \
                                   WHEN ok.k IS NULL THEN 'skipped' ELSE 'embedded' END, \
                    e.sqlstate, e.error, e.http_status, e.transient \
             FROM e LEFT JOIN ok ON ok.k OPERATOR(pg_catalog.=) e.k",
            key = table.key,
            name = table.name,
            eq = table.key_eq,
            key_type = table.key_type,
            url = table.url,
            vector = table.vector,
            other = table.other_version("$6"),
            skip = if skip_locked { "SKIP LOCKED" } else { "" },
            set_version = if table.has_version { ", model_version = $6" } else { "" },
        );
        let args: Vec<DatumWithOid> = vec![
            claimed.iter().map(|c| c.0.clone()).collect::<Vec<_>>().into(),
            claimed.iter().map(|c| c.1.clone()).collect::<Vec<_>>().into(),
            claimed.iter().map(|c| c.2).collect::<Vec<_>>().into(),
            concurrency.into(),
            prefetch.clone().into(),
            version.into(),
        ];
        Spi::connect_mut(|client| {
            for row in client.update(&sql, None, &args)? {
                out.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?,
                    row.get::<String>(3)?.unwrap_or_default(),
                    row.get::<String>(4)?,
                    row.get::<String>(5)?,
                    row.get::<i32>(6)?,
                    row.get::<bool>(7)?,
                ));
            }
            Ok::<_, pgrx::spi::SpiError>(())
        })?;
        Ok(out)
    })
    .unwrap_or_else(|e| spi_failed(e));
    TableIterator::new(rows)
}

fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId with noerr returns NULL for a role that is gone, else a palloc'd name.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            role.to_u32().to_string()
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}
