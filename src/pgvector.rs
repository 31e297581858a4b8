//! pgvector's `vector` type, built directly as its varlena (no real[] round trip, no text parsing).
//!
//! Layout, from pgvector's src/vector.h (stable since 0.1):
//!
//! ```c
//! typedef struct Vector {
//!     int32 vl_len_;   /* varlena header (do not touch directly!) */
//!     int16 dim;       /* number of dimensions */
//!     int16 unused;    /* reserved for future use, always zero */
//!     float x[FLEXIBLE_ARRAY_MEMBER];
//! } Vector;
//! ```
//!
//! This is the only module that knows that layout; it is the only place where unsafe code touches it.

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::IntoDatum;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};

/// pgvector's limit (VECTOR_MAX_DIM).
pub const VECTOR_MAX_DIM: usize = 16000;
const HEADER_BYTES: usize = 8;

/// An owned embedding that crosses into SQL as pgvector's `vector`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vector(pub Vec<f32>);

impl IntoDatum for Vector {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let dim = self.0.len();
        assert!(dim > 0 && dim <= VECTOR_MAX_DIM, "vector of {dim} dimensions is outside pgvector's limits");
        let size = HEADER_BYTES + dim * std::mem::size_of::<f32>();
        // SAFETY: palloc0 returns size bytes, zeroed, in the current memory context (freed by Postgres with
        // it); we write the 4-byte varlena header, dim, unused = 0 (already zero) and dim floats, exactly
        // the struct above. The pointer is 8-byte aligned (palloc guarantees MAXALIGN).
        unsafe {
            let ptr = pg_sys::palloc0(size) as *mut u8;
            pgrx::set_varsize_4b(ptr as *mut pg_sys::varlena, size as i32);
            (ptr.add(4) as *mut i16).write(dim as i16);
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), ptr.add(HEADER_BYTES) as *mut f32, dim);
            Some(pg_sys::Datum::from(ptr))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        vector_type_oid()
    }
}

unsafe impl BoxRet for Vector {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            // SAFETY: the datum was just palloc'd in the function's memory context.
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

unsafe impl SqlTranslatable for Vector {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Vector);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("vector"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal("vector")));
}

/// The OID of `vector` as the search path resolves it (pgvector lives in any schema the user chose).
fn vector_type_oid() -> pg_sys::Oid {
    // SAFETY: TypenameGetTypid only reads the catalog caches; it returns InvalidOid when not found.
    unsafe { pg_sys::TypenameGetTypid(c"vector".as_ptr()) }
}

/// Scales `values` to unit L2 length in place; a zero vector stays zero (cosine distance is then NaN, as
/// pgvector defines it, rather than an invented direction).
pub fn l2_normalize(values: &mut [f32]) {
    let norm = values.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        values.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut zero = vec![0.0; 4];
        l2_normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 4]);
    }
}
