/* agent/state/journal.c - SQLite journal (see journal.h).
 *
 * Durability.  The database runs in WAL mode with synchronous=NORMAL: every commit is
 * written to the log before it returns (it survives the process being killed at once),
 * and the log reaches the disk at checkpoints.  A durable write does not return before
 * the log is on disk up to its commit: it commits, leaves the connection's lock, and
 * waits for an fdatasync of the log that started after its commit (sync_upto).  One
 * thread syncs at a time; commits made meanwhile by other threads wait for the next sync,
 * which covers them all (a group commit): ten builds finishing a step together pay one
 * flush instead of ten, and none holds the connection while the disk works. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <sqlite3.h>

#include "agent/state/journal.h"

#define SCHEMA_VERSION 1

struct _VnJournal {
    GMutex lock; /* the connection, stmts and committed are used under it */
    sqlite3 *db;
    GHashTable *stmts; /* SQL text -> sqlite3_stmt*: each statement compiled once */
    guint64 committed; /* writes committed to the log so far */
    char *path;        /* immutable */
    char *wal_path;    /* immutable */
    char *id;          /* immutable once opened */

    GMutex sync_lock;     /* everything below is under it; never taken with lock held */
    GCond sync_cond;      /* a sync ended */
    gboolean syncing;     /* a thread is in fdatasync (outside sync_lock) */
    guint64 synced;       /* writes up to this count are on disk */
    int wal_fd;           /* the log, opened for fdatasync; -1 until first needed */
    guint64 syncs;        /* fdatasyncs made */
    guint64 durable;      /* durable writes waited for */
    int (*flush)(int fd); /* fdatasync; tests slow it down */
};

GQuark vn_journal_error_quark(void)
{
    return g_quark_from_static_string("vn-journal-error");
}

static gboolean db_error(VnJournal *j, GError **error, const char *what)
{
    g_set_error(error, VN_JOURNAL_ERROR, sqlite3_errcode(j->db), "journal %s: %s: %s", j->path,
                what, sqlite3_errmsg(j->db));
    return FALSE;
}

static gboolean exec(VnJournal *j, const char *sql, GError **error)
{
    char *msg = NULL;

    if (sqlite3_exec(j->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        g_set_error(error, VN_JOURNAL_ERROR, sqlite3_errcode(j->db), "journal %s: %s", j->path,
                    msg ? msg : sqlite3_errmsg(j->db));
        sqlite3_free(msg);
        return FALSE;
    }
    return TRUE;
}

static const char *schema =
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS requests ("
    "  unique_id TEXT PRIMARY KEY, method TEXT NOT NULL, instance_uuid TEXT,"
    "  msg_id TEXT, reply_q TEXT, request_id TEXT, body TEXT NOT NULL,"
    "  received_at INTEGER NOT NULL, state TEXT NOT NULL, reply TEXT, finished_at INTEGER);"
    "CREATE INDEX IF NOT EXISTS requests_state ON requests (state, received_at);"
    "CREATE TABLE IF NOT EXISTS instances ("
    "  uuid TEXT PRIMARY KEY, record TEXT NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS actions ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, instance_uuid TEXT NOT NULL, request_id TEXT,"
    "  action TEXT NOT NULL, start INTEGER NOT NULL, finish INTEGER, result TEXT,"
    "  message TEXT, reported INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS actions_reported ON actions (reported);"
    "CREATE TABLE IF NOT EXISTS action_requests ("
    "  unique_id TEXT PRIMARY KEY, action_id INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS migrations ("
    "  instance_uuid TEXT PRIMARY KEY, record TEXT NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS outbox ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL,"
    "  priority TEXT NOT NULL, payload TEXT NOT NULL, created_at INTEGER NOT NULL);";

/* A relaxed write returns without waiting for the disk: it survives the process being
 * killed at once, and a power loss from the next durable write on, whose sync writes the
 * log up to it.  For rows whose loss costs at most a repeat: a request's "running" mark
 * and its action's start (one commit), an action marked reported (the report is an idempotent
 * upsert), a confirmed notification's removal (sent again). */
/* A prepared statement, compiled the first time its SQL is used and kept; the caller
 * binds and steps it, and g_autoptr(VnStmt) resets it for the next one. */
typedef sqlite3_stmt VnStmt;

static void stmt_finalize(gpointer st)
{
    sqlite3_finalize(st);
}

static void stmt_release(VnStmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnStmt, stmt_release)

static VnStmt *prepare(VnJournal *j, const char *sql, GError **error)
{
    sqlite3_stmt *st = g_hash_table_lookup(j->stmts, sql);

    if (st)
        return st;
    if (sqlite3_prepare_v3(j->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        db_error(j, error, "preparing a statement");
        return NULL;
    }
    g_hash_table_insert(j->stmts, g_strdup(sql), st);
    return st;
}

/* BEGIN, COMMIT or ROLLBACK, compiled once.  Under lock. */
static gboolean txn(VnJournal *j, const char *sql, GError **error)
{
    g_autoptr(VnStmt) st = prepare(j, sql, error);

    return st && (sqlite3_step(st) == SQLITE_DONE || db_error(j, error, sql));
}

/* Opens the log for fdatasync, again if SQLite made a new file.  Under sync_lock. */
static int wal_fd(VnJournal *j)
{
    struct stat a, b;

    if (j->wal_fd >= 0 && (stat(j->wal_path, &a) != 0 || fstat(j->wal_fd, &b) != 0 ||
                           a.st_ino != b.st_ino || a.st_dev != b.st_dev)) {
        close(j->wal_fd);
        j->wal_fd = -1;
    }
    if (j->wal_fd < 0)
        j->wal_fd = open(j->wal_path, O_RDONLY | O_CLOEXEC);
    return j->wal_fd;
}

/* Returns once every write counted up to @upto is on disk (see the top of this file);
 * @writes of them are the caller's (for the count of durable writes). */
static gboolean sync_upto_n(VnJournal *j, guint64 upto, guint writes, GError **error)
{
    int err = 0;

    g_mutex_lock(&j->sync_lock);
    j->durable += writes;
    while (j->synced < upto && !err) {
        if (j->syncing) {
            g_cond_wait(&j->sync_cond, &j->sync_lock);
            continue;
        }
        j->syncing = TRUE;
        int fd = wal_fd(j);
        int open_err = fd < 0 ? errno : 0;
        int (*flush)(int) = j->flush;
        g_mutex_unlock(&j->sync_lock);

        /* what is counted now was written to the log before this sync starts */
        g_mutex_lock(&j->lock);
        guint64 target = j->committed;
        g_mutex_unlock(&j->lock);
        err = fd < 0 ? open_err : flush(fd) == 0 ? 0 : errno;

        g_mutex_lock(&j->sync_lock);
        j->syncing = FALSE;
        j->syncs++;
        if (!err)
            j->synced = MAX(j->synced, target);
        g_cond_broadcast(&j->sync_cond);
    }
    g_mutex_unlock(&j->sync_lock);
    if (err) {
        g_set_error(error, VN_JOURNAL_ERROR, SQLITE_IOERR, "journal %s: flushing its log: %s",
                    j->path, g_strerror(err));
        return FALSE;
    }
    return TRUE;
}

static gboolean sync_upto(VnJournal *j, guint64 upto, GError **error)
{
    return sync_upto_n(j, upto, 1, error);
}

gint64 vn_journal_memory_used(void)
{
    return sqlite3_memory_used();
}

guint64 vn_journal_syncs(VnJournal *j)
{
    g_mutex_lock(&j->sync_lock);
    guint64 n = j->syncs;
    g_mutex_unlock(&j->sync_lock);
    return n;
}

guint64 vn_journal_durable_writes(VnJournal *j)
{
    g_mutex_lock(&j->sync_lock);
    guint64 n = j->durable;
    g_mutex_unlock(&j->sync_lock);
    return n;
}

void vn_journal_set_flush(VnJournal *j, int (*flush)(int fd))
{
    g_mutex_lock(&j->sync_lock);
    j->flush = flush ? flush : fdatasync;
    g_mutex_unlock(&j->sync_lock);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static char *col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    return t ? g_strdup((const char *)t) : NULL;
}

VnJournal *vn_journal_open(const char *path, GError **error)
{
    g_autoptr(VnJournal) j = g_new0(VnJournal, 1);

    g_mutex_init(&j->lock);
    g_mutex_init(&j->sync_lock);
    g_cond_init(&j->sync_cond);
    j->wal_fd = -1;
    j->flush = fdatasync;
    j->stmts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, stmt_finalize);
    j->path = g_strdup(path);
    j->wal_path = g_strconcat(path, "-wal", NULL);
    if (sqlite3_open_v2(path, &j->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        db_error(j, error, "cannot open");
        return NULL;
    }
    sqlite3_busy_timeout(j->db, 5000);
    if (!exec(j, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
              error) ||
        !exec(j, "BEGIN;", error) || !exec(j, schema, error))
        return NULL;
    g_autofree char *uuid = g_uuid_string_random();
    g_autofree char *sql =
        g_strdup_printf("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '%d');"
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', '%s');",
                        SCHEMA_VERSION, uuid);
    if (!exec(j, sql, error) || !exec(j, "COMMIT;", error) || !sync_upto(j, ++j->committed, error))
        return NULL;
    {
        g_autoptr(VnStmt) st = prepare(j, "SELECT value FROM meta WHERE key = 'journal_id'", error);
        if (!st || sqlite3_step(st) != SQLITE_ROW) {
            db_error(j, error, "reading the journal id");
            return NULL;
        }
        j->id = col_text(st, 0);
    }
    return g_steal_pointer(&j);
}

void vn_journal_free(VnJournal *j)
{
    if (!j)
        return;
    g_hash_table_destroy(j->stmts); /* finalized before the connection closes */
    if (j->db)
        sqlite3_close(j->db);
    if (j->wal_fd >= 0)
        close(j->wal_fd);
    g_mutex_clear(&j->lock);
    g_mutex_clear(&j->sync_lock);
    g_cond_clear(&j->sync_cond);
    g_free(j->path);
    g_free(j->wal_path);
    g_free(j->id);
    g_free(j);
}

const char *vn_journal_id(VnJournal *j)
{
    return j->id;
}

void vn_journal_request_clear(VnJournalRequest *r)
{
    g_free(r->unique_id);
    g_free(r->method);
    g_free(r->instance_uuid);
    g_free(r->msg_id);
    g_free(r->reply_q);
    g_free(r->request_id);
    g_free(r->body);
    g_free(r->state);
    g_free(r->reply);
    memset(r, 0, sizeof(*r));
}

void vn_journal_request_free_full(VnJournalRequest *r)
{
    if (r) {
        vn_journal_request_clear(r);
        g_free(r);
    }
}

#define REQUEST_COLUMNS                                                                            \
    "unique_id, method, instance_uuid, msg_id, reply_q, request_id, body, received_at, state, "    \
    "reply"

static VnJournalRequest *row_request(sqlite3_stmt *st)
{
    VnJournalRequest *r = g_new0(VnJournalRequest, 1);

    r->unique_id = col_text(st, 0);
    r->method = col_text(st, 1);
    r->instance_uuid = col_text(st, 2);
    r->msg_id = col_text(st, 3);
    r->reply_q = col_text(st, 4);
    r->request_id = col_text(st, 5);
    r->body = col_text(st, 6);
    r->received_at = sqlite3_column_int64(st, 7);
    r->state = col_text(st, 8);
    r->reply = col_text(st, 9);
    return r;
}

static VnJournalVerdict accept_locked(VnJournal *j, const VnJournalRequest *r,
                                      VnJournalRequest **previous, GError **error)
{
    g_autoptr(VnStmt) st = prepare(j,
                                   "INSERT OR IGNORE INTO requests (" REQUEST_COLUMNS
                                   ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'accepted', "
                                   "NULL)",
                                   error);

    if (!st)
        return (VnJournalVerdict)-1;
    bind_text(st, 1, r->unique_id);
    bind_text(st, 2, r->method);
    bind_text(st, 3, r->instance_uuid);
    bind_text(st, 4, r->msg_id);
    bind_text(st, 5, r->reply_q);
    bind_text(st, 6, r->request_id);
    bind_text(st, 7, r->body);
    sqlite3_bind_int64(st, 8, r->received_at);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_error(j, error, "recording a request"), (VnJournalVerdict)-1;
    if (sqlite3_changes(j->db) > 0)
        return VN_JOURNAL_NEW;
    if (previous) {
        g_autoptr(VnStmt) q =
            prepare(j, "SELECT " REQUEST_COLUMNS " FROM requests WHERE unique_id = ?1", error);
        if (!q)
            return (VnJournalVerdict)-1;
        bind_text(q, 1, r->unique_id);
        if (sqlite3_step(q) == SQLITE_ROW)
            *previous = row_request(q);
    }
    return VN_JOURNAL_DUPLICATE;
}

VnJournalVerdict vn_journal_accept(VnJournal *j, const VnJournalRequest *r,
                                   VnJournalRequest **previous, guint64 *logged, GError **error)
{
    VnJournalVerdict v;

    guint64 mine = 0;

    if (previous)
        *previous = NULL;
    if (logged)
        *logged = 0;
    g_mutex_lock(&j->lock);
    v = accept_locked(j, r, previous, error);
    if (v == VN_JOURNAL_NEW)
        mine = ++j->committed;
    g_mutex_unlock(&j->lock);
    if (logged)
        *logged = mine;
    else if (mine && !sync_upto(j, mine, error))
        return (VnJournalVerdict)-1;
    return v;
}

/* Runs @sql with @n text arguments and commits it to the log.  With @logged NULL it returns
 * once the write is durable; otherwise *logged receives its mark for sync_upto. */
static gboolean exec_text_args(VnJournal *j, guint64 *logged, const char *sql, const char *what,
                               GError **error, int n, ...)
{
    va_list ap;
    gboolean ok = FALSE;
    guint64 mine = 0;

    g_mutex_lock(&j->lock);
    {
        g_autoptr(VnStmt) st = prepare(j, sql, error);
        if (st) {
            va_start(ap, n);
            for (int i = 1; i <= n; i++)
                bind_text(st, i, va_arg(ap, const char *));
            va_end(ap);
            ok = sqlite3_step(st) == SQLITE_DONE || db_error(j, error, what);
        }
    }
    mine = ok ? ++j->committed : 0;
    g_mutex_unlock(&j->lock);
    if (ok && logged)
        *logged = mine;
    return ok && (logged || sync_upto(j, mine, error));
}

gboolean vn_journal_meta_set(VnJournal *j, const char *key, const char *value, GError **error)
{
    if (!value)
        return exec_text_args(j, NULL, "DELETE FROM meta WHERE key = ?1", "forgetting a setting",
                              error, 1, key);
    return exec_text_args(j, NULL, "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                          "recording a setting", error, 2, key, value);
}

char *vn_journal_meta_get(VnJournal *j, const char *key)
{
    char *out = NULL;

    g_mutex_lock(&j->lock);
    {
        g_autoptr(VnStmt) st = prepare(j, "SELECT value FROM meta WHERE key = ?1", NULL);
        if (st) {
            bind_text(st, 1, key);
            if (sqlite3_step(st) == SQLITE_ROW)
                out = col_text(st, 0);
        }
    }
    g_mutex_unlock(&j->lock);
    return out;
}

gboolean vn_journal_forget(VnJournal *j, const char *unique_id, GError **error)
{
    guint64 logged;

    return exec_text_args(j, &logged,
                          "DELETE FROM requests WHERE unique_id = ?1 AND state = 'accepted'",
                          "forgetting a request", error, 1, unique_id);
}

gboolean vn_journal_set_running(VnJournal *j, const char *unique_id, GError **error)
{
    guint64 relaxed;

    return exec_text_args(j, &relaxed, "UPDATE requests SET state = 'running' WHERE unique_id = ?1",
                          "marking a request running", error, 1, unique_id);
}

/* The end of action @a, under lock. */
static gboolean action_end_locked(VnJournal *j, const VnJournalActionEnd *a, GError **error)
{
    g_autoptr(VnStmt) st = prepare(j,
                                   "UPDATE actions SET result = ?2, message = ?3, "
                                   "finish = ?4, reported = 0 WHERE id = ?1",
                                   error);
    if (!st)
        return FALSE;
    sqlite3_bind_int64(st, 1, a->id);
    bind_text(st, 2, a->result);
    bind_text(st, 3, a->message);
    sqlite3_bind_int64(st, 4, a->finish);
    return sqlite3_step(st) == SQLITE_DONE || db_error(j, error, "finishing an action");
}

gboolean vn_journal_finish(VnJournal *j, const char *unique_id, const char *reply,
                           const VnJournalActionEnd *action, GError **error)
{
    gboolean ok;
    guint64 mine = 0;

    g_mutex_lock(&j->lock);
    ok = !action || txn(j, "BEGIN", error);
    if (ok) {
        g_autoptr(VnStmt) st = prepare(j,
                                       "UPDATE requests SET state = 'done', reply = ?2, "
                                       "finished_at = ?3 WHERE unique_id = ?1",
                                       error);
        ok = st != NULL;
        if (ok) {
            bind_text(st, 1, unique_id);
            bind_text(st, 2, reply);
            sqlite3_bind_int64(st, 3, g_get_real_time() / G_USEC_PER_SEC);
            ok = sqlite3_step(st) == SQLITE_DONE || db_error(j, error, "finishing a request");
        }
    }
    if (ok && action)
        ok = action_end_locked(j, action, error) && txn(j, "COMMIT", error);
    if (!ok && action)
        txn(j, "ROLLBACK", NULL);
    if (ok)
        mine = ++j->committed;
    g_mutex_unlock(&j->lock);
    return ok && sync_upto(j, mine, error);
}

/* Runs @sql (optionally binding @limit to ?1) and collects @row(st) for every row. */
static GPtrArray *query_rows(VnJournal *j, const char *sql, int limit,
                             gpointer (*row)(sqlite3_stmt *), GDestroyNotify free_row,
                             const char *what, GError **error)
{
    g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func(free_row);
    int rc;

    g_mutex_lock(&j->lock);
    {
        g_autoptr(VnStmt) st = prepare(j, sql, error);
        if (!st) {
            g_mutex_unlock(&j->lock);
            return NULL;
        }
        if (limit > 0)
            sqlite3_bind_int(st, 1, limit);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            g_ptr_array_add(out, row(st));
        if (rc != SQLITE_DONE) {
            db_error(j, error, what);
            g_mutex_unlock(&j->lock);
            return NULL;
        }
    }
    g_mutex_unlock(&j->lock);
    return g_steal_pointer(&out);
}

static gpointer row_request_any(sqlite3_stmt *st)
{
    return row_request(st);
}

GPtrArray *vn_journal_unfinished(VnJournal *j, GError **error)
{
    return query_rows(j,
                      "SELECT " REQUEST_COLUMNS " FROM requests WHERE state != 'done' "
                      "ORDER BY received_at, rowid",
                      0, row_request_any, (GDestroyNotify)vn_journal_request_free_full,
                      "reading unfinished requests", error);
}

int vn_journal_prune(VnJournal *j, gint64 before, GError **error)
{
    int n = -1;

    g_mutex_lock(&j->lock);
    {
        g_autoptr(VnStmt) st =
            prepare(j, "DELETE FROM requests WHERE state = 'done' AND received_at < ?1", error);
        if (st) {
            sqlite3_bind_int64(st, 1, before);
            if (sqlite3_step(st) == SQLITE_DONE)
                n = sqlite3_changes(j->db);
            else
                db_error(j, error, "pruning requests");
        }
        /* reported, finished actions older than a day are of no further use here */
        g_autoptr(VnStmt) a = prepare(
            j, "DELETE FROM actions WHERE reported = 1 AND finish IS NOT NULL AND finish < ?1",
            NULL);
        if (a) {
            sqlite3_bind_int64(a, 1, before - 86400);
            sqlite3_step(a);
        }
    }
    g_mutex_unlock(&j->lock);
    return n;
}

gboolean vn_journal_wait_logged(VnJournal *j, guint64 logged, guint writes, GError **error)
{
    return sync_upto_n(j, logged, writes, error);
}

gboolean vn_journal_save_instance(VnJournal *j, const char *uuid, const char *json, guint64 *logged,
                                  GError **error)
{
    g_autofree char *now = g_strdup_printf("%" G_GINT64_FORMAT, g_get_real_time() / G_USEC_PER_SEC);

    return exec_text_args(j, logged,
                          "INSERT INTO instances (uuid, record, updated_at) VALUES (?1, ?2, ?3) "
                          "ON CONFLICT (uuid) DO UPDATE SET record = excluded.record, "
                          "updated_at = excluded.updated_at",
                          "saving an instance", error, 3, uuid, json, now);
}

gboolean vn_journal_delete_instance(VnJournal *j, const char *uuid, guint64 *logged, GError **error)
{
    return exec_text_args(j, logged, "DELETE FROM instances WHERE uuid = ?1",
                          "deleting an instance", error, 1, uuid);
}

static gpointer row_text0(sqlite3_stmt *st)
{
    return col_text(st, 0);
}

GPtrArray *vn_journal_load_instances(VnJournal *j, GError **error)
{
    return query_rows(j, "SELECT record FROM instances ORDER BY uuid", 0, row_text0, g_free,
                      "loading instances", error);
}

gboolean vn_journal_save_migration(VnJournal *j, const char *uuid, const char *json, GError **error)
{
    g_autofree char *now = g_strdup_printf("%" G_GINT64_FORMAT, g_get_real_time() / G_USEC_PER_SEC);

    return exec_text_args(j, NULL,
                          "INSERT INTO migrations (instance_uuid, record, updated_at) "
                          "VALUES (?1, ?2, ?3) ON CONFLICT (instance_uuid) DO UPDATE SET "
                          "record = excluded.record, updated_at = excluded.updated_at",
                          "saving a migration", error, 3, uuid, json, now);
}

GPtrArray *vn_journal_load_migrations(VnJournal *j, GError **error)
{
    return query_rows(j, "SELECT record FROM migrations ORDER BY instance_uuid", 0, row_text0,
                      g_free, "loading migrations", error);
}

gint64 vn_journal_action_start(VnJournal *j, const char *uuid, const char *request_id,
                               const char *action, const char *unique_id, gint64 start,
                               GError **error)
{
    gint64 id = -1;
    gboolean ok;

    g_mutex_lock(&j->lock);
    ok = txn(j, "BEGIN", error);
    if (ok && unique_id) {
        g_autoptr(VnStmt) st =
            prepare(j, "UPDATE requests SET state = 'running' WHERE unique_id = ?1", error);
        ok = st != NULL;
        if (ok) {
            bind_text(st, 1, unique_id);
            ok = sqlite3_step(st) == SQLITE_DONE || db_error(j, error, "marking a request running");
        }
    }
    /* a request run again after a restart continues its action: one action per request */
    if (ok && unique_id) {
        g_autoptr(VnStmt) st =
            prepare(j, "SELECT action_id FROM action_requests WHERE unique_id = ?1", error);
        ok = st != NULL;
        if (ok) {
            bind_text(st, 1, unique_id);
            if (sqlite3_step(st) == SQLITE_ROW)
                id = sqlite3_column_int64(st, 0);
        }
    }
    if (ok && id < 0) {
        g_autoptr(VnStmt) st = prepare(j,
                                       "INSERT INTO actions (instance_uuid, request_id, "
                                       "action, start) VALUES (?1, ?2, ?3, ?4)",
                                       error);
        ok = st != NULL;
        if (ok) {
            bind_text(st, 1, uuid);
            bind_text(st, 2, request_id);
            bind_text(st, 3, action);
            sqlite3_bind_int64(st, 4, start);
            ok = sqlite3_step(st) == SQLITE_DONE || db_error(j, error, "recording an action");
            id = ok ? sqlite3_last_insert_rowid(j->db) : -1;
        }
        if (ok && unique_id) {
            g_autoptr(VnStmt) m = prepare(
                j, "INSERT INTO action_requests (unique_id, action_id) VALUES (?1, ?2)", error);
            ok = m != NULL;
            if (ok) {
                bind_text(m, 1, unique_id);
                sqlite3_bind_int64(m, 2, id);
                ok = sqlite3_step(m) == SQLITE_DONE ||
                     db_error(j, error, "recording an action's request");
            }
        }
    }
    if (ok)
        ok = txn(j, "COMMIT", error);
    if (!ok) {
        txn(j, "ROLLBACK", NULL);
        id = -1;
    } else {
        j->committed++;
    }
    g_mutex_unlock(&j->lock);
    return id;
}

gboolean vn_journal_action_finish(VnJournal *j, const VnJournalActionEnd *a, GError **error)
{
    gboolean ok;
    guint64 mine;

    g_mutex_lock(&j->lock);
    ok = action_end_locked(j, a, error);
    mine = ok ? ++j->committed : 0;
    g_mutex_unlock(&j->lock);
    return ok && sync_upto(j, mine, error);
}

void vn_journal_action_free(VnJournalAction *a)
{
    if (!a)
        return;
    g_free(a->instance_uuid);
    g_free(a->request_id);
    g_free(a->action);
    g_free(a->result);
    g_free(a->message);
    g_free(a);
}

static gpointer row_action(sqlite3_stmt *st)
{
    VnJournalAction *a = g_new0(VnJournalAction, 1);

    a->id = sqlite3_column_int64(st, 0);
    a->instance_uuid = col_text(st, 1);
    a->request_id = col_text(st, 2);
    a->action = col_text(st, 3);
    a->start = sqlite3_column_int64(st, 4);
    a->finish = sqlite3_column_int64(st, 5);
    a->result = col_text(st, 6);
    a->message = col_text(st, 7);
    return a;
}

GPtrArray *vn_journal_actions_unreported(VnJournal *j, int limit, GError **error)
{
    return query_rows(j,
                      "SELECT id, instance_uuid, request_id, action, start, finish, result, "
                      "message FROM actions WHERE reported = 0 ORDER BY id LIMIT ?1",
                      limit > 0 ? limit : 1000, row_action, (GDestroyNotify)vn_journal_action_free,
                      "reading actions", error);
}

gboolean vn_journal_actions_mark_reported(VnJournal *j, const VnJournalAction *const *a, guint n,
                                          GError **error)
{
    gboolean ok;

    if (!n)
        return TRUE;
    g_mutex_lock(&j->lock);
    ok = txn(j, "BEGIN", error);
    for (guint i = 0; ok && i < n; i++) {
        /* only when unchanged since read: a finish that raced the report is sent again */
        g_autoptr(VnStmt) st = prepare(j,
                                       "UPDATE actions SET reported = 1 WHERE id = ?1 "
                                       "AND finish IS ?2",
                                       error);
        ok = st != NULL;
        if (ok) {
            sqlite3_bind_int64(st, 1, a[i]->id);
            if (a[i]->finish)
                sqlite3_bind_int64(st, 2, a[i]->finish);
            else
                sqlite3_bind_null(st, 2);
            ok = sqlite3_step(st) == SQLITE_DONE || db_error(j, error, "marking an action");
        }
    }
    if (ok)
        ok = txn(j, "COMMIT", error);
    if (!ok)
        txn(j, "ROLLBACK", NULL);
    j->committed += ok;
    g_mutex_unlock(&j->lock);
    return ok;
}

gint64 vn_journal_outbox_add(VnJournal *j, const char *event_type, const char *priority,
                             const char *payload, GError **error)
{
    gint64 id = -1;

    g_mutex_lock(&j->lock);
    {
        g_autoptr(VnStmt) st = prepare(j,
                                       "INSERT INTO outbox (event_type, priority, payload, "
                                       "created_at) VALUES (?1, ?2, ?3, ?4)",
                                       error);
        if (st) {
            bind_text(st, 1, event_type);
            bind_text(st, 2, priority);
            bind_text(st, 3, payload);
            sqlite3_bind_int64(st, 4, g_get_real_time() / G_USEC_PER_SEC);
            if (sqlite3_step(st) == SQLITE_DONE)
                id = sqlite3_last_insert_rowid(j->db);
            else
                db_error(j, error, "queueing a notification");
        }
    }
    guint64 mine = id > 0 ? ++j->committed : 0;
    g_mutex_unlock(&j->lock);
    if (mine && !sync_upto(j, mine, error))
        return -1;
    return id;
}

gboolean vn_journal_outbox_remove(VnJournal *j, const gint64 *ids, guint n, GError **error)
{
    gboolean ok;

    if (!n)
        return TRUE;
    g_mutex_lock(&j->lock);
    ok = n == 1 || txn(j, "BEGIN", error);
    for (guint i = 0; ok && i < n; i++) {
        g_autoptr(VnStmt) st = prepare(j, "DELETE FROM outbox WHERE id = ?1", error);
        ok = st != NULL;
        if (ok) {
            sqlite3_bind_int64(st, 1, ids[i]);
            ok = sqlite3_step(st) == SQLITE_DONE || db_error(j, error, "removing a notification");
        }
    }
    if (n > 1) {
        if (ok)
            ok = txn(j, "COMMIT", error);
        if (!ok)
            txn(j, "ROLLBACK", NULL);
    }
    j->committed += ok;
    g_mutex_unlock(&j->lock);
    return ok;
}

void vn_journal_notification_free(VnJournalNotification *n)
{
    if (!n)
        return;
    g_free(n->event_type);
    g_free(n->priority);
    g_free(n->payload);
    g_free(n);
}

static gpointer row_notification(sqlite3_stmt *st)
{
    VnJournalNotification *n = g_new0(VnJournalNotification, 1);

    n->id = sqlite3_column_int64(st, 0);
    n->event_type = col_text(st, 1);
    n->priority = col_text(st, 2);
    n->payload = col_text(st, 3);
    return n;
}

GPtrArray *vn_journal_outbox_pending(VnJournal *j, GError **error)
{
    return query_rows(j, "SELECT id, event_type, priority, payload FROM outbox ORDER BY id", 0,
                      row_notification, (GDestroyNotify)vn_journal_notification_free,
                      "reading the outbox", error);
}
