-- pg_clip regression tests. The inputs (photos scikit-image ships, generated edge cases, broken models) are
-- made by tests/pg_regress/make_inputs.py; the database setting pg_clip_test.inputs says where.
-- The model is the seeded RANDOM-weight ViT-B/32: tests check shapes, identities and errors, not meaning.
CREATE EXTENSION pg_clip CASCADE;
SELECT extname FROM pg_extension WHERE extname IN ('vector', 'pg_clip') ORDER BY 1;

CREATE SCHEMA clip_test;
-- An input file's bytes.
CREATE FUNCTION clip_test.input(name text) RETURNS bytea LANGUAGE sql AS
$$ SELECT pg_read_binary_file(current_setting('pg_clip_test.inputs') || '/' || name) $$;
-- Runs a statement and returns 'ok', or its SQLSTATE and message (machine paths replaced by <inputs>).
CREATE FUNCTION clip_test.try(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  message text;
  hint text;
BEGIN
  EXECUTE query;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
  RETURN SQLSTATE || ' ' || replace(message, current_setting('pg_clip_test.inputs'), '<inputs>')
         || CASE WHEN hint <> '' THEN E'\n  HINT: ' || hint ELSE '' END;
END $$;
-- Points pg_clip.model_path at one of the broken model directories.
CREATE FUNCTION clip_test.use_model(name text) RETURNS void LANGUAGE sql AS
$$ SELECT set_config('pg_clip.model_path', current_setting('pg_clip_test.inputs') || '/models/' || name, false) $$;
-- So the last test can tell that no error along the way restarted the server.
CREATE TABLE clip_test.server AS SELECT pg_postmaster_start_time() AS started;

-- Every function's volatility, parallel label, strictness and cost: each chosen on purpose (see sql_api.rs).
SELECT p.proname, p.provolatile, p.proparallel, p.proisstrict, p.procost, p.prorettype::regtype AS returns, p.proretset
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_clip'
 ORDER BY 1;
