/* Unit tests of agent/tracker: claims after ratios and reservations, and the capacity row. */
#include "tests/unit/testutil.h"

#include <string.h>
#include <sys/statvfs.h>

#include <json-c/json.h>

#include "agent/state/tracker.h"
#include "api/error.h"

static char *dir;
static VnJournal *journal;
static VnInstanceStore *store;

static int setup(void **state)
{
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;

    (void)state;
    dir = vn_test_tmpdir();
    path = g_build_filename(dir, "j.db", NULL);
    journal = vn_journal_open(path, &err);
    store = vn_instance_store_new(journal, "host-t", &err);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    vn_instance_store_free(store);
    vn_journal_free(journal);
    vn_test_rmtree(dir);
    g_free(dir);
    return 0;
}

static VnTracker *tracker(int vcpus, gint64 memory_mb)
{
    VnTracker *t = vn_tracker_new("host-t", dir, store);
    VnHostInventory inv = { "QEMU", 10000002, "host-t", "{}", vcpus, memory_mb };
    g_autoptr(VnConfig) cfg = vn_config_load(NULL, NULL);

    vn_tracker_set_config(t, cfg); /* ratios 4/1/1, 512 MiB reserved */
    vn_tracker_set_inventory(t, &inv);
    return t;
}

static VnFlavor flavor(int vcpus, int mem, int root)
{
    VnFlavor f = { (char *)"f", vcpus, mem, root, 0, 0, NULL };
    return f;
}

static void test_fits(void **state)
{
    (void)state;
    assert_true(vn_tracker_fits(2, 0, 4.0, 7, 1));
    assert_false(vn_tracker_fits(2, 0, 4.0, 7, 2));
    assert_true(vn_tracker_fits(4096, 512, 1.0, 3000, 584));
    assert_false(vn_tracker_fits(4096, 512, 1.0, 3000, 585));
}

static void test_claims(void **state)
{
    g_autoptr(VnTracker) t = tracker(2, 4096);
    g_autoptr(GError) err = NULL;
    VnFlavor one = flavor(1, 1024, 1);
    VnFlavor big = flavor(64, 128, 1);
    VnFlavor mem = flavor(1, 4000, 1);

    (void)state;
    /* 2 CPUs x 4.0 = 8 vCPUs; (4096 - 512) x 1.0 = 3584 MiB */
    assert_true(vn_tracker_claim(t, "a", &one, &err));
    assert_true(vn_tracker_claim(t, "b", &one, &err));
    assert_true(vn_tracker_claim(t, "c", &one, &err));
    assert_false(vn_tracker_claim(t, "d", &one, &err)); /* 3 x 1024 + 1024 > 3584 */
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES));
    assert_non_null(strstr(err->message, "memory"));
    g_clear_error(&err);
    assert_false(vn_tracker_claim(t, "e", &big, &err));
    assert_non_null(strstr(err->message, "vcpus: 64 requested"));
    g_clear_error(&err);
    /* a check claims nothing */
    vn_tracker_drop(t, "c");
    assert_true(vn_tracker_check(t, "d", &one, &err));
    assert_true(vn_tracker_check(t, "d", &one, &err));
    assert_true(vn_tracker_claim(t, "d", &one, &err));
    /* claiming again for the same instance replaces its claim: three claims of 1024 MiB
     * stand (a, b, d), so 512 MiB are left and 4000 MiB do not fit */
    assert_true(vn_tracker_claim(t, "d", &one, &err));
    g_autoptr(VnCapacity) cap = vn_tracker_capacity(t);
    assert_int_equal(cap->vcpus_used, 3);
    assert_int_equal(cap->memory_mb_used, 512 + 3 * 1024);
    assert_false(vn_tracker_claim(t, "m", &mem, &err));
    assert_true(g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES));
    assert_non_null(strstr(err->message, "memory"));
    g_clear_error(&err);
    /* the refused claim took nothing */
    g_autoptr(VnCapacity) after = vn_tracker_capacity(t);
    assert_int_equal(after->vcpus_used, 3);
}

static void test_capacity_row(void **state)
{
    g_autoptr(VnTracker) t = tracker(2, 4096);
    g_autoptr(GError) err = NULL;
    VnFlavor f = flavor(2, 256, 1);
    g_autoptr(VnCapacity) c = NULL;
    struct statvfs st;

    (void)state;
    assert_true(vn_tracker_claim(t, "x", &f, &err));
    c = vn_tracker_capacity(t);
    assert_string_equal(c->host, "host-t");
    assert_int_equal(c->vcpus, 2);
    assert_int_equal(c->vcpus_used, 2);
    assert_int_equal(c->memory_mb, 4096);
    assert_int_equal(c->memory_mb_used, 256 + 512);
    assert_int_equal(c->free_ram_mb, 4096 - 768);
    assert_int_equal(c->local_gb_used, 1);
    assert_int_equal(statvfs(dir, &st), 0);
    assert_int_equal(c->local_gb, (gint64)((guint64)st.f_frsize * st.f_blocks >> 30));
    assert_true(c->cpu_allocation_ratio == 4.0);
    assert_int_equal(c->reserved_host_memory_mb, 512);
    json_object *stats = json_tokener_parse(c->stats);
    assert_non_null(stats);
    assert_true(json_object_object_get_ex(stats, "num_instances", NULL));
    json_object_put(stats);
    /* the same state gives an equal row: the reporter writes nothing new */
    g_autoptr(VnCapacity) again = vn_tracker_capacity(t);
    assert_true(vn_capacity_equal(c, again));
    vn_tracker_drop(t, "x");
    g_autoptr(VnCapacity) after = vn_tracker_capacity(t);
    assert_false(vn_capacity_equal(c, after));
    assert_int_equal(after->vcpus_used, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits),
        cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capacity_row, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
