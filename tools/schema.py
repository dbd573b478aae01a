"""The database schema: versioned migrations and the DDL of one collection.

Global objects (the collection registry, the full-text statistics and the triggers that keep them)
are created by `MIGRATIONS`, applied in order by `ragtune.tools.database.migrate`. Each collection
is a table made by `collection_ddl`.

Full-text ranking is BM25, computed in SQL from statistics kept per collection table: the number of
rows and their total length (`ragtune_text_stats`) and each lexeme's document frequency
(`ragtune_text_terms`). Statement-level triggers with transition tables keep them exact on every
INSERT, UPDATE and DELETE, whatever code path writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql


@dataclass(frozen=True)
class Migration:
    """One schema step; `sql` must be safe to run once on the previous version."""

    version: int
    description: str
    sql: str


_TEXT_STATS_FUNCTIONS = """
CREATE OR REPLACE FUNCTION ragtune_text_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- PL/pgSQL plans each statement when it first runs, so a branch may name a transition
    -- table that only the other trigger events have.
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE ragtune_text_stats s
            SET docs = s.docs - o.n, total_len = s.total_len - o.len
            FROM (SELECT count(*) AS n, coalesce(sum(length(fts)), 0) AS len FROM old_rows) o
            WHERE s.table_name = TG_TABLE_NAME;
        UPDATE ragtune_text_terms t SET df = t.df - o.n
            FROM (SELECT lexeme, count(*) AS n
                  FROM old_rows, unnest(tsvector_to_array(old_rows.fts)) AS lexeme
                  GROUP BY lexeme ORDER BY lexeme) o
            WHERE t.table_name = TG_TABLE_NAME AND t.lexeme = o.lexeme;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO ragtune_text_stats AS s (table_name, docs, total_len)
            SELECT TG_TABLE_NAME, count(*), coalesce(sum(length(fts)), 0) FROM new_rows
            ON CONFLICT (table_name) DO UPDATE
            SET docs = s.docs + EXCLUDED.docs, total_len = s.total_len + EXCLUDED.total_len;
        INSERT INTO ragtune_text_terms AS t (table_name, lexeme, df)
            SELECT TG_TABLE_NAME, lexeme, count(*)
            FROM new_rows, unnest(tsvector_to_array(new_rows.fts)) AS lexeme
            GROUP BY lexeme ORDER BY lexeme
            ON CONFLICT (table_name, lexeme) DO UPDATE SET df = t.df + EXCLUDED.df;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ragtune_attach_text_stats(tbl text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION ragtune_text_stats()',
                   tbl || '_ti', tbl);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION ragtune_text_stats()',
                   tbl || '_td', tbl);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING OLD TABLE AS old_rows'
                   ' NEW TABLE AS new_rows FOR EACH STATEMENT'
                   ' EXECUTE FUNCTION ragtune_text_stats()',
                   tbl || '_tu', tbl);
    DELETE FROM ragtune_text_stats WHERE table_name = tbl;
    DELETE FROM ragtune_text_terms WHERE table_name = tbl;
    EXECUTE format('INSERT INTO ragtune_text_stats (table_name, docs, total_len)'
                   ' SELECT %L, count(*), coalesce(sum(length(fts)), 0) FROM %I', tbl, tbl);
    EXECUTE format('INSERT INTO ragtune_text_terms (table_name, lexeme, df)'
                   ' SELECT %L, lexeme, count(*) FROM %I, unnest(tsvector_to_array(fts)) lexeme'
                   ' GROUP BY lexeme', tbl, tbl);
END $$;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "pgvector and the collection registry",
        """
        CREATE EXTENSION IF NOT EXISTS vector;
        CREATE TABLE IF NOT EXISTS ragtune_collections (
            name            text PRIMARY KEY,
            table_name      text NOT NULL UNIQUE,
            embedding_model text NOT NULL,
            dimension       integer NOT NULL CHECK (dimension > 0),
            hnsw_m          integer NOT NULL,
            hnsw_ef_construction integer NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        2,
        "BM25 statistics for full-text ranking, kept by triggers",
        """
        CREATE TABLE ragtune_text_stats (
            table_name text PRIMARY KEY,
            docs       bigint NOT NULL DEFAULT 0,
            total_len  bigint NOT NULL DEFAULT 0
        );
        CREATE TABLE ragtune_text_terms (
            table_name text NOT NULL,
            lexeme     text NOT NULL,
            df         integer NOT NULL,
            PRIMARY KEY (table_name, lexeme)
        );
        """
        + _TEXT_STATS_FUNCTIONS
        + """
        SELECT ragtune_attach_text_stats(table_name) FROM ragtune_collections;
        """,
    ),
    Migration(
        3,
        "chunk metadata names its source and title, as the store now writes it",
        # Before this version the store moved `source` and `title` out of the metadata into their
        # columns (and handed them back on read). Now the metadata is kept as written, and
        # ingestion puts source and title in it; give older rows the keys they used to show.
        # An empty source or a NULL title was the column default, never a value given.
        """
        DO $$
        DECLARE tbl text;
        BEGIN
            FOR tbl IN SELECT table_name FROM ragtune_collections ORDER BY table_name LOOP
                EXECUTE format(
                    'UPDATE %I SET metadata = metadata'
                    ' || CASE WHEN source <> %L AND NOT metadata ? %L'
                    '         THEN jsonb_build_object(%L, source) ELSE %L::jsonb END'
                    ' || CASE WHEN title IS NOT NULL AND NOT metadata ? %L'
                    '         THEN jsonb_build_object(%L, title) ELSE %L::jsonb END'
                    ' WHERE (source <> %L AND NOT metadata ? %L)'
                    '    OR (title IS NOT NULL AND NOT metadata ? %L)',
                    tbl, '', 'source', 'source', '{}', 'title', 'title', '{}',
                    '', 'source', 'title');
            END LOOP;
        END $$;
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def collection_ddl(table: str, dimension: int, m: int, ef_construction: int) -> list[sql.Composed]:
    """Return the statements that create one collection's table, indexes and statistics."""
    t = sql.Identifier(table)

    def index(suffix: str, method: str) -> sql.Composed:
        return sql.SQL("CREATE INDEX {i} ON {t} USING " + method).format(
            i=sql.Identifier(f"{table}_{suffix}"), t=t, m=sql.Literal(m),
            ef=sql.Literal(ef_construction))

    return [
        sql.SQL(
            """
            CREATE TABLE {t} (
                id          text PRIMARY KEY,
                source      text NOT NULL,
                chunk_index integer NOT NULL DEFAULT 0,
                title       text,
                content     text NOT NULL,
                metadata    jsonb NOT NULL DEFAULT '{{}}',
                embedding   vector({dim}) NOT NULL,
                fts tsvector GENERATED ALWAYS AS (
                    to_tsvector('english', coalesce(title, '') || ' ' || content)) STORED,
                created_at  timestamptz NOT NULL DEFAULT now()
            )"""
        ).format(t=t, dim=sql.Literal(dimension)),
        hnsw_index_ddl(table, m, ef_construction),
        index("fts", "gin (fts)"),
        index("meta", "gin (metadata jsonb_path_ops)"),
        index("source", "btree (source)"),
        sql.SQL("SELECT ragtune_attach_text_stats({})").format(sql.Literal(table)),
    ]


def hnsw_index_ddl(table: str, m: int, ef_construction: int) -> sql.Composed:
    """Return the statement that creates a collection's HNSW (cosine) index, if missing."""
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (embedding vector_cosine_ops)"
        " WITH (m = {m}, ef_construction = {ef})"
    ).format(i=sql.Identifier(f"{table}_hnsw"), t=sql.Identifier(table), m=sql.Literal(m),
             ef=sql.Literal(ef_construction))


def drop_collection_ddl(table: str) -> list[sql.Composed]:
    """Return the statements that drop one collection's table and statistics."""
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)),
        sql.SQL("DELETE FROM ragtune_text_stats WHERE table_name = {}").format(sql.Literal(table)),
        sql.SQL("DELETE FROM ragtune_text_terms WHERE table_name = {}").format(sql.Literal(table)),
    ]
