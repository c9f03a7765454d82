/* agent/state/journal.h - the agent's memory across crashes, in SQLite (WAL; durable writes
 * wait for an fdatasync of the log that they share, journal.c):
 *
 *   requests   every state-changing request, recorded before the broker is acknowledged,
 *              with its _unique_id (duplicates are recognised for duplicate_window
 *              seconds, across restarts), its reply address, and once done its reply;
 *   instances  the instance records (JSON) of this host;
 *   actions    one row per operation on an instance, until reported to the database;
 *   outbox     notifications not yet confirmed by the broker.
 *
 * Thread-safe: one connection behind a mutex. */
#pragma once

#include <glib.h>

#define VN_JOURNAL_ERROR (vn_journal_error_quark())
GQuark vn_journal_error_quark(void);

typedef struct _VnJournal VnJournal;

typedef struct {
    char *unique_id;
    char *method;
    char *instance_uuid; /* may be NULL */
    char *msg_id;        /* calls only */
    char *reply_q;       /* calls only */
    char *request_id;
    char *body;         /* the request (inner oslo message) as JSON */
    gint64 received_at; /* unix seconds */
    char *state;        /* "accepted", "running" or "done" */
    char *reply;        /* the reply's result or failure JSON once done */
} VnJournalRequest;

void vn_journal_request_clear(VnJournalRequest *r);
void vn_journal_request_free_full(VnJournalRequest *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnJournalRequest, vn_journal_request_free_full)

typedef enum {
    VN_JOURNAL_NEW,       /* recorded now: run it */
    VN_JOURNAL_DUPLICATE, /* seen before: do not run it again */
} VnJournalVerdict;

VnJournal *vn_journal_open(const char *path, GError **error);

/* The journal's own uuid, made when it was created (names its rows elsewhere). */
const char *vn_journal_id(VnJournal *j);

/* A setting kept across restarts (the host's disabled state), durable when the call
 * returns; @value NULL removes it.  _get: NULL when not set; caller frees. */
gboolean vn_journal_meta_set(VnJournal *j, const char *key, const char *value, GError **error);
char *vn_journal_meta_get(VnJournal *j, const char *key);
void vn_journal_free(VnJournal *j);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnJournal, vn_journal_free)

/* Bytes SQLite holds in this process (every journal's page cache and statements). */
gint64 vn_journal_memory_used(void);
/* The log's flushes so far: concurrent durable writes share one (journal.c). */
guint64 vn_journal_syncs(VnJournal *j);
/* The durable writes so far (each waited for a flush, its own or a shared one). */
guint64 vn_journal_durable_writes(VnJournal *j);
/* Replaces fdatasync for the log's flushes (NULL: fdatasync again); for tests. */
void vn_journal_set_flush(VnJournal *j, int (*flush)(int fd));

/* Records @r unless its unique_id is known.  For a duplicate, *previous (when not NULL)
 * receives the stored request (with its reply once done).  With @logged NULL a new record
 * is durable on return; otherwise it is in the log (it survives the process being killed)
 * and *logged receives the mark vn_journal_wait_logged waits for (0 for a duplicate), so
 * that the requests read together are made durable by one flush. */
VnJournalVerdict vn_journal_accept(VnJournal *j, const VnJournalRequest *r,
                                   VnJournalRequest **previous, guint64 *logged, GError **error);

/* Forgets request @unique_id while it is only accepted: for one whose record could not be
 * made durable and that goes back to the broker, so that its next delivery is taken as
 * new.  Not waited for. */
gboolean vn_journal_forget(VnJournal *j, const char *unique_id, GError **error);

/* Relaxed (journal.c): a request found "accepted" after a power loss runs
 * again all the same. */
gboolean vn_journal_set_running(VnJournal *j, const char *unique_id, GError **error);

/* The end of an action: its result ("Success" or "Error"), message (may be NULL) and time. */
typedef struct {
    gint64 id;
    const char *result;
    const char *message;
    gint64 finish;
} VnJournalActionEnd;

/* Marks the request done and keeps @reply (JSON text, may be NULL) for duplicates; with
 * @action, the request's action ends in the same commit. */
gboolean vn_journal_finish(VnJournal *j, const char *unique_id, const char *reply,
                           const VnJournalActionEnd *action, GError **error);

/* Requests accepted or running but not done, oldest first (VnJournalRequest*). */
GPtrArray *vn_journal_unfinished(VnJournal *j, GError **error);

/* Forgets done requests received before @before (unix seconds); returns how many. */
int vn_journal_prune(VnJournal *j, gint64 before, GError **error);

/* Instances: @json is the record's JSON text.  With @logged NULL, _save and _delete return
 * once the change is durable.  Otherwise they return once it is in the log (it survives
 * the process being killed at once) and *logged receives the mark that
 * vn_journal_wait_logged waits for: the caller need not hold anything while the disk
 * works. */
gboolean vn_journal_save_instance(VnJournal *j, const char *uuid, const char *json, guint64 *logged,
                                  GError **error);
gboolean vn_journal_delete_instance(VnJournal *j, const char *uuid, guint64 *logged,
                                    GError **error);
/* Returns once the log is on disk up to @logged; waits made together share one flush.
 * @writes: how many of the caller's writes it makes durable (counted in
 * vn_journal_durable_writes). */
gboolean vn_journal_wait_logged(VnJournal *j, guint64 logged, guint writes, GError **error);
GPtrArray *vn_journal_load_instances(VnJournal *j, GError **error); /* char* JSON texts */

/* The last live migration of each instance (JSON text), so that its row is closed and
 * get_migration answers after a restart. */
gboolean vn_journal_save_migration(VnJournal *j, const char *uuid, const char *json,
                                   GError **error);
GPtrArray *vn_journal_load_migrations(VnJournal *j, GError **error); /* char* JSON texts */

/* Actions (instance_actions of the central database). */
/* Starts the action of a request and marks the request (@unique_id, may be NULL) running,
 * in one commit; a request run again after a restart gets its first action back, so the
 * cloud sees one action per request.  Relaxed: lost in a power loss only with the
 * request's own progress, which runs it again. */
gint64 vn_journal_action_start(VnJournal *j, const char *uuid, const char *request_id,
                               const char *action, const char *unique_id, gint64 start,
                               GError **error);
/* Ends an action of no request kept in the journal (vn_journal_finish ends the others). */
gboolean vn_journal_action_finish(VnJournal *j, const VnJournalActionEnd *a, GError **error);

typedef struct {
    gint64 id;
    char *instance_uuid;
    char *request_id;
    char *action;
    gint64 start;
    gint64 finish; /* 0 while running */
    char *result;  /* NULL while running */
    char *message;
} VnJournalAction;

void vn_journal_action_free(VnJournalAction *a);
/* Actions changed since they were last reported, up to @limit (VnJournalAction*). */
GPtrArray *vn_journal_actions_unreported(VnJournal *j, int limit, GError **error);
/* Marks @n actions reported, in one commit, each only if unchanged since it was read.
 * Relaxed: an action reported again is the same upsert. */
gboolean vn_journal_actions_mark_reported(VnJournal *j, const VnJournalAction *const *a, guint n,
                                          GError **error);

/* Notification outbox. */
gint64 vn_journal_outbox_add(VnJournal *j, const char *event_type, const char *priority,
                             const char *payload, GError **error);
/* Removes the @n confirmed notifications @ids, in one commit.  Relaxed: a confirmed
 * notification found again after a power loss is sent again (at least once, as promised). */
gboolean vn_journal_outbox_remove(VnJournal *j, const gint64 *ids, guint n, GError **error);

typedef struct {
    gint64 id;
    char *event_type;
    char *priority;
    char *payload;
} VnJournalNotification;

void vn_journal_notification_free(VnJournalNotification *n);
GPtrArray *vn_journal_outbox_pending(VnJournal *j, GError **error);
