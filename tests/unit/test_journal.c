/* Unit tests of agent/journal (SQLite) and agent/instance_store (compare-and-set). */
#include "tests/unit/testutil.h"

#include <string.h>
#include <unistd.h>

#include "agent/state/instance_store.h"
#include "agent/state/journal.h"
#include "api/error.h"

static VnJournal *open_journal(void)
{
    g_autofree char *path = g_build_filename(vn_test_dir(), "journal.db", NULL);
    g_autoptr(GError) err = NULL;
    VnJournal *j = vn_journal_open(path, &err);

    if (!j)
        fail_msg("%s", err->message);
    return j;
}

static void test_requests_dedup_across_reopen(void **state)
{
    g_autoptr(GError) err = NULL;
    VnJournalRequest r = { .unique_id = "u1",
                           .method = "stop_instance",
                           .instance_uuid = "i1",
                           .msg_id = "m1",
                           .reply_q = "reply_x",
                           .request_id = "req-1",
                           .body = "{}",
                           .received_at = 1000 };
    VnJournalRequest *prev = NULL;

    (void)state;
    {
        g_autoptr(VnJournal) j = open_journal();
        assert_int_equal(vn_journal_accept(j, &r, &prev, NULL, &err), VN_JOURNAL_NEW);
        assert_null(prev);
        assert_int_equal(vn_journal_accept(j, &r, &prev, NULL, &err), VN_JOURNAL_DUPLICATE);
        assert_non_null(prev);
        assert_string_equal(prev->state, "accepted");
        vn_journal_request_free_full(prev);
        prev = NULL;
        g_autoptr(GPtrArray) open = vn_journal_unfinished(j, &err);
        assert_int_equal(open->len, 1);
        assert_true(vn_journal_set_running(j, "u1", &err));
    }
    {
        /* a restart: the journal remembers both the request and that it is unfinished */
        g_autoptr(VnJournal) j = open_journal();
        g_autoptr(GPtrArray) open = vn_journal_unfinished(j, &err);
        assert_int_equal(open->len, 1);
        VnJournalRequest *o = g_ptr_array_index(open, 0);
        assert_string_equal(o->unique_id, "u1");
        assert_string_equal(o->state, "running");
        assert_string_equal(o->reply_q, "reply_x");
        /* the request ends with its action, in one commit */
        gint64 act = vn_journal_action_start(j, "i1", "req-1", "reboot_instance", "u1", 1000, &err);
        assert_true(act > 0);
        VnJournalActionEnd end = { act, "Error", "it failed", 1001 };
        assert_true(vn_journal_finish(j, "u1", "{\"result\": 1}", &end, &err));
        g_autoptr(GPtrArray) none = vn_journal_unfinished(j, &err);
        assert_int_equal(none->len, 0);
        g_autoptr(GPtrArray) acts = vn_journal_actions_unreported(j, 10, &err);
        assert_int_equal(acts->len, 1);
        VnJournalAction *ended = g_ptr_array_index(acts, 0);
        assert_int_equal(ended->finish, 1001);
        assert_string_equal(ended->result, "Error");
        assert_string_equal(ended->message, "it failed");
        assert_int_equal(vn_journal_accept(j, &r, &prev, NULL, &err), VN_JOURNAL_DUPLICATE);
        assert_string_equal(prev->reply, "{\"result\": 1}");
        vn_journal_request_free_full(prev);
        /* pruning forgets finished requests older than the window */
        assert_int_equal(vn_journal_prune(j, 999, &err), 0);
        assert_int_equal(vn_journal_prune(j, 1001, &err), 1);
        assert_int_equal(vn_journal_accept(j, &r, NULL, NULL, &err), VN_JOURNAL_NEW);
        /* an action's start marks its request running */
        assert_true(vn_journal_action_start(j, "i1", "req-1", "reboot_instance", "u1", 1002, &err) >
                    0);
        g_autoptr(GPtrArray) running = vn_journal_unfinished(j, &err);
        assert_int_equal(running->len, 1);
        assert_string_equal(((VnJournalRequest *)g_ptr_array_index(running, 0))->state, "running");
    }
}

/* Requests read together: each written to the log at once, all made durable by one flush
 * afterwards; one whose flush failed is forgotten, so that its next delivery is new. */
static void test_accept_logged(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnJournal) j = open_journal();
    VnJournalRequest r = { .method = "stop_instance", .body = "{}", .received_at = 1000 };
    guint64 marks[3];

    (void)state;
    guint64 syncs = vn_journal_syncs(j);
    guint64 durable = vn_journal_durable_writes(j);
    for (int i = 0; i < 3; i++) {
        g_autofree char *id = g_strdup_printf("round-%d", i);
        r.unique_id = id;
        assert_int_equal(vn_journal_accept(j, &r, NULL, &marks[i], &err), VN_JOURNAL_NEW);
        assert_true(marks[i] > 0);
        assert_true(i == 0 || marks[i] > marks[i - 1]);
    }
    /* none flushed yet; one flush for the three */
    assert_int_equal(vn_journal_syncs(j), syncs);
    assert_true(vn_journal_wait_logged(j, marks[2], 3, &err));
    assert_int_equal(vn_journal_syncs(j), syncs + 1);
    assert_int_equal(vn_journal_durable_writes(j), durable + 3);
    assert_true(vn_journal_wait_logged(j, marks[0], 0, &err));
    assert_int_equal(vn_journal_syncs(j), syncs + 1);

    /* a duplicate has nothing to wait for */
    guint64 dup = 99;
    r.unique_id = "round-1";
    assert_int_equal(vn_journal_accept(j, &r, NULL, &dup, &err), VN_JOURNAL_DUPLICATE);
    assert_int_equal(dup, 0);

    /* the flush fails: the request is forgotten and taken as new next time */
    vn_journal_set_flush(j, vn_test_failing_flush);
    guint64 mark = 0;
    r.unique_id = "lost-flush";
    assert_int_equal(vn_journal_accept(j, &r, NULL, &mark, &err), VN_JOURNAL_NEW);
    assert_false(vn_journal_wait_logged(j, mark, 1, &err));
    g_clear_error(&err);
    assert_true(vn_journal_forget(j, "lost-flush", &err));
    vn_journal_set_flush(j, NULL);
    assert_int_equal(vn_journal_accept(j, &r, NULL, NULL, &err), VN_JOURNAL_NEW);

    /* a request that started is not forgotten */
    assert_true(vn_journal_set_running(j, "round-0", &err));
    assert_true(vn_journal_forget(j, "round-0", &err));
    r.unique_id = "round-0";
    assert_int_equal(vn_journal_accept(j, &r, NULL, NULL, &err), VN_JOURNAL_DUPLICATE);
}

static void test_actions_and_outbox(void **state)
{
    g_autoptr(VnJournal) j = open_journal();
    g_autoptr(GError) err = NULL;
    gint64 a = vn_journal_action_start(j, "i1", "req-1", "reboot_instance", "u-1", 100, &err);
    /* the same request run again (a replay after a restart) continues its action */
    assert_int_equal(vn_journal_action_start(j, "i1", "req-1", "reboot_instance", "u-1", 105, &err),
                     a);
    g_autoptr(GPtrArray) pending = NULL;

    (void)state;
    assert_true(a > 0);
    pending = vn_journal_actions_unreported(j, 10, &err);
    assert_int_equal(pending->len, 1);
    VnJournalAction *act = g_ptr_array_index(pending, 0);
    assert_int_equal(act->finish, 0);
    /* finished after it was read: the earlier report must not hide the finish */
    VnJournalActionEnd end = { a, "Success", NULL, 105 };
    assert_true(vn_journal_action_finish(j, &end, &err));
    assert_true(vn_journal_actions_mark_reported(j, (const VnJournalAction *const *)&act, 1, &err));
    g_autoptr(GPtrArray) again = vn_journal_actions_unreported(j, 10, &err);
    assert_int_equal(again->len, 1);
    /* two at once, one of them finished since it was read: that one stays unreported */
    gint64 b = vn_journal_action_start(j, "i2", "req-3", "reboot_instance", "u-3", 107, &err);
    g_autoptr(GPtrArray) two = vn_journal_actions_unreported(j, 10, &err);
    assert_int_equal(two->len, 2);
    VnJournalActionEnd end_b = { b, "Success", NULL, 108 };
    assert_true(vn_journal_action_finish(j, &end_b, &err));
    assert_true(vn_journal_actions_mark_reported(j, (const VnJournalAction *const *)two->pdata,
                                                 two->len, &err));
    g_autoptr(GPtrArray) left = vn_journal_actions_unreported(j, 10, &err);
    assert_int_equal(left->len, 1);
    assert_int_equal(((VnJournalAction *)g_ptr_array_index(left, 0))->id, b);
    assert_true(vn_journal_actions_mark_reported(j, (const VnJournalAction *const *)left->pdata,
                                                 left->len, &err));
    g_autoptr(GPtrArray) none = vn_journal_actions_unreported(j, 10, &err);
    assert_int_equal(none->len, 0);
    /* another request: an action of its own */
    assert_true(vn_journal_action_start(j, "i1", "req-2", "reboot_instance", "u-2", 106, &err) !=
                a);

    gint64 n = vn_journal_outbox_add(j, "instance.create.end", "INFO", "{\"a\":1}", &err);
    assert_true(n > 0);
    g_autoptr(GPtrArray) out = vn_journal_outbox_pending(j, &err);
    assert_int_equal(out->len, 1);
    assert_true(vn_journal_outbox_remove(j, &n, 1, &err));
    g_autoptr(GPtrArray) out2 = vn_journal_outbox_pending(j, &err);
    assert_int_equal(out2->len, 0);
    /* several confirmed together go in one commit; the one not confirmed stays */
    gint64 ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = vn_journal_outbox_add(j, "instance.update", "INFO", "{}", &err);
    assert_true(vn_journal_outbox_remove(j, ids, 2, &err));
    g_autoptr(GPtrArray) out3 = vn_journal_outbox_pending(j, &err);
    assert_int_equal(out3->len, 1);
    assert_int_equal(((VnJournalNotification *)g_ptr_array_index(out3, 0))->id, ids[2]);
}

static VnInstanceRecord *spec(const char *uuid)
{
    VnInstanceRecord *r = vn_instance_record_new();

    r->uuid = g_strdup(uuid);
    r->name = g_strdup("vm");
    r->flavor.name = g_strdup("m1.tiny");
    r->flavor.vcpus = 1;
    r->flavor.memory_mb = 128;
    r->image.id = g_strdup("img");
    r->image.url = g_strdup("http://x/y");
    r->image.sha256 = g_strdup("0000000000000000000000000000000000000000000000000000000000000000");
    r->image.disk_format = g_strdup("qcow2");
    return r;
}

static int changes;

static void count_changes(const VnInstanceRecord *rec, gpointer data)
{
    (void)rec;
    (void)data;
    changes++;
}

static void test_store_compare_and_set(void **state)
{
    g_autoptr(VnJournal) j = open_journal();
    g_autoptr(GError) err = NULL;
    g_autoptr(VnInstanceStore) s = vn_instance_store_new(j, "host-a", &err);
    g_autoptr(VnInstanceRecord) sp = spec("11111111-1111-4111-8111-111111111111");
    static const VnVmState active[] = { VN_VM_ACTIVE, VN_VM_LAST };
    static const VnVmState stopped[] = { VN_VM_STOPPED, VN_VM_LAST };

    (void)state;
    vn_instance_store_set_listener(s, count_changes, NULL);
    changes = 0;
    assert_true(vn_instance_store_create(s, sp, "req-1", &err));
    assert_false(vn_instance_store_create(s, sp, "req-2", &err));
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_EXISTS));
    g_clear_error(&err);
    /* a build is the build's: libvirt's events for it are not the sync's */
    assert_true(vn_instance_store_in_task(s, sp->uuid));
    /* building: a power operation is not allowed */
    assert_false(
        vn_instance_store_begin_task(s, sp->uuid, active, VN_TASK_POWERING_OFF, NULL, &err));
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INVALID_STATE));
    g_clear_error(&err);
    assert_true(
        vn_instance_store_next_task(s, sp->uuid, VN_TASK_SCHEDULING, VN_TASK_SPAWNING, &err));
    assert_true(vn_instance_store_end_task(s, sp->uuid, VN_TASK_SPAWNING, VN_VM_ACTIVE,
                                           VN_POWER_RUNNING, &err));
    assert_false(vn_instance_store_in_task(s, sp->uuid));
    /* two operations race: the first claims, the second is refused */
    assert_true(
        vn_instance_store_begin_task(s, sp->uuid, active, VN_TASK_POWERING_OFF, "r3", &err));
    assert_false(vn_instance_store_begin_task(s, sp->uuid, active, VN_TASK_REBOOTING, "r4", &err));
    assert_non_null(strstr(err->message, "busy: task_state powering-off"));
    g_clear_error(&err);
    assert_true(vn_instance_store_in_task(s, sp->uuid));
    /* ending someone else's task is refused */
    assert_false(
        vn_instance_store_end_task(s, sp->uuid, VN_TASK_REBOOTING, VN_VM_ACTIVE, -1, &err));
    g_clear_error(&err);
    assert_true(vn_instance_store_end_task(s, sp->uuid, VN_TASK_POWERING_OFF, VN_VM_STOPPED,
                                           VN_POWER_SHUTDOWN, &err));
    assert_false(vn_instance_store_in_task(s, sp->uuid));
    assert_false(vn_instance_store_begin_task(s, sp->uuid, active, VN_TASK_PAUSING, NULL, &err));
    g_clear_error(&err);
    assert_true(
        vn_instance_store_begin_task(s, sp->uuid, stopped, VN_TASK_POWERING_ON, NULL, &err));
    assert_true(changes >= 6);

    /* an unknown instance */
    assert_false(vn_instance_store_begin_task(s, "22222222-2222-4222-8222-222222222222", active,
                                              VN_TASK_PAUSING, NULL, &err));
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_NOT_FOUND));
    g_clear_error(&err);
    assert_false(vn_instance_store_in_task(s, "22222222-2222-4222-8222-222222222222"));

    /* everything survives a restart */
    g_autoptr(VnInstanceStore) again = vn_instance_store_new(j, "host-a", &err);
    g_autoptr(VnInstanceRecord) r = vn_instance_store_get(again, sp->uuid);
    assert_non_null(r);
    assert_int_equal(r->vm_state, VN_VM_STOPPED);
    assert_int_equal(r->task_state, VN_TASK_POWERING_ON);
    assert_string_equal(r->host, "host-a");
    assert_true(r->generation > 0);
}

static void test_generation_grows(void **state)
{
    g_autoptr(VnJournal) j = open_journal();
    g_autoptr(GError) err = NULL;
    g_autoptr(VnInstanceStore) s = vn_instance_store_new(j, "host-a", &err);
    g_autoptr(VnInstanceRecord) sp = spec("55555555-1111-4111-8111-111111111111");
    gint64 last = 0;

    (void)state;
    assert_true(vn_instance_store_create(s, sp, NULL, &err));
    for (int i = 0; i < 5; i++) {
        g_autoptr(VnInstanceRecord) r = vn_instance_store_get(s, sp->uuid);
        assert_true(r->generation > last);
        last = r->generation;
        vn_instance_store_set_power(s, sp->uuid, i % 2 ? VN_POWER_RUNNING : VN_POWER_PAUSED, -1,
                                    &err);
    }
}

static void test_uid_allocation_unique(void **state)
{
    g_autoptr(VnJournal) j = open_journal();
    g_autoptr(GError) err = NULL;
    g_autoptr(VnInstanceStore) s = vn_instance_store_new(j, "h", &err);
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash, g_direct_equal);

    (void)state;
    for (int i = 0; i < 5; i++) {
        g_autofree char *u = g_strdup_printf("33333333-3333-4333-8333-33333333333%d", i);
        g_autoptr(VnInstanceRecord) sp = spec(u);
        assert_true(vn_instance_store_create(s, sp, NULL, &err));
        int uid = vn_instance_store_allocate_uid(s, u, 30000, 30003, &err);
        if (i < 4) {
            assert_true(uid >= 30000 && uid <= 30003);
            assert_false(g_hash_table_contains(seen, GINT_TO_POINTER(uid)));
            g_hash_table_add(seen, GINT_TO_POINTER(uid));
            /* asking again gives the same uid */
            assert_int_equal(vn_instance_store_allocate_uid(s, u, 30000, 30003, &err), uid);
        } else {
            assert_int_equal(uid, 0); /* range exhausted */
            assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES));
            g_clear_error(&err);
        }
    }
    /* a deleted instance's uid is free again */
    assert_true(vn_instance_store_mark_deleted(s, "33333333-3333-4333-8333-333333333330", &err));
    assert_int_equal(vn_instance_store_allocate_uid(s, "33333333-3333-4333-8333-333333333334",
                                                    30000, 30003, &err),
                     30000);
}

static gint slow_flushes;

/* A disk that takes 20 ms per flush, and counts them. */
static int slow_flush(int fd)
{
    g_atomic_int_inc(&slow_flushes);
    g_usleep(20 * 1000);
    return fdatasync(fd);
}

typedef struct {
    VnJournal *j;
    int thread;
} Writer;

#define WRITERS 8
#define WRITES  5

static gpointer durable_writer(gpointer data)
{
    Writer *w = data;

    for (int i = 0; i < WRITES; i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *uuid = g_strdup_printf("writer-%d-%d", w->thread, i);
        if (!vn_journal_save_instance(w->j, uuid, "{}", NULL, &err))
            g_error("%s", err->message);
    }
    return NULL;
}

/* A durable write returns after a flush of the log that started after its commit; a
 * relaxed one flushes nothing; writers committing while another's flush runs share the
 * next one (group commit), and every write is there after a reopen. */
static void test_group_commit(void **state)
{
    g_autoptr(GError) err = NULL;
    VnJournal *j = open_journal();
    GThread *t[WRITERS];
    Writer w[WRITERS];

    (void)state;
    vn_journal_set_flush(j, slow_flush);
    guint64 before = vn_journal_syncs(j);
    guint64 durable = vn_journal_durable_writes(j);
    assert_true(vn_journal_set_running(j, "nothing", &err));
    assert_int_equal(vn_journal_syncs(j), before);
    assert_int_equal(vn_journal_durable_writes(j), durable);
    assert_true(vn_journal_save_instance(j, "one", "{}", NULL, &err));
    assert_int_equal(vn_journal_syncs(j), before + 1);
    assert_int_equal(vn_journal_durable_writes(j), durable + 1);
    assert_int_equal(g_atomic_int_get(&slow_flushes), 1);

    before = vn_journal_syncs(j);
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (Writer){ j, i };
        t[i] = g_thread_new("writer", durable_writer, &w[i]);
    }
    for (int i = 0; i < WRITERS; i++)
        g_thread_join(t[i]);
    guint64 flushes = vn_journal_syncs(j) - before;
    /* 40 durable writes: each writer's next write waits for at most two flushes, and the
     * others' commits ride on them */
    assert_true(flushes >= WRITES);
    assert_true(flushes <= 2 * WRITES + 2);
    assert_int_equal(vn_journal_durable_writes(j), durable + 1 + WRITERS * WRITES);
    vn_journal_free(j);

    j = open_journal();
    g_autoptr(GPtrArray) all = vn_journal_load_instances(j, &err);
    assert_non_null(all);
    assert_int_equal(all->len, 1 + WRITERS * WRITES);
    vn_journal_free(j);
}

/* A flush that waits until the test opens its gate (and says when it is waiting). */
static GMutex gate_lock;
static GCond gate_cond;
static gboolean gate_open;
static int gate_waiting;

static int gated_flush(int fd)
{
    g_mutex_lock(&gate_lock);
    gate_waiting++;
    g_cond_broadcast(&gate_cond);
    while (!gate_open)
        g_cond_wait(&gate_cond, &gate_lock);
    g_mutex_unlock(&gate_lock);
    return fdatasync(fd);
}

/* Waits up to 5 s until @done (under gate_lock) is set. */
static gboolean wait_flag(gboolean *done)
{
    gint64 end = g_get_monotonic_time() + 5 * G_TIME_SPAN_SECOND;
    gboolean ok;

    g_mutex_lock(&gate_lock);
    while (!*done && g_cond_wait_until(&gate_cond, &gate_lock, end))
        ;
    ok = *done;
    g_mutex_unlock(&gate_lock);
    return ok;
}

typedef struct {
    VnInstanceStore *s;
    const char *uuid;
    int uid;
    gboolean done; /* under gate_lock */
    VnTaskState seen_task;
    int seen_uid;
} StoreCall;

static void call_done(StoreCall *c)
{
    g_mutex_lock(&gate_lock);
    c->done = TRUE;
    g_cond_broadcast(&gate_cond);
    g_mutex_unlock(&gate_lock);
}

static gpointer allocate_uid_thread(gpointer data)
{
    StoreCall *c = data;
    g_autoptr(GError) err = NULL;

    c->uid = vn_instance_store_allocate_uid(c->s, c->uuid, 30000, 30001, &err);
    call_done(c);
    return NULL;
}

static gpointer read_thread(gpointer data)
{
    StoreCall *c = data;
    g_autoptr(VnInstanceRecord) r = vn_instance_store_get(c->s, c->uuid);
    g_autoptr(GPtrArray) all = vn_instance_store_list(c->s, FALSE);

    c->seen_task = r->task_state;
    c->seen_uid = r->guest_uid;
    g_assert_cmpuint(all->len, ==, 2);
    call_done(c);
    return NULL;
}

/* The store does not hold its lock while the journal's log is flushed: while one change
 * waits for its flush, the records can be read (and show the change only once it is
 * durable), and another instance's change is written to the log and shares the next
 * flush; a uid given to a change still waiting for its flush is not given again. */
static void test_store_flush_outside_lock(void **state)
{
    g_autoptr(VnJournal) j = open_journal();
    g_autoptr(GError) err = NULL;
    g_autoptr(VnInstanceStore) s = vn_instance_store_new(j, "h", &err);
    g_autoptr(VnInstanceRecord) x = spec("44444444-4444-4444-8444-444444444440");
    g_autoptr(VnInstanceRecord) y = spec("44444444-4444-4444-8444-444444444441");
    StoreCall a = { .s = s, .uuid = x->uuid }, b = { .s = s, .uuid = y->uuid };
    StoreCall rd = { .s = s, .uuid = x->uuid };

    (void)state;
    assert_true(vn_instance_store_create(s, x, NULL, &err));
    assert_true(vn_instance_store_create(s, y, NULL, &err));
    gate_open = FALSE;
    gate_waiting = 0;
    vn_journal_set_flush(j, gated_flush);
    guint64 before = vn_journal_syncs(j);

    /* x's uid is in the log, its flush held at the gate */
    GThread *ta = g_thread_new("a", allocate_uid_thread, &a);
    g_mutex_lock(&gate_lock);
    while (gate_waiting < 1)
        g_cond_wait(&gate_cond, &gate_lock);
    g_mutex_unlock(&gate_lock);

    /* readers are not held up, and do not see the change before it is on disk */
    GThread *tr = g_thread_new("read", read_thread, &rd);
    assert_true(wait_flag(&rd.done));
    g_thread_join(tr);
    assert_int_equal(rd.seen_task, VN_TASK_SCHEDULING);
    assert_int_equal(rd.seen_uid, 0);

    /* y's change goes to the log meanwhile and waits for the next flush */
    GThread *tb = g_thread_new("b", allocate_uid_thread, &b);
    g_usleep(100 * 1000);
    g_mutex_lock(&gate_lock);
    assert_false(b.done); /* it needs a flush that starts after its commit */
    g_mutex_unlock(&gate_lock);

    g_mutex_lock(&gate_lock);
    gate_open = TRUE;
    g_cond_broadcast(&gate_cond);
    g_mutex_unlock(&gate_lock);
    g_thread_join(ta);
    g_thread_join(tb);
    vn_journal_set_flush(j, NULL);

    /* two uids, distinct, both durable; the two changes took at most two flushes */
    assert_true(a.uid >= 30000 && a.uid <= 30001);
    assert_true(b.uid >= 30000 && b.uid <= 30001);
    assert_int_not_equal(a.uid, b.uid);
    assert_true(vn_journal_syncs(j) - before <= 2);
    g_autoptr(VnInstanceRecord) rx = vn_instance_store_get(s, x->uuid);
    assert_int_equal(rx->guest_uid, a.uid);
    g_autoptr(VnInstanceStore) again = vn_instance_store_new(j, "h", &err);
    g_autoptr(VnInstanceRecord) ry = vn_instance_store_get(again, y->uuid);
    assert_int_equal(ry->guest_uid, b.uid);
}

static gpointer build_step_thread(gpointer data)
{
    StoreCall *c = data;
    g_autoptr(GError) err = NULL;

    c->uid = vn_instance_store_build_step(c->s, c->uuid, VN_TASK_SCHEDULING,
                                          VN_TASK_BLOCK_DEVICE_MAPPING, &err);
    call_done(c);
    return NULL;
}

static gpointer next_task_thread(gpointer data)
{
    StoreCall *c = data;
    g_autoptr(GError) err = NULL;

    c->uid = vn_instance_store_next_task(c->s, c->uuid, VN_TASK_BLOCK_DEVICE_MAPPING,
                                         VN_TASK_NETWORKING, &err);
    call_done(c);
    return NULL;
}

/* A build's step is seen at once, without waiting for a flush and without a write: the
 * journal keeps the record as it was made durable, until the next durable change writes
 * the whole record; a task change that must survive a crash still waits. */
static void test_store_build_step_in_memory(void **state)
{
    g_autoptr(VnJournal) j = open_journal();
    g_autoptr(GError) err = NULL;
    g_autoptr(VnInstanceStore) s = vn_instance_store_new(j, "h", &err);
    g_autoptr(VnInstanceRecord) x = spec("77777777-7777-4777-8777-777777777770");
    StoreCall step = { .s = s, .uuid = x->uuid }, next = { .s = s, .uuid = x->uuid };

    (void)state;
    assert_true(vn_instance_store_create(s, x, NULL, &err));
    gate_open = FALSE;
    gate_waiting = 0;
    vn_journal_set_flush(j, gated_flush);
    guint64 durable = vn_journal_durable_writes(j);

    GThread *t = g_thread_new("step", build_step_thread, &step);
    assert_true(wait_flag(&step.done)); /* the flush is held at the gate */
    g_thread_join(t);
    assert_true(step.uid);
    assert_int_equal(vn_journal_durable_writes(j), durable);
    g_autoptr(VnInstanceRecord) r = vn_instance_store_get(s, x->uuid);
    assert_int_equal(r->task_state, VN_TASK_BLOCK_DEVICE_MAPPING);
    /* not written: a store opened from the journal (a restart) reads the build as made */
    g_autoptr(VnInstanceStore) again = vn_instance_store_new(j, "h", &err);
    g_autoptr(VnInstanceRecord) ra = vn_instance_store_get(again, x->uuid);
    assert_int_equal(ra->vm_state, VN_VM_BUILDING);
    assert_int_equal(ra->task_state, VN_TASK_SCHEDULING);
    assert_true(ra->generation < r->generation);

    /* a durable change waits for the flush */
    t = g_thread_new("next", next_task_thread, &next);
    g_usleep(100 * 1000);
    g_mutex_lock(&gate_lock);
    assert_false(next.done);
    gate_open = TRUE;
    g_cond_broadcast(&gate_cond);
    g_mutex_unlock(&gate_lock);
    g_thread_join(t);
    vn_journal_set_flush(j, NULL);
    assert_true(next.uid);
    assert_int_equal(vn_journal_durable_writes(j), durable + 1);
    /* the durable change wrote the whole record, the step's generation left behind */
    g_autoptr(VnInstanceRecord) rn = vn_instance_store_get(s, x->uuid);
    g_autoptr(VnInstanceStore) third = vn_instance_store_new(j, "h", &err);
    g_autoptr(VnInstanceRecord) rt = vn_instance_store_get(third, x->uuid);
    assert_int_equal(rt->task_state, VN_TASK_NETWORKING);
    assert_true(rt->generation > r->generation);
    assert_int_equal(rt->generation, rn->generation);
}

/* Whose label is it: another running instance's, matched label by label (not by prefix),
 * never the asking instance's own nor a stopped one's. */
static void test_store_label_owner(void **state)
{
    g_autoptr(VnJournal) j = open_journal();
    g_autoptr(GError) err = NULL;
    g_autoptr(VnInstanceStore) s = vn_instance_store_new(j, "h", &err);
    g_autoptr(VnInstanceRecord) x = spec("66666666-6666-4666-8666-666666666660");
    g_autoptr(VnInstanceRecord) y = spec("66666666-6666-4666-8666-666666666661");
    static const VnVmState active[] = { VN_VM_ACTIVE, VN_VM_LAST };

    (void)state;
    assert_true(vn_instance_store_create(s, x, NULL, &err));
    assert_true(vn_instance_store_create(s, y, NULL, &err));
    assert_true(vn_instance_store_launched(s, x->uuid, VN_TASK_SCHEDULING,
                                           "dac:+30012:+30012;selinux:c1,c2", &err));
    char *o = vn_instance_store_label_owner(s, y->uuid, "dac:+30012:+30012");
    assert_string_equal(o, x->uuid);
    g_free(o);
    o = vn_instance_store_label_owner(s, y->uuid, "selinux:c1,c2");
    assert_string_equal(o, x->uuid);
    g_free(o);
    assert_null(vn_instance_store_label_owner(s, y->uuid, "dac:+3001:+3001"));
    assert_null(vn_instance_store_label_owner(s, y->uuid, "dac:+30012"));
    assert_null(vn_instance_store_label_owner(s, y->uuid, "selinux:c1"));
    assert_null(vn_instance_store_label_owner(s, x->uuid, "dac:+30012:+30012"));
    /* a stopped guest holds no label */
    assert_true(vn_instance_store_begin_task(s, x->uuid, active, VN_TASK_POWERING_OFF, NULL, &err));
    assert_true(vn_instance_store_end_task(s, x->uuid, VN_TASK_POWERING_OFF, VN_VM_STOPPED,
                                           VN_POWER_SHUTDOWN, &err));
    assert_null(vn_instance_store_label_owner(s, y->uuid, "dac:+30012:+30012"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_requests_dedup_across_reopen, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_accept_logged, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_actions_and_outbox, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_store_compare_and_set, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_generation_grows, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_uid_allocation_unique, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, vn_test_dir_setup, vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_store_flush_outside_lock, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_store_build_step_in_memory, vn_test_dir_setup,
                                        vn_test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_store_label_owner, vn_test_dir_setup,
                                        vn_test_dir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
