-- clip_embed_url, clip_try_embed_url and clip_embed_urls against tests/http/server.py, which scripts/test.sh
-- starts on 127.0.0.1:28836 and 127.0.0.2:28836, serving the test inputs under /img/ and every way an image
-- host misbehaves under other paths. The fetch policy refuses loopback addresses by default, so the tests
-- turn it off (a superuser-only setting) except where the policy itself is under test.
SET pg_clip.allow_private_addresses = on;
-- Shorter backoff waits are not configurable; fewer retries keep the 5xx cases quick.
SET pg_clip.fetch_retries = 1;

-- A URL gives exactly the vector of its bytes, with or without redirects.
SELECT clip_embed_url('http://127.0.0.1:28836/img/astronaut.jpg') = clip_embed_bytes(clip_test.input('astronaut.jpg')) AS url_equals_bytes;
SELECT clip_embed_url('http://127.0.0.1:28836/redirect-chain/2/coffee.png') = clip_embed_bytes(clip_test.input('coffee.png')) AS after_two_redirects;
SELECT vector_dims(clip_embed_url(' http://127.0.0.1:28836/img/small.webp ')) AS surrounding_spaces_ignored;
SELECT clip_embed_url(NULL) IS NULL AS null_in_null_out;
-- pg_clip.image_transparency reaches the URL path as it does the bytes (its pipeline is keyed by the setting too).
SET pg_clip.image_transparency = white;
CREATE TEMP TABLE url_alpha AS SELECT 'white' AS setting,
  clip_embed_url('http://127.0.0.1:28836/img/rgba_product.png') AS url, clip_embed_bytes(clip_test.input('rgba_product.png')) AS bytes;
RESET pg_clip.image_transparency;
INSERT INTO url_alpha SELECT 'drop', clip_embed_url('http://127.0.0.1:28836/img/rgba_product.png'), clip_embed_bytes(clip_test.input('rgba_product.png'));
SELECT setting, url = bytes AS url_equals_bytes FROM url_alpha ORDER BY setting;
SELECT count(DISTINCT url::text) AS distinct_vectors FROM url_alpha;

-- Every class of failure: its SQLSTATE, a message naming the URL (never its query string) and the cause.
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/status/404')$$) AS not_found;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/status/500?X-Amz-Signature=secret')$$) AS server_error_query_hidden;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/html')$$) AS html_error_page;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/truncated/astronaut.jpg')$$) AS truncated_file;
SELECT regexp_replace(clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/cut/astronaut.png')$$), 'body: .*', 'body: ...') AS connection_cut;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/huge')$$) AS endless_body_no_length;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/huge-declared')$$) AS declared_too_large;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/img/page.html')$$) AS html_file;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/img/avif.bin')$$) AS avif_file;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/img/empty.bin')$$) AS empty_body;
SELECT regexp_replace(clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:1/x.jpg')$$), 'connect: .*', 'connect: ...') AS connection_refused;
SELECT clip_test.try($$SELECT clip_embed_url('not a url')$$) AS not_a_url;
SELECT clip_test.try($$SELECT clip_embed_url('')$$) AS empty_url;
SELECT clip_test.try($$SELECT clip_embed_url('file:///etc/passwd')$$) AS file_url;
SELECT clip_test.try($$SELECT clip_embed_url('ftp://127.0.0.1/x.jpg')$$) AS ftp_url;
-- HTTPS verifies the server's certificate: the test server's self-signed one is refused, and so is a TLS
-- handshake with a plain HTTP port.
SELECT regexp_replace(clip_test.try($$SELECT clip_embed_url('https://127.0.0.1:28839/img/coffee.png')$$), 'connect: .*(certificate|Certificate|UnknownIssuer).*', 'connect: ... certificate ...') AS untrusted_certificate;
SELECT regexp_replace(clip_test.try($$SELECT clip_embed_url('https://127.0.0.1:28836/img/coffee.png')$$), 'connect: .*', 'connect: ...') AS tls_to_plain_http;
SET pg_clip.max_image_bytes = '100kB';
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/img/astronaut.png')$$) AS over_byte_limit;
RESET pg_clip.max_image_bytes;
SET pg_clip.fetch_max_redirects = 1;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/redirect-chain/2/coffee.png')$$) AS too_many_redirects;
RESET pg_clip.fetch_max_redirects;
SET pg_clip.fetch_timeout = '500ms';
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/stall')$$) AS stalled_server;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/drip')$$) AS dripping_body;
RESET pg_clip.fetch_timeout;

-- Query cancel reaches a stalled download: statement_timeout stops it (the client test times it). The
-- error is Postgres's own 57014, which EXCEPTION WHEN OTHERS does not catch, hence this helper.
CREATE FUNCTION clip_test.try_cancel(query text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE query;
  RETURN 'ok';
EXCEPTION WHEN query_canceled THEN
  RETURN SQLSTATE || ' ' || SQLERRM;
END $$;
SET statement_timeout = '1s';
SELECT clip_test.try_cancel($$SELECT clip_embed_url('http://127.0.0.1:28836/stall')$$) AS statement_timeout_on_stall;
SELECT clip_test.try_cancel($$SELECT clip_embed_url('http://127.0.0.1:28836/drip')$$) AS statement_timeout_on_drip;
SELECT clip_test.try_cancel($$SELECT count(*) FROM clip_embed_urls(ARRAY['http://127.0.0.1:28836/stall', 'http://127.0.0.1:28836/drip', 'http://127.0.0.1:28836/img/coffee.png'])$$) AS statement_timeout_on_batch;
RESET statement_timeout;
SELECT vector_dims(clip_embed_url('http://127.0.0.1:28836/img/coffee.png')) AS works_after_cancel;

-- Retries: 5xx is retried with backoff (a server that fails once then answers succeeds), 404 is not.
SELECT embedding IS NOT NULL AS flaky_succeeds, attempts, sqlstate FROM clip_try_embed_url('http://127.0.0.1:28836/flaky/regress-a/1/coffee.png');
SELECT embedding IS NULL AS still_failing, attempts, sqlstate, http_status, transient FROM clip_try_embed_url('http://127.0.0.1:28836/flaky/regress-b/5/coffee.png');
SELECT attempts, sqlstate, http_status, transient FROM clip_try_embed_url('http://127.0.0.1:28836/status/404');
SET pg_clip.fetch_retries = 0;
SELECT attempts, sqlstate, http_status FROM clip_try_embed_url('http://127.0.0.1:28836/flaky/regress-c/1/coffee.png');
SET pg_clip.fetch_retries = 1;

-- The fence. Without pg_clip.allow_private_addresses every non-public class is refused before connecting,
-- by literal or by name, in every spelling of the address.
RESET pg_clip.allow_private_addresses;
SELECT url, clip_test.try(format('SELECT clip_embed_url(%L)', url)) AS refused
FROM unnest(ARRAY[
  'http://127.0.0.1:28836/img/coffee.png',
  'http://localhost:28836/img/coffee.png',
  'http://2130706433:28836/img/coffee.png',
  'http://0x7f.1:28836/img/coffee.png',
  'http://[::1]:28836/img/coffee.png',
  'http://[::ffff:127.0.0.1]:28836/img/coffee.png',
  'http://10.0.0.1/x.jpg',
  'http://172.16.5.4/x.jpg',
  'http://192.168.1.1/x.jpg',
  'http://[fd12::1]/x.jpg',
  'http://169.254.1.1/x.jpg',
  'http://[fe80::1]/x.jpg',
  'http://100.64.0.1/x.jpg',
  'http://224.0.0.1/x.jpg',
  'http://0.0.0.0/x.jpg',
  'http://[::]/x.jpg',
  'http://240.0.0.1/x.jpg',
  'http://169.254.169.254/latest/meta-data/',
  'http://100.100.100.200/latest/meta-data/',
  'http://[fd00:ec2::254]/latest/meta-data/']) AS url;
-- One network opened on purpose: 127.0.0.2 is reachable, and a redirect from it into 127.0.0.1 is refused.
SET pg_clip.allowed_private_networks = '127.0.0.2/32';
SELECT vector_dims(clip_embed_url('http://127.0.0.2:28836/img/coffee.png')) AS allowed_network;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.2:28836/redirect?to=http%3A%2F%2F127.0.0.1%3A28836%2Fimg%2Fcoffee.png')$$) AS redirect_into_loopback;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.2:28836/redirect?to=http%3A%2F%2F169.254.169.254%2Flatest%2F')$$) AS redirect_into_metadata;
SET pg_clip.allowed_private_networks = '127.0.0.2/33';
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.2:28836/img/coffee.png')$$) AS malformed_network_setting;
RESET pg_clip.allowed_private_networks;
-- Cloud metadata stays refused even with every private address allowed.
SET pg_clip.allow_private_addresses = on;
SELECT clip_test.try($$SELECT clip_embed_url('http://169.254.169.254/latest/meta-data/')$$) AS metadata_with_private_allowed;
-- The host allow-list applies to every hop.
SET pg_clip.allowed_hosts = '127.0.0.2, *.images.example.com';
SELECT vector_dims(clip_embed_url('http://127.0.0.2:28836/img/coffee.png')) AS allowed_host;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/img/coffee.png')$$) AS host_not_allowed;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.2:28836/redirect?to=http%3A%2F%2F127.0.0.1%3A28836%2Fimg%2Fcoffee.png')$$) AS redirect_to_other_host;
RESET pg_clip.allowed_hosts;

-- Roles: the network functions are not granted to PUBLIC, and the fence settings are superuser-only.
CREATE ROLE clip_url_reader;
GRANT USAGE ON SCHEMA clip_test TO clip_url_reader;
SET ROLE clip_url_reader;
SELECT clip_test.try($$SELECT clip_embed_url('http://127.0.0.1:28836/img/coffee.png')$$) AS not_granted;
SELECT clip_test.try($$SET pg_clip.allow_private_addresses = on$$) AS set_fence;
SELECT clip_test.try($$SET pg_clip.fetch_concurrency = 8$$) AS set_concurrency;
SELECT clip_test.try($$SET pg_clip.fetch_timeout = '2s'$$) AS set_timeout;
RESET ROLE;
GRANT EXECUTE ON FUNCTION clip_embed_url(text) TO clip_url_reader;
SET ROLE clip_url_reader;
SELECT vector_dims(clip_embed_url('http://127.0.0.1:28836/img/coffee.png')) AS granted;
RESET ROLE;
REVOKE ALL ON SCHEMA clip_test FROM clip_url_reader;
REVOKE EXECUTE ON FUNCTION clip_embed_url(text) FROM clip_url_reader;
DROP ROLE clip_url_reader;

-- A plain UPDATE with the try-variant finishes although some URLs fail, and each failure says why.
CREATE TABLE clip_test.catalog (id int PRIMARY KEY, url text, emb vector(512), err_state text, err text, http int);
INSERT INTO clip_test.catalog (id, url) VALUES
  (1, 'http://127.0.0.1:28836/img/astronaut.jpg'),
  (2, 'http://127.0.0.1:28836/img/coffee.png'),
  (3, 'http://127.0.0.1:28836/status/404'),
  (4, 'http://127.0.0.1:28836/img/chelsea.png'),
  (5, 'http://127.0.0.1:28836/html'),
  (6, 'http://127.0.0.1:28836/img/small.gif'),
  (7, 'http://127.0.0.1:28836/truncated/chelsea.png'),
  (8, 'http://127.0.0.1:28836/img/small.tiff'),
  (9, NULL),
  (10, 'http://127.0.0.1:28836/img/coffee.png');
UPDATE clip_test.catalog c
   SET (emb, err_state, err, http) = (SELECT embedding, sqlstate, error, http_status FROM clip_try_embed_url(c.url));
SELECT id, emb IS NOT NULL AS embedded, err_state, http, left(err, 60) AS err FROM clip_test.catalog ORDER BY id;
SELECT (SELECT emb FROM clip_test.catalog WHERE id = 2) = (SELECT emb FROM clip_test.catalog WHERE id = 10) AS same_url_same_vector;

-- The batch function: one row per element in order, the same vectors, duplicates and NULLs included.
SELECT ord, embedding IS NOT NULL AS embedded, sqlstate, http_status
FROM clip_embed_urls(ARRAY(SELECT url FROM clip_test.catalog ORDER BY id)) ORDER BY ord;
SELECT bool_and(b.embedding = c.emb) AS batch_equals_single
FROM clip_embed_urls(ARRAY(SELECT url FROM clip_test.catalog ORDER BY id)) b
JOIN clip_test.catalog c ON c.id = b.ord WHERE c.emb IS NOT NULL;
SELECT count(*) FROM clip_embed_urls('{}'::text[]) AS empty_array;
SELECT count(*) FROM clip_embed_urls(NULL) AS null_array;
SELECT clip_test.try($$SELECT * FROM clip_embed_urls(ARRAY['http://127.0.0.1:28836/img/coffee.png'], concurrency => 0)$$) AS zero_concurrency;
SELECT ord, embedding IS NOT NULL AS embedded FROM clip_embed_urls(ARRAY['http://127.0.0.1:28836/img/coffee.png'], concurrency => 1, prefetch => ARRAY['http://127.0.0.1:28836/img/chelsea.png']);
SELECT embedding = clip_embed_bytes(clip_test.input('chelsea.png')) AS prefetched_then_used FROM clip_embed_urls(ARRAY['http://127.0.0.1:28836/img/chelsea.png']);

-- No failure above restarted the server.
SELECT started = pg_postmaster_start_time() AS same_server FROM clip_test.server;
