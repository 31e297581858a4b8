//! One inference per search on a Citus table: the query vector is computed before Citus plans the query.
//!
//! Citus pushes a SELECT's ORDER BY expression, `emb <=> clip_embed_bytes($1)` included, into every shard's
//! query, and never evaluates a STABLE function on the coordinator for a SELECT: with 32 shards, one search ran
//! the model 32 times (more with the shard queries' projections), and each shard query carried the photo's bytes.
//! pg_clip's planner hook runs before Citus's (with `shared_preload_libraries = 'citus,pg_clip'` Citus installs
//! its hook first and pg_clip's wraps it): when the query reads a Citus table, every call of
//! `clip_embed_bytes` / `clip_embed_text` whose arguments are known at planning time (constants, or parameters
//! with their values, as every custom plan has them) is evaluated here, once, and replaced by its vector as a
//! constant. Citus then sends each shard `ORDER BY emb OPERATOR(public.<=>) '[...]'::public.vector`, each
//! shard answers from its own index, and the coordinator merges the shards' top rows by their distances.
//!
//! What this changes, and what it does not:
//! * Only queries that read a Citus table (a row in `pg_dist_partition`) are touched; single-node queries are
//!   planned exactly as before (their index scan evaluates the embedding once anyway).
//! * The vector is the coordinator session's, with its settings (`pg_clip.text_model`, the transparency
//!   setting...), not each worker's.
//! * Citus plans every multi-shard SELECT with parameters as a custom plan (it prices generic ones out), so a
//!   prepared search is folded at every execution. A router query (one shard) may switch to a generic plan,
//!   in which the call goes to its one shard: still one inference.
//! * A statement whose photo or words are written into it as literals and that is kept as a prepared statement
//!   (PREPARE without parameters) keeps the vector of the model in force when it was planned: send them as
//!   parameters, as drivers do, or DISCARD PLANS after changing the model.
//! * EXPLAIN (without ANALYZE) plans the query, so it runs the inference too.
//!
//! Everything here runs in the planner of the session's own backend, as the session's user: no switch of user,
//! and the only functions called are pg_clip's own embedding functions, found by OID.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

static mut PREVIOUS: pg_sys::planner_hook_type = None;

/// Installs the planner hook. Called from _PG_init while the library is preloaded.
pub fn install() {
    // SAFETY: _PG_init runs in the postmaster before any backend plans a query; the previous hook is kept and
    // called by ours.
    unsafe {
        PREVIOUS = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(plan);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn plan(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: the Query the planner was given. The models are checked first: a refused search runs no inference,
    // and folding (which runs one) sees only searches that passed.
    unsafe { crate::search_check::check(parse, bound_params) };
    // SAFETY: as above; folding returns a modified copy (or the same pointer).
    let parse = unsafe { fold_if_distributed(parse, bound_params) };
    // SAFETY: the previous hook (Citus's distributed_planner) or PostgreSQL's planner, with the arguments as
    // received but for the folded query.
    unsafe {
        match PREVIOUS {
            Some(previous) => previous(parse, query_string, cursor_options, bound_params),
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        }
    }
}

/// # Safety
/// `parse` must be a valid Query.
unsafe fn fold_if_distributed(parse: *mut pg_sys::Query, params: pg_sys::ParamListInfo) -> *mut pg_sys::Query {
    // SAFETY: catalog lookups in the planning transaction.
    let distribution_catalog = unsafe {
        pg_sys::get_relname_relid(c"pg_dist_partition".as_ptr(), pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE))
    };
    if distribution_catalog == pg_sys::Oid::INVALID {
        return parse; // Citus is not installed in this database
    }
    let mut relations = Vec::new();
    // SAFETY: per the caller.
    unsafe { collect_relations(parse, &mut relations) };
    // SAFETY: a scan of pg_dist_partition (a catalog table Citus keeps) in the planning transaction.
    if relations.is_empty() || !unsafe { any_distributed(distribution_catalog, &relations) } {
        return parse;
    }
    let mut context = Context { params, extension: pg_sys::Oid::INVALID, folded: 0 };
    // Citus gets a copy of every query on its tables, whether or not a call was folded, and that copy matters:
    // Citus plans a CTE or subquery it computes first by calling the planner on it in place, then reads its
    // target list to pick the intermediate result's format. The standard planner appends row-mark junk columns
    // (a `record` for FOR UPDATE beside a CTE scan) to the list it was given, so without a copy the reader picks
    // text while the writer writes binary ("invalid input syntax ... PGCOPY"). Returning the query itself when
    // nothing was folded made clip_backfill's CTE on a reference table fail so (tests/clients/test_citus.py).
    // SAFETY: query_tree_mutator copies the query and calls `mutate` on each expression; see below.
    unsafe { mutate_query(parse, &mut context) }
}

struct Context {
    params: pg_sys::ParamListInfo,
    /// pg_clip's extension OID, looked up on the first candidate call.
    extension: pg_sys::Oid,
    folded: usize,
}

/// The relations a query reads, its subqueries' and CTEs' included.
///
/// # Safety
/// `query` must be a valid Query.
unsafe fn collect_relations(query: *mut pg_sys::Query, out: &mut Vec<pg_sys::Oid>) {
    // SAFETY: rtable and cteList are Lists of RangeTblEntry and CommonTableExpr.
    unsafe {
        for rte in pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*query).rtable).iter_ptr() {
            match (*rte).rtekind {
                pg_sys::RTEKind::RTE_RELATION => out.push((*rte).relid),
                pg_sys::RTEKind::RTE_SUBQUERY if !(*rte).subquery.is_null() => collect_relations((*rte).subquery, out),
                _ => {}
            }
        }
        for cte in pgrx::PgList::<pg_sys::CommonTableExpr>::from_pg((*query).cteList).iter_ptr() {
            let inner = (*cte).ctequery;
            if !inner.is_null() && (*inner).type_ == pg_sys::NodeTag::T_Query {
                collect_relations(inner as *mut pg_sys::Query, out);
            }
        }
    }
}

/// Whether any of `relations` is a Citus table (has a row in pg_dist_partition, whose first column is the
/// table's OID).
///
/// # Safety
/// Must run in a transaction; `catalog` is pg_dist_partition's OID.
unsafe fn any_distributed(catalog: pg_sys::Oid, relations: &[pg_sys::Oid]) -> bool {
    // SAFETY: a heap scan of a small catalog table under AccessShareLock, reading the first attribute (an oid,
    // never null) of each visible tuple.
    unsafe {
        let relation = pg_sys::table_open(catalog, pg_sys::AccessShareLock as i32);
        let snapshot = pg_sys::GetLatestSnapshot();
        let scan = pg_sys::table_beginscan(relation, snapshot, 0, std::ptr::null_mut());
        let descriptor = (*relation).rd_att;
        let mut found = false;
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let mut is_null = false;
            let datum = pg_sys::heap_getattr(tuple, 1, descriptor, &mut is_null);
            if !is_null && relations.contains(&pg_sys::Oid::from(datum.value() as u32)) {
                found = true;
                break;
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as i32);
        found
    }
}

unsafe extern "C-unwind" fn mutate(node: *mut pg_sys::Node, context: *mut std::ffi::c_void) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    // SAFETY: context is the Context passed to query_tree_mutator; node is a node of the tree it walks.
    unsafe {
        let ctx = &mut *(context as *mut Context);
        match (*node).type_ {
            pg_sys::NodeTag::T_Query => return mutate_query(node as *mut pg_sys::Query, ctx) as *mut pg_sys::Node,
            pg_sys::NodeTag::T_FuncExpr => {
                if let Some(folded) = fold_call(node as *mut pg_sys::FuncExpr, ctx) {
                    return folded;
                }
            }
            _ => {}
        }
        expression_mutator(node, ctx)
    }
}

/// # Safety
/// `query` must be a valid Query.
unsafe fn mutate_query(query: *mut pg_sys::Query, ctx: &mut Context) -> *mut pg_sys::Query {
    let context = ctx as *mut Context as *mut std::ffi::c_void;
    // SAFETY: PostgreSQL's own tree mutator over a Query (it copies what it changes), with our callback.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            let callback: unsafe extern "C-unwind" fn() -> *mut pg_sys::Node = std::mem::transmute(
                mutate as unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut std::ffi::c_void) -> *mut pg_sys::Node,
            );
            pg_sys::query_tree_mutator(query, Some(callback), context, 0)
        }
        #[cfg(not(feature = "pg15"))]
        {
            pg_sys::query_tree_mutator_impl(query, Some(mutate), context, 0)
        }
    }
}

/// # Safety
/// `node` must be a valid expression node.
unsafe fn expression_mutator(node: *mut pg_sys::Node, ctx: &mut Context) -> *mut pg_sys::Node {
    let context = ctx as *mut Context as *mut std::ffi::c_void;
    // SAFETY: as mutate_query.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            let callback: unsafe extern "C-unwind" fn() -> *mut pg_sys::Node = std::mem::transmute(
                mutate as unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut std::ffi::c_void) -> *mut pg_sys::Node,
            );
            pg_sys::expression_tree_mutator(node, Some(callback), context)
        }
        #[cfg(not(feature = "pg15"))]
        {
            pg_sys::expression_tree_mutator_impl(node, Some(mutate), context)
        }
    }
}

/// The names of the functions whose calls are folded: pg_clip's embedding functions of a photo or words (not
/// the URL functions, which are VOLATILE and never belong in a search).
fn foldable_name(name: &str) -> bool {
    matches!(name, "clip_embed_bytes" | "clip_embed_text")
}

/// The call's result as a constant, if it is one of pg_clip's embedding functions and every argument is
/// known now (a constant, or a parameter whose value the planner was given).
///
/// # Safety
/// `call` must be a valid FuncExpr.
unsafe fn fold_call(call: *mut pg_sys::FuncExpr, ctx: &mut Context) -> Option<*mut pg_sys::Node> {
    // SAFETY: syscache and catalog lookups of the call's function; the arguments are the call's own nodes.
    unsafe {
        let funcid = (*call).funcid;
        let name = pg_sys::get_func_name(funcid);
        if name.is_null() || !foldable_name(&CStr::from_ptr(name).to_string_lossy()) {
            return None;
        }
        if ctx.extension == pg_sys::Oid::INVALID {
            ctx.extension = pg_sys::get_extension_oid(c"pg_clip".as_ptr(), true);
        }
        if ctx.extension == pg_sys::Oid::INVALID
            || pg_sys::getExtensionOfObject(pg_sys::ProcedureRelationId, funcid) != ctx.extension
        {
            return None;
        }
        let args: Vec<*mut pg_sys::Node> = pgrx::PgList::<pg_sys::Node>::from_pg((*call).args).iter_ptr().collect();
        let mut values = Vec::with_capacity(args.len());
        for arg in &args {
            values.push(known_value(*arg, ctx.params)?);
        }
        let result_type = (*call).funcresulttype;
        let (mut length, mut by_value) = (0i16, false);
        pg_sys::get_typlenbyval(result_type, &mut length, &mut by_value);
        // STRICT: a NULL argument gives NULL, as the call would.
        if values.iter().any(|v| v.is_none()) {
            return Some(pg_sys::makeConst(
                result_type,
                -1,
                (*call).funccollid,
                length as i32,
                pg_sys::Datum::from(0usize),
                true,
                by_value,
            ) as *mut pg_sys::Node);
        }
        let values: Vec<pg_sys::Datum> = values.into_iter().flatten().collect();
        let datum = match values.as_slice() {
            [a] => pg_sys::OidFunctionCall1Coll(funcid, (*call).inputcollid, *a),
            [a, b] => pg_sys::OidFunctionCall2Coll(funcid, (*call).inputcollid, *a, *b),
            _ => return None,
        };
        ctx.folded += 1;
        Some(pg_sys::makeConst(result_type, -1, (*call).funccollid, length as i32, datum, false, by_value)
            as *mut pg_sys::Node)
    }
}

/// The value of an argument known at planning time: Some(None) for a NULL, Some(Some(datum)) for a value,
/// None when it is not known (a column, an expression, a parameter without a value: a generic plan).
///
/// # Safety
/// `node` must be a valid expression node; `params` null or the planner's bound parameters.
pub(crate) unsafe fn known_value(
    node: *mut pg_sys::Node,
    params: pg_sys::ParamListInfo,
) -> Option<Option<pg_sys::Datum>> {
    // SAFETY: each cast follows the node's tag; a parameter's value is read as the executor would read it.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_Const => {
                let c = node as *mut pg_sys::Const;
                Some((!(*c).constisnull).then_some((*c).constvalue))
            }
            pg_sys::NodeTag::T_RelabelType => known_value((*(node as *mut pg_sys::RelabelType)).arg as *mut _, params),
            pg_sys::NodeTag::T_Param => {
                let p = node as *mut pg_sys::Param;
                if params.is_null() || (*p).paramkind != pg_sys::ParamKind::PARAM_EXTERN {
                    return None;
                }
                let id = (*p).paramid;
                if id < 1 || id > (*params).numParams {
                    return None;
                }
                let mut workspace: pg_sys::ParamExternData = std::mem::zeroed();
                let data = match (*params).paramFetch {
                    Some(fetch) => fetch(params, id, false, &mut workspace),
                    None => (*params).params.as_mut_ptr().add(id as usize - 1),
                };
                if data.is_null() || (*data).ptype != (*p).paramtype {
                    return None;
                }
                Some((!(*data).isnull).then_some((*data).value))
            }
            _ => None,
        }
    }
}
