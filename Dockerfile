# syntax=docker/dockerfile:1
# PostgreSQL with pgvector and pg_clip: the pgvector/pgvector image (the official postgres image's layout, with
# apt.postgresql.org configured and pgvector built from source) plus the package `make package PG=N` builds.
# NOT BUILT in this project's tests (no Docker engine, no container registry here); its steps are those of
# scripts/test_package.sh, which is tested: install the .deb, install a model with its pg_clip_model, preload.
#
#   make package PG=17
#   docker build --build-arg PG_MAJOR=17 --build-context checkpoint=/path/to/clip-ViT-B-32 -t pg_clip:17 .
#   docker build --build-arg PG_MAJOR=17 --build-arg RANDOM_WEIGHTS_SEED=42 -t pg_clip:17-random .  # tests only
ARG PG_MAJOR=17

# The checkpoint folder (sentence-transformers clip-ViT-B-32 or HF openai/clip-vit-base-patch32):
# --build-context checkpoint=DIR replaces this empty stage.
FROM scratch AS checkpoint

FROM pgvector/pgvector:pg${PG_MAJOR} AS pg_clip
ARG PG_MAJOR
COPY target/packages/postgresql-${PG_MAJOR}-pg-clip_*_amd64.deb /tmp/
# The package depends on postgresql-N-pgvector, which this image does not have as a package (its pgvector is
# built from source, unknown to dpkg). apt-get installs apt.postgresql.org's postgresql-N-pgvector to satisfy it
# (the image has that repository configured); it replaces the source build's files with the packaged pgvector.
# Forcing the dependency instead would leave dpkg's database broken for every later apt-get.
# Preload: initdb copies the image's postgresql.conf.sample into a new data directory (an existing one needs
# ALTER SYSTEM SET shared_preload_libraries = 'pg_clip' and a restart).
RUN apt-get update \
 && apt-get install -y --no-install-recommends /tmp/postgresql-${PG_MAJOR}-pg-clip_*_amd64.deb \
 && rm -rf /var/lib/apt/lists/* /tmp/*.deb \
 && echo "shared_preload_libraries = 'pg_clip'" >> /usr/share/postgresql/postgresql.conf.sample

# The model, made by the package's pg_clip_model in a throwaway stage: its Python venv (torch, a few GB from PyPI)
# stays out of the final image. Random weights only when asked for with RANDOM_WEIGHTS_SEED.
FROM pg_clip AS model
ARG PG_MAJOR
ARG RANDOM_WEIGHTS_SEED=
RUN --mount=type=bind,from=checkpoint,target=/checkpoint \
    apt-get update && apt-get install -y --no-install-recommends python3-venv \
 && if [ -n "$RANDOM_WEIGHTS_SEED" ]; then \
      /usr/lib/postgresql/${PG_MAJOR}/bin/pg_clip_model --random --seed "$RANDOM_WEIGHTS_SEED"; \
    else \
      /usr/lib/postgresql/${PG_MAJOR}/bin/pg_clip_model --checkpoint /checkpoint; \
    fi

FROM pg_clip
ARG PG_MAJOR
COPY --from=model /usr/share/postgresql/${PG_MAJOR}/pg_clip/model /usr/share/postgresql/${PG_MAJOR}/pg_clip/model
