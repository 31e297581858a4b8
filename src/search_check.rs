//! No silent mixing of models in a search: a query that compares a vector column with `clip_embed_bytes(...)` or
//! `clip_embed_text(...)` of another model than the column's is refused when it is planned, before any
//! inference. ViT-B/16 and ViT-B/32 both make 512 dimensions, so pgvector would happily rank one model's vectors
//! by the other's, and the results would look plausible and mean nothing.
//!
//! For each operator expression `column <op> clip_embed_*(...)` (either side, any operator: <=>, <->, <#>, <+>)
//! whose column belongs to a table, and whose model is known at planning time (named by a constant or by a
//! parameter whose value the planner has, as in every custom plan; or the session's pg_clip.model when the call
//! names none), the model's manifest is read and compared with:
//! * the column's declared dimensions (`vector(512)`): a model of another size is refused (42804);
//! * the column's record in clip_vector_columns (written by clip_backfill, clip_auto_embed or
//!   clip_record_vector_column): a model of another version is refused (42804).
//!
//! What cannot be checked here (the README lists it): a model named by a parameter in a generic plan (known
//! only at execution), a column without a record whose dimensions agree, a vector computed elsewhere
//! (a CTE, an application) and a plan kept by a prepared statement after the session changed pg_clip.model.
//!
//! Runs in the session's planner as the session's user: it reads manifests and, through SPI, the record table
//! under its row-level security (a role that may read the column may read its record).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

use crate::error::PgClipError;
use crate::model::manifest::ModelDir;
use crate::settings;

/// A column compared with an embedding call whose model is known.
struct Comparison {
    relation: pg_sys::Oid,
    column: String,
    typmod: i32,
    model: String,
}

struct Walk {
    /// The queries enclosing the node being walked, innermost last (a Var's varlevelsup counts back from it).
    queries: Vec<*mut pg_sys::Query>,
    extension: pg_sys::Oid,
    /// The planner's bound parameters: a model named by `$2` is known in a custom plan (drivers send it so).
    params: pg_sys::ParamListInfo,
    found: Vec<Comparison>,
}

/// Checks `parse` and raises the first mismatch it finds. Cheap when the database has no pg_clip (one syscache
/// lookup) and when the query calls none of its embedding functions (one walk of the tree, no allocation).
///
/// # Safety
/// `parse` must be a valid Query, in a transaction.
pub unsafe fn check(parse: *mut pg_sys::Query, params: pg_sys::ParamListInfo) {
    // SAFETY: a syscache lookup in the planning transaction.
    let extension = unsafe { pg_sys::get_extension_oid(c"pg_clip".as_ptr(), true) };
    if extension == pg_sys::Oid::INVALID {
        return;
    }
    let mut walk = Walk { queries: vec![parse], extension, params, found: Vec::new() };
    // SAFETY: PostgreSQL's own walker over a valid Query, with our callback and context.
    unsafe {
        pg_sys::query_tree_walker(parse, Some(walker), &mut walk as *mut Walk as *mut std::ffi::c_void, 0);
    }
    for comparison in &walk.found {
        if let Err(e) = verify(comparison) {
            e.raise("clip_embed");
        }
    }
}

unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, context: *mut std::ffi::c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: context is the Walk passed to query_tree_walker; node is a node of the tree it walks, cast by tag.
    unsafe {
        let walk = &mut *(context as *mut Walk);
        match (*node).type_ {
            pg_sys::NodeTag::T_Query => {
                let query = node as *mut pg_sys::Query;
                walk.queries.push(query);
                let stop = pg_sys::query_tree_walker(query, Some(walker), context, 0);
                walk.queries.pop();
                return stop;
            }
            pg_sys::NodeTag::T_OpExpr => inspect(node as *mut pg_sys::OpExpr, walk),
            _ => {}
        }
        pg_sys::expression_tree_walker(node, Some(walker), context)
    }
}

/// Strips binary-compatible casts (`vector` to `vector` with a typmod, text to text).
unsafe fn strip(mut node: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: per the caller, a valid expression node.
    unsafe {
        while !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_RelabelType {
            node = (*(node as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
        }
    }
    node
}

/// Records `op` if it compares a table's column with one of pg_clip's embedding calls of a known model.
unsafe fn inspect(op: *mut pg_sys::OpExpr, walk: &mut Walk) {
    // SAFETY: the operator's argument list and the nodes in it, cast by tag; catalog lookups by OID.
    unsafe {
        let args: Vec<*mut pg_sys::Node> =
            pgrx::PgList::<pg_sys::Node>::from_pg((*op).args).iter_ptr().map(|n| strip(n)).collect();
        let [a, b] = args.as_slice() else { return };
        let (var, call) = match ((**a).type_, (**b).type_) {
            (pg_sys::NodeTag::T_Var, pg_sys::NodeTag::T_FuncExpr) => (*a, *b),
            (pg_sys::NodeTag::T_FuncExpr, pg_sys::NodeTag::T_Var) => (*b, *a),
            _ => return,
        };
        let (var, call) = (var as *mut pg_sys::Var, call as *mut pg_sys::FuncExpr);
        let Some(model) = embedding_model(call, walk.extension, walk.params) else { return };
        let level = (*var).varlevelsup as usize;
        if level >= walk.queries.len() || (*var).varattno <= 0 {
            return;
        }
        let query = walk.queries[walk.queries.len() - 1 - level];
        let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*query).rtable);
        let Some(rte) = rtable.get_ptr((*var).varno as usize - 1) else { return };
        if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
            return;
        }
        let name = pg_sys::get_attname((*rte).relid, (*var).varattno, true);
        if name.is_null() {
            return;
        }
        walk.found.push(Comparison {
            relation: (*rte).relid,
            column: CStr::from_ptr(name).to_string_lossy().into_owned(),
            typmod: (*var).vartypmod,
            model,
        });
    }
}

/// The model of a call of pg_clip's clip_embed_bytes / clip_embed_text: the constant it names, or the
/// session's pg_clip.model. None for other functions and for a model known only at execution.
unsafe fn embedding_model(
    call: *mut pg_sys::FuncExpr,
    extension: pg_sys::Oid,
    params: pg_sys::ParamListInfo,
) -> Option<String> {
    // SAFETY: syscache and catalog lookups of the call's function; its arguments are its own nodes.
    unsafe {
        let funcid = (*call).funcid;
        let name = pg_sys::get_func_name(funcid);
        if name.is_null() || !matches!(CStr::from_ptr(name).to_bytes(), b"clip_embed_bytes" | b"clip_embed_text") {
            return None;
        }
        if pg_sys::getExtensionOfObject(pg_sys::ProcedureRelationId, funcid) != extension {
            return None;
        }
        let args: Vec<*mut pg_sys::Node> = pgrx::PgList::<pg_sys::Node>::from_pg((*call).args).iter_ptr().collect();
        match args.as_slice() {
            [_] => Some(settings::model_name()),
            // A constant, or a parameter with its value (a NULL model gives NULL: nothing to check).
            [_, model] => {
                let datum = crate::distributed::fold::known_value(*model, params)??;
                String::from_datum(datum, false)
            }
            _ => None,
        }
    }
}

fn verify(comparison: &Comparison) -> Result<(), PgClipError> {
    // A model that cannot be opened is the call's own error to raise, with its own message, when it runs.
    let Ok(dir) = settings::model_dir(&comparison.model) else { return Ok(()) };
    let Ok(model) = ModelDir::open(&dir) else { return Ok(()) };
    let manifest = &model.manifest;
    let table = relation_name(comparison.relation);
    let column = &comparison.column;
    if comparison.typmod > 0 && comparison.typmod as usize != manifest.embedding_dim {
        return Err(PgClipError::ModelMismatch {
            what: format!(
                "column {table}.{column} is vector({}), model \"{}\" ({}) makes {} dimensions",
                comparison.typmod, comparison.model, manifest.model_version, manifest.embedding_dim
            ),
            hint: "Search the column with the model that filled it: clip_embed_bytes(photo, 'name') (SELECT name, \
                   dimensions FROM clip_models())."
                .into(),
        });
    }
    let Some((recorded_name, recorded_version)) = recorded_model(comparison) else { return Ok(()) };
    if recorded_version != manifest.model_version {
        return Err(PgClipError::ModelMismatch {
            what: format!(
                "column {table}.{column} holds vectors of model \"{recorded_name}\" ({recorded_version}), searched \
                 with model \"{}\" ({})",
                comparison.model, manifest.model_version
            ),
            hint: format!(
                "Name the column's model in the call, clip_embed_bytes(photo, '{recorded_name}'), or SET \
                 pg_clip.model = '{recorded_name}'."
            ),
        });
    }
    Ok(())
}

/// The column's record (model name, model version), as the session's role may read it.
fn recorded_model(comparison: &Comparison) -> Option<(String, String)> {
    Spi::connect(|client| {
        let schema = client
            .select(
                "SELECT pg_catalog.quote_ident(n.nspname::pg_catalog.text) FROM pg_catalog.pg_extension e \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
                 WHERE e.extname OPERATOR(pg_catalog.=) 'pg_clip'",
                Some(1),
                &[],
            )
            .ok()?
            .first()
            .get_one::<String>()
            .ok()??;
        let sql = format!(
            "SELECT model, model_version FROM {schema}.clip_vector_columns \
             WHERE relation OPERATOR(pg_catalog.=) $1 AND vector_column OPERATOR(pg_catalog.=) $2::pg_catalog.name"
        );
        let rows =
            client.select(&sql, Some(1), &[comparison.relation.into(), comparison.column.as_str().into()]).ok()?;
        let row = rows.into_iter().next()?;
        Some((row.get::<String>(1).ok()??, row.get::<String>(2).ok()??))
    })
}

fn relation_name(relation: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup; a relation dropped meanwhile gives NULL, shown by its OID.
    unsafe {
        let name = pg_sys::get_rel_name(relation);
        if name.is_null() {
            format!("{relation:?}")
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}
