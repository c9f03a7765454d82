/* Unit tests of the agent's flows (dispatcher, operations, rollback, dedup, reconcile)
 * against libvirt's test driver and an in-process image server.  Replies are caught by
 * the agent's reply seam instead of going to RabbitMQ. */
#include "tests/unit/testutil.h"

#include <string.h>

#include "agent/agent.h"
#include "agent/dispatcher.h"
#include "agent/ops/guest.h"
#include "agent/reconcile.h"
#include "agent/virt/domain.h"
#include "agent/virt/virt.h"
#include "api/error.h"
#include "api/json.h"
#include "scheduler-client/amqp/envelope.h"

typedef struct {
    char *msg_id;
    json_object *result;
    char *failure_class;
    char *failure_message;
} Reply;

typedef struct {
    char *dir;
    VnTestHttp *http;
    char *sha;
    VnAgent *agent;
    GMutex lock;
    GCond cond;
    GPtrArray *replies;
} Fixture;

static void reply_free(Reply *r)
{
    g_free(r->msg_id);
    if (r->result)
        json_object_put(r->result);
    g_free(r->failure_class);
    g_free(r->failure_message);
    g_free(r);
}

static void sink(gpointer data, const char *reply_q, const char *msg_id, json_object *result,
                 const VnRpcFailure *failure)
{
    Fixture *f = data;
    Reply *r = g_new0(Reply, 1);

    (void)reply_q;
    r->msg_id = g_strdup(msg_id);
    r->result = result ? json_object_get(result) : NULL;
    if (failure) {
        r->failure_class = g_strdup(failure->class_name);
        r->failure_message = g_strdup(failure->message);
    }
    g_mutex_lock(&f->lock);
    g_ptr_array_add(f->replies, r);
    g_cond_broadcast(&f->cond);
    g_mutex_unlock(&f->lock);
}

static VnAgent *agent_new(Fixture *f, int max_queued)
{
    g_autofree char *text = g_strdup_printf(
        "[DEFAULT]\nhost = host-u\nstate_path = %s/state\ninstances_path = %s/instances\n"
        "sync_power_state_interval = 0\nshutdown_timeout = 3\nmax_queued_per_instance = %d\n"
        "[libvirt]\nuri = test:///default\nvirt_type = qemu\nrequire_confinement = false\n"
        "wait_soft_reboot_seconds = 3\n[database]\nconnection =\n[api]\nlisten =\n",
        f->dir, f->dir, max_queued);
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) cfg = vn_config_load_data(text, strlen(text), "test", &err);
    VnAgent *a;

    assert_non_null(cfg);
    a = vn_agent_new(cfg, NULL);
    a->reply = sink;
    a->reply_data = f;
    if (!vn_agent_open_local(a, &err))
        fail_msg("%s", err->message);
    assert_true(vn_tracker_refresh(a->tracker, a->virt, &err));
    return a;
}

static int setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    g_autofree char *img = NULL;
    g_autofree char *cmd = NULL;

    f->dir = vn_test_tmpdir();
    img = g_build_filename(f->dir, "guest.qcow2", NULL);
    cmd = g_strdup_printf("qemu-img create -q -f qcow2 %s 64M", img);
    assert_true(vn_test_run(cmd));
    f->sha = vn_test_sha256_file(img);
    f->http = vn_test_http_start(f->dir, 0);
    g_mutex_init(&f->lock);
    g_cond_init(&f->cond);
    f->replies = g_ptr_array_new_with_free_func((GDestroyNotify)reply_free);
    f->agent = agent_new(f, 32);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;

    vn_agent_free(f->agent);
    vn_test_http_stop(f->http);
    vn_test_rmtree(f->dir);
    g_ptr_array_unref(f->replies);
    g_free(f->dir);
    g_free(f->sha);
    g_free(f);
    return 0;
}

static VnRpcMessage *message(const char *method, const char *args, gboolean call)
{
    VnRpcMessage *m = vn_rpc_message_new();

    m->method = g_strdup(method);
    m->args = json_tokener_parse(args);
    assert_non_null(m->args);
    m->version = g_strdup("1.1");
    m->unique_id = vn_envelope_new_id();
    m->request_id = g_strdup_printf("req-%s", m->unique_id);
    if (call) {
        m->msg_id = vn_envelope_new_id();
        m->reply_q = g_strdup("reply_test");
    }
    return m;
}

static gboolean has_reply(Fixture *f, const char *msg_id)
{
    gboolean found = FALSE;

    g_mutex_lock(&f->lock);
    for (guint i = 0; i < f->replies->len && !found; i++)
        found = strcmp(((Reply *)g_ptr_array_index(f->replies, i))->msg_id, msg_id) == 0;
    g_mutex_unlock(&f->lock);
    return found;
}

static Reply *wait_reply(Fixture *f, const char *msg_id)
{
    gint64 end = g_get_monotonic_time() + 60 * G_TIME_SPAN_SECOND;
    Reply *found = NULL;

    g_mutex_lock(&f->lock);
    while (!found) {
        for (guint i = 0; i < f->replies->len && !found; i++) {
            Reply *r = g_ptr_array_index(f->replies, i);
            if (strcmp(r->msg_id, msg_id) == 0) {
                found = g_ptr_array_steal_index(f->replies, i);
            }
        }
        if (!found && !g_cond_wait_until(&f->cond, &f->lock, end))
            break;
    }
    g_mutex_unlock(&f->lock);
    if (!found)
        fail_msg("no reply to %s", msg_id);
    return found;
}

/* Hands @m to the dispatcher as the AMQP link does: one request read alone, its round
 * ended before its ack. */
static VnRpcVerdict submit(Fixture *f, VnRpcMessage *m)
{
    VnRpcVerdict v = vn_dispatcher_submit(f->agent->dispatcher, m);

    assert_true(vn_dispatcher_end_round(f->agent->dispatcher));
    return v;
}

/* Calls @method; returns its reply (caller frees). */
static Reply *call(Fixture *f, const char *method, const char *args, VnRpcVerdict *verdict)
{
    VnRpcMessage *m = message(method, args, TRUE);
    g_autofree char *id = g_strdup(m->msg_id);
    VnRpcVerdict v = submit(f, m);

    if (verdict)
        *verdict = v;
    return wait_reply(f, id);
}

static char *uuid_args(const char *uuid, const char *extra)
{
    return g_strdup_printf("{\"instance_uuid\": \"%s\"%s%s}", uuid, extra ? ", " : "",
                           extra ? extra : "");
}

static char *build_args(Fixture *f, const char *uuid, const char *sha, int vcpus)
{
    return g_strdup_printf(
        "{\"instance\": {\"uuid\": \"%s\", \"name\": \"vm\", \"project_id\": \"p\","
        " \"flavor\": {\"name\": \"t\", \"vcpus\": %d, \"memory_mb\": 64, \"root_gb\": 1},"
        " \"image\": {\"id\": \"img-%s\", \"url\": \"http://127.0.0.1:%d/guest.qcow2\","
        " \"sha256\": \"%s\", \"disk_format\": \"qcow2\"}, \"metadata\": {\"vn.mode\": \"idle\"}},"
        " \"networks\": [], \"block_device_mapping\": []}",
        uuid, vcpus, sha, vn_test_http_port(f->http), sha);
}

static const char *state_of(Reply *r)
{
    assert_null(r->failure_class);
    return json_object_get_string(json_object_object_get(r->result, "vm_state"));
}

static gboolean domain_exists(Fixture *f, const char *uuid)
{
    gboolean e = FALSE;

    assert_true(vn_domain_exists(f->agent->virt, uuid, &e, NULL));
    return e;
}

static gboolean dir_exists(Fixture *f, const char *uuid)
{
    g_autofree char *d = vn_agent_instance_dir(f->agent, uuid);

    return g_file_test(d, G_FILE_TEST_EXISTS);
}

static void test_build_power_delete(void **state)
{
    Fixture *f = *state;
    const char *u = "aaaaaaaa-0000-4000-8000-000000000001";
    g_autofree char *b = build_args(f, u, f->sha, 1);
    g_autofree char *a = uuid_args(u, NULL);
    Reply *r;
    VnPowerState p;

    r = call(f, "build_and_run_instance", b, NULL);
    assert_string_equal(state_of(r), "active");
    assert_int_equal(json_object_get_int(json_object_object_get(r->result, "power_state")), 1);
    reply_free(r);
    assert_true(domain_exists(f, u));
    g_autofree char *disk = vn_guest_file(f->agent, u, VN_GUEST_ROOT_DISK);
    assert_true(g_file_test(disk, G_FILE_TEST_IS_REGULAR));

    static const struct {
        const char *method;
        const char *extra;
        const char *vm;
        VnPowerState power;
    } steps[] = {
        { "stop_instance", NULL, "stopped", VN_POWER_SHUTDOWN },
        { "start_instance", NULL, "active", VN_POWER_RUNNING },
        { "pause_instance", NULL, "paused", VN_POWER_PAUSED },
        { "unpause_instance", NULL, "active", VN_POWER_RUNNING },
        { "suspend_instance", NULL, "suspended", VN_POWER_SHUTDOWN },
        { "resume_instance", NULL, "active", VN_POWER_RUNNING },
        { "reboot_instance", "\"reboot_type\": \"SOFT\"", "active", VN_POWER_RUNNING },
        { "reboot_instance", "\"reboot_type\": \"HARD\"", "active", VN_POWER_RUNNING },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(steps); i++) {
        g_autofree char *args = uuid_args(u, steps[i].extra);
        r = call(f, steps[i].method, args, NULL);
        if (r->failure_class)
            fail_msg("%s: %s", steps[i].method, r->failure_message);
        assert_string_equal(state_of(r), steps[i].vm);
        reply_free(r);
        assert_true(vn_domain_power_state(f->agent->virt, u, &p, NULL));
        assert_int_equal(p, steps[i].power);
    }
    /* an operation the state does not allow is refused and changes nothing */
    r = call(f, "unpause_instance", a, NULL);
    assert_string_equal(r->failure_class, "InstanceInvalidState");
    reply_free(r);

    r = call(f, "get_instance", a, NULL);
    assert_string_equal(state_of(r), "active");
    reply_free(r);
    r = call(f, "list_instances", "{}", NULL);
    assert_int_equal(json_object_array_length(r->result), 1);
    reply_free(r);

    r = call(f, "terminate_instance", a, NULL);
    assert_string_equal(state_of(r), "deleted");
    reply_free(r);
    assert_false(domain_exists(f, u));
    assert_false(dir_exists(f, u));
    /* deleting again succeeds */
    r = call(f, "terminate_instance", a, NULL);
    assert_null(r->failure_class);
    reply_free(r);
}

static void test_bad_requests_rejected(void **state)
{
    Fixture *f = *state;
    VnRpcVerdict v;
    Reply *r;

    r = call(f, "frobnicate", "{}", &v);
    assert_int_equal(v, VN_RPC_REJECT);
    assert_string_equal(r->failure_class, "NoSuchMethod");
    reply_free(r);
    r = call(f, "stop_instance", "{\"instance_uuid\": 5}", &v);
    assert_int_equal(v, VN_RPC_REJECT);
    assert_string_equal(r->failure_class, "InvalidInput");
    assert_non_null(strstr(r->failure_message, "instance_uuid: expected a string"));
    reply_free(r);
    r = call(f, "get_instance", "{\"instance_uuid\": \"aaaaaaaa-0000-4000-8000-00000000dead\"}",
             &v);
    assert_int_equal(v, VN_RPC_ACK);
    assert_string_equal(r->failure_class, "InstanceNotFound");
    reply_free(r);
    r = call(f, "ping", "{\"arg\": [1, \"x\"]}", &v);
    assert_string_equal(json_object_get_string(json_object_object_get(r->result, "service")),
                        "virtnode");
    assert_string_equal(json_object_get_string(json_object_object_get(r->result, "host")),
                        "host-u");
    reply_free(r);
}

static void test_failed_builds_leave_nothing(void **state)
{
    Fixture *f = *state;
    const char *u1 = "aaaaaaaa-0000-4000-8000-000000000002";
    const char *u2 = "aaaaaaaa-0000-4000-8000-000000000003";
    g_autofree char *bad =
        build_args(f, u1, "0000000000000000000000000000000000000000000000000000000000000000", 1);
    g_autofree char *big = build_args(f, u2, f->sha, 1000);
    Reply *r;

    r = call(f, "build_and_run_instance", bad, NULL);
    assert_string_equal(r->failure_class, "BuildAbortException");
    assert_non_null(strstr(r->failure_message, "rolled back"));
    assert_non_null(strstr(r->failure_message, "has sha256"));
    reply_free(r);
    assert_false(domain_exists(f, u1));
    assert_false(dir_exists(f, u1));
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(f->agent->store, u1);
    assert_int_equal(rec->vm_state, VN_VM_ERROR);
    assert_string_equal(rec->fault_class, "ImageChecksumMismatch");

    r = call(f, "build_and_run_instance", big, NULL);
    assert_string_equal(r->failure_class, "InsufficientResources");
    reply_free(r);
    assert_false(domain_exists(f, u2));
    assert_false(dir_exists(f, u2));
    /* the failed builds hold no resources */
    g_autoptr(VnCapacity) c = vn_tracker_capacity(f->agent->tracker);
    assert_int_equal(c->vcpus_used, 0);
}

static void test_duplicates_not_applied_twice(void **state)
{
    Fixture *f = *state;
    const char *u = "aaaaaaaa-0000-4000-8000-000000000004";
    g_autofree char *b = build_args(f, u, f->sha, 1);
    VnRpcMessage *m1 = message("build_and_run_instance", b, TRUE);
    VnRpcMessage *m2 = message("build_and_run_instance", b, TRUE);
    g_autofree char *id1 = g_strdup(m1->msg_id);
    g_autofree char *id2 = g_strdup(m2->msg_id);
    Reply *r1, *r2;

    /* a redelivery: the same _unique_id, a new reply address */
    g_free(m2->unique_id);
    m2->unique_id = g_strdup(m1->unique_id);
    assert_int_equal(submit(f, m1), VN_RPC_ACK);
    r1 = wait_reply(f, id1);
    assert_string_equal(state_of(r1), "active");
    assert_int_equal(submit(f, m2), VN_RPC_ACK);
    r2 = wait_reply(f, id2);
    /* the stored reply, not a second build (which would fail with InstanceExists) */
    assert_null(r2->failure_class);
    assert_string_equal(state_of(r2), "active");
    assert_int_equal(g_atomic_int_get(&f->agent->counters.duplicates), 1);
    assert_int_equal(g_atomic_int_get(&f->agent->counters.builds_ok), 1);
    reply_free(r1);
    reply_free(r2);
    g_autofree char *a = uuid_args(u, NULL);
    reply_free(call(f, "terminate_instance", a, NULL));
}

/* Requests read together wait for one flush of the journal's log before they run; when
 * that flush fails none runs (nor the query read after them), the journal forgets them,
 * and the broker's next delivery of one is taken as new. */
static void test_round_made_durable_together(void **state)
{
    Fixture *f = *state;
    VnDispatcher *d = f->agent->dispatcher;
    const char *u = "aaaaaaaa-0000-4000-8000-000000000007";
    g_autofree char *b = build_args(f, u, f->sha, 1);
    g_autofree char *a = uuid_args(u, NULL);
    VnRpcMessage *build = message("build_and_run_instance", b, TRUE);
    VnRpcMessage *query = message("get_instance", a, TRUE);
    VnRpcMessage *again = message("build_and_run_instance", b, TRUE);
    g_autofree char *bid = g_strdup(build->msg_id);
    g_autofree char *qid = g_strdup(query->msg_id);
    g_autofree char *aid = g_strdup(again->msg_id);
    Reply *r;

    g_free(again->unique_id);
    again->unique_id = g_strdup(build->unique_id);

    /* the flush fails: nothing runs, nothing is left */
    vn_journal_set_flush(f->agent->journal, vn_test_failing_flush);
    guint64 syncs = vn_journal_syncs(f->agent->journal);
    assert_int_equal(vn_dispatcher_submit(d, build), VN_RPC_ACK);
    assert_int_equal(vn_dispatcher_submit(d, query), VN_RPC_ACK);
    assert_int_equal(vn_journal_syncs(f->agent->journal), syncs);
    assert_false(vn_dispatcher_end_round(d));
    vn_journal_set_flush(f->agent->journal, NULL);
    g_usleep(200 * 1000);
    assert_false(has_reply(f, bid));
    assert_false(has_reply(f, qid));
    assert_null(vn_instance_store_get(f->agent->store, u));
    assert_false(domain_exists(f, u));

    /* delivered again: taken as new, and built */
    assert_int_equal(vn_dispatcher_submit(d, again), VN_RPC_ACK);
    assert_true(vn_dispatcher_end_round(d));
    r = wait_reply(f, aid);
    assert_null(r->failure_class);
    assert_string_equal(state_of(r), "active");
    reply_free(r);
    assert_int_equal(g_atomic_int_get(&f->agent->counters.duplicates), 0);
    reply_free(call(f, "terminate_instance", a, NULL));
}

static void test_busy_queue_and_cancel(void **state)
{
    Fixture *f = *state;
    const char *u = "aaaaaaaa-0000-4000-8000-000000000005";
    g_autofree char *a = uuid_args(u, NULL);
    VnTestHttp *slow = vn_test_http_start(f->dir, 3000);
    g_autofree char *b = g_strdup_printf(
        "{\"instance\": {\"uuid\": \"%s\", \"name\": \"slow\","
        " \"flavor\": {\"vcpus\": 1, \"memory_mb\": 64, \"root_gb\": 1},"
        " \"image\": {\"id\": \"slow-img\", \"url\": \"http://127.0.0.1:%d/guest.qcow2\","
        " \"sha256\": \"%s\", \"disk_format\": \"qcow2\"}}}",
        u, vn_test_http_port(slow), f->sha);
    VnRpcMessage *build = message("build_and_run_instance", b, TRUE);
    g_autofree char *bid = g_strdup(build->msg_id);
    Reply *r;

    vn_agent_free(f->agent);
    f->agent = agent_new(f, 1);
    assert_int_equal(submit(f, build), VN_RPC_ACK);
    g_usleep(300 * 1000);
    /* one waits behind the build; the next is refused */
    VnRpcMessage *stop = message("stop_instance", a, TRUE);
    g_autofree char *sid = g_strdup(stop->msg_id);
    submit(f, stop);
    r = call(f, "pause_instance", a, NULL);
    assert_string_equal(r->failure_class, "TooManyOperations");
    reply_free(r);
    /* the stop waited for the build, which finished: the stop works */
    r = wait_reply(f, bid);
    assert_null(r->failure_class);
    reply_free(r);
    r = wait_reply(f, sid);
    assert_null(r->failure_class);
    reply_free(r);
    reply_free(call(f, "terminate_instance", a, NULL));

    /* a delete cancels a build that is still downloading, and nothing is left */
    const char *u2 = "aaaaaaaa-0000-4000-8000-000000000006";
    g_autofree char *a2 = uuid_args(u2, NULL);
    g_autofree char *b2 = g_strdup_printf(
        "{\"instance\": {\"uuid\": \"%s\", \"name\": \"slow2\","
        " \"flavor\": {\"vcpus\": 1, \"memory_mb\": 64, \"root_gb\": 1},"
        " \"image\": {\"id\": \"slow-img-2\", \"url\": \"http://127.0.0.1:%d/guest.qcow2\","
        " \"sha256\": \"%s\", \"disk_format\": \"qcow2\"}}}",
        u2, vn_test_http_port(slow), f->sha);
    VnRpcMessage *build2 = message("build_and_run_instance", b2, TRUE);
    g_autofree char *bid2 = g_strdup(build2->msg_id);
    submit(f, build2);
    g_usleep(500 * 1000);
    r = call(f, "terminate_instance", a2, NULL);
    assert_null(r->failure_class);
    reply_free(r);
    r = wait_reply(f, bid2);
    /* the build ends cancelled by the delete, not by some other failure */
    assert_string_equal(r->failure_class, "BuildAbortException");
    assert_non_null(strstr(r->failure_message, "cancelled"));
    reply_free(r);
    assert_false(domain_exists(f, u2));
    assert_false(dir_exists(f, u2));
    vn_test_http_stop(slow);
}

static void test_reconcile(void **state)
{
    Fixture *f = *state;
    const char *u = "aaaaaaaa-0000-4000-8000-000000000007";
    g_autofree char *b = build_args(f, u, f->sha, 1);
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) none = g_ptr_array_new();
    Reply *r;

    r = call(f, "build_and_run_instance", b, NULL);
    assert_string_equal(state_of(r), "active");
    reply_free(r);
    /* the guest shuts itself down: the hypervisor's view wins */
    assert_true(vn_domain_destroy(f->agent->virt, u, &err));
    vn_reconcile_sync_one(f->agent, u);
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(f->agent->store, u);
    assert_int_equal(rec->vm_state, VN_VM_STOPPED);
    assert_int_equal(rec->power_state, VN_POWER_SHUTDOWN);
    /* the domain disappears: the instance is in error, not silently active */
    assert_true(vn_domain_undefine(f->agent->virt, u, &err));
    vn_reconcile_sync_one(f->agent, u);
    g_autoptr(VnInstanceRecord) rec2 = vn_instance_store_get(f->agent->store, u);
    assert_int_equal(rec2->vm_state, VN_VM_ERROR);
    /* a domain of ours that no record knows is removed at start-up */
    g_autofree char *a = uuid_args(u, NULL);
    reply_free(call(f, "terminate_instance", a, NULL));
    const char *orphan = "aaaaaaaa-0000-4000-8000-000000000008";
    g_autofree char *b2 = build_args(f, orphan, f->sha, 1);
    r = call(f, "build_and_run_instance", b2, NULL);
    reply_free(r);
    assert_true(vn_instance_store_forget(f->agent->store, orphan, &err));
    assert_true(domain_exists(f, orphan));
    assert_true(vn_reconcile_startup(f->agent, none, &err));
    assert_false(domain_exists(f, orphan));
    /* the test driver's own domain ("test") is not ours: left alone */
    g_auto(GStrv) left = vn_domain_list(f->agent->virt, &err);
    g_autoptr(virConnect) conn = vn_virt_conn_get(f->agent->virt, &err);
    g_autoptr(virDomain) theirs = virDomainLookupByName(conn, "test");
    assert_non_null(theirs);
    char tu[VIR_UUID_STRING_BUFLEN];
    assert_int_equal(virDomainGetUUIDString(theirs, tu), 0);
    assert_true(g_strv_contains((const char *const *)left, tu));
}

/* A sync decided from a read loses to an operation that took the instance since: the
 * stale power-off and state change are refused, and the operation's task stands. */
static void test_sync_loses_to_an_operation(void **state)
{
    Fixture *f = *state;
    const char *u = "aaaaaaaa-0000-4000-8000-000000000009";
    g_autofree char *b = build_args(f, u, f->sha, 1);
    static const VnVmState stopped[] = { VN_VM_STOPPED, VN_VM_LAST };
    g_autoptr(GError) err = NULL;
    Reply *r;

    r = call(f, "build_and_run_instance", b, NULL);
    assert_string_equal(state_of(r), "active");
    reply_free(r);
    g_autofree char *a = uuid_args(u, NULL);
    reply_free(call(f, "stop_instance", a, NULL));
    /* the sync reads the stopped record ... */
    g_autoptr(VnInstanceRecord) seen = vn_instance_store_get(f->agent->store, u);
    assert_int_equal(seen->vm_state, VN_VM_STOPPED);
    /* ... a start takes the instance ... */
    assert_true(vn_instance_store_begin_task(f->agent->store, u, stopped, VN_TASK_POWERING_ON,
                                             "req-start", &err));
    /* ... and what the sync decided from its read is refused */
    assert_false(vn_instance_store_sync_begin(f->agent->store, u, seen->generation,
                                              VN_TASK_POWERING_OFF, &err));
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INVALID_STATE));
    g_clear_error(&err);
    assert_false(vn_instance_store_sync_power(f->agent->store, u, seen->generation,
                                              VN_POWER_RUNNING, VN_VM_ACTIVE, &err));
    g_clear_error(&err);
    assert_false(
        vn_instance_store_sync_error(f->agent->store, u, seen->generation, "X", "y", &err));
    g_clear_error(&err);
    g_autoptr(VnInstanceRecord) now = vn_instance_store_get(f->agent->store, u);
    assert_int_equal(now->task_state, VN_TASK_POWERING_ON);
    assert_int_equal(now->vm_state, VN_VM_STOPPED);
    /* the whole sync of a busy instance touches nothing (its guest runs, the record says
     * stopped: without the claim the sync would power the guest off) */
    assert_true(vn_domain_start(f->agent->virt, u, &err));
    vn_reconcile_sync_one(f->agent, u);
    VnPowerState p = VN_POWER_NOSTATE;
    assert_true(vn_domain_power_state(f->agent->virt, u, &p, &err));
    assert_int_equal(p, VN_POWER_RUNNING);
    /* with the task ended, the current record syncs normally */
    assert_true(vn_instance_store_end_task(f->agent->store, u, VN_TASK_POWERING_ON, VN_VM_ACTIVE,
                                           VN_POWER_RUNNING, &err));
    g_autoptr(VnInstanceRecord) cur = vn_instance_store_get(f->agent->store, u);
    assert_true(vn_instance_store_sync_power(f->agent->store, u, cur->generation, VN_POWER_PAUSED,
                                             -1, &err));
    reply_free(call(f, "terminate_instance", a, NULL));
}

/* The destination's side of a live migration (the test driver cannot migrate, but it
 * can host the steps): the peer's record is validated and must name the instance; an
 * arrival never overwrites a live record; without shared storage the disks are made from
 * the image cache and its hold is released; the rollback removes everything; and the
 * destination's entry of the migration is journaled, so a new agent on the same state
 * still answers get_migration. */
static void test_migration_destination(void **state)
{
    Fixture *f = *state;
    const char *u = "aaaaaaaa-0000-4000-8000-00000000000a";
    g_autofree char *b = build_args(f, u, f->sha, 1);
    g_autofree char *del = uuid_args(u, NULL);
    g_autoptr(json_object) inst = NULL;
    Reply *r;

    /* a record as a source sends it: built here once, then deleted, so it can arrive */
    r = call(f, "build_and_run_instance", b, NULL);
    assert_string_equal(state_of(r), "active");
    inst = json_object_get(r->result);
    reply_free(r);
    reply_free(call(f, "terminate_instance", del, NULL));
    json_object_object_add(inst, "host", json_object_new_string("host-src"));
    g_autofree char *md =
        g_strdup_printf("{\"migration_id\": \"mig-1\", \"source_host\": \"host-src\", "
                        "\"is_shared_instance_path\": false, \"block_migration\": true, "
                        "\"disks\": {\"disk\": 1073741824}, \"instance\": %s}",
                        json_object_to_json_string(inst));
    g_autofree char *args = uuid_args(u, NULL);
    g_autofree char *pre = g_strdup_printf("{\"instance_uuid\": \"%s\", \"source_host\": "
                                           "\"host-src\", \"migrate_data\": %s}",
                                           u, md);
    g_autofree char *wrong = g_strdup_printf(
        "{\"instance_uuid\": \"aaaaaaaa-0000-4000-8000-0000000000ff\", \"source_host\": "
        "\"host-src\", \"migrate_data\": %s}",
        md);

    /* a record for another instance is refused before anything is touched */
    r = call(f, "pre_live_migration", wrong, NULL);
    assert_string_equal(r->failure_class, "InvalidInput");
    if (!strstr(r->failure_message, "migrate_data.instance.uuid"))
        fail_msg("%s", r->failure_message);
    reply_free(r);
    assert_false(dir_exists(f, "aaaaaaaa-0000-4000-8000-0000000000ff"));

    r = call(f, "pre_live_migration", pre, NULL);
    assert_null(r->failure_class);
    reply_free(r);
    g_autoptr(VnInstanceRecord) arrived = vn_instance_store_get(f->agent->store, u);
    assert_non_null(arrived);
    assert_int_equal(arrived->task_state, VN_TASK_MIGRATING);
    assert_true(dir_exists(f, u));
    g_autofree char *disk = vn_guest_file(f->agent, u, VN_GUEST_ROOT_DISK);
    assert_true(g_file_test(disk, G_FILE_TEST_IS_REGULAR));
    /* the cache holds nothing once the disks exist: aging may judge the base by use */
    assert_int_equal(vn_image_cache_holds(f->agent->images), 0);

    /* arriving again while the first is live: refused, the record untouched */
    r = call(f, "pre_live_migration", pre, NULL);
    assert_string_equal(r->failure_class, "InstanceExists");
    reply_free(r);

    r = call(f, "get_migration", args, NULL);
    assert_null(r->failure_class);
    assert_string_equal(json_object_get_string(json_object_object_get(r->result, "status")),
                        "arriving");
    assert_string_equal(json_object_get_string(json_object_object_get(r->result, "id")), "mig-1");
    reply_free(r);

    r = call(f, "rollback_live_migration_at_destination", pre, NULL);
    assert_null(r->failure_class);
    reply_free(r);
    assert_false(dir_exists(f, u));
    g_autoptr(VnInstanceRecord) gone = vn_instance_store_get(f->agent->store, u);
    assert_null(gone);

    /* a new agent on the same state still knows how the migration ended */
    vn_agent_free(f->agent);
    f->agent = agent_new(f, 32);
    r = call(f, "get_migration", args, NULL);
    assert_null(r->failure_class);
    assert_string_equal(json_object_get_string(json_object_object_get(r->result, "status")),
                        "cancelled");
    reply_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_build_power_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_builds_leave_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_not_applied_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_made_durable_together, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_queue_and_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_loses_to_an_operation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_destination, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
