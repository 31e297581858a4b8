-- Search by words in Russian (and 50+ other languages): pg_clip.text_model = multilingual runs the text encoder
-- of sentence-transformers clip-ViT-B-32-multilingual-v1, in the space of the image vectors. Its weights are
-- seeded RANDOM too: shapes, token ids, identities, errors and costs are tested here, not meaning.

-- Which encoder is in force, and whether it is loaded, without loading anything.
SELECT text_model, text_random_weights, text_precision, text_model_loaded, text_loaded FROM clip_model_info();
SET pg_clip.text_model = multilingual;
SHOW pg_clip.text_model;
SELECT text_model, text_random_weights, text_precision, text_model_loaded, text_load_mode FROM clip_model_info();

-- The ids the encoder sees: BERT's cased WordPiece, [CLS] = 101 ... [SEP] = 102 (equal to transformers'
-- BertTokenizer's; tests/tokenizer_multilingual.rs checks 547 texts). Tokenizing loads the vocabulary, no tower.
SELECT t AS text, clip_text_tokens(t) AS ids
  FROM unnest(ARRAY['красный рюкзак', 'Красный рюкзак', 'a red backpack', 'рюкзак Nike Air Max 90, 30 л',
                    '红色背包', '👜 сумка']) AS t;
SELECT text_model_loaded FROM clip_model_info();
-- NFD (е + combining diaeresis, as some keyboards type it) is composed first: the same ids as "ёлка".
SELECT clip_text_tokens(U&'\0435\0308лка') = clip_text_tokens('ёлка') AS nfd_is_nfc, clip_text_tokens('ёлка') AS ids;
-- Longer than 128 tokens: cut to 128 ids, [SEP] last, not an error.
SELECT array_length(ids, 1) AS ids, ids[1] AS first, ids[128] AS last
  FROM clip_text_tokens(repeat('красный рюкзак ', 100)) AS ids;
-- The same checks as clip_embed_text; NULL in, NULL out.
SELECT clip_test.try($$SELECT clip_text_tokens('')$$) AS empty_text,
       clip_test.try($$SELECT clip_text_tokens(E' \t\n')$$) AS whitespace_only,
       clip_text_tokens(NULL) IS NULL AS null_in_null_out;

-- The first embedding loads the tower (and says once that its weights are random).
SELECT vector_dims(clip_embed_text('красный рюкзак')) AS dims;
-- Its weights are shared with other backends through a prepared file (made now, or mapped if it was there).
SELECT text_model_loaded, text_load_mode IN ('prepared', 'shared') AS shared_weights, text_loaded AS clip_text_loaded
  FROM clip_model_info();
-- Russian, English, mixed Cyrillic and Latin, CJK, emoji: unit vectors of the image vectors' 512 dimensions.
SELECT t AS text, vector_dims(v) AS dims, round(vector_norm(v)::numeric, 5) AS norm
  FROM unnest(ARRAY['красный рюкзак', 'a red backpack', 'рюкзак Nike Air Max 90, 30 л', '红色背包',
                    '👜 сумка', 'Большой красный рюкзак для походов в горы, непромокаемый']) AS t,
       LATERAL clip_embed_text(t) AS v;
-- Identical text, identical vector, each from its own inference (cache off); the model is cased, unlike CLIP's
-- tokenizer, which lower-cases; the same ids give the same vector.
SET pg_clip.embedding_cache_size = 0;
SELECT inferences AS inf0 FROM clip_model_info() \gset
SELECT clip_embed_text('красный рюкзак') = clip_embed_text('красный рюкзак') AS identical,
       clip_embed_text('Красный рюкзак') <> clip_embed_text('красный рюкзак') AS cased,
       clip_embed_text(U&'\0435\0308лка') = clip_embed_text('ёлка') AS nfd_same_vector,
       clip_embed_text('синий рюкзак') <> clip_embed_text('красный рюкзак') AS different_words_differ;
SELECT inferences - :inf0 AS inferences FROM clip_model_info();
RESET pg_clip.embedding_cache_size;
-- Truncated at 128 tokens: a longer text has the same first 128 ids, so the same vector.
SELECT clip_embed_text(repeat('красный рюкзак ', 100)) = clip_embed_text(repeat('красный рюкзак ', 200)) AS truncated,
       vector_dims(clip_embed_text(repeat('красный рюкзак ', 100))) AS dims;
-- Errors as for CLIP's text: empty (22023), over pg_clip.max_text_bytes (54000).
SELECT clip_test.try($$SELECT clip_embed_text('')$$) AS empty_text;
SELECT clip_test.try($$SELECT clip_embed_text(E' \t\n ')$$) AS whitespace_only;
SET pg_clip.max_text_bytes = '1kB';
SELECT clip_test.try($$SELECT clip_embed_text(repeat('ж', 600))$$) AS over_text_limit,
       clip_test.try($$SELECT clip_text_tokens(repeat('ж', 600))$$) AS tokens_over_text_limit;
RESET pg_clip.max_text_bytes;
SELECT clip_embed_text(NULL) IS NULL AS null_in_null_out;

-- Both encoders in one session: switching the setting keeps both loaded (neither is loaded again: the one in
-- force is loaded right after the SET, before any call), and the same text gets a different vector from each
-- (different towers, different weights). text_loaded is CLIP's text tower whatever the setting.
CREATE TEMP TABLE both_encoders AS SELECT 'multilingual' AS encoder, clip_embed_text('red backpack') AS v;
SET pg_clip.text_model = clip;
SELECT clip_text_tokens('red backpack') AS clip_ids;
INSERT INTO both_encoders SELECT 'clip', clip_embed_text('red backpack');
SELECT text_model, text_model_loaded, text_loaded AS clip_text_loaded FROM clip_model_info();
SET pg_clip.text_model = multilingual;
SELECT text_model, text_model_loaded AS multilingual_loaded, text_loaded AS clip_text_loaded FROM clip_model_info();
SELECT count(DISTINCT v::text) AS distinct_vectors, bool_and(vector_dims(v) = 512) AS all_512 FROM both_encoders;
SELECT (SELECT v FROM both_encoders WHERE encoder = 'multilingual') = clip_embed_text('red backpack') AS same_again;
RESET pg_clip.text_model;
SELECT clip_embed_text('red backpack') = (SELECT v FROM both_encoders WHERE encoder = 'clip') AS clip_again;

-- The search: the issue's query shape on an HNSW index of image vectors. The index scan evaluates the ORDER BY
-- argument once per query (one inference; the returned rows' sort keys are the call site's remembered vector).
SET client_min_messages = error;
CREATE TABLE ml_search (product_id int, image_embedding vector(512));
INSERT INTO ml_search SELECT i, clip_embed_bytes(clip_test.input(f))
  FROM unnest(ARRAY['astronaut.png','chelsea.png','coffee.png','small.png','upright.png','rocket.jpg']) WITH ORDINALITY AS t(f, i);
CREATE INDEX ON ml_search USING hnsw (image_embedding vector_cosine_ops);
SET enable_seqscan = off;
SET pg_clip.text_model = multilingual;
EXPLAIN (COSTS OFF) SELECT product_id FROM ml_search ORDER BY image_embedding <=> clip_embed_text('красный рюкзак') LIMIT 50;
SELECT inferences AS inf0 FROM clip_model_info() \gset
SELECT count(*) AS rows FROM (SELECT product_id FROM ml_search ORDER BY image_embedding <=> clip_embed_text('зелёный рюкзак') LIMIT 50) s;
SELECT inferences - :inf0 AS inferences FROM clip_model_info();
-- A prepared query with the words as $1, as an application sends it (generic plan: still one inference).
SET plan_cache_mode = force_generic_plan;
PREPARE ml_query(text) AS SELECT product_id FROM ml_search ORDER BY image_embedding <=> clip_embed_text($1) LIMIT 50;
SELECT inferences AS inf0 FROM clip_model_info() \gset
EXECUTE ml_query('синяя куртка') \g /dev/null
SELECT inferences - :inf0 AS inferences FROM clip_model_info();
-- The same prepared statement follows the setting at execution: CLIP's encoder for the same words.
SET pg_clip.text_model = clip;
SELECT inferences AS inf0 FROM clip_model_info() \gset
EXECUTE ml_query('синяя куртка') \g /dev/null
SELECT inferences - :inf0 AS inferences FROM clip_model_info();
RESET plan_cache_mode;
RESET enable_seqscan;
RESET pg_clip.text_model;

-- The int8 multilingual tower (export.py --int8; superuser-only setting): close to the fp32 vectors
-- (1 - cos about 2e-4 on these random weights; bound 1e-3), not identical.
SET pg_clip.text_model = multilingual;
SET pg_clip.text_precision = int8;
SELECT text_precision, text_model_loaded FROM clip_model_info();
SELECT (SELECT v FROM both_encoders WHERE encoder = 'multilingual') <=> clip_embed_text('red backpack') < 1e-3 AS int8_close_to_fp32,
       (SELECT v FROM both_encoders WHERE encoder = 'multilingual') <> clip_embed_text('red backpack') AS int8_not_identical;
SELECT text_precision, text_model_loaded FROM clip_model_info();
-- The CLIP text tower has no int8 graph: with text_model = clip the setting does not apply.
SET pg_clip.text_model = clip;
SELECT text_precision, clip_embed_text('red backpack') = (SELECT v FROM both_encoders WHERE encoder = 'clip') AS clip_fp32 FROM clip_model_info();
RESET pg_clip.text_precision;

-- A model directory without the multilingual tower (made before it, or with --towers image,text): a clear
-- error with a HINT, for the embedding and the tokens; clip_model_info() still answers; CLIP's text works.
SELECT clip_test.use_model('no_multilingual') IS NULL;
SET pg_clip.text_model = multilingual;
SELECT clip_test.try($$SELECT clip_embed_text('красный рюкзак')$$) AS no_multilingual_tower;
SELECT clip_test.try($$SELECT clip_text_tokens('красный рюкзак')$$) AS no_multilingual_tokenizer;
SELECT text_model, text_random_weights IS NULL AS no_tower FROM clip_model_info();
SET pg_clip.text_model = clip;
SELECT vector_dims(clip_embed_text('red backpack')) AS clip_still_works;
SELECT clip_test.use_model('no_multilingual_int8') IS NULL;
SET pg_clip.text_model = multilingual;
SET pg_clip.text_precision = int8;
SELECT clip_test.try($$SELECT clip_embed_text('красный рюкзак')$$) AS no_int8_tower;
RESET pg_clip.text_precision;
RESET pg_clip.text_model;
RESET pg_clip.model_path;
