/* scheduler-client/report/schema.h - the central database schema that virtnode owns, as
 * numbered migrations applied at start-up under an advisory lock, so a whole fleet that
 * starts at once leaves exactly one correct schema. */
#pragma once

#include <glib.h>
#include <libpq-fe.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(PGconn, PQfinish)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PGresult, PQclear)

/* The newest schema version this code knows. */
int vn_schema_latest(void);

/* Brings the schema of @conn to the latest version (no-op when current).  A database
 * newer than this code is accepted as long as its major layout matches (a newer agent
 * ran); *version receives the version found after the call. */
gboolean vn_schema_migrate(PGconn *conn, int *version, GError **error);

/* The SQL of migration @n (1-based), for docs/database.md and tests. */
const char *vn_schema_sql(int n);
