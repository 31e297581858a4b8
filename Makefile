# pg_clip's build entry. The two commands a fresh machine needs:
#   make demo   - the main job: install, build, make the model, start a local cluster, embed a catalogue, search,
#                 and start the 'By photo' page over it on 127.0.0.1 (make stop stops it)
#   make test   - every test (Rust, Python fidelity, pg_regress on a real server)
# Each target installs what is missing first (scripts/setup.sh), so both work from a clean clone.
# PG=17 (or 15, 18) picks the PostgreSQL major: `make test PG=17` runs the server-side tests against 17.
#   make package PG=N       - target/packages/postgresql-N-pg-clip_<version>_amd64.deb (N = 15, 17, 18; default 15)
#   make test-package PG=N  - installs that package where no build output is, searches, removes it
#   make test-citus PG=N    - pg_clip on a Citus cluster on this machine (a coordinator and 2 workers)
#   make bench-citus PG=N   - the same rows on one node and on that cluster, side by side
#   make bench-models       - each model (ViT-B/32, B/16, L/14, L/14-336, SigLIP 2 base, so400m; MODELS=a,b) beside
#                             PyTorch: warm image and text ms, memory of 8 backends, cold start, time vs FLOPs
PG ?= $(or $(PG_MAJOR),15)
export PG_MAJOR := $(PG)
.PHONY: demo test bench bench-memory bench-cold-start bench-search bench-fetch bench-auto-embed bench-text setup install \
	model stop clean package test-package test-citus bench-citus bench-models

demo:
	scripts/demo.sh

test:
	scripts/test.sh

bench:
	scripts/bench.sh $(IMAGES)

bench-memory:
	scripts/bench_memory.sh $(IMAGES)

bench-cold-start:
	scripts/bench_cold_start.sh $(IMAGES)

bench-search:
	scripts/bench_search.sh $(IMAGES)

bench-fetch:
	scripts/bench_fetch.sh $(IMAGES)

bench-auto-embed:
	scripts/bench_auto_embed.sh $(IMAGES)

bench-text:
	scripts/bench_text.sh

setup:
	scripts/setup.sh

package:
	scripts/package.sh $(PG)

test-package:
	scripts/test_package.sh $(PG)

test-citus:
	scripts/test_citus.sh

bench-citus:
	scripts/bench_citus.sh $(IMAGES)

bench-models:
	scripts/bench_models.sh

model: setup
	bash -c 'source scripts/common.sh && make_model'

install: setup
	bash -c 'source scripts/common.sh && make_model && install_extension'

# Stops the demo's page and image host and the local clusters the scripts started (their data stays under
# target/clusters).
stop:
	bash -c 'source scripts/common.sh && demo_services_stop && clusters_stop_all'

clean: stop
	cargo clean
