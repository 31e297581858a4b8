-- clip_embed_text: CLIP text vectors in the image vectors' space. The text tower loads on first use.
SELECT text_loaded FROM clip_model_info();
SELECT vector_dims(clip_embed_text('red backpack')) AS dims;
SELECT text_loaded, loaded AS image_loaded FROM clip_model_info();
SELECT round(vector_norm(clip_embed_text('a photo of a cat'))::numeric, 5) AS norm;
SELECT clip_embed_text(NULL) IS NULL AS null_in_null_out;
-- Same space and dimension as the image vectors: the distance between a text and a photo is defined.
SELECT vector_dims(clip_embed_text('an astronaut')) = vector_dims(clip_embed_bytes(clip_test.input('astronaut.png'))) AS same_dims,
       (clip_embed_text('an astronaut') <=> clip_embed_bytes(clip_test.input('astronaut.png'))) BETWEEN 0 AND 2 AS comparable;
-- Tokenisation lower-cases and cleans whitespace, as OpenAI CLIP's tokenizer does.
SELECT clip_embed_text('  Red   BACKPACK ') = clip_embed_text('red backpack') AS cleaned_and_lowercased,
       clip_embed_text('red backpack') <> clip_embed_text('blue backpack') AS different_words_differ,
       clip_embed_text('caf&eacute;') = clip_embed_text('café') AS html_entities_unescaped;
-- Longer than the 77-token context: truncated, not an error ("a photo" is 2 tokens; both cut to 75).
SELECT clip_embed_text(repeat('a photo ', 100)) = clip_embed_text(repeat('a photo ', 60)) AS truncated_to_context,
       clip_embed_text(repeat('a photo ', 30)) <> clip_embed_text(repeat('a photo ', 60)) AS shorter_is_different;
SELECT vector_dims(clip_embed_text('Красный рюкзак 👜 — größe XL, «лучший»!')) AS unicode_dims;
-- Empty text is an error with its SQLSTATE; so is text that is only whitespace.
SELECT clip_test.try($$SELECT clip_embed_text('')$$) AS empty_text;
SELECT clip_test.try($$SELECT clip_embed_text(E' \t\n ')$$) AS whitespace_only;
-- Text search uses the same index and runs the text tower once per query.
SET client_min_messages = error;
CREATE TABLE text_search (product_id int, image_embedding vector(512));
INSERT INTO text_search SELECT i, clip_embed_bytes(clip_test.input(f))
  FROM unnest(ARRAY['astronaut.png','chelsea.png','coffee.png','small.png','upright.png']) WITH ORDINALITY AS t(f, i);
CREATE INDEX ON text_search USING hnsw (image_embedding vector_cosine_ops);
SET enable_seqscan = off;
PREPARE text_query(text) AS SELECT product_id FROM text_search ORDER BY image_embedding <=> clip_embed_text($1) LIMIT 3;
EXPLAIN (COSTS OFF) EXECUTE text_query('a cat');
SELECT inferences AS inf0 FROM clip_model_info() \gset
EXECUTE text_query('a cup of coffee') \g /dev/null
SELECT inferences - :inf0 AS inferences FROM clip_model_info();
-- Absurdly long text is refused before any work (the limit is far past the 77-token context).
SET pg_clip.max_text_bytes = '1kB';
SELECT clip_test.try($$SELECT clip_embed_text(repeat('x', 2000))$$) AS over_text_limit;
RESET pg_clip.max_text_bytes;
